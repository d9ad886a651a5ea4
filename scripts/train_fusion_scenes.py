"""Train the scenes model's fusion head (re-ranker) and measure both stages on the test scenes.

    python scripts/train_fusion_scenes.py --model data/scenes.pt --out data/scenes.pt
    python scripts/train_fusion_scenes.py --model data/scenes.pt --eval-only

The dual encoder is frozen (its stored tensors and identity stay as they are, so indexes built with it stay valid);
only the head's weights and settings are added to the checkpoint. A model that already has a head has that head
trained further (``--dim`` then does not apply; a ``--region-stages`` above the head's widens it). Scenes are the
recipe's (seed 1, 64 px): training scenes are ``--train`` examples from ``--train-start`` -- by default the first
of the dual encoder's own 20,000; from 21,500 on, fresh scenes it never saw, whose first-stage rankings look like
the test split's -- validation the recipe's 500 (examples 20,000-20,499), test its 1,000 (20,500-21,499), the split
BENCHMARKS.md measures on (``--test-start`` measures 1,000 other fresh scenes instead). Only the examples used are
rendered (``--corpus``). Prints and writes (``--report``) recall of both stages by re-rank depth and of the best
possible ranker (the ceiling the caption grammar leaves), R@1 and R@10 by scene kind, what the deepest re-ranking
puts first where it misses, and the attribute-swap probe scored by the head, by kind.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from retrieval.core.checkpoint import load_model  # noqa: E402
from retrieval.core.config import ModelConfig, TrainConfig  # noqa: E402
from retrieval.core.device import set_threads  # noqa: E402
from retrieval.core.evaluate import t2i_ranks  # noqa: E402
from retrieval.core.fusion_train import (encode_maps, rerank_order, rerank_ranks, train_fusion,  # noqa: E402
                                         word_vectors)
from retrieval.core.scenes.captions import SWAP_KINDS, caption_distribution  # noqa: E402
from retrieval.core.scenes.corpus import SCENES_FILE, SceneRecord, _write_one, load_records, training_items  # noqa: E402
from retrieval.core.scenes.quality import best_possible_hits, swap_pairs  # noqa: E402
from retrieval.core.scenes.scene import satisfies  # noqa: E402

SEED, SIZE, VAL_START, TEST_START = 1, 64, 20000, 20500


def export_examples(folder: Path, splits: dict[str, range]) -> Path:
    """Render just these examples of the recipe's corpus (same content as the full corpus's)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for split, indices in splits.items():
        for index in indices:
            image = folder / "images" / f"{index:06d}.png"
            if image.is_file():
                from retrieval.core.scenes.corpus import make_example

                scene, captions = make_example(SEED, index)
                records.append(SceneRecord(f"images/{index:06d}.png", scene, tuple(captions), split))
            else:
                records.append(_write_one((str(folder), "images", SEED, index, SIZE, split)))
    (folder / SCENES_FILE).write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    return folder


def measure(model, folder: Path, depths: list[int]) -> dict:
    records = [r for r in load_records(folder).values() if r.split == "test"]
    items = training_items(folder, records, False)
    images, failed = encode_maps(model, items)
    assert not failed
    head = model.fusion.eval()
    captions = [c for r in records for c in r.captions]
    caption_image = np.repeat(np.arange(len(records)), [len(r.captions) for r in records])
    vectors, words, lengths = word_vectors(model, [c.text for c in captions])
    with torch.inference_mode():
        regions = head.regions(images.maps.float())
    similarity = (vectors @ images.vectors.T).numpy()
    stages = {"first": t2i_ranks(similarity, caption_image)}
    for depth in depths:
        stages[f"rerank{depth}"] = rerank_ranks(head, similarity, caption_image, words, lengths, regions, depth)
    hits = {name: {k: (ranks < k).astype(float) for k in (1, 5, 10)} for name, ranks in stages.items()}
    hits["best possible"] = best_possible_hits(records)
    counts = np.array([len(r.scene.objects) for r in records])
    kinds = np.array([f"{counts[i]} objects, {len(c.meaning.mentions)} named" for c, i in zip(captions, caption_image)])
    report: dict = {"captions": len(captions), "images": len(records), "recall": {},
                    "by_kind_r1": defaultdict(dict), "by_kind_r10": defaultdict(dict)}
    for name, by_k in hits.items():
        report["recall"][name] = {f"r{k}": float(100 * np.mean(by_k[k])) for k in (1, 5, 10)}
        for kind in sorted(set(kinds)):
            for k in (1, 10):
                report[f"by_kind_r{k}"][kind][name] = float(100 * np.mean(by_k[k][kinds == kind]))
    report["by_kind_r1"], report["by_kind_r10"] = dict(report["by_kind_r1"]), dict(report["by_kind_r10"])
    deepest = max(depths)
    top = rerank_order(head, similarity, words, lengths, regions, deepest)[:, 0]
    report[f"top1_rerank{deepest}"] = top_image_verdicts(records, captions, caption_image, top, kinds)
    probe = {}
    for kind in (*SWAP_KINDS, None):
        pairs = swap_pairs(records, 0, (kind,) if kind else SWAP_KINDS)
        index = torch.tensor([p[0] for p in pairs])
        true_v, true_w, true_l = word_vectors(model, [p[1] for p in pairs])
        false_v, false_w, false_l = word_vectors(model, [p[2] for p in pairs])
        with torch.inference_mode():
            img = images.vectors[index]
            g_true, g_false = (true_v * img).sum(-1), (false_v * img).sum(-1)
            f_true = head.score(true_w, true_l, regions[index], g_true)
            f_false = head.score(false_w, false_l, regions[index], g_false)
        probe[kind or "all"] = {"pairs": len(pairs), "first": float(100 * (g_true > g_false).float().mean()),
                                "fusion": float(100 * (f_true > f_false).float().mean())}
    report["swap_probe"] = probe
    report["mix"] = float(head.mix.detach())
    return report


