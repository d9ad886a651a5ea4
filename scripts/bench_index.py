"""Benchmark indexing: images/s for a folder of generated JPEGs, and where the time goes.

    python scripts/bench_index.py                        # 256 JPEGs of 640x480, a random resnet18 at 224 px
    python scripts/bench_index.py --count 1000 --model my_model.pt --workers 4 --threads 4

Reports the full pipeline (first build), a second unchanged run, and the two stages on their own:
decoding (threads, as the pipeline does it) and the CNN (random batches), so that the slower one shows.
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from indexer.decode import Decoder
from indexer.embed import ImageEmbedder
from indexer.pipeline import build_index, in_order
from retrieval.checkpoint import load_model, save_checkpoint
from retrieval.config import ModelConfig
from retrieval.device import set_threads
from retrieval.model import DualEncoder
from retrieval.tokenizer import Vocabulary


def generate(folder: Path, count: int, width: int, height: int) -> None:
    """Photo-sized JPEGs with a few shapes and noise (so they compress like photos rather than flat colour)."""
    rng = random.Random(0)
    noise = Image.effect_noise((width, height), 40).convert("RGB")
    for n in range(count):
        image = Image.blend(Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3))), noise, 0.3)
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = rng.randrange(width), rng.randrange(height)
            box = (x, y, x + rng.randrange(40, width // 2), y + rng.randrange(40, height // 2))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape(box, fill=tuple(rng.randrange(256) for _ in range(3)))
        path = folder / f"{n // 100:03d}" / f"img{n:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=88)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=256, help="number of JPEGs")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--model", type=Path, help="a checkpoint (default: a random model from the options below)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--embed-dim", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, help="decoding threads (default: build_index's)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: VLSEARCH_THREADS or all cores)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    threads = set_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="vlsearch-bench-") as tmp:
        folder = Path(tmp) / "photos"
        generate(folder, args.count, args.width, args.height)
        model_path = args.model
        if model_path is None:
            torch.manual_seed(0)
            config = ModelConfig(backbone=args.backbone, image_size=args.image_size, embed_dim=args.embed_dim)
            model_path = Path(tmp) / "model.pt"
            save_checkpoint(DualEncoder(config, Vocabulary.build(["a photo"]), pretrained=False), model_path)
        model = load_model(model_path)
        size = model.config.image_size
        print(f"{args.count} JPEGs {args.width}x{args.height}; {model.config.backbone} at {size} px, "
              f"D={model.config.embed_dim}; batch {args.batch_size}; torch threads {threads}; "
              f"workers {args.workers if args.workers is not None else 'default'}")

        first = build_index(folder, model=model, batch_size=args.batch_size, workers=args.workers, device=args.device)
        print(f"first build     {first.embedded / first.seconds:7.1f} images/s   ({first.line()})")
        second = build_index(folder, model=model, batch_size=args.batch_size, workers=args.workers,
                             device=args.device)
        print(f"unchanged run   {second.seconds:7.2f} s          ({second.line()})")

        files = sorted(folder.rglob("*.jpg"))
        decoder = Decoder(size)
        workers = args.workers if args.workers is not None else min(8, threads)
        start = time.perf_counter()
        for _ in in_order(decoder, files, workers, 4 * max(workers, 1)):
            pass
        print(f"decode only     {len(files) / (time.perf_counter() - start):7.1f} images/s   ({workers} threads)")

        embedder = ImageEmbedder(model, args.device)
        batch = torch.randn(args.batch_size, 3, size, size)
        embedder(batch)  # warm-up
        rounds = max(1, args.count // args.batch_size)
        start = time.perf_counter()
        for _ in range(rounds):
            embedder(batch)
        print(f"CNN only        {rounds * args.batch_size / (time.perf_counter() - start):7.1f} images/s   "
              f"({embedder.device}, {str(embedder.dtype).replace('torch.', '')}, channels_last)")


if __name__ == "__main__":
    main()
