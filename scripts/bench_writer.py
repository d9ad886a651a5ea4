"""The single writer's ceiling: how many images a second the pipeline's commit can store, without the CNN.

    python scripts/bench_writer.py                   # 100,000 rows, D = 256, batches of 32 and 1024
    python scripts/bench_writer.py --rows 20000 --dim 512

For each batch size, the pipeline's own calls (``indexer.store`` and ``indexer.vectors``) on generated
rows: one SQLite transaction a batch (``put_vectors`` + ``put_images``, WAL, synchronous as the product
sets it), then ``vectors.add`` of the batch into a FAISS index -- Flat with ids (what small indexes use) and
a trained IVF-PQ (what 100M vectors need, docs/scale.md). Reports rows/s for SQLite, each FAISS kind,
and the two one after the other (the commit path as the driver runs it).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from benchlib import machine_line, table
from indexer import vectors
from indexer.store import ImageRow, Store


def sqlite_rate(work: Path, rows: int, dim: int, batch: int) -> float:
    """Rows/s of one transaction a batch: vectors by hash, then image rows."""
    rng = np.random.default_rng(0)
    with Store.open(work / f"bench-{batch}.db") as store:
        store.set_meta(dim=dim)
        start = time.perf_counter()
        for first in range(0, rows, batch):
            n = min(batch, rows - first)
            fresh = rng.standard_normal((n, dim), dtype=np.float32)
            hashes = [f"{first + i:064x}" for i in range(n)]
            with store.write():
                store.put_vectors(dict(zip(hashes, fresh)))
                store.put_images([ImageRow(f"{(first + i) // 1000:04d}/img{first + i:07d}.jpg", 200_000, first + i,
                                           digest, 1024, 768, "JPEG") for i, digest in enumerate(hashes)])
        return rows / (time.perf_counter() - start)


def trained(factory: str, data: np.ndarray, sample: int) -> faiss.Index:
    """An empty index of ``factory``, trained (IVF kinds) on the first ``sample`` vectors."""
    index = vectors.build(factory, data.shape[1], np.arange(min(len(data), sample)), data[:sample])
    index.reset()
    return index


def faiss_rate(empty: faiss.Index, data: np.ndarray, batch: int) -> float:
    """Rows/s of ``vectors.add`` a batch at a time into a copy of ``empty``."""
    index, rows = faiss.clone_index(empty), len(data)
    start = time.perf_counter()
    for first in range(0, rows, batch):
        vectors.add(index, np.arange(first, min(first + batch, rows)), data[first:first + batch])
    return rows / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batches", default="32,1024", help="rows per commit, comma-separated")
    parser.add_argument("--pq", default="IVF1024,PQ64", help="the compressed FAISS kind to time")
    parser.add_argument("--train", type=int, default=50_000, help="vectors the IVF-PQ index is trained on")
    args = parser.parse_args()
    print(f"bench_writer: {machine_line()}")
    data = np.random.default_rng(1).standard_normal((args.rows, args.dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    flat_index, pq_index = trained("Flat", data, 0), trained(args.pq, data, args.train)  # on every core
    faiss.omp_set_num_threads(1)  # the commits run on the driver's one thread
    rows = []
    with tempfile.TemporaryDirectory(prefix="vlsearch-bench-writer-") as tmp:
        for batch in (int(b) for b in args.batches.split(",")):
            s = sqlite_rate(Path(tmp), args.rows, args.dim, batch)
            flat = faiss_rate(flat_index, data, batch)
            pq = faiss_rate(pq_index, data, batch)
            rows.append((batch, s, flat, pq, 1 / (1 / s + 1 / pq)))
            print(f"  batch {batch}: SQLite {s:.0f}, Flat {flat:.0f}, {args.pq} {pq:.0f} rows/s", flush=True)
    table(f"rows/s, {args.rows} rows, D = {args.dim}, one thread", ("rows a commit", "SQLite", "FAISS Flat",
          f"FAISS {args.pq}", "SQLite + PQ"), rows)


if __name__ == "__main__":
    main()
