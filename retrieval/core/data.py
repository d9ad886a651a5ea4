"""Training data: (image, caption) pairs as tensors, decoded by DataLoader workers or cached in memory.

Each epoch shows every image once with ``captions_per_image`` of its captions drawn at random, so a batch
never holds the same image twice (a duplicate would be a false negative for the contrastive losses).
Several captions per image cost little (the GRU is cheap next to the CNN) and give the text branch, and
the hard negatives, that many more examples per image forward.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from retrieval.core.captions import ImageCaptions
from retrieval.core.decode import Decoder
from retrieval.core.errors import DecodeError
from retrieval.core.model import pad_batch
from retrieval.core.tokenizer import Vocabulary


@dataclass
class Batch:
    """A collated batch of B images with K captions each. Shapes: images [B, 3, S, S] (or cached features
    [B, F]); tokens [K*B, L] and lengths [K*B], slot-major (row k*B + i is caption slot k of image i);
    negatives [K*B, Ln] with negative_lengths and negative_mask [K*B] (None without negatives), one per
    caption row; ``failed``: dataset indices of images in this batch that could not be decoded (left out)."""

    images: torch.Tensor
    tokens: torch.Tensor
    lengths: torch.Tensor
    negatives: torch.Tensor | None
    negative_lengths: torch.Tensor | None
    negative_mask: torch.Tensor | None
    failed: list[int]


Sample = tuple[torch.Tensor, list[list[int]], list[list[int] | None]]


class PairDataset(Dataset):
    """One image per epoch with ``captions_per_image`` captions, each with a hard negative when the item
    has one (its own, from ``caption_negatives``, else any of ``negatives``); call :meth:`set_epoch` first."""

    def __init__(self, items: Sequence[ImageCaptions], vocab: Vocabulary,
                 load_image: Callable[[int], torch.Tensor | None], seed: int = 0, captions_per_image: int = 1):
        self.items = items
        self.vocab = vocab
        self.load_image = load_image
        self.seed = seed
        self.captions_per_image = captions_per_image
        self.choices: list[tuple[int, list[int], list[str | None]]] = []

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's order, captions and negatives deterministically from (seed, epoch)."""
        rng = random.Random(self.seed * 100_003 + epoch)
        order = list(range(len(self.items)))
        rng.shuffle(order)
        self.choices = []
        for i in order:
            captions = self._draw(rng, len(self.items[i].captions))
            self.choices.append((i, captions, [self._negative(rng, self.items[i], c) for c in captions]))

    def _draw(self, rng: random.Random, available: int) -> list[int]:
        """``captions_per_image`` indices into ``available``: distinct while they last."""
        drawn: list[int] = []
        while len(drawn) < self.captions_per_image:
            drawn += rng.sample(range(available), min(available, self.captions_per_image - len(drawn)))
        return drawn

    @staticmethod
    def _negative(rng: random.Random, item: ImageCaptions, caption: int) -> str | None:
        own = item.caption_negatives[caption] if caption < len(item.caption_negatives) else []
        pool = own or item.negatives
        return rng.choice(pool) if pool else None

    def __len__(self) -> int:
        return len(self.choices)

    def __getitem__(self, k: int) -> Sample | int:
        index, captions, negatives = self.choices[k]
        image = self.load_image(index)
        if image is None:  # unreadable file: collate leaves it out and reports its index
            return index
        item = self.items[index]
        return (image, [self.vocab.encode(item.captions[c]) for c in captions],
                [self.vocab.encode(n) if n is not None else None for n in negatives])


def collate(samples: list[Sample | int]) -> Batch:
    failed = [s for s in samples if isinstance(s, int)]
    samples = [s for s in samples if not isinstance(s, int)]
    if not samples:
        return Batch(torch.empty(0), torch.empty(0, 1, dtype=torch.long), torch.empty(0, dtype=torch.long),
                     None, None, None, failed)
    images = torch.stack([s[0] for s in samples])
    slots = range(len(samples[0][1]))
    tokens, lengths = pad_batch([s[1][k] for k in slots for s in samples])
    negatives = [s[2][k] for k in slots for s in samples]
    if all(n is None for n in negatives):
        return Batch(images, tokens, lengths, None, None, None, failed)
    mask = torch.tensor([n is not None for n in negatives])
    padded, negative_lengths = pad_batch([n if n is not None else [0] for n in negatives])
    return Batch(images, tokens, lengths, padded, negative_lengths, mask, failed)


def kept_rows(count: int, failed: Sequence[int]) -> list[int]:
    """The rows of ``range(count)`` not in ``failed`` (the images that decoded), in order."""
    dropped = set(failed)
    return [row for row in range(count) if row not in dropped]


def cache_images(items: Sequence[ImageCaptions], image_size: int) -> tuple[torch.Tensor, list[int]]:
    """Decode every image once at the model's size, exactly as the indexer does: uint8 [N, 3, S, S] and the
    indices that failed."""
    decoder = Decoder(image_size, normalise=False)
    cache = torch.zeros(len(items), 3, image_size, image_size, dtype=torch.uint8)
    failed = []
    for i, item in enumerate(items):
        try:
            cache[i] = decoder(item.image).pixels
        except DecodeError:
            failed.append(i)
    return cache, failed
