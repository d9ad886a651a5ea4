"""What an index holds: counts, model, index type, dimension, size on disk, last update, errors."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from indexer import layout
from indexer.store import Store
from retrieval.config import model_card

CARD_KEYS = ("name", "trained_on", "recall_on", "recall", "vocabulary")  # what info shows of a model's card


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


def index_info(index_dir: str | os.PathLike) -> IndexInfo:
    """Describe the index at ``index_dir`` (or at ``index_dir/.vlsearch``) without changing it."""
    index_dir = layout.find_index_dir(index_dir)
    with Store.open(layout.db_path(index_dir), readonly=True) as store, store.snapshot():
        meta, images, errors = store.meta(), store.count(), store.error_count()
    size = sum(path.stat().st_size for path in Path(index_dir).iterdir() if path.is_file())
    return IndexInfo(
        index_dir=str(Path(index_dir).resolve()), root=str(layout.resolve_root(index_dir, meta.get("root"))),
        images=images, errors=errors, model=meta.get("model") or "", model_path=meta.get("model_path"),
        model_card=_card(meta.get("model") or "", meta.get("model_path")),
        dim=int(meta.get("dim") or 0), index_type=meta.get("index_type") or "",
        index_type_option=meta.get("index_type_option") or "auto",
        vectors_current=layout.faiss_path(index_dir, int(meta.get("generation") or 0)).is_file(),
        size_bytes=size, created_at=meta.get("created_at") or "", updated_at=meta.get("updated_at") or "",
        generation=int(meta.get("generation") or 0), schema_version=int(meta.get("schema_version") or 0))
