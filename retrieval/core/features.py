"""Frozen-trunk feature caches: a few augmented views of every image go through the frozen trunk once.

With a frozen trunk the CNN is nearly all of a training step's cost, and its output for a given view never
changes. So each image's ``views`` views are computed once (view 0 the plain evaluation crop, the others
random resized crops with aspect jitter and flips) and stored as float16; training then draws one view per
image per step. With ``tail_stages`` > 0 the cache holds the feature maps *before* the trunk's last stages,
which then train on top of them (cheap: at 7x7 they are a small share of the trunk's work).

A cache can also be kept on disk (``cache_dir``), keyed by everything that determines its content (the trunk's
weights, the images, the crops' settings and seed), so a second run or a later stage skips the CNN entirely.
Each view is drawn from its own seed (image, view), so a stored cache with more views, or one cut earlier in
the trunk, serves a request for fewer views or a later cut: its first views, run through the missing stages.
A run that must read the images can keep an earlier cut as well (``keep_stages``), for a later stage that
trains more of the trunk.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from retrieval.core.atomic import atomic_write
from retrieval.core.captions import ImageCaptions
from retrieval.core.decode import load_rgb
from retrieval.core.errors import DecodeError
from retrieval.core.device import autocast

BATCH = 64  # views per forward pass


@dataclass
class FeatureCache:
    """features [N, V, F] (pooled) or [N, V, C, h, w] (maps for the trunk's tail), float16; ``failed``:
    indices of items whose image could not be decoded (their rows are zero and must not be used)."""

    features: torch.Tensor
    failed: list[int]
    tail_stages: int

    @property
    def views(self) -> int:
        return self.features.shape[1]


def view_transforms(image_size: int, views: int, min_scale: float, max_aspect: float,
                    flip: bool) -> list[Callable[[Image.Image], torch.Tensor]]:
    """View 0: the evaluation crop; views 1..V-1: random resized crops (area ``min_scale``..1, aspect
    1/``max_aspect``..``max_aspect``, so squeezed squares and real-aspect photos both look familiar), flipped
    half of the time when ``flip``. All give uint8 [3, S, S]."""
    from torchvision import transforms as T

    from retrieval.core.transforms import eval_transform_uint8

    steps = [T.RandomResizedCrop(image_size, scale=(min_scale, 1.0), ratio=(1 / max_aspect, max_aspect),
                                 antialias=True)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    augmented = T.Compose([*steps, T.PILToTensor()])
    return [eval_transform_uint8(image_size)] + [augmented] * (views - 1)


def _cache_key(trunk: torch.nn.Module, items: Sequence[ImageCaptions], parts: list[object]) -> str:
    digest = hashlib.sha256(repr(parts).encode())
    for key, tensor in sorted(trunk.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for item in items:  # the same files however they were named (relative, absolute, through a link)
        stat = item.image.stat() if item.image.is_file() else None
        size, mtime = (stat.st_size, stat.st_mtime_ns) if stat else (-1, -1)
        digest.update(f"{item.image.resolve()}|{size}|{mtime}".encode())
    return digest.hexdigest()[:20]


def build_feature_cache(encoder: torch.nn.Module, items: Sequence[ImageCaptions], *, image_size: int, views: int,
                        tail_stages: int, keep_stages: int = 0,
                        prepare: Callable[[torch.Tensor], torch.Tensor], device: torch.device, dtype: torch.dtype,
                        min_scale: float, max_aspect: float, flip: bool, seed: int, cache_dir: str | Path | None = None
                        ) -> FeatureCache:
    """Run ``views`` views of every image through ``encoder``'s frozen head (an :class:`ImageEncoder`).

    ``prepare`` turns a uint8 batch [B, 3, S, S] into the network's input (normalised, on ``device``).
    ``keep_stages`` > ``tail_stages``: computed from the images, the maps that many stages before the end are
    cached too (a later run with ``tail_stages=keep_stages`` then starts from them).
    """
    cut = max(tail_stages, keep_stages)  # where the trunk's frozen head ends when images must be read
    head, _ = encoder.split_trunk(cut)
    path, first_view, known = None, 0, None
    if cache_dir:
        normalisation = prepare(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)).flatten().tolist()
        parts: list[object] = [image_size, min_scale, max_aspect, flip, seed, normalisation]

        def cached(cut: int) -> Path:  # keyed by the weights before the cut: the stages after it may be trained
            key = _cache_key(encoder.split_trunk(cut)[0], items, parts + [cut, str(encoder.pool) if cut == 0 else ""])
            return Path(cache_dir) / f"features-{key}.pt"

        path = cached(tail_stages)
        stores = [(cut, cached(cut)) for cut in range(tail_stages, len(encoder.trunk))]
        for stored_tail, stored_path in [(cut, file) for cut, file in stores if file.is_file()]:
            stored = torch.load(stored_path, map_location="cpu", weights_only=True, mmap=True)
            if stored["features"].shape[1] >= views:
                features = _continue(encoder, stored["features"][:, :views], stored_tail, tail_stages, device, dtype)
                if stored_tail != tail_stages:  # keep the result too: the next run at this cut starts here
                    _save(path, features, list(stored["failed"]))
                return FeatureCache(features, list(stored["failed"]), tail_stages)
            if stored_tail == cut and known is None:  # too few views: unless a later cut has them all,
                first_view, known = stored["features"].shape[1], stored["features"]  # compute only the missing
    transforms = view_transforms(image_size, views, min_scale, max_aspect, flip)
    head.eval()
    features: torch.Tensor | None = None
    failed: list[int] = []
    pending: list[tuple[int, int, torch.Tensor]] = []

    def flush() -> None:
        nonlocal features
        pixels = torch.stack([p for _, _, p in pending])
        with torch.inference_mode(), autocast(device, dtype):
            out = head(prepare(pixels))
            if cut == 0:
                out = encoder.pool(out).flatten(1)
        out = out.float().cpu().half()
        if features is None:
            features = torch.zeros(len(items), views, *out.shape[1:], dtype=torch.float16)
            if known is not None:
                features[:, :first_view] = known
        for (row, view, _), value in zip(pending, out):
            features[row, view] = value
        pending.clear()

    # crops come from torch's global generator, seeded per view; forked so that training after this draws the
    # same numbers whether the cache was computed now or read from disk (the same command, the same model)
    with torch.random.fork_rng(devices=[]):
        for row, item in enumerate(items):
            try:
                image = load_rgb(item.image, 2 * image_size)[0]
            except DecodeError:
                failed.append(row)
                continue
            for view, transform in enumerate(transforms):
                if view < first_view:
                    continue
                torch.manual_seed(seed * 1_000_003 + row * 1009 + view)
                pending.append((row, view, transform(image)))
            if len(pending) >= BATCH:
                flush()
        if pending:
            flush()
    if features is None:
        features = torch.zeros(len(items), views, 1, dtype=torch.float16)
    if cut != tail_stages:
        if cache_dir:
            _save(cached(cut), features, failed)
        features = _continue(encoder, features, cut, tail_stages, device, dtype)
    if path is not None:
        _save(path, features, failed)
    return FeatureCache(features, failed, tail_stages)


def _save(path: Path, features: torch.Tensor, failed: list[int]) -> None:
    with atomic_write(path) as tmp:
        torch.save({"features": features, "failed": failed}, tmp)


def _continue(encoder: torch.nn.Module, features: torch.Tensor, stored_tail: int, tail_stages: int,
              device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Cached maps cut ``stored_tail`` stages before the end -> the cut ``tail_stages`` asks for (pooled at 0)."""
    if stored_tail == tail_stages:
        return features.clone()
    stages = encoder.split_trunk(stored_tail)[1][: stored_tail - tail_stages]
    stages.eval()
    flat = features.flatten(0, 1)  # [N * V, C, h, w]
    chunks = []
    with torch.inference_mode(), autocast(device, dtype):
        for start in range(0, len(flat), 256):
            out = stages(flat[start:start + 256].to(device).float())
            chunks.append((encoder.pool(out).flatten(1) if tail_stages == 0 else out).float().cpu().half())
    out = torch.cat(chunks)
    return out.view(features.shape[0], features.shape[1], *out.shape[1:])
