"""Batched image embedding with the model's CNN branch: pixels [B, 3, S, S] -> unit float32 vectors [B, D].

CUDA when present; channels_last memory (1.2-1.4x faster on CPU); bf16 autocast only where
``resolve_precision`` says it pays (CUDA, CPUs with native bf16 -- elsewhere it is 6-25x slower).
Given a checkpoint path, only its identity and shape are read up front (or nothing, given a
:class:`ModelHeader`); torch is imported and the CNN built at the first batch, so a re-index with
nothing new to embed never pays for either.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval.core.device import autocast, resolve_device, resolve_precision, set_threads, unit_vectors
from retrieval.core.errors import CheckpointError

if TYPE_CHECKING:  # torch is imported at the first batch: an index run with nothing to embed never loads it
    import torch

    from retrieval.core.model import DualEncoder


@dataclass(frozen=True)
class ModelHeader:
    """What indexing needs to know of a checkpoint before embedding anything."""
    identity: str
    dim: int
    image_size: int
    fusion: str = ""  # identity of the model's fusion head: its region vectors are stored too ("" none)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ModelHeader":
        """From the checkpoint file (its tensors are memory-mapped, not read)."""
        from retrieval.core.checkpoint import checkpoint_summary

        summary = checkpoint_summary(path)
        return cls(summary["identity"], int(summary["config"]["embed_dim"]), int(summary["config"]["image_size"]),
                   summary.get("fusion_identity", ""))


class ImageEmbedder:
    """Callable over batches; holds the model on its device in eval mode."""
    def __init__(self, model: DualEncoder | str | os.PathLike, device: str | torch.device = "auto",
                 precision: str = "auto", header: ModelHeader | None = None, threads: int | None = None):
        """``model``: a loaded model, or a checkpoint path (its weights are loaded at the first batch, and
        ``header``, when given, saves reading even its header now). ``threads``: torch's intra-op threads,
        set when the model is ready (default: leave torch's setting alone)."""
        self._device_option, self._precision, self.threads = device, precision, threads
        self._model: DualEncoder | None = None
        if isinstance(model, (str, os.PathLike)):
            self.path = Path(model)
            header = header or ModelHeader.read(self.path)
            self.identity, self.image_size, self.dim = header.identity, header.image_size, header.dim
        else:
            if model.image is None:
                raise ValueError("the model was loaded without its image branch (with_image=False)")
            self.path, self.identity = None, model.identity
            self.image_size, self.dim = model.config.image_size, model.config.embed_dim
            self._prepare(model)

    @cached_property
    def device(self) -> torch.device:
        option = self._device_option
        return option if not isinstance(option, str) else resolve_device(option)

    @cached_property
    def dtype(self) -> torch.dtype:
        return resolve_precision(self._precision, self.device)

    def _prepare(self, model: DualEncoder) -> None:
        import torch


        if self.threads:
            set_threads(self.threads)
        self._model = model.to(self.device).eval()
        self._model.image.to(memory_format=torch.channels_last)

    @property
    def model(self) -> DualEncoder:
        """The model on its device, in eval mode and channels_last (loaded from the checkpoint at first use)."""
        if self._model is None:
            from retrieval.core.checkpoint import load_model

            model = load_model(self.path, device=self.device)
            if model.identity != self.identity:
                raise CheckpointError(f"{self.path}: the model file changed while indexing; run again")
            self._prepare(model)
        return self._model

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        """[B, 3, S, S] pixels, normalised or uint8 (normalised here) -> [B, D] float32, unit length."""
        return self.with_regions(pixels)[0]

    def with_regions(self, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """As :meth:`__call__`, plus the fusion head's region vectors as int8 codes [B, R, d] (None without
        a head), from the same trunk pass."""
        import torch

        from retrieval.core.transforms import prepare_batch

        model = self.model
        if self.device.type == "cuda":
            pixels = pixels.pin_memory()
        with torch.inference_mode():
            batch = prepare_batch(pixels, self.device, model.config.input_mean, model.config.input_std)
            with autocast(self.device, self.dtype):
                vectors, regions = model.encode_image_regions(batch)  # [B, D], [B, R, d] or None
            if regions is not None:
                from retrieval.core.fusion import quantize_regions

                regions = quantize_regions(unit_vectors(regions)).cpu().numpy()
            return unit_vectors(vectors).cpu().numpy(), regions
