"""vlsearch's retrieval package: the dual-encoder model, training, evaluation and the search API.

Heavy modules (torch, faiss) are imported lazily so that ``import retrieval`` and
``vlsearch --help`` stay instant.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from retrieval.core._lazy import lazy_attributes

from retrieval._version import __version__

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from retrieval.core.checkpoint import load_model, save_checkpoint
    from retrieval.core.config import ModelConfig, TrainConfig
    from retrieval.core.model import DualEncoder
    from retrieval.app.search import Hit, SearchEngine

_LAZY = {
    "SearchEngine": "retrieval.app.search",
    "Hit": "retrieval.app.search",
    "DualEncoder": "retrieval.core.model",
    "load_model": "retrieval.core.checkpoint",
    "save_checkpoint": "retrieval.core.checkpoint",
    "ModelConfig": "retrieval.core.config",
    "TrainConfig": "retrieval.core.config",
}

__all__ = ["__version__", *_LAZY]

__getattr__ = lazy_attributes('retrieval', _LAZY)