def top_image_verdicts(records: list[SceneRecord], captions: list, caption_image: np.ndarray, top: np.ndarray,
                       kinds: np.ndarray) -> dict[str, dict[str, int]]:
    """Per scene kind, how many captions have as top image: their own, another that fits at least as well
    (a perfect ranker's loss too), one that fits less well, or one that does not fit (its objects, or only
    its relation or count) -- where the R@1 misses come from."""
    distributions: dict[int, dict] = {}
    verdicts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for caption, own, best, kind in zip(captions, caption_image, top, kinds):
        other = records[best].scene
        if best == own:
            verdict = "own image"
        elif satisfies(caption.meaning, other):
            for i in (own, best):
                distributions.setdefault(i, caption_distribution(records[i].scene))
            key = (caption.template, caption.meaning)
            likely = distributions[best].get(key, 0.0) >= distributions[own][key] * (1 - 1e-9)
            verdict = "another that fits at least as well" if likely else "another that fits less well"
        elif satisfies(replace(caption.meaning, relation=None, count=None), other):
            verdict = "objects fit, relation or count does not"
        else:
            verdict = "a named object missing"
        verdicts[kind][verdict] += 1
    return {kind: dict(v) for kind, v in verdicts.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "data" / "scenes.pt")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fusion" / "model.pt")
    parser.add_argument("--corpus", type=Path, default=ROOT / "runs" / "fusion-scenes")
    parser.add_argument("--train", type=int, default=8000, help="training scenes, examples --train-start onwards")
    parser.add_argument("--train-start", type=int, default=0,
                        help=f"first training example; {TEST_START + 1000} and above: scenes the dual encoder "
                             "never saw")
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test-start", type=int, default=TEST_START,
                        help=f"first of the 1,000 scenes measured: {TEST_START}, the test split, or another 1,000 "
                             "fresh scenes (BENCHMARKS.md chooses among heads on examples 110,000-110,999)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--region-stages", type=int, default=1,
                        help="trunk stages the head's regions come from (2: layer2's 8x8 map beside layer3's 4x4); "
                             "a head with fewer has its regions widened (its new weights start at zero)")
    parser.add_argument("--negatives", type=int, default=15)
    parser.add_argument("--negative-pool", type=int, default=0,
                        help="draw each step's negatives from the first stage's top P wrong images "
                             "(0: its top --negatives)")
    parser.add_argument("--depths", default="20,100,300")
    parser.add_argument("--eval-only", action="store_true", help="measure --model (which has a head)")
    parser.add_argument("--report", type=Path, default=None, help="write the measurements here as JSON")
    args = parser.parse_args()
    set_threads()
    started = time.perf_counter()
    train = range(args.train_start, args.train_start + args.train)
    splits = {"val": range(VAL_START, VAL_START + args.val), "test": range(args.test_start, args.test_start + 1000)}
    if args.test_start < TEST_START:
        parser.error(f"--test-start {args.test_start}: examples before {TEST_START} are the dual encoder's training "
                     "and validation scenes")
    named = {"training": train, "validation": splits["val"], "measured": splits["test"]}
    for (name, first), (other, second) in combinations(named.items(), 2):
        if first.start < second.stop and second.start < first.stop:
            parser.error(f"the {name} examples {first.start}-{first.stop - 1} overlap the {other} examples "
                         f"{second.start}-{second.stop - 1} (--train-start, --train, --val, --test-start)")
    export_examples(args.corpus, splits if args.eval_only else {"train": train, **splits})
    print(f"corpus ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    model_path = args.model
    if not args.eval_only:
        records = list(load_records(args.corpus).values())
        train_items = training_items(args.corpus, [r for r in records if r.split == "train"], True)
        val_items = training_items(args.corpus, [r for r in records if r.split == "val"], False)
        config = TrainConfig(epochs=args.epochs, batch_size=128, lr=args.lr, fusion_negatives=args.negatives,
                             fusion_negative_pool=args.negative_pool, save_half=True)
        head_config = ModelConfig(fusion_dim=args.dim, fusion_region_stages=args.region_stages)
        best = train_fusion(load_model(args.model), train_items, val_items, head_config, config, args.out,
                            base=args.model, on_event=lambda e: print(e, file=sys.stderr))
        print(f"best {best['epoch']}, trained in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        model_path = args.out
    model = load_model(model_path)
    report = measure(model, args.corpus, [int(d) for d in args.depths.split(",")])
    report["model"], report["fusion"] = model.identity, model.fusion_identity
    report["test_examples"] = f"{args.test_start}-{args.test_start + 999}"
    report["seconds"] = round(time.perf_counter() - started)
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
