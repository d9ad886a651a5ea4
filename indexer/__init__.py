"""vlsearch's indexer: turn a folder of images into a searchable index (SQLite + FAISS).

One module per stage: scan (walk), decode (pixels; it lives in retrieval.decode, shared with training), embed
(CNN), store (all SQL), vectors (all FAISS), layout (the index directory), lock, pipeline (build_index), info,
cli. Heavy modules (torch, faiss) are imported lazily, so ``import indexer`` stays instant.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from retrieval._lazy import lazy_attributes

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
