"""Re-index and memory: peak RSS of indexing 10k and 100k files, and an unchanged re-index of 100k.

    python scripts/bench_reindex.py                  # the default model; 100,000 tiny JPEGs (~5 min)
    python scripts/bench_reindex.py --model data/scenes.pt --sizes 10000,100000
    python scripts/bench_reindex.py --work runs/reindex   # keep the indexes: a second run re-measures only
                                                          # the unchanged re-index

Tiny distinct JPEGs (16x16 noise, so every file goes through the CNN) are generated once into
``runs/bench_tiny/``. Each indexing runs in its own process (``build_index``, as `vlsearch index` does),
which reports its peak resident memory (``ru_maxrss``), so each size is measured alone. Then:

  unchanged        ``build_index`` again on the 100k folder, nothing changed (target <= 3 s), with its
                   parts timed alone afterwards: the folder walk (``scan``) and the stored stats
  CLI, unchanged   the whole `vlsearch index FOLDER -q` process: imports, model load, the same run

The index itself (the FAISS vectors, N x D x 4 bytes for Flat) must be in memory; everything else
should not grow with N: the table shows peak RSS, the process before indexing, and what is left
after subtracting the vectors. Give the process priority on a shared machine:
``echo -10 > /proc/self/autogroup`` first (Linux).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchlib import machine_line, table, verdict

PER_FOLDER = 1000
SMALL_PART = 10  # folders in part0: the 10k subset


def tiny_folder(cache: Path, count: int) -> Path:
    """``count`` distinct 16x16 JPEGs in folders of 1000; the first 10,000 under ``part0/``. Made once."""
    root = cache / f"tiny-{count}"
    marker = root / ".complete"
    if marker.is_file():
        return root
    rng = np.random.default_rng(0)
    for n in range(count):
        folder_no = n // PER_FOLDER
        part = "part0" if folder_no < SMALL_PART else "part1"
        path = root / part / f"{folder_no:03d}" / f"t{n:06d}.jpg"
        if n % PER_FOLDER == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path, quality=90)
    marker.touch()  # hidden: the scan skips it
    return root


def vm_rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(folder: Path, index_dir: Path, model: str | None) -> None:
    """One indexing run in this process; prints a JSON line with its times and memory."""
    from indexer.index import db_path, faiss_files
    from indexer.pipeline import build_index
    from indexer.scan import scan
    from indexer.store import Store
    from retrieval.core.device import set_threads

    set_threads()
    before = vm_rss_mib()  # python, torch, faiss, numpy imported; no model yet
    summary = build_index(folder, index_dir, model=model, workers=None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    start = time.perf_counter()
    walked = sum(1 for _ in scan(folder, skip=[index_dir]))
    scan_s = time.perf_counter() - start
    with Store.open(db_path(index_dir), readonly=True) as store:
        start = time.perf_counter()
        stats = len(store.file_stats())
        stats_s = time.perf_counter() - start
        dim = int(store.meta().dim)
    faiss_bytes = sum(path.stat().st_size for path in faiss_files(index_dir).values())
    print(json.dumps(dict(line=summary.line(), embedded=summary.embedded, unchanged=summary.unchanged,
                          total=summary.total, seconds=summary.seconds, index_type=summary.index_type,
                          before_mib=before, peak_mib=peak, dim=dim, faiss_mib=faiss_bytes / 2**20,
                          scan_s=scan_s, walked=walked, stats_s=stats_s, stats=stats)))


def run_child(folder: Path, index_dir: Path, model: str | None) -> dict:
    command = [sys.executable, __file__, "--child", str(folder), str(index_dir)] + (["--model", model] if model else [])
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def cli_seconds(folder: Path, index_dir: Path, model: str | None) -> float:
    script = Path(sys.executable).with_name("vlsearch")
    entry = [str(script)] if script.is_file() else [sys.executable, "-c", "from retrieval.app.cli import main; main()"]
    command = [*entry, "index", str(folder), "--index", str(index_dir), "-q"] + (["--model", model] if model else [])
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint (default: the shipped default model)")
    parser.add_argument("--sizes", default="10000,100000", help="corpus sizes: 10000 and/or the full --count")
    parser.add_argument("--count", type=int, default=100_000, help="tiny files generated (and re-indexed)")
    parser.add_argument("--cache", type=Path, default=Path("runs/bench_tiny"), help="where the tiny files are kept")
    parser.add_argument("--work", type=Path, help="keep the indexes here; a size already indexed there is not "
                        "indexed again (default: a temporary folder, removed afterwards)")
    parser.add_argument("--child", nargs=2, type=Path, metavar=("FOLDER", "INDEX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.model)

    print(f"bench_reindex: {machine_line()}")
    started = time.perf_counter()
    root = tiny_folder(args.cache, args.count)
    print(f"{args.count} tiny JPEGs in {root} (ready in {time.perf_counter() - started:.0f} s); model "
          f"{args.model or 'the shipped default'}", flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="vlsearch-reindex-"))
    try:
        rows, last = [], None
        for size in sorted(int(s) for s in args.sizes.split(",")):
            folder = root / "part0" if size == SMALL_PART * PER_FOLDER else root
            last = (folder, work / f"index-{size}")
            if args.work and last[1].is_dir():
                print(f"  {size:,}: kept index in {last[1]} (first-index figures not measured again)")
                continue
            got = run_child(*last, args.model)
            assert got["total"] == size, got["line"]
            vectors_mib = size * got["dim"] * 4 / 2**20
            rows.append((f"{size:,}", got["index_type"], got["seconds"], size / got["seconds"], got["before_mib"],
                         got["peak_mib"], vectors_mib, got["peak_mib"] - vectors_mib))
            print(f"  indexed {size:,}: {got['line']}; peak RSS {got['peak_mib']:.0f} MiB (load "
                  f"{os.getloadavg()[0]:.1f})", flush=True)
        if rows:
            table("first index of N tiny files (one process each)",
                  ("files", "index type", "s", "images/s", "RSS before MiB", "peak RSS MiB", "vectors MiB",
                   "peak - vectors"), rows)

        again = run_child(*last, args.model)
        assert again["embedded"] == 0 and again["unchanged"] == again["total"], again["line"]
        cli = cli_seconds(*last, args.model)
        table(f"unchanged re-index of {again['total']:,} files; load average {os.getloadavg()[0]:.1f}",
              ("", "s"), [("build_index (scan + one SELECT + plan; the model is not opened)", again["seconds"]),
                          (f"  of which: scan alone ({again['walked']:,} files)", again["scan_s"]),
                          (f"  of which: stored stats alone ({again['stats']:,} rows)", again["stats_s"]),
                          ("vlsearch index -q, whole process (imports, run)", cli)])
        print(f"  peak RSS of the unchanged run: {again['peak_mib']:.0f} MiB")
        print(f"  target <= 3 s: build_index {verdict(again['seconds'] <= 3)}, whole CLI process "
              f"{verdict(cli <= 3)}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
