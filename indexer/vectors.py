"""Every FAISS call: choose an index type, build, update, search and save an index whose ids are SQLite ids.

Index types are FAISS factory strings over inner product (= cosine on unit vectors): "Flat" (exact),
"HNSW32,Flat", "IVF1024,Flat", "IVF4096,SQ8", ... IVF indexes keep ids natively; every other type is
wrapped in ``IndexIDMap2``. Which type fits a collection is a pure function, :func:`choose_index_type`.
"""
from __future__ import annotations

import math
import os

import faiss
import numpy as np

from retrieval.core.atomic import atomic_write
from retrieval.core.errors import ConfigError, IndexStoreError

# Measured with scripts/bench_query.py, one query on one core (BENCHMARKS.md, "Query latency and index types").
FLAT_LIMIT = 25_000  # exact search up to here at D=256 (p50 2.0 ms; 1.6 ms at 20k, 2.7 at 30k); scaled by 256 / D
FLAT_DIM = 256  # the dimension FLAT_LIMIT was measured at: exact search time grows with count x dim
DEFAULT_MEMORY_BUDGET = 4 << 30  # bytes the index may take in RAM
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 256  # 1M vectors, D=256, no near-duplicates: recall@10 0.97 at 1.2 ms (128: 0.93)
IVF_MIN_NPROBE = 16  # recall@10 >= 0.97 at 1,264 and 4,000 lists on the same data (4: 0.90 and 0.51)
TRAIN_POINTS_PER_LIST = 256  # IVF training sample size per list (FAISS uses at most this many)
MIN_POINTS_PER_LIST = 39  # FAISS warns below this many training points per list
ALIASES = ("auto", "flat", "hnsw", "ivf")


