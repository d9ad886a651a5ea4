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

if TYPE_CHECKING:  # torch is imported at the first batch: an index run with nothing to embed never loads it
    import torch

    from retrieval.model import DualEncoder


@dataclass(frozen=True)
class ModelHeader:
    """What indexing needs to know of a checkpoint before embedding anything."""

    identity: str
    dim: int
    image_size: int

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ModelHeader":
        """From the checkpoint file (its tensors are memory-mapped, not read)."""
        from retrieval.checkpoint import checkpoint_summary

        summary = checkpoint_summary(path)
        return cls(summary["identity"], int(summary["config"]["embed_dim"]), int(summary["config"]["image_size"]))


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
        from retrieval.device import resolve_device

        option = self._device_option
        return option if not isinstance(option, str) else resolve_device(option)

    @cached_property
    def dtype(self) -> torch.dtype:
        from retrieval.device import resolve_precision

        return resolve_precision(self._precision, self.device)

    def _prepare(self, model: DualEncoder) -> None:
        import torch

        from retrieval.device import set_threads

        if self.threads:
            set_threads(self.threads)
        self._model = model.to(self.device).eval()
        self._model.image.to(memory_format=torch.channels_last)

    @property
    def model(self) -> DualEncoder:
        """The model on its device, in eval mode and channels_last (loaded from the checkpoint at first use)."""
        if self._model is None:
            from retrieval.checkpoint import load_model
            from retrieval.errors import CheckpointError

            model = load_model(self.path, device=self.device)
            if model.identity != self.identity:
                raise CheckpointError(f"{self.path}: the model file changed while indexing; run again")
            self._prepare(model)
        return self._model

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        """[B, 3, S, S] pixels, normalised or uint8 (normalised here) -> [B, D] float32, unit length."""
        import torch
        import torch.nn.functional as F

        from retrieval.device import autocast
        from retrieval.transforms import normalize_uint8

        model = self.model
        if self.device.type == "cuda":
            pixels = pixels.pin_memory()
        with torch.inference_mode(), autocast(self.device, self.dtype):
            batch = pixels.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            if batch.dtype == torch.uint8:  # a quarter of the bytes to move; the arithmetic keeps channels_last
                batch = normalize_uint8(batch, model.config.input_mean, model.config.input_std)
            vectors = model.encode_image(batch)  # [B, D]
        vectors = F.normalize(vectors.float(), dim=-1)  # bf16 outputs are re-normalised in fp32
        return vectors.cpu().numpy()
