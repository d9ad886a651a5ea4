"""Device, precision and thread settings shared by training, indexing and search."""
from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from retrieval.core.errors import ConfigError

if TYPE_CHECKING:  # imported where used, so callers that only ask for default_threads() never load torch
    import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; asking for CUDA without one is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """bf16 autocast only pays on CPUs with native bf16/AMX/AVX512 support (measured in BENCHMARKS.md)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


PRECISION_ENV = "VLSEARCH_PRECISION"  # overrides "auto" everywhere (the tests use it to run the bf16 path)

# Under bf16 a vector depends slightly on the other images of its batch (the kernels block differently), so an
# index rebuilt in other batches (after a crash, say) matches a clean build in its ids, and in its scores
# within this much; in fp32 they match within 1e-5. The one place that says so (README "Reliability").
BF16_SCORE_TOLERANCE = 2e-3


FP32_SCORE_TOLERANCE = 1e-5


def score_tolerance(precision: str = "auto") -> float:
    """How far two builds' scores for one (query, image) may differ at ``precision`` (on the CPU)."""
    import torch

    bf16 = resolve_precision(precision, torch.device("cpu")) == torch.bfloat16
    return BF16_SCORE_TOLERANCE if bf16 else FP32_SCORE_TOLERANCE


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: ``$VLSEARCH_PRECISION`` when set, else bf16 on CUDA and on CPUs with native bf16, else fp32."""
    import torch

    if precision == "auto":
        precision = os.environ.get(PRECISION_ENV) or "auto"
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ConfigError(f"unknown precision {precision!r}: use auto, fp32 or bf16")
    if device.type == "cuda" or cpu_supports_bf16():
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass; a no-op for fp32."""
    import torch

    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def unit_vectors(vectors: torch.Tensor) -> torch.Tensor:
    """Encoder outputs -> float32 unit vectors, *after* the autocast region: a bf16 vector normalised inside
    it is off unit length by up to 0.3 % (image queries would score 1.003 against themselves)."""
    import torch.nn.functional as F

    return F.normalize(vectors.float(), dim=-1)


def default_threads() -> int:
    """``VLSEARCH_THREADS``, else every core."""
    return int(os.environ.get("VLSEARCH_THREADS", "0")) or (os.cpu_count() or 1)


def set_threads(threads: int | None = None) -> int:
    """Keep torch's intra-op threads explicit: :func:`default_threads` unless given."""
    import torch

    threads = threads or default_threads()
    torch.set_num_threads(threads)
    return threads
