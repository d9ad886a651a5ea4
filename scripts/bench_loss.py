"""Which loss trains the dual encoder from scratch? Same data, model and budget; only the loss differs.

    python scripts/bench_loss.py                     # ~12 min on 2 cores
    python scripts/bench_loss.py --train 1000 --epochs 3

Runs on the generated scenes (64 px, resnet18 from scratch, no hard-negative captions, so the losses are
compared as VSE++ defined them) and prints validation t2i R@1/5/10 and rsum after every epoch, and whether
the image embeddings collapsed (mean cosine between different images > 0.95; hinge loss near 2 x margin).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from retrieval.core.captions import ImageCaptions
from retrieval.core.config import ModelConfig, TrainConfig
from retrieval.core.scenes.corpus import export_corpus, load_records
from retrieval.core.train import EpochEvent, train

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelConfig(backbone="resnet18", image_size=64, pool="grid2", embed_dim=256, word_dim=128, hidden_size=256)
# (label, loss, epochs of sum-over-negatives warm-up)
VARIANTS = (("infonce", "infonce", 0), ("hinge, hardest negative (VSE++)", "hinge", 0),
            ("hinge, sum warm-up 1 epoch", "hinge", 1), ("hinge, sum (VSE0)", "hinge-sum", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_loss")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    corpus = args.work / "corpus"
    if not (corpus / "scenes.jsonl").is_file():
        export_corpus(corpus, args.train + args.val, seed=1, image_size=MODEL.image_size,
                      splits=(args.train, args.val, 0), workers=2)
    records = list(load_records(corpus).values())
    items = {split: [ImageCaptions(corpus / r.image, [c.text for c in r.captions], r.split) for r in records
                     if r.split == split] for split in ("train", "val")}
    print(f"{'loss':<34}{'epoch':>6}{'loss value':>11}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'rsum':>8}  collapsed")
    for label, loss, warmup in VARIANTS:
        config = TrainConfig(epochs=args.epochs, batch_size=128, lr=args.lr, loss=loss, hinge_warmup_epochs=warmup,
                             augment=False, flip=False, warmup_epochs=1.0, seed=0)
        started = time.perf_counter()

        def report(event: object, label: str = label) -> None:
            if isinstance(event, EpochEvent):
                t2i = event.metrics.t2i
                print(f"{label:<34}{event.epoch:>6}{event.loss:>11.3f}{t2i.r1:>7.1f}{t2i.r5:>7.1f}{t2i.r10:>7.1f}"
                      f"{event.metrics.rsum:>8.1f}  {'yes' if event.collapsed else 'no'}", flush=True)

        result = train(items["train"], items["val"], MODEL, config, args.work / f"{loss}-{warmup}.pt", report)
        print(f"{label:<34} best rsum {result.best.rsum:.1f} (epoch {result.best_epoch}), "
              f"{time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
