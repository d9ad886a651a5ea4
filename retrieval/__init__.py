"""vlsearch's retrieval package: the dual-encoder model, training, evaluation and the search API.

Heavy modules (torch, faiss) are imported lazily so that ``import retrieval`` and
``vlsearch --help`` stay instant.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
