"""One checkpoint file: format tag, version, config, vocabulary, weights and metrics.

Everything in it is a tensor or plain data, so it loads with ``torch.load(weights_only=True)``:
a file that needs pickled code to load is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from retrieval.core.atomic import atomic_write
from retrieval.core.config import ModelConfig, default_model_path, resolve_model  # noqa: F401 (default_model_path: API)
from retrieval.core.errors import CheckpointError
from retrieval.core.model import DualEncoder
from retrieval.core.tokenizer import Vocabulary

FORMAT = "vlsearch-checkpoint"
FUSION_PREFIX = "fusion"  # state-dict keys and config fields of the fusion head
BANK_PREFIX = "fusion.bank"  # its query bank's (retrieval.core.fusion: bank, bank_sharpness, bank_weight)
VERSION = 1


def model_identity(config: dict[str, Any], vocab: list[str], state_dict: dict[str, torch.Tensor]) -> str:
    """A content hash of config, vocabulary and weights: equal models have equal identities.

    The fusion head is left out (see :func:`fusion_identity`): the vectors an index stores depend only on
    the dual encoder, so adding or retraining a head keeps every index built with the model valid."""
    config = {k: v for k, v in config.items() if not k.startswith(FUSION_PREFIX)}
    return _digest(config, vocab, {k: v for k, v in state_dict.items() if not k.startswith(FUSION_PREFIX)})


def fusion_identity(config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> str:
    """A content hash of the fusion head ("" for a model without one): the region vectors depend on it.

    Its query bank is left out: it scores stored vectors at query time, so adding one keeps the regions of
    every index built with the head valid."""
    state = {k: v for k, v in state_dict.items() if k.startswith(FUSION_PREFIX) and not k.startswith(BANK_PREFIX)}
    if not state:
        return ""
    return _digest({k: v for k, v in config.items() if k.startswith(FUSION_PREFIX) and k != "fusion_bank"}, [], state)


def _digest(config: dict[str, Any], vocab: list[str], state_dict: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(json.dumps([config, vocab], sort_keys=True).encode())
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def save_checkpoint(model: DualEncoder, path: str | os.PathLike, metrics: dict[str, Any] | None = None,
                    train_config: dict[str, Any] | None = None, half: bool = False) -> str:
    """Write ``model`` atomically to ``path``; returns its identity.

    ``half`` stores float weights as float16 (half the file; loading casts them back to float32).
    """
    config = asdict(model.config)
    vocab = model.vocab.to_list()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    identity = model_identity(config, vocab, state)
    payload = {"format": FORMAT, "version": VERSION, "identity": identity, "config": config, "vocab": vocab,
               "state_dict": state, "metrics": metrics or {}, "train_config": train_config or {},
               "fusion_identity": fusion_identity(config, state)}
    write_payload(payload, path)
    model.identity, model.fusion_identity = identity, payload["fusion_identity"]
    return identity


def write_payload(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a checkpoint payload atomically and durably (:func:`~retrieval.core.atomic.atomic_write`)."""
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate the raw payload (weights only: no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):  # every checkpoint torch.save writes is a zip archive
        raise CheckpointError(f"{path} is not a vlsearch model file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # UnpicklingError for pickled objects, RuntimeError for corrupt zips
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise CheckpointError(f"{path}: not a safe vlsearch checkpoint ({first_line})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vlsearch checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')} is not supported "
                              f"(this vlsearch reads version {VERSION})")
    return payload


def load_model(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
               with_image: bool = True) -> DualEncoder:
    """Rebuild a model from a checkpoint alone, in eval mode. ``path``: a file, a shipped model's name
    (photos, scenes), or None for the default model.

    ``with_image=False`` skips building the CNN: a text query needs only the GRU branch.
    """
    path = resolve_model(path)
    payload = read_checkpoint(path)
    config = ModelConfig.from_dict(payload["config"])
    model = DualEncoder(config, Vocabulary(list(payload["vocab"])), with_image=with_image, pretrained=False)
    state = payload["state_dict"]
    if not with_image:  # neither the CNN nor the head's region side: they only serve indexing
        state = {k: v for k, v in state.items() if not k.startswith(("image.", "fusion.regions."))}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the stored config ({str(exc).splitlines()[0]})") from exc
    model.identity = str(payload["identity"])
    model.fusion_identity = str(payload.get("fusion_identity", ""))
    return model.to(device).eval()


def checkpoint_summary(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Config, identity, vocabulary size and stored metrics, without building the model (``path`` as in
    :func:`load_model`)."""
    payload = read_checkpoint(resolve_model(path))
    return {"identity": payload["identity"], "fusion_identity": payload.get("fusion_identity", ""),
            "config": payload["config"], "vocab_size": len(payload["vocab"]),
            "metrics": payload.get("metrics", {}), "train_config": payload.get("train_config", {})}
