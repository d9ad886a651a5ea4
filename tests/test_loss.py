"""Losses: VSE++ hinge (hardest negative and sum) and InfoNCE, checked by hand on tiny batches."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from retrieval.core.errors import ConfigError
from retrieval.core.loss import HingeLoss, InfoNCELoss, make_loss

# With images = identity, scores = images @ texts.T = texts.T: a test writes the score matrix it wants directly.
# Row i is image i, column j is caption j; the diagonal holds the positives.
SCORES = torch.tensor([
    [0.9, 0.5, 0.1],
    [0.6, 0.7, 0.8],
    [0.2, 0.3, 0.4],
])


def from_scores(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.eye(len(scores)), scores.t().clone()


def test_scores_helper():
    images, texts = from_scores(SCORES)
    assert torch.equal(images @ texts.t(), SCORES)


def test_hinge_hardest_negative_by_hand():
    # margin 0.2; image queries (rows), cost = max(0, 0.2 + S[i, j] - S[i, i]):
    #   row 0: 0.2+0.5-0.9 < 0, 0.2+0.1-0.9 < 0       -> max 0
    #   row 1: 0.2+0.6-0.7 = 0.1, 0.2+0.8-0.7 = 0.3   -> max 0.3
    #   row 2: 0.2+0.2-0.4 = 0.0, 0.2+0.3-0.4 = 0.1   -> max 0.1
    # caption queries (columns), cost = max(0, 0.2 + S[i, j] - S[j, j]):
    #   col 0: 0.2+0.6-0.9 < 0, 0.2+0.2-0.9 < 0       -> max 0
    #   col 1: 0.2+0.5-0.7 = 0.0, 0.2+0.3-0.7 < 0     -> max 0
    #   col 2: 0.2+0.1-0.4 < 0, 0.2+0.8-0.4 = 0.6     -> max 0.6
    # (0 + 0.3 + 0.1 + 0 + 0 + 0.6) / 3 images
    loss = HingeLoss(margin=0.2, max_violation=True)(*from_scores(SCORES))
    assert loss.item() == pytest.approx(1.0 / 3, abs=1e-6)


def test_hinge_sum_by_hand():
    # same costs as above, summed: rows 0 + (0.1 + 0.3) + 0.1, columns 0 + 0 + 0.6
    loss = HingeLoss(margin=0.2, max_violation=False)(*from_scores(SCORES))
    assert loss.item() == pytest.approx(1.1 / 3, abs=1e-6)


def test_hinge_2x2_by_hand():
    # S = [[0.5, 0.6], [0.1, 0.8]], margin 0.2
    # rows: 0.2+0.6-0.5 = 0.3; 0.2+0.1-0.8 < 0.  columns: 0.2+0.1-0.5 < 0; 0.2+0.6-0.8 = 0.0
    images, texts = from_scores(torch.tensor([[0.5, 0.6], [0.1, 0.8]]))
    assert HingeLoss(0.2, True)(images, texts).item() == pytest.approx(0.3 / 2, abs=1e-6)
    assert HingeLoss(0.2, False)(images, texts).item() == pytest.approx(0.3 / 2, abs=1e-6)


@pytest.mark.parametrize("max_violation", [True, False])
def test_hinge_is_zero_when_positives_win_by_the_margin(max_violation: bool):
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.8, 0.5], [0.0, 0.4, 0.7]])  # every gap is 0.3 or more
    loss = HingeLoss(margin=0.2, max_violation=max_violation)(*from_scores(scores))
    assert loss.item() == 0.0
    # real unit vectors: orthogonal matching pairs
    eye = torch.eye(4)
    assert HingeLoss(0.2, max_violation)(eye, eye).item() == 0.0


def test_collapsed_batch_gives_twice_the_margin():
    # every embedding equal: each positive ties with every negative, so each direction costs exactly the margin
    torch.manual_seed(0)
    point = F.normalize(torch.randn(1, 16), dim=1)
    images, texts = point.repeat(6, 1), point.repeat(6, 1)
    assert HingeLoss(0.2, max_violation=True)(images, texts).item() == pytest.approx(0.4, abs=1e-6)
    # summing over the 5 negatives instead: 2 x 5 x margin
    assert HingeLoss(0.2, max_violation=False)(images, texts).item() == pytest.approx(2.0, abs=1e-5)


def hard_negative_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """3 orthogonal matching pairs; image 0's negative is close to it, image 1's and 2's are far."""
    images = torch.eye(3)
    texts = torch.eye(3)
    negatives = F.normalize(torch.tensor([[0.9, 0.1, 0.0],    # cos 0.994 with image 0
                                          [0.0, -1.0, 0.0],   # opposite image 1
                                          [1.0, 0.0, 0.0]]),  # orthogonal to image 2
                            dim=1)
    return images, texts, negatives


