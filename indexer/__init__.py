"""vlsearch's index layer: a folder of images -> an index on disk (SQLite + FAISS), and that index read back.

It sits between the model core (``retrieval.core``, which it imports) and the application (``retrieval.app``,
which imports it). One module per stage: scan (walk), embed (CNN; decoding is ``retrieval.core.decode``,
shared with training), store (all SQL), vectors (all FAISS), index (one index on disk: discovery, meta,
freshness of the vectors), lock, executor (local threads or Ray) and pipeline (build_index), info.
Heavy modules (torch, faiss) are imported lazily, so ``import indexer`` stays instant.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from retrieval.core._lazy import lazy_attributes

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from indexer.info import IndexInfo, index_info
    from indexer.pipeline import IndexSummary, Progress, build_index

_LAZY = {
    "build_index": "indexer.pipeline",
    "IndexSummary": "indexer.pipeline",
    "Progress": "indexer.pipeline",
    "index_info": "indexer.info",
    "IndexInfo": "indexer.info",
}

__all__ = list(_LAZY)

__getattr__ = lazy_attributes('indexer', _LAZY)
