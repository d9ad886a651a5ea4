"""Query-path benchmark: warm search latency, a cold `vlsearch search`, and FAISS index types at scale.

    python scripts/bench_query.py                          # all parts, FAISS at 10k, 100k and 1M (~10 min)
    python scripts/bench_query.py --sizes 10000            # a quick run (about two minutes)
    python scripts/bench_query.py --model data/scenes.pt --types flat,hnsw --skip-cold

1. Warm: ``SearchEngine.search`` (text encoding + FAISS + SQLite rows) on a generated, indexed folder of
   scenes, p50/p95 over distinct queries; and the text encoding alone (target < 2 ms a sentence).
2. Cold: a new ``vlsearch search`` process against ``python -c "import torch, faiss"`` (target <= 1.5x).
3. FAISS: for each size, vectors of the model's dimension clustered like real embeddings (two levels of
   clusters around real image embeddings, L2-normalised; see :func:`clustered`), built and searched with
   ``indexer.vectors`` (the product's code): build time, warm single-query p50/p95, recall@10 against
   exact search, and bytes per million vectors, for exact Flat, HNSW (efSearch), IVF (nprobe) and the
   compressed IVF-SQ8 (and IVF-PQ with ``--types``). ``*`` marks what ``choose_index_type`` picks at that
   size, as ``indexer.vectors`` tunes it. An IVF build estimated from the previous size to exceed
   ``--max-build-s`` is skipped and says so. ``--burst 1`` (no bursts of near-duplicate photos) is the
   hard case for approximate search: every neighbour sits in a crowd of equally near vectors.

Everything is generated locally (no network). Timings on a busy machine are noisy: the header prints
the load average. Single queries run on ``--threads`` threads (default 1: one query per server thread).
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from benchlib import machine_line, ms, table, timed
from indexer import vectors
from indexer.pipeline import build_index
from retrieval.core.checkpoint import default_model_path, read_checkpoint, save_checkpoint
from retrieval.core.config import ModelConfig
from retrieval.core.scenes.captions import query_set
from retrieval.core.scenes.corpus import generate_folder
from retrieval.app.search import SearchEngine

# the shipped default model's shape (data/scenes.recipe.json, without drop_stages), for the random stand-in
STAND_IN = ModelConfig(backbone="resnet18", image_size=64, pool="grid2", embed_dim=256, word_dim=128, hidden_size=256)
K = 10
TYPES = ("flat", "hnsw", "ivf", "sq8", "pq")
EF_SEARCH = (16, 32, 64, 128, 256)
NPROBE = (1, 4, 16, 64)


# -- the model and a real index ---------------------------------------------------------------------------


def pick_model(asked: Path | None, work: Path) -> tuple[Path, bool]:
    """(checkpoint, trained): the one asked for, else the shipped default, else a random stand-in."""
    if asked is not None:
        return asked, True
    if default_model_path().is_file():
        return default_model_path(), True
    import torch

    from retrieval.core.model import DualEncoder
    from retrieval.core.tokenizer import Vocabulary

    print(f"note: no default model at {default_model_path()}; using an UNTRAINED stand-in of the default's shape "
          f"({STAND_IN.backbone}, {STAND_IN.image_size} px, D={STAND_IN.embed_dim}). Latencies are representative; "
          "the FAISS part clusters around random centres instead of its embeddings.")
    torch.manual_seed(0)
    vocab = Vocabulary.build(caption.text for caption in query_set(0, 500))
    path = work / "stand_in.pt"
    save_checkpoint(DualEncoder(STAND_IN, vocab, pretrained=False), path)
    return path, False


def make_index(work: Path, model: Path, count: int) -> Path:
    """A folder of ``count`` generated scenes, indexed; returns the folder."""
    folder = work / "photos"
    size = int(read_checkpoint(model)["config"]["image_size"])
    started = time.perf_counter()
    generate_folder(folder, count, seed=11, image_size=max(64, size), workers=min(2, os.cpu_count() or 1))
    summary = build_index(folder, model=model, device="cpu")
    print(f"indexed {summary.total} generated images ({summary.index_type}) in {time.perf_counter() - started:.1f} s")
    return folder


# -- 1. warm queries --------------------------------------------------------------------------------------


def bench_warm(folder: Path, queries: list[str]) -> None:
    with SearchEngine.open(folder) as engine:
        vector_of = {q: engine.encode_text([q])[0] for q in queries}
        cases = [
            ("encode_text (GRU, one sentence)", lambda q: engine.encode_text([q])),
            ("search_vector (FAISS + SQLite rows)", lambda q: engine.search_vector(vector_of[q], K)),
            ("search (encode + FAISS + SQLite)", lambda q: engine.search(q, K)),
            ("search --glob '*0.png' (1 in 10)", lambda q: engine.search(q, K, glob="*0.png")),
            ("search --where 'id % 4 = 0'", lambda q: engine.search(q, K, where="id % 4 = 0")),
        ]
        rows = []
        for name, fn in cases:
            seconds = timed(fn, queries)
            rows.append((name, ms(seconds, 50), ms(seconds, 95)))
        # FAISS keeps its own OpenMP pool (default: all cores) that nothing in the query path sizes
        default_threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        seconds = timed(lambda q: engine.search(q, K), queries)
        faiss.omp_set_num_threads(default_threads)
        rows.append((f"search, FAISS on 1 OpenMP thread (not {default_threads})", ms(seconds, 50), ms(seconds, 95)))
        target = "PASS" if rows[0][1] < 2 else "FAIL"
        table(f"1. warm queries, {len(engine)} images, k={K}, {len(queries)} distinct queries, "
              f"{engine.encode_text(['x']).shape[1]}-d, torch threads {os.environ.get('VLSEARCH_THREADS')}",
              ("", "p50 ms", "p95 ms"), rows)
        print(f"  text encoding p50 target < 2 ms: {target}")


# -- 2. cold process --------------------------------------------------------------------------------------


def bench_cold(folder: Path, runs: int) -> None:
    script = Path(sys.executable).with_name("vlsearch")
    entry = [str(script)] if script.is_file() else [sys.executable, "-c", "from retrieval.app.cli import main; main()"]
    commands = {
        'python -c "import torch, faiss"': [sys.executable, "-c", "import torch, faiss"],
        "vlsearch search QUERY --index DIR": [*entry, "search", "a red circle", "--index", str(folder)],
        "vlsearch --help": [*entry, "--help"],
    }
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):  # interleaved, so that a busy moment hits every command alike
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            seconds[name].append(time.perf_counter() - start)
    base = statistics.median(seconds['python -c "import torch, faiss"'])
    rows = [(name, statistics.median(s), min(s), statistics.median(s) / base) for name, s in seconds.items()]
    table(f"2. cold processes, median of {runs}", ("", "median s", "min s", "x imports"), rows)
    print(f"  vlsearch search target <= 1.5x the imports: {'PASS' if rows[1][3] <= 1.5 else 'FAIL'}")


# -- 3. FAISS at scale -------------------------------------------------------------------------------------


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, centres: np.ndarray, query_count: int, seed: int = 0, per_group: int = 20,
              spread: float = 0.6, jitter: float = 0.3, query_noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(vectors [n, D], queries [query_count, D]): unit float32 vectors clustered like photo embeddings.

    Two levels: groups (a burst of similar photos, ~``per_group`` each) scattered around ``centres``
    [C, D] (real image embeddings) with noise of norm ``spread`` (cosine to the centre ~0.86), and
    members around their group with noise of norm ``jitter`` (cosine ~0.96). Queries sit near a group
    but off it (noise ``query_noise``, cosine ~0.7), as a sentence's embedding sits off its images.
    """
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]

    def around(points: np.ndarray, norm: float) -> np.ndarray:
        return normalise(points + rng.standard_normal(points.shape, dtype=np.float32) * (norm / math.sqrt(dim)))

    groups = around(centres[rng.integers(len(centres), size=max(1, n // per_group))], spread)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in chunks: 1M x D noise at once would be GBs
        stop = min(n, start + 100_000)
        out[start:stop] = around(groups[rng.integers(len(groups), size=stop - start)], jitter)
    return out, around(groups[rng.integers(len(groups), size=query_count)], query_noise)


def variants(kind: str, n: int, dim: int) -> tuple[str, str, tuple[int, ...]]:
    """(factory, search parameter, values to try besides the tuned one) of one index kind at ``n`` vectors."""
    nlist = vectors.ivf_lists(n)
    pq = max(m for m in range(1, dim // 4 + 1) if dim % m == 0)  # 8-bit codes of ~4 dims each: ~D/4 bytes
    return {
        "flat": ("Flat", "", ()),
        "hnsw": (f"HNSW{vectors.HNSW_M},Flat", "efSearch", EF_SEARCH),
        "ivf": (f"IVF{nlist},Flat", "nprobe", NPROBE),
        "sq8": (f"IVF{nlist},SQ8", "nprobe", NPROBE),
        "pq": (f"IVF{nlist},PQ{pq}", "nprobe", NPROBE),
    }[kind]


def param(index: faiss.Index, name: str, value: int | None = None) -> int | None:
    """The search parameter ``name`` of ``index`` (as ``indexer.vectors`` tuned it); set it first if ``value``."""
    if name == "efSearch":
        owner = faiss.downcast_index(index.index).hnsw
    elif name == "nprobe":
        owner = faiss.extract_index_ivf(index)
    else:
        return None
    if value is not None:
        setattr(owner, name, value)
    return int(getattr(owner, name))


def training_work(factory: str, n: int) -> float:
    """What an IVF build's k-means costs, up to a constant: lists x training points (1 for other types)."""
    if not factory.startswith("IVF"):
        return 1.0
    nlist = vectors.ivf_lists(n)
    return float(nlist * min(n, nlist * vectors.TRAIN_POINTS_PER_LIST))


def bench_faiss(n: int, centres: np.ndarray, kinds: Sequence[str], query_count: int, threads: int,
                build_threads: int, max_build_s: float, measured: dict[str, tuple[float, float]],
                burst: int = 20) -> None:
    """One size; ``measured`` (kind -> (training work, build seconds) at the last size) skips IVF builds
    that would take longer than ``max_build_s`` (k-means grows with lists x points, ~N^1.5)."""
    dim = centres.shape[1]
    started = time.perf_counter()
    base, queries = clustered(n, centres, query_count, seed=n, per_group=burst)
    ids = np.arange(1, n + 1, dtype=np.int64)  # SQLite ids start at 1
    print(f"\n[{n:,} vectors, D={dim}, bursts of {burst}: generated in {time.perf_counter() - started:.1f} s]",
          flush=True)
    chosen = vectors.choose_index_type(n, dim)
    truth = np.empty(0)
    rows = []
    for kind in kinds:  # "flat" comes first: exact search is the ground truth
        factory, name, values = variants(kind, n, dim)
        if kind in measured and factory.startswith("IVF"):
            work, seconds = measured[kind]
            estimate = seconds * training_work(factory, n) / work
            if estimate > max_build_s:
                rows.append((factory, f"skipped: ~{estimate:.0f} s to build > --max-build-s {max_build_s:.0f}",
                             "", "", "", "", ""))
                print(f"  skipped {factory}: building it would take ~{estimate:.0f} s", flush=True)
                continue
        faiss.omp_set_num_threads(build_threads)
        started = time.perf_counter()
        index = vectors.build(factory, dim, ids, base)
        built = time.perf_counter() - started
        measured[kind] = (training_work(factory, n), built)
        mib_per_million = len(faiss.serialize_index(index)) / n * 1e6 / 2**20
        print(f"  built {factory} in {built:.1f} s", flush=True)
        if factory == "Flat":
            truth = vectors.search(index, queries, K)[1]
        faiss.omp_set_num_threads(threads)
        tuned = param(index, name)
        most = faiss.extract_index_ivf(index).nlist if name == "nprobe" else math.inf
        settings = sorted({v for v in values if v <= most} | {tuned}) if name else [None]
        for position, value in enumerate(settings):
            param(index, name, value)
            found = np.empty((len(queries), K), dtype=np.int64)

            def one(i: int) -> None:
                found[i] = vectors.search(index, queries[i:i + 1], K)[1][0]

            seconds = timed(one, range(len(queries)))
            recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))
            mark = "*" if factory == chosen and value == tuned else ""
            rows.append((factory + mark, f"{name}={value}" if name else "exact", ms(seconds, 50), ms(seconds, 95),
                         recall, "" if position else built, "" if position else f"{mib_per_million:.0f}"))
        del index
    table(f"3. FAISS, {n:,} clustered vectors, D={dim}, {len(queries)} single queries on {threads} thread(s), "
          f"builds on {build_threads}; product's choice: {chosen}",
          ("index", "setting", "p50 ms", "p95 ms", f"recall@{K}", "build s", "MiB/M vec"), rows)


# -- main -------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="checkpoint (default: the shipped model, else a random stand-in)")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="FAISS sizes, comma-separated ('' skips)")
    parser.add_argument("--types", default="flat,hnsw,ivf,sq8",
                        help=f"FAISS kinds among {','.join(TYPES)} (pq trains slowly: minutes at 10k)")
    parser.add_argument("--max-build-s", type=float, default=180,
                        help="skip an IVF build estimated (from the previous size) to take longer than this")
    parser.add_argument("--burst", type=int, default=20,
                        help="vectors per burst of near-duplicates; 1 is the hard case for ANN (no bursts)")
    parser.add_argument("--images", type=int, default=300, help="generated images in the warm-query index")
    parser.add_argument("--queries", type=int, default=200, help="distinct queries per measurement")
    parser.add_argument("--cold-runs", type=int, default=5, help="runs of each cold command")
    parser.add_argument("--threads", type=int, default=1, help="torch and FAISS threads for single queries")
    parser.add_argument("--build-threads", type=int, default=os.cpu_count() or 1, help="FAISS threads for builds")
    parser.add_argument("--skip-warm", action="store_true")
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--work", type=Path, help="keep the generated folder and index here (default: a temp dir)")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.types.split(",") if k.strip()]
    if unknown := set(kinds) - set(TYPES):
        parser.error(f"unknown --types {sorted(unknown)}; choose among {','.join(TYPES)}")
    kinds = ["flat", *[k for k in kinds if k != "flat"]]  # exact search first: it is the ground truth
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())  # small first: they time the big ones

    os.environ["VLSEARCH_THREADS"] = str(args.threads)  # SearchEngine.open sets torch's threads from it
    print(f"bench_query: {machine_line()}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="vlsearch-bench-"))
    try:
        model, trained = pick_model(args.model, work)
        print(f"model: {model} ({read_checkpoint(model)['identity']})")
        folder = make_index(work, model, args.images)
        queries = [caption.text for caption in query_set(3, args.queries)]
        if not args.skip_warm:
            bench_warm(folder, queries)
        if not args.skip_cold:
            bench_cold(folder, args.cold_runs)
        if sizes:
            with SearchEngine.open(folder) as engine:
                real = engine.store.vectors()[1]
            centres = real if trained else normalise(np.random.default_rng(1).standard_normal(
                (len(real), real.shape[1]), dtype=np.float32))
            measured: dict[str, tuple[float, float]] = {}
            for n in sizes:
                bench_faiss(n, centres, kinds, args.queries, args.threads, args.build_threads, args.max_build_s,
                            measured, args.burst)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
