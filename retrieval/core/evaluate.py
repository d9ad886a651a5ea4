"""Retrieval metrics (plain numpy) and the encoding of an evaluation set.

Protocol (VSE++ / COCO): each caption has exactly one positive image; a text->image query succeeds at K
if its image is among the top K; an image->text query succeeds if *any* of its captions is.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from retrieval.core.captions import load_captions
from retrieval.core.checkpoint import load_model
from retrieval.core.data import cache_images, kept_rows
from retrieval.core.device import autocast, resolve_device, resolve_precision, set_threads, unit_vectors
from retrieval.core.errors import CaptionsError
from retrieval.core.transforms import prepare_batch


@dataclass
class Recall:
    """Recall in percent at 1/5/10, median and mean rank (1-based)."""
    r1: float
    r5: float
    r10: float
    medr: float
    meanr: float


@dataclass
class EvalResult:
    t2i: Recall
    i2t: Recall
    rsum: float
    images: int
    captions: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _recall(ranks: np.ndarray) -> Recall:
    """ranks: 0-based rank of the first correct item per query."""
    def at(k: int) -> float:
        return float(100.0 * np.mean(ranks < k))
    return Recall(at(1), at(5), at(10), float(np.floor(np.median(ranks)) + 1), float(ranks.mean() + 1))


def t2i_ranks(similarity: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """similarity [C, I], caption_image [C] -> 0-based rank of each caption's image."""
    positive = similarity[np.arange(len(caption_image)), caption_image][:, None]
    return (similarity > positive).sum(axis=1)


def i2t_ranks(similarity: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """similarity [C, I] -> for each image, the 0-based rank of its best-ranked caption."""
    by_image = similarity.T  # [I, C]
    ranks = np.empty(by_image.shape[0], dtype=np.int64)
    for image in range(by_image.shape[0]):
        best = by_image[image, caption_image == image].max()
        ranks[image] = (by_image[image] > best).sum()
    return ranks


def recall_metrics(similarity: np.ndarray, caption_image: np.ndarray) -> EvalResult:
    """All metrics from a caption x image similarity matrix [C, I]."""
    t2i = _recall(t2i_ranks(similarity, caption_image))
    i2t = _recall(i2t_ranks(similarity, caption_image))
    rsum = t2i.r1 + t2i.r5 + t2i.r10 + i2t.r1 + i2t.r5 + i2t.r10
    return EvalResult(t2i, i2t, rsum, similarity.shape[1], similarity.shape[0])


def folded_metrics(image_vectors: np.ndarray, caption_vectors: np.ndarray, caption_image: np.ndarray,
                   folds: int = 1) -> EvalResult:
    """COCO-1K style: split the images into ``folds`` equal parts and average the metrics."""
    if folds <= 1:
        return recall_metrics(caption_vectors @ image_vectors.T, caption_image)
    results = []
    for part in np.array_split(np.arange(len(image_vectors)), folds):
        keep = np.isin(caption_image, part)
        remap = np.full(len(image_vectors), -1)
        remap[part] = np.arange(len(part))
        results.append(recall_metrics(caption_vectors[keep] @ image_vectors[part].T, remap[caption_image[keep]]))
    def mean(attr: str) -> Recall:
        return Recall(*np.mean([list(asdict(getattr(r, attr)).values()) for r in results], axis=0).tolist())
    return EvalResult(mean("t2i"), mean("i2t"), float(np.mean([r.rsum for r in results])),
                      len(image_vectors), len(caption_vectors))


def encode_texts(model: Any, texts: Sequence[str], batch_size: int = 512) -> np.ndarray:
    """Sentences -> unit vectors [N, D] (float32 numpy)."""
    chunks = [np.zeros((0, model.config.embed_dim), dtype=np.float32)]
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunks.append(unit_vectors(model.encode_captions(list(texts[start:start + batch_size]))).cpu().numpy())
    return np.concatenate(chunks)


def embed_set(model: Any, items: Sequence[Any], embed_images: Callable[[range], Any], device: Any, dtype: Any,
              batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode every image (``embed_images(range of item indices) -> [B, D]``) and every caption of ``items``.

    Returns (image vectors [I, D], caption vectors [C, D], caption_image [C]).
    """
    image_vectors = []
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            with autocast(device, dtype):
                vectors = embed_images(range(start, min(len(items), start + batch_size)))
            image_vectors.append(unit_vectors(vectors).cpu().numpy())
    caption_vectors = encode_texts(model, [c for item in items for c in item.captions])
    caption_image = np.repeat(np.arange(len(items)), [len(item.captions) for item in items])
    return np.concatenate(image_vectors), caption_vectors, caption_image


@dataclass
class EncodedSet:
    """A captioned set run through a model; ``items`` excludes images that could not be decoded (``failed``)."""
    items: list[Any]
    image_vectors: np.ndarray  # [I, D]
    caption_vectors: np.ndarray  # [C, D]
    caption_image: np.ndarray  # [C] index into items
    failed: list[str]


def encode_items(model: Any, items: Sequence[Any], device: Any = "cpu") -> EncodedSet:
    """Decode (once, at the model's size) and encode every image and caption of ``items``."""
    device = torch.device(device)
    pixels, failed_rows = cache_images(items, model.config.image_size)
    keep = kept_rows(len(items), failed_rows)
    failed = [str(items[i].image) for i in failed_rows]
    pixels, items = pixels[keep], [items[i] for i in keep]

    def embed_images(indices: range) -> torch.Tensor:
        batch = prepare_batch(pixels[indices.start:indices.stop], device, model.config.input_mean,
                              model.config.input_std)
        return model.encode_image(batch)

    images, texts, caption_image = embed_set(model, items, embed_images, device, resolve_precision("auto", device))
    return EncodedSet(items, images, texts, caption_image, failed)


def evaluate_model(model_path: str | Path | None, captions_path: str | Path, images_dir: str | Path | None = None, *,
                   fmt: str = "auto", split: str | None = "test", folds: int = 1,
                   device: str = "auto") -> tuple[EvalResult, Any]:
    """Load a checkpoint and a captions file, and compute the metrics on ``split``.

    A file without split information is evaluated whole. Unreadable images are dropped (and reported in the
    returned caption set's ``missing``). Returns (metrics, caption set).
    """
    set_threads()
    torch_device = resolve_device(device)
    model = load_model(model_path, device=torch_device)
    captions_set = load_captions(captions_path, images_dir, fmt)
    if split and any(item.split for item in captions_set.items):
        captions_set.items = [item for item in captions_set.items if item.split == split]
        if not captions_set.items:
            raise CaptionsError(f"{captions_path}: no images in split {split!r}")
    encoded = encode_items(model, captions_set.items, torch_device)
    captions_set.items = encoded.items
    captions_set.missing += encoded.failed
    metrics = folded_metrics(encoded.image_vectors, encoded.caption_vectors, encoded.caption_image, folds)
    return metrics, captions_set
