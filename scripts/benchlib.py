"""Small helpers shared by the benchmark scripts: the machine line, percentiles, plain-text tables."""
from __future__ import annotations

import os
import platform
import sys
import time
from typing import Callable, Sequence

import numpy as np


def machine_line() -> str:
    """Cores, CPU vector flags, load average and library versions, for the head of a report."""
    import faiss
    import torch

    try:
        cpuinfo = open("/proc/cpuinfo").read()
        flags = sorted({word for word in cpuinfo.split() if word.startswith(("avx", "amx"))})
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                     platform.processor())
    except OSError:
        flags, model = [], platform.processor()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{os.cpu_count()} cores ({model}; {' '.join(flags) or 'no AVX'}){gpu}; python {sys.version.split()[0]}, "
            f"torch {torch.__version__}, faiss {faiss.__version__}; load average {load():.1f}")


def load() -> float:
    """The 1-minute load average (NaN where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def timed(fn: Callable[[object], object], items: Sequence[object], warmup: int = 5) -> list[float]:
    """Seconds of ``fn(item)`` for each item, after ``warmup`` untimed calls."""
    for item in items[:warmup]:
        fn(item)
    seconds = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        seconds.append(time.perf_counter() - start)
    return seconds


def ms(seconds: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``seconds``, in milliseconds."""
    return float(np.percentile(np.asarray(seconds) * 1e3, q))


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print an aligned table: first column left, the others right; floats with 3 significant digits."""
    cells = [[str(c) for c in header]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in row]
                                          for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    sys.stdout.flush()


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"