def ivf_lists(count: int) -> int:
    """Number of IVF lists for ``count`` vectors: ~4 sqrt(N), with enough points to train each."""
    return max(1, min(int(4 * math.sqrt(count)), count // MIN_POINTS_PER_LIST))


def ivf_nprobe(nlist: int) -> int:
    """Lists an IVF search visits: at least 16, and 1/128 of them (31 of 4,000) for recall@10 >= 0.95."""
    return min(nlist, max(IVF_MIN_NPROBE, nlist // 128))


def choose_index_type(count: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> str:
    """The factory string for ``count`` vectors of ``dim`` floats within ``memory_budget`` bytes.

    Exact search while one query takes about 2 ms; then HNSW (full vectors plus a graph of 2*M links
    each); then IVF over full vectors; then IVF over 8-bit scalar-quantised vectors when full ones do not fit.
    """
    if count * dim <= FLAT_LIMIT * FLAT_DIM:
        return "Flat"
    full = count * dim * 4
    if full + count * HNSW_M * 2 * 8 <= memory_budget:
        return f"HNSW{HNSW_M},Flat"
    if full <= memory_budget:
        return f"IVF{ivf_lists(count)},Flat"
    return f"IVF{ivf_lists(count)},SQ8"


def resolve_index_type(option: str, count: int, dim: int) -> str:
    """``auto`` | ``flat`` | ``hnsw`` | ``ivf`` | a FAISS factory string -> the factory string to build."""
    name = option.strip()
    alias = name.lower()
    if alias == "auto":
        return choose_index_type(count, dim)
    if alias == "flat":
        return "Flat"
    if alias == "hnsw":
        return f"HNSW{HNSW_M},Flat"
    if alias == "ivf":
        return f"IVF{ivf_lists(count)},Flat"
    try:
        faiss.index_factory(dim, name, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(f"--index-type {option!r} is neither auto, flat, hnsw, ivf nor a FAISS factory string "
                          f"({_faiss_message(exc)})") from exc
    return name


def _faiss_message(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].split(":", 1)[-1].strip() if lines else exc.__class__.__name__


def _ids(ids: np.ndarray | list[int]) -> np.ndarray:
    return np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)


def _floats(vectors: np.ndarray, dim: int) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)


def build(factory: str, dim: int, ids: np.ndarray | None = None, vectors: np.ndarray | None = None) -> faiss.Index:
    """A new index of type ``factory`` holding ``vectors`` [N, D] under ``ids`` [N] (trained on a sample if needed)."""
    if factory == "Flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    else:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        index = inner if faiss.try_extract_index_ivf(inner) is not None else faiss.IndexIDMap2(inner)
    vectors = _floats(vectors if vectors is not None else np.empty((0, dim)), dim)
    if not index.is_trained:
        ivf = faiss.extract_index_ivf(index)
        needed = ivf.nlist
        if len(vectors) < needed:
            raise ConfigError(f"index type {factory} needs at least {needed} vectors to train, and there are "
                              f"{len(vectors)}; use --index-type auto or flat")
        sample = vectors
        if len(vectors) > needed * TRAIN_POINTS_PER_LIST:
            chosen = np.random.default_rng(0).choice(len(vectors), needed * TRAIN_POINTS_PER_LIST, replace=False)
            sample = vectors[np.sort(chosen)]
        index.train(sample)
    _tune(index)
    if len(vectors):
        add(index, ids if ids is not None else np.arange(len(vectors)), vectors)
    return index


def _tune(index: faiss.Index) -> None:
    """Search-time parameters for good recall (stored in the saved file)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if hasattr(inner, "hnsw"):
        inner.hnsw.efConstruction = max(inner.hnsw.efConstruction, HNSW_EF_CONSTRUCTION)
        inner.hnsw.efSearch = max(inner.hnsw.efSearch, HNSW_EF_SEARCH)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = max(ivf.nprobe, ivf_nprobe(ivf.nlist))


def add(index: faiss.Index, ids: np.ndarray | list[int], vectors: np.ndarray) -> None:
    """Add ``vectors`` [N, D] under ``ids`` [N]."""
    ids = _ids(ids)
    if len(ids):
        index.add_with_ids(_floats(vectors, index.d), ids)


def remove(index: faiss.Index, ids: np.ndarray | list[int]) -> bool:
    """Remove ``ids``; False (and nothing removed) when this index type cannot remove: rebuild it instead."""
    ids = _ids(ids)
    if not len(ids):
        return True
    try:
        index.remove_ids(faiss.IDSelectorBatch(ids))
    except RuntimeError:  # e.g. HNSW: "remove_ids not implemented for this type of index"
        return False
    return True


def index_ids(index: faiss.Index) -> np.ndarray:
    """Every id in the index [N] int64 (in storage order)."""
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
             for i in range(ivf.nlist) if lists.list_size(i)]
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)


def search(index: faiss.Index, queries: np.ndarray, k: int, ids: np.ndarray | list[int] | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` by inner product: queries [Q, D] -> (scores [Q, K], ids [Q, K]), best first, K <= k.

    ``ids`` restricts the search to those ids (exactly, whatever the index type). Slots without a result
    hold id -1 (an approximate index can return fewer than K).
    """
    queries = _floats(queries, index.d)
    # FAISS parallelises over queries: for one query, a thread pool only adds wake-up latency (about 8 ms a
    # query on a busy 2-core machine). The setting is per calling thread in OpenMP, so threads don't clash.
    faiss.omp_set_num_threads(1 if len(queries) == 1 else (os.cpu_count() or 1))
    if ids is None:
        k = min(k, index.ntotal)
        if k <= 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        return index.search(queries, k)
    chosen = np.unique(_ids(ids))
    k = min(k, len(chosen), index.ntotal)
    if k <= 0:
        return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
    selector = faiss.IDSelectorBatch(chosen)  # kept alive for the whole search
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:  # visiting every list with a selector is exact and scores only the chosen ids
        return index.search(queries, k, params=faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nlist))
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexFlat):
        return index.search(queries, k, params=faiss.SearchParameters(sel=selector))
    # a graph walk loses recall under a selective filter: score the chosen vectors exactly instead
    present = chosen[np.isin(chosen, index_ids(index))]
    if not len(present):
        return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
    k = min(k, len(present))
    scores, rows = faiss.knn(queries, index.reconstruct_batch(present), k, metric=faiss.METRIC_INNER_PRODUCT)
    return scores, present[rows]


def save(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write atomically and durably (:func:`~retrieval.core.atomic.atomic_write`)."""
    try:
        with atomic_write(path) as tmp:
            faiss.write_index(index, str(tmp))
    except (OSError, RuntimeError) as exc:  # a full disk, a read-only folder
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _faiss_message(exc)
        raise IndexStoreError(f"{path}: cannot save the FAISS index ({reason})") from exc


def load(path: str | os.PathLike) -> faiss.Index:
    """Read an index written by :func:`save` (search parameters raised to this version's, if lower)."""
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexStoreError(f"{path}: unreadable FAISS index ({_faiss_message(exc)})") from exc
    _tune(index)
    return index
