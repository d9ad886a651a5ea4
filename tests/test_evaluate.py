"""Retrieval metrics on hand-built similarity matrices, folds, and the encoding of an evaluation set."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.core.evaluate import EvalResult, Recall, embed_set, folded_metrics, i2t_ranks, recall_metrics, t2i_ranks

# 3 images x 2 captions; rows are captions, columns images. caption_image = [0, 0, 1, 1, 2, 2]
SIMILARITY = np.array([
    #  img0  img1  img2
    [0.90, 0.10, 0.20],  # c0 -> img0: nothing above 0.90                 t2i rank 0
    [0.30, 0.50, 0.40],  # c1 -> img0: 0.50 and 0.40 above 0.30           t2i rank 2
    [0.20, 0.80, 0.10],  # c2 -> img1: best                               t2i rank 0
    [0.60, 0.70, 0.10],  # c3 -> img1: best                               t2i rank 0
    [0.50, 0.40, 0.30],  # c4 -> img2: 0.50 and 0.40 above 0.30           t2i rank 2
    [0.10, 0.60, 0.35],  # c5 -> img2: 0.60 above 0.35                    t2i rank 1
])
CAPTION_IMAGE = np.array([0, 0, 1, 1, 2, 2])
# i2t, reading columns: img0 [.9 .3 .2 .6 .5 .1], own best c0 = .9 -> rank 0
#                       img1 [.1 .5 .8 .7 .4 .6], own best c2 = .8 -> rank 0
#                       img2 [.2 .4 .1 .1 .3 .35], own best c5 = .35; only c1's .4 is above -> rank 1
#                       (its other caption c4 = .3 would rank 2: the best-ranked caption counts)


def test_t2i_ranks_by_hand():
    assert t2i_ranks(SIMILARITY, CAPTION_IMAGE).tolist() == [0, 2, 0, 0, 2, 1]


def test_i2t_ranks_use_the_best_ranked_caption():
    assert i2t_ranks(SIMILARITY, CAPTION_IMAGE).tolist() == [0, 0, 1]


def test_recall_metrics_by_hand():
    result = recall_metrics(SIMILARITY, CAPTION_IMAGE)
    # t2i ranks [0, 2, 0, 0, 2, 1]: 3 of 6 at rank 0; median of 0-based ranks 0.5 -> floor 0 -> medr 1;
    # mean 5/6 -> meanr 1 + 5/6
    assert result.t2i == Recall(r1=50.0, r5=100.0, r10=100.0, medr=1.0, meanr=pytest.approx(1 + 5 / 6))
    # i2t ranks [0, 0, 1]
    assert result.i2t == Recall(r1=pytest.approx(200 / 3), r5=100.0, r10=100.0, medr=1.0, meanr=pytest.approx(4 / 3))
    assert result.rsum == pytest.approx(50 + 100 + 100 + 200 / 3 + 100 + 100)
    assert (result.images, result.captions) == (3, 6)


def test_recall_at_5_and_10_and_ranks_are_one_based():
    # 12 images, one caption each; caption i has exactly i wrong images above its own (0-based rank i)
    n = 12
    similarity = np.zeros((n, n))
    for i in range(n):
        similarity[i, i] = 0.5
        others = [j for j in range(n) if j != i][:i]
        similarity[i, others] = 1.0
    caption_image = np.arange(n)
    assert t2i_ranks(similarity, caption_image).tolist() == list(range(n))
    t2i = recall_metrics(similarity, caption_image).t2i
    assert t2i.r1 == pytest.approx(100 / 12)
    assert t2i.r5 == pytest.approx(500 / 12)
    assert t2i.r10 == pytest.approx(1000 / 12)
    assert t2i.medr == 6.0  # median of 0..11 is 5.5 -> floor 5 -> 1-based 6
    assert t2i.meanr == 6.5


def test_perfect_retrieval():
    similarity = np.eye(4)
    result = recall_metrics(similarity, np.arange(4))
    assert result.t2i == result.i2t == Recall(100.0, 100.0, 100.0, 1.0, 1.0)
    assert result.rsum == 600.0


def test_to_dict_schema():
    data = recall_metrics(SIMILARITY, CAPTION_IMAGE).to_dict()
    assert set(data) == {"t2i", "i2t", "rsum", "images", "captions"}
    assert set(data["t2i"]) == set(data["i2t"]) == {"r1", "r5", "r10", "medr", "meanr"}


def random_set(images: int, captions_per_image: int, dim: int = 8, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    image_vectors = rng.normal(size=(images, dim)).astype(np.float32)
    caption_image = np.repeat(np.arange(images), captions_per_image)
    # captions near their image, so the metrics are neither 0 nor perfect
    caption_vectors = image_vectors[caption_image] + rng.normal(scale=1.5, size=(len(caption_image), dim))
    return image_vectors, caption_vectors.astype(np.float32), caption_image


def test_folded_metrics_with_one_fold_is_the_whole_set():
    images, captions, caption_image = random_set(10, 2)
    assert folded_metrics(images, captions, caption_image) == recall_metrics(captions @ images.T, caption_image)


def test_folded_metrics_average_the_folds():
    images, captions, caption_image = random_set(10, 2)
    # fold 0: images 0-4 and their captions 0-9; fold 1: images 5-9 and captions 10-19
    fold0 = recall_metrics(captions[:10] @ images[:5].T, caption_image[:10])
    fold1 = recall_metrics(captions[10:] @ images[5:].T, caption_image[10:] - 5)
    assert fold0 != fold1  # otherwise averaging proves nothing
    result = folded_metrics(images, captions, caption_image, folds=2)
    for direction in ("t2i", "i2t"):
        for field in ("r1", "r5", "r10", "medr", "meanr"):
            expected = (getattr(getattr(fold0, direction), field) + getattr(getattr(fold1, direction), field)) / 2
            assert getattr(getattr(result, direction), field) == pytest.approx(expected), (direction, field)
    assert result.rsum == pytest.approx((fold0.rsum + fold1.rsum) / 2)
    assert (result.images, result.captions) == (10, 20)  # counts are of the whole set


def test_folded_metrics_are_easier_than_the_whole_set():
    images, captions, caption_image = random_set(40, 1, seed=3)
    whole = folded_metrics(images, captions, caption_image)
    folded = folded_metrics(images, captions, caption_image, folds=4)
    assert isinstance(folded, EvalResult)
    assert folded.t2i.meanr < whole.t2i.meanr  # 10 candidates per query instead of 40


def test_embed_set_with_a_tiny_model():
    import torch

    from retrieval.core.captions import ImageCaptions
    from retrieval.core.config import ModelConfig
    from retrieval.core.model import DualEncoder
    from retrieval.core.tokenizer import Vocabulary

    torch.manual_seed(0)
    config = ModelConfig(backbone="resnet18", image_size=32, embed_dim=32, word_dim=32, hidden_size=32)
    items = [ImageCaptions(Path("a.png"), ["a red circle", "there is a red circle"]),
             ImageCaptions(Path("b.png"), ["a blue square"]),
             ImageCaptions(Path("c.png"), ["a green triangle", "a triangle", "green"])]
    model = DualEncoder(config, Vocabulary.build(c for item in items for c in item.captions)).eval()
    pixels = torch.randn(len(items), 3, 32, 32)
    images, texts, caption_image = embed_set(model, items, lambda idx: model.encode_image(pixels[idx.start:idx.stop]),
                                             torch.device("cpu"), torch.float32, batch_size=2)
    assert images.shape == (3, 32) and texts.shape == (6, 32)
    assert caption_image.tolist() == [0, 0, 1, 2, 2, 2]
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(texts[2], model.encode_captions(["a blue square"])[0].detach().numpy(), atol=1e-6)
