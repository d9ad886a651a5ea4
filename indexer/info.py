"""What an index holds: counts, model, index type, dimension, size on disk, last update, errors."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from indexer.index import Index, find_index
from retrieval.core.config import model_card

CARD_KEYS = ("name", "trained_on", "recall_on", "recall", "vocabulary", "fusion")  # what info shows of a model's card


def _card(identity: str, path: str | None) -> dict[str, Any] | None:
    card = model_card(identity, path) if identity else None
    return {key: card[key] for key in CARD_KEYS if key in card} if card else None


@dataclass
class IndexInfo:
    index_dir: str
    root: str  # the indexed folder
    images: int
    errors: int  # files that could not be read
    model: str  # identity of the model that built it
    model_path: str | None
    model_card: dict[str, Any] | None  # a shipped model's name, what it was trained on, its measured recall
    dim: int
    index_type: str  # FAISS factory string of the saved index
    index_type_option: str  # what was asked for: auto, flat, hnsw, ivf or a factory string
    vectors_current: bool  # a saved FAISS file matches SQLite (else search rebuilds it in memory)
    size_bytes: int  # every file of the index directory
    created_at: str
    updated_at: str  # last change to the indexed images
    generation: int
    schema_version: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def index_info(index_dir: str | os.PathLike | None = None) -> IndexInfo:
    """Describe an index without changing it: ``index_dir`` (an index or a folder holding one), else the one
    :func:`~indexer.index.find_index` finds ($VLSEARCH_INDEX, the current folder or a parent)."""
    with Index.open(find_index(index_dir)) as index:
        with index.store.snapshot():
            meta, images, errors = index.meta, index.store.count(), index.store.error_count()
        return IndexInfo(
            index_dir=str(index.path.resolve()), root=str(index.root(meta)), images=images, errors=errors,
            model=meta.model, model_path=meta.model_path, model_card=_card(meta.model, meta.model_path),
            dim=meta.dim, index_type=meta.index_type, index_type_option=meta.index_type_option or "auto",
            vectors_current=index.vectors_current(meta), size_bytes=index.size_bytes(),
            created_at=meta.created_at, updated_at=meta.updated_at, generation=meta.generation,
            schema_version=meta.schema_version)
