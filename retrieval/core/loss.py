"""Losses that turn a batch of matching (image, caption) encodings into a number.

Both take unit vectors ``images [B, D]`` and ``texts [B, D]`` where row i of each is a matching pair,
plus optional ``negatives [B, D]`` with ``negative_mask [B]``: one caption known to be false for image i
(e.g. the same words with attributes swapped), used as an extra negative for that image.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.core.errors import ConfigError

LOSSES = ("infonce", "hinge", "hinge-sum")


def _extra_column(images: torch.Tensor, negatives: torch.Tensor | None, negative_mask: torch.Tensor | None,
                  scale: torch.Tensor | float = 1.0) -> torch.Tensor | None:
    """``scale`` x similarity of image i to its own hard-negative caption [B, 1]; -inf where there is none.

    Scaling before masking keeps -inf out of the product: its gradient would be 0 x -inf = NaN.
    """
    if negatives is None:
        return None
    extra = scale * (images * negatives).sum(dim=1, keepdim=True)
    if negative_mask is not None:
        extra = extra.masked_fill(~negative_mask.view(-1, 1), float("-inf"))
    return extra


class HingeLoss(nn.Module):
    """VSE++ bidirectional hinge loss (Faghri et al. 2018).

    ``max_violation=True`` keeps only the hardest negative in the batch per query (VSE++);
    ``False`` sums over all negatives (VSE0), which is what trains stably from scratch.
    """

    def __init__(self, margin: float = 0.2, max_violation: bool = True):
        super().__init__()
        self.margin = margin
        self.max_violation = max_violation

    def forward(self, images: torch.Tensor, texts: torch.Tensor, negatives: torch.Tensor | None = None,
                negative_mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = images @ texts.t()  # [B, B]: image i vs caption j
        positive = scores.diag().view(-1, 1)  # [B, 1]
        eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
        cost_caption = (self.margin + scores - positive).clamp(min=0).masked_fill(eye, 0)  # image query
        cost_image = (self.margin + scores - positive.t()).clamp(min=0).masked_fill(eye, 0)  # caption query
        extra = _extra_column(images, negatives, negative_mask)
        if extra is not None:
            cost_caption = torch.cat([cost_caption, (self.margin + extra - positive).clamp(min=0)], dim=1)
        if self.max_violation:
            return (cost_caption.max(dim=1).values.sum() + cost_image.max(dim=0).values.sum()) / scores.shape[0]
        return (cost_caption.sum() + cost_image.sum()) / scores.shape[0]


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE (CLIP-style) with a learnable temperature, capped at 1/100.

    ``pair_weight`` > 0 adds, for each image with a hard negative, ``pair_weight x log(1 + e^(scale x
    (negative - positive)))``: the two-way choice between its caption and the swapped one, on its own,
    so the swap is not diluted among the batch's B - 1 easy negatives.
    """

    def __init__(self, temperature: float = 0.07, learnable: bool = True, pair_weight: float = 0.0):
        super().__init__()
        scale = torch.tensor(math.log(1 / temperature))
        self.logit_scale = nn.Parameter(scale) if learnable else nn.Parameter(scale, requires_grad=False)
        self.pair_weight = pair_weight

    def forward(self, images: torch.Tensor, texts: torch.Tensor, negatives: torch.Tensor | None = None,
                negative_mask: torch.Tensor | None = None) -> torch.Tensor:
        scale = self.logit_scale.clamp(max=math.log(100)).exp()
        logits = scale * images @ texts.t()  # [B, B]
        target = torch.arange(logits.shape[0], device=logits.device)
        image_logits = logits
        extra = _extra_column(images, negatives, negative_mask, scale)
        if extra is not None:
            image_logits = torch.cat([logits, extra], dim=1)  # [B, B + 1]
        loss = (F.cross_entropy(image_logits, target) + F.cross_entropy(logits.t(), target)) / 2
        if extra is not None and self.pair_weight > 0:
            has = torch.isfinite(extra[:, 0])
            if has.any():
                margin = extra[has, 0] - logits.diagonal()[has]  # scaled: swapped minus true caption
                loss = loss + self.pair_weight * F.softplus(margin).mean()
        return loss


def make_loss(name: str, margin: float = 0.2, pair_weight: float = 0.0) -> nn.Module:
    """``infonce``, ``hinge`` (hardest negative) or ``hinge-sum`` (sum over negatives); ``pair_weight``:
    see :class:`InfoNCELoss`."""
    if name == "infonce":
        return InfoNCELoss(pair_weight=pair_weight)
    if name in ("hinge", "hinge-sum"):
        return HingeLoss(margin, max_violation=name == "hinge")
    raise ConfigError(f"unknown loss {name!r}: use one of {', '.join(LOSSES)}")
