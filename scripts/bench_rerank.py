"""What re-ranking costs: query latency added by the fusion head, index bytes per image, indexing throughput.

    python scripts/bench_rerank.py --model data/scenes.pt --folder runs/fusion-scenes/images

Indexes ``--folder`` twice into fresh indexes under ``--work`` (the model without its head, then with it:
same CNN pass, plus region codes), then times ``SearchEngine.search`` on one torch thread with ``rerank=0``
and with each ``--depths`` value, over the scenes query set (or the lines of ``--query-file``: photo
captions for a photos model); the added latency is each query's difference.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import machine_line  # noqa: E402
from indexer.pipeline import build_index  # noqa: E402
from retrieval.core.checkpoint import read_checkpoint, write_payload  # noqa: E402
from retrieval.core.scenes.captions import query_set  # noqa: E402
from retrieval.app.search import SearchEngine  # noqa: E402


def without_head(model: Path, out: Path) -> Path:
    """The same checkpoint less its fusion head (same identity: the index accepts either)."""
    payload = read_checkpoint(model)
    payload = {**payload, "state_dict": {k: v for k, v in payload["state_dict"].items() if not k.startswith("fusion.")},
               "config": {**payload["config"], "fusion_dim": 0}, "fusion_identity": ""}
    write_payload(payload, out)
    return out


def index(folder: Path, index_dir: Path, model: Path, repeats: int) -> tuple[float, float, int]:
    """Best images/s of ``repeats`` fresh builds (wall clock, and per second of this process's CPU time: on a
    shared machine the second says more), and the index database's size in bytes."""
    best, best_cpu = 0.0, 0.0
    for _ in range(repeats):
        shutil.rmtree(index_dir, ignore_errors=True)
        cpu = time.process_time()
        summary = build_index(folder, index_dir, model=model, batch_size=32, workers=1, threads=1)
        best = max(best, summary.added / summary.seconds)
        best_cpu = max(best_cpu, summary.added / (time.process_time() - cpu))
    size = sum(p.stat().st_size for p in index_dir.glob("index.db*"))
    return best, best_cpu, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "data" / "scenes.pt")
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_rerank")
    parser.add_argument("--depths", default="20,100,300")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--query-file", type=Path, default=None, help="one query per line (default: the scenes set)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    plain_model = without_head(args.model, args.work / "no_head.pt")
    plain_rate, plain_cpu, plain_bytes = index(args.folder, args.work / "plain", plain_model, args.repeats)
    fused_rate, fused_cpu, fused_bytes = index(args.folder, args.work / "fused", args.model, args.repeats)
    print(machine_line())
    with SearchEngine.open(args.work / "fused", model=args.model) as engine:
        images, with_regions = len(engine), engine.store.region_count()
        [blob] = engine.store.regions(engine.store.ids_matching()[:1]).values()
        queries = ([line.strip() for line in args.query_file.read_text().splitlines() if line.strip()][:args.queries]
                   if args.query_file else [q.text for q in query_set(0, args.queries)])
        torch.set_num_threads(1)
        for query in queries[:20]:  # warm-up
            engine.search(query, k=10, rerank=100)
        depths = [int(d) for d in args.depths.split(",")]
        times: dict[int, list[float]] = {depth: [] for depth in [0, *depths]}
        cpu: dict[int, list[float]] = {depth: [] for depth in [0, *depths]}
        for query in queries:
            for depth in times:
                started, started_cpu = time.perf_counter(), time.thread_time()  # one torch thread: this one
                engine.search(query, k=10, rerank=depth)
                cpu[depth].append(1000 * (time.thread_time() - started_cpu))
                times[depth].append(1000 * (time.perf_counter() - started))
    print(f"{images} images indexed, {with_regions} with regions; region blob {len(blob)} bytes per image")
    print(f"indexing (1 torch thread, 1 decoding thread): without head {plain_rate:.1f} images/s "
          f"({plain_cpu:.1f} per CPU second), with head {fused_rate:.1f} images/s ({fused_cpu:.1f} per CPU second)")
    print(f"index database: without regions {plain_bytes / images:.0f} B/image, with {fused_bytes / images:.0f} B/image")
    for label, table in (("wall clock", times), ("thread CPU time", cpu)):
        base = np.array(table[0])
        print(f"{label}: first stage only p50 {np.percentile(base, 50):.2f} ms, p95 {np.percentile(base, 95):.2f} ms")
        for depth in depths:
            added = np.array(table[depth]) - base
            print(f"{label}: rerank {depth}: total p50 {np.percentile(table[depth], 50):.2f} ms, p95 "
                  f"{np.percentile(table[depth], 95):.2f} ms; added p50 {np.percentile(added, 50):.2f} ms, "
                  f"p95 {np.percentile(added, 95):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
