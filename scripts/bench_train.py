"""Training throughput (images/s) of one optimisation step: fp32 vs channels_last vs bf16 autocast.

    python scripts/bench_train.py                       # resnet18@64 (the default model's shape) and resnet50@224
    python scripts/bench_train.py --configs resnet18:64 --seconds 20

Measures the model's forward + backward + AdamW step on preloaded tensors (no decoding), with the same
InfoNCE loss as training, so the figures say which precision/memory format to use on this machine.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from retrieval.core.config import ModelConfig
from retrieval.core.device import autocast, cpu_supports_bf16, set_threads
from retrieval.core.loss import InfoNCELoss
from retrieval.core.model import DualEncoder
from retrieval.core.tokenizer import Vocabulary

VARIANTS = (("fp32", False, torch.float32), ("fp32 channels_last", True, torch.float32),
            ("bf16 channels_last", True, torch.bfloat16))


def images_per_second(backbone: str, size: int, batch: int, channels_last: bool, dtype: torch.dtype,
                      seconds: float) -> float:
    torch.manual_seed(0)
    model = DualEncoder(ModelConfig(backbone=backbone, image_size=size, pool="grid2", embed_dim=256, word_dim=128,
                                    hidden_size=256), Vocabulary.build(["a red circle left of a blue square"]))
    loss_fn = InfoNCELoss()
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=1e-4)
    images = torch.randn(batch, 3, size, size)
    if channels_last:
        model, images = model.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
    tokens, lengths = torch.randint(2, len(model.vocab), (batch, 12)), torch.full((batch,), 12)
    device = torch.device("cpu")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = loss_fn(model.encode_image(images).float(), model.encode_text(tokens, lengths).float())
        loss.backward()
        optimizer.step()

    step()  # warm-up (oneDNN primitive creation)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        done += batch
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="resnet18:64,resnet50:224", help="backbone:size,...")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    threads = set_threads()
    print(f"# {platform.processor() or platform.machine()}, {threads} threads, torch {torch.__version__}, "
          f"native bf16: {cpu_supports_bf16()}")
    print(f"{'backbone':<12}{'size':>6}  {'variant':<22}{'images/s':>10}")
    for config in args.configs.split(","):
        backbone, size = config.split(":")
        for name, channels_last, dtype in VARIANTS:
            rate = images_per_second(backbone, int(size), args.batch_size, channels_last, dtype, args.seconds)
            print(f"{backbone:<12}{size:>6}  {name:<22}{rate:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