@pytest.mark.parametrize("max_violation", [True, False])
def test_hinge_hard_negative_counts_only_where_close(max_violation: bool):
    images, texts, negatives = hard_negative_batch()
    loss = HingeLoss(0.2, max_violation)
    base = loss(images, texts)
    assert base.item() == 0.0
    close = 0.2 + float(negatives[0] @ images[0]) - 1.0  # the only violation: image 0 vs its negative
    with_negatives = loss(images, texts, negatives, torch.tensor([True, True, True]))
    assert with_negatives.item() == pytest.approx(close / 3, abs=1e-6)
    # masking image 0's negative out leaves only far negatives: no change at all
    masked = loss(images, texts, negatives, torch.tensor([False, True, True]))
    assert masked.item() == base.item()
    # without a mask every negative counts
    assert loss(images, texts, negatives).item() == pytest.approx(close / 3, abs=1e-6)


def test_infonce_hard_negative_counts_only_where_close():
    images, texts, negatives = hard_negative_batch()
    loss = InfoNCELoss(learnable=False)
    base = loss(images, texts)
    assert loss(images, texts, negatives, torch.tensor([True, True, True])) > base + 0.1
    far_only = loss(images, texts, negatives, torch.tensor([False, True, True]))
    assert far_only > base  # a far negative still adds a little probability mass ...
    assert far_only.item() == pytest.approx(base.item(), abs=1e-5)  # ... but hardly any
    assert loss(images, texts, negatives, torch.tensor([False, False, False])).item() == pytest.approx(base.item())


def test_infonce_pair_term_by_hand():
    # scores: positives 0.07 (diagonal), other captions 0, image 0's swapped caption 0.14, image 1 has none;
    # at temperature 0.07 the pair term for image 0 is log(1 + e^(2 - 1)); image 1 adds nothing
    images, texts = torch.eye(2), 0.07 * torch.eye(2)
    negatives, mask = torch.tensor([[0.14, 0.0], [0.0, 0.0]]), torch.tensor([True, False])
    plain = InfoNCELoss(0.07, learnable=False)(images, texts, negatives, mask)
    paired = InfoNCELoss(0.07, learnable=False, pair_weight=0.5)(images, texts, negatives, mask)
    assert (paired - plain).item() == pytest.approx(0.5 * math.log1p(math.e), rel=1e-5)
    none = torch.tensor([False, False])
    assert InfoNCELoss(0.07, learnable=False, pair_weight=0.5)(images, texts, negatives, none).item() == \
        pytest.approx(InfoNCELoss(0.07, learnable=False)(images, texts).item())


@pytest.mark.parametrize("name", ["infonce", "hinge", "hinge-sum"])
def test_partially_masked_negatives_give_finite_gradients(name: str):
    # A batch where only some images have a hard negative (a JSONL file with optional negatives).
    torch.manual_seed(0)
    images = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    texts = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    negatives = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    loss_fn = make_loss(name, pair_weight=1.0)
    loss = loss_fn(images, texts, negatives, torch.tensor([True, False, True, False]))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [images.grad, texts.grad, negatives.grad] + [p.grad for p in loss_fn.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert negatives.grad[1].abs().sum() == 0 and negatives.grad[3].abs().sum() == 0  # masked rows get nothing


def test_infonce_by_hand():
    # scores 0.07 on the diagonal, 0 elsewhere, at temperature 0.07: logits = I, so each of the four
    # cross-entropies (2 rows, 2 columns) is -log(e / (e + 1)) = log(1 + e^-1)
    images, texts = torch.eye(2), 0.07 * torch.eye(2)
    assert InfoNCELoss(0.07)(images, texts).item() == pytest.approx(math.log1p(math.exp(-1)), rel=1e-5)


def test_infonce_temperature_is_capped_at_one_hundredth():
    images, texts = torch.eye(2), 0.05 * torch.eye(2)  # logits = scale * 0.05 on the diagonal
    assert InfoNCELoss(temperature=0.001)(images, texts).item() == pytest.approx(math.log1p(math.exp(-5)), rel=1e-5)


def test_infonce_is_symmetric():
    torch.manual_seed(1)
    images = F.normalize(torch.randn(5, 8), dim=1)
    texts = F.normalize(torch.randn(5, 8), dim=1)
    loss = InfoNCELoss()
    assert loss(images, texts).item() == pytest.approx(loss(texts, images).item(), rel=1e-6)


def test_infonce_decreases_as_positives_align():
    # caption i moves from image i+1 (cyclically) to image i as alpha goes from 0 to 1
    images = torch.eye(4)
    shifted = torch.roll(torch.eye(4), 1, dims=1)
    loss = InfoNCELoss(learnable=False)
    values = [loss(images, F.normalize(a * images + (1 - a) * shifted, dim=1)).item()
              for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(later < earlier for earlier, later in zip(values, values[1:])), values
    assert values[-1] < 1e-3


def test_infonce_temperature_is_learnable_or_fixed():
    assert InfoNCELoss(learnable=True).logit_scale.requires_grad
    assert not InfoNCELoss(learnable=False).logit_scale.requires_grad


def test_make_loss():
    assert isinstance(make_loss("infonce"), InfoNCELoss)
    hinge = make_loss("hinge", margin=0.3)
    assert isinstance(hinge, HingeLoss) and hinge.max_violation and hinge.margin == 0.3
    assert not make_loss("hinge-sum").max_violation


def test_unknown_loss_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown loss 'triplet'.*infonce, hinge, hinge-sum"):
        make_loss("triplet")
