"""Scale-out overhead: the same folder indexed with ``engine="local"`` and ``engine="ray"``, in images/s.

    python scripts/bench_ray.py                      # resnet50 at 224 px and the default model, 256 JPEGs
    python scripts/bench_ray.py --config resnet50:224 --model data/scenes.pt --count 256

The folder is bench_index.py's (1024x768 JPEGs, quality 90, made once into ``runs/bench_jpegs/``). The
script re-runs itself in its own network and PID namespace (``unshare``; Ray binds the host's address even
when told 127.0.0.1), starts one Ray node there with ``--cpus`` CPUs, and indexes the folder into a fresh
index with each engine, alternating, best of ``--repeat``. For each run it reports

  images/s    images / the run's seconds (Ray: actors start, import torch and load the model inside it)
  first       seconds until the first batch was through the CNN (the start-up)

and ray/local of images/s (target of issue 18: >= 0.8). A short run mostly measures Ray's start-up; the
difference of the two "first" columns is that start-up, paid once a run. Ray's actors take one CPU and one
torch thread each (``--workers`` actors, default one per CPU); local runs build_index's defaults.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_index import models, photo_folder
from benchlib import load, machine_line, table
from indexer.executor import RayOptions
from indexer.pipeline import Progress, build_index
from retrieval.core.checkpoint import save_checkpoint
from retrieval.core.device import set_threads

PORT = 6379  # inside the namespace


def in_namespace() -> None:
    """Run this script again as PID 1 of a new network + PID namespace (every Ray process ends with it)."""
    if os.environ.get("VLSEARCH_BENCH_NS") == "1":
        return
    command = ["unshare", "-n", "-p", "-f", "--mount-proc", "--kill-child", sys.executable, *sys.argv]
    sys.exit(subprocess.run(command, env={**os.environ, "VLSEARCH_BENCH_NS": "1"}).returncode)


def start_ray(cpus: int) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    ray = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray, "start", "--head", f"--port={PORT}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                    "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"], check=True,
                   capture_output=True)


class Clock:
    """Progress callback: seconds until the first batch was through the CNN."""

    def __init__(self) -> None:
        self.first: float | None = None

    def __call__(self, progress: Progress) -> None:
        if self.first is None and progress.embedded:
            self.first = progress.seconds


def one_run(folder: Path, work: Path, model: Path, engine: str, args: argparse.Namespace) -> tuple[float, float]:
    """(images/s, seconds to the first embedded batch) of one build into a fresh index."""
    index_dir = Path(tempfile.mkdtemp(prefix=f"index-{engine}-", dir=work))
    clock = Clock()
    summary = build_index(folder, index_dir, model=model, batch_size=args.batch_size, engine=engine,
                          ray=RayOptions(f"127.0.0.1:{PORT}", args.workers), progress=clock)
    assert summary.embedded == args.count, summary.line()
    print(f"    {engine}: {summary.line()}", flush=True)
    shutil.rmtree(index_dir)
    return summary.embedded / summary.seconds, clock.first or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[], help="BACKBONE:SIZE of a random model (repeatable)")
    parser.add_argument("--model", action="append", default=[], type=Path, help="a checkpoint (repeatable)")
    parser.add_argument("--count", type=int, default=256, help="JPEGs in the folder")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the Ray node")
    parser.add_argument("--workers", type=int, help="Ray actors (default: one per CPU)")
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs of each engine")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--cache", type=Path, default=Path("runs/bench_jpegs"), help="where the JPEGs are kept")
    args = parser.parse_args()
    folder = photo_folder(args.cache.resolve(), args.count, args.width, args.height, args.quality)
    in_namespace()
    start_ray(args.cpus)
    threads = set_threads(None)
    for f in folder.rglob("*.jpg"):  # into the page cache
        f.read_bytes()
    print(f"bench_ray: {machine_line()}")
    print(f"{args.count} JPEGs {args.width}x{args.height} q{args.quality} in {folder}; batch {args.batch_size}; "
          f"local: {threads} torch threads; ray: one node, {args.cpus} CPUs, {args.workers or args.cpus} actors")
    rows = []
    with tempfile.TemporaryDirectory(prefix="vlsearch-bench-ray-") as tmp:
        for label, model in models(args, Path(tmp)):
            path = Path(tmp) / "model.pt"
            save_checkpoint(model, path)
            best = {"local": (0.0, 0.0), "ray": (0.0, 0.0)}
            for _ in range(args.repeat):  # alternate, so that a busy moment hits both alike
                for engine in ("local", "ray"):
                    rate, first = one_run(folder, Path(tmp), path, engine, args)
                    best[engine] = max(best[engine], (rate, first))
            (local, local_first), (ray, ray_first) = best["local"], best["ray"]
            rows.append((label, f"{model.config.image_size}", local, ray, ray / local, local_first, ray_first))
            print(f"  {label}: local {local:.1f}, ray {ray:.1f} images/s (load {load():.1f})", flush=True)
    table(f"images/s, {args.count} JPEGs, batch {args.batch_size}, best of {args.repeat}; load average now "
          f"{load():.1f}", ("model", "px", "local", "ray", "ray/local", "local first s", "ray first s"), rows)


if __name__ == "__main__":
    main()
