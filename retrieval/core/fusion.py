"""The fusion head: a second-stage scorer in which each word of a caption attends over an image's regions.

A dual encoder squeezes an image into one vector, so "a red cross above a green star" can score higher on
scenes that hold the named colours on other shapes. The head instead keeps the trunk's map before pooling
([B, C, h, w], e.g. 4x4; with ``fusion_region_stages`` 2 the stage before's finer map beside it) as R = h*w region
vectors and scores text-to-image attention (SCAN, Lee et al. 2018):

    word t -> cosine to every region -> softmax(attention x cosine) -> attended region vector a_t
    relevance r_t = cos(word t, a_t)  ->  pooled over words: log(mean exp(pool x r_t)) / pool  (0: mean)
    score = (1 - mix) x fused + mix x global cosine of the dual encoder   (mix learned, in (0, 1))
            - bank_weight x hubness(image)                                  (only with a query bank)

A dual encoder fitted to its training photos makes some images "hubs" that come near every caption. With
``fusion_bank`` the head keeps training captions' vectors, and an image's hubness is a soft maximum of its
cosines to them (querybank normalisation, Bogolin et al. 2022: the inverted softmax, as a per-image term).

Every part is a cosine or a convex mix of cosines, so a score lies in [-1, 1] like the first stage's.
Regions are projected (and position-coded) once, at index time, to ``fusion_dim`` and stored; a query
only runs the word side. The head is optional: ``DualEncoder.fusion`` is None for models without one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.core.config import ModelConfig

DEFAULT_DEPTH = 100  # candidates search re-ranks when the model has a head (BENCHMARKS.md, "Re-ranking")


class RegionProjector(nn.Module):
    """Region map [B, C, h, w] (ImageEncoder.with_map) -> unit region vectors [B, h*w, d], each knowing where
    it lies."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(channels, dim)
        self.position = nn.Linear(2, dim)  # (x, y) in [-1, 1]: any grid size, no stored table

    def forward(self, region_map: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = region_map.shape
        features = region_map.float().flatten(2).transpose(1, 2)  # [B, R, C], row-major over (y, x)
        ys = torch.linspace(-1, 1, height, device=features.device)
        xs = torch.linspace(-1, 1, width, device=features.device)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)  # [R, 2] (x, y)
        return F.normalize(self.proj(features) + self.position(grid), dim=-1)

    def widen(self, channels: int) -> None:
        """Take ``channels`` more input channels in front (an earlier trunk stage's: ImageEncoder.with_map), their
        weights zero, so the projection starts out as it was and training grows the new weights from there (on a
        finer grid, each region's position is read at its own, finer coordinates)."""
        old = self.proj
        self.proj = nn.Linear(channels + old.in_features, old.out_features, device=old.weight.device)
        with torch.no_grad():
            self.proj.weight.zero_()
            self.proj.weight[:, channels:] = old.weight
            self.proj.bias.copy_(old.bias)


class WordProjector(nn.Module):
    """Per-word states [B, L, S] (GRU state beside the word's embedding) -> unit word vectors [B, L, d]."""

    def __init__(self, state_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(state_dim, dim)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(states.float()), dim=-1)


class FusionHead(nn.Module):
    """Both projections and the scorer. ``regions`` is None in a text-only model (queries need no CNN)."""

    def __init__(self, config: ModelConfig, channels: int | None, state_dim: int):
        super().__init__()
        self.attention = float(config.fusion_attention)
        self.pool = float(config.fusion_pool)
        self.regions = RegionProjector(channels, config.fusion_dim) if channels is not None else None
        self.words = WordProjector(state_dim, config.fusion_dim)
        self.mix_logit = nn.Parameter(torch.tensor(0.0))  # share of the global cosine in the score
        self.logit_scale = nn.Parameter(torch.tensor(math.log(20.0)))  # training only: softmax sharpness
        self.register_buffer("bank", None)  # [B, D] unit caption vectors (set_bank), or None: no query bank
        self.register_buffer("bank_sharpness", None)
        self.register_buffer("bank_weight", None)  # of the hubness in the score: chosen on validation images
        if config.fusion_bank:
            self.set_bank(torch.zeros(config.fusion_bank, config.embed_dim))

    @property
    def mix(self) -> torch.Tensor:
        return torch.sigmoid(self.mix_logit)

    def set_bank(self, captions: torch.Tensor, sharpness: float = 20.0, weight: float = 0.0) -> None:
        """Keep ``captions`` [B, D] (unit vectors of training captions) as the query bank."""
        self.bank = captions.detach().float().clone()
        self.bank_sharpness, self.bank_weight = torch.tensor(float(sharpness)), torch.tensor(float(weight))

    def hubness(self, vectors: torch.Tensor) -> torch.Tensor | None:
        """Image vectors [..., D] (unit) -> how strongly each matches the bank's captions at once [...]:
        log(sum exp(sharpness x cosine)) / sharpness; None without a bank."""
        if self.bank is None:
            return None
        return torch.logsumexp(self.bank_sharpness * (vectors.float() @ self.bank.T), dim=-1) / self.bank_sharpness

    def fused(self, words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """words [..., L, d], lengths [...], regions [..., R, d] (unit vectors; leading dims broadcast) -> [...]."""
        cosine = words @ regions.transpose(-1, -2)  # [..., L, R]
        attended = F.normalize(torch.softmax(self.attention * cosine, dim=-1) @ regions, dim=-1)  # [..., L, d]
        relevance = (attended * words).sum(-1)  # [..., L]
        steps = torch.arange(relevance.shape[-1], device=relevance.device)
        valid = steps < lengths.to(relevance.device).unsqueeze(-1)  # [..., L]
        count = valid.sum(-1).clamp(min=1)
        if self.pool <= 0:
            return (relevance * valid).sum(-1) / count
        weights = torch.exp(self.pool * (relevance - 1)) * valid  # shifted by the maximum possible: no overflow
        return 1 + torch.log(weights.sum(-1) / count) / self.pool

    def score(self, words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor,
              global_score: torch.Tensor, hubness: torch.Tensor | None = None) -> torch.Tensor:
        """Final score of each pair (same broadcasting as :meth:`fused`; ``global_score`` the dual encoder's,
        ``hubness`` the image's (:meth:`hubness`; None: not lowered, as in training))."""
        score = (1 - self.mix) * self.fused(words, lengths, regions) + self.mix * global_score
        return score if hubness is None or self.bank_weight is None else score - self.bank_weight * hubness

    def score_matrix(self, words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor,
                     global_scores: torch.Tensor, hubness: torch.Tensor | None = None) -> torch.Tensor:
        """words [B, L, d], lengths [B], regions [N, R, d], global_scores [B, N], hubness [N] -> scores [B, N]."""
        return self.score(words[:, None], lengths[:, None], regions[None], global_scores,
                          None if hubness is None else hubness[None])


def quantize_regions(regions: torch.Tensor) -> torch.Tensor:
    """Unit region vectors [..., R, d] float -> int8 codes [..., R, d] (d/127 steps of a unit cube)."""
    return (regions.float() * 127).round().clamp(-127, 127).to(torch.int8)


def dequantize_regions(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes -> unit region vectors (re-normalised: the rounding error barely moves a direction)."""
    return F.normalize(codes.float(), dim=-1)
