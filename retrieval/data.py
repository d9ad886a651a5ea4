"""Training data: (image, caption) pairs as tensors, decoded by DataLoader workers or cached in memory.

Each epoch shows every image once with one of its captions drawn at random, so a batch never holds
the same image twice (a duplicate would be a false negative for the contrastive losses).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from retrieval.captions import ImageCaptions
from retrieval.model import pad_batch
from retrieval.tokenizer import Vocabulary
from retrieval.transforms import eval_transform_uint8, normalize_uint8  # noqa: F401 (normalize_uint8: re-exported)


def open_rgb(path: str) -> Image.Image:
    """Decode one training image as RGB (first frame; EXIF orientation applied)."""
    from PIL import ImageOps

    with Image.open(path) as image:
        image.draft("RGB", (512, 512))  # JPEG: decode at reduced size, training never needs more
        return ImageOps.exif_transpose(image).convert("RGB")


@dataclass
class Batch:
    """A collated batch. Shapes: images [B, 3, S, S] (or cached features [B, F]), tokens [B, L],
    lengths [B], negatives [B, Ln] with negative_lengths [B] and negative_mask [B] (None without negatives);
    ``failed``: dataset indices of images in this batch that could not be decoded (left out of it)."""

    images: torch.Tensor
    tokens: torch.Tensor
    lengths: torch.Tensor
    negatives: torch.Tensor | None
    negative_lengths: torch.Tensor | None
    negative_mask: torch.Tensor | None
    failed: list[int]


class PairDataset(Dataset):
    """One (image, caption, optional hard negative) per image per epoch; call :meth:`set_epoch` first."""

    def __init__(self, items: Sequence[ImageCaptions], vocab: Vocabulary,
                 load_image: Callable[[int], torch.Tensor | None], seed: int = 0):
        self.items = items
        self.vocab = vocab
        self.load_image = load_image
        self.seed = seed
        self.choices: list[tuple[int, int, int]] = []

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's order and captions deterministically from (seed, epoch)."""
        rng = random.Random(self.seed * 100_003 + epoch)
        order = list(range(len(self.items)))
        rng.shuffle(order)
        self.choices = [(i, rng.randrange(len(self.items[i].captions)),
                         rng.randrange(len(self.items[i].negatives)) if self.items[i].negatives else -1)
                        for i in order]

    def __len__(self) -> int:
        return len(self.choices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, list[int], list[int] | None] | int:
        index, caption, negative = self.choices[k]
        image = self.load_image(index)
        if image is None:  # unreadable file: collate leaves it out and reports its index
            return index
        item = self.items[index]
        return (image, self.vocab.encode(item.captions[caption]),
                self.vocab.encode(item.negatives[negative]) if negative >= 0 else None)


def collate(samples: list[tuple[torch.Tensor, list[int], list[int] | None] | int]) -> Batch:
    failed = [s for s in samples if isinstance(s, int)]
    samples = [s for s in samples if not isinstance(s, int)]
    if not samples:
        return Batch(torch.empty(0), torch.empty(0, 1, dtype=torch.long), torch.empty(0, dtype=torch.long),
                     None, None, None, failed)
    images = torch.stack([s[0] for s in samples])
    tokens, lengths = pad_batch([s[1] for s in samples])
    if all(s[2] is None for s in samples):
        return Batch(images, tokens, lengths, None, None, None, failed)
    mask = torch.tensor([s[2] is not None for s in samples])
    negatives, negative_lengths = pad_batch([s[2] if s[2] is not None else [0] for s in samples])
    return Batch(images, tokens, lengths, negatives, negative_lengths, mask, failed)


def cache_images(items: Sequence[ImageCaptions], image_size: int) -> tuple[torch.Tensor, list[int]]:
    """Decode every image once at the model's size: uint8 [N, 3, S, S] and the indices that failed."""
    resize = eval_transform_uint8(image_size)
    cache = torch.zeros(len(items), 3, image_size, image_size, dtype=torch.uint8)
    failed = []
    for i, item in enumerate(items):
        try:
            cache[i] = resize(open_rgb(str(item.image)))
        except (OSError, ValueError, Image.DecompressionBombError):
            failed.append(i)
    return cache, failed
