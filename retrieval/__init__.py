"""vlsearch's retrieval package: the dual-encoder model, training, evaluation and the search API.

Heavy modules (torch, faiss) are imported lazily so that ``import retrieval`` and
``vlsearch --help`` stay instant.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from retrieval._lazy import lazy_attributes

from retrieval._version import __version__

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from retrieval.checkpoint import load_model, save_checkpoint
    from retrieval.config import ModelConfig, TrainConfig
    from retrieval.model import DualEncoder
    from retrieval.search import Hit, SearchEngine

_LAZY = {
    "SearchEngine": "retrieval.search",
    "Hit": "retrieval.search",
    "DualEncoder": "retrieval.model",
    "load_model": "retrieval.checkpoint",
    "save_checkpoint": "retrieval.checkpoint",
    "ModelConfig": "retrieval.config",
    "TrainConfig": "retrieval.config",
}

__all__ = ["__version__", *_LAZY]

__getattr__ = lazy_attributes('retrieval', _LAZY)
