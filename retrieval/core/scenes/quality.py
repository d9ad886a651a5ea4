"""Quality measures that need the scene graphs: the attribute-swap probe, semantic precision@K, and the
recall no model can beat.

Both work on vectors (numpy), so they serve the training script, the benchmarks and the tests alike:
``encode_texts(list of sentences) -> [N, D]`` unit vectors and image vectors [I, D] in record order.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from retrieval.core.scenes.captions import SWAP_KINDS, Caption, caption_distribution, swap_caption
from retrieval.core.scenes.corpus import SceneRecord
from retrieval.core.scenes.scene import satisfies

EncodeTexts = Callable[[list[str]], np.ndarray]


@dataclass
class SwapProbe:
    """Share of (image, true caption, swapped caption) triples where the true caption scores higher."""

    accuracy: float  # percent
    pairs: int


def swap_pairs(records: Sequence[SceneRecord], seed: int = 0,
               kinds: tuple[str, ...] = SWAP_KINDS) -> list[tuple[int, str, str]]:
    """(record index, true caption, false caption with the same words swapped) for every caption that has one;
    ``kinds``: which swaps (see :func:`retrieval.core.scenes.captions.swap_caption`)."""
    rng = random.Random(f"vlsearch-swap-probe:{seed}")
    pairs = []
    for index, record in enumerate(records):
        for caption in record.captions:
            swapped = swap_caption(caption, record.scene, rng, kinds)
            if swapped is not None:
                pairs.append((index, caption.text, swapped.text))
    return pairs


def attribute_swap_probe(records: Sequence[SceneRecord], image_vectors: np.ndarray, encode_texts: EncodeTexts,
                         seed: int = 0, kinds: tuple[str, ...] = SWAP_KINDS) -> SwapProbe:
    """Attribute and role swaps keep the words (a bag-of-words model scores 50 % on them); relation
    reversals change one word (left <-> right, above <-> below)."""
    pairs = swap_pairs(records, seed, kinds)
    if not pairs:
        return SwapProbe(0.0, 0)
    images = image_vectors[[p[0] for p in pairs]]
    true = (images * encode_texts([p[1] for p in pairs])).sum(axis=1)
    false = (images * encode_texts([p[2] for p in pairs])).sum(axis=1)
    return SwapProbe(float(100.0 * np.mean(true > false)), len(pairs))


def semantic_precision(records: Sequence[SceneRecord], image_vectors: np.ndarray, encode_texts: EncodeTexts,
                       queries: Sequence[Caption], k: int = 10) -> float:
    """Mean share (percent) of each query's top ``k`` images whose scene graph satisfies the query."""
    scores = encode_texts([q.text for q in queries]) @ image_vectors.T  # [Q, I]
    top = np.argsort(-scores, axis=1)[:, :k]
    hits = [np.mean([satisfies(q.meaning, records[i].scene) for i in row]) for q, row in zip(queries, top)]
    return float(100.0 * np.mean(hits))


def satisfiable_share(records: Sequence[SceneRecord], queries: Sequence[Caption], k: int = 10) -> float:
    """The best semantic precision any model could reach: queries with fewer than ``k`` true images cap it."""
    shares = [min(k, sum(satisfies(q.meaning, r.scene) for r in records)) / k for q in queries]
    return float(100.0 * np.mean(shares))


def best_possible_hits(records: Sequence[SceneRecord], ks: Sequence[int] = (1, 5, 10)) -> dict[int, np.ndarray]:
    """For each caption of ``records`` (in order), the chance that a perfect ranker has its image in the top k.

    A perfect ranker knows every scene and the caption grammar, and ranks images by the probability that
    their scene is described with this template and meaning (:func:`caption_distribution`); images that tie
    are ordered at random. Where several scenes fit a caption equally well, no model can tell its own image
    apart, so this is the ceiling of text-to-image recall on ``records``."""
    distributions = [caption_distribution(record.scene) for record in records]
    hits: dict[int, list[float]] = {k: [] for k in ks}
    for own, record in enumerate(records):
        for caption in record.captions:
            key = (caption.template, caption.meaning)
            chance = np.array([d.get(key, 0.0) for d in distributions])
            mine = chance[own]
            above = np.sum(chance > mine * (1 + 1e-9))  # relative tolerance: sums of the same products
            tied = np.sum(np.abs(chance - mine) <= mine * 1e-9)
            for k in ks:
                hits[k].append(float(np.clip((k - above) / tied, 0.0, 1.0)))
    return {k: np.array(v) for k, v in hits.items()}
