"""What the photos model is trained with: frozen-trunk features of several augmented views per image computed
once (and kept on disk), the trunk's last stages trained on cached maps, GloVe word vectors and vocabulary, and
the pooled text encoders. On the tiny shapes set of test_train.py."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.core.checkpoint import load_model
from retrieval.core.evaluate import evaluate_model
from retrieval.core.features import build_feature_cache
from retrieval.core.model import DualEncoder
from retrieval.core.tokenizer import Vocabulary
from retrieval.core.train import seed_everything, train
from retrieval.core.transforms import normalize_uint8
from test_train import FAST, PER_CLASS, TINY, build_shapes, split_items

FROZEN = replace(TINY, freeze_backbone=True)
CACHED = replace(FAST, feature_cache=True, cache_views=3, crop_min_scale=0.5, crop_max_aspect=1.33)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shapes(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLSEARCH_THREADS", "1")
        yield


def _cache(model: DualEncoder, items, views: int, tail: int, folder: Path):  # type: ignore[no-untyped-def]
    return build_feature_cache(model.image, items, image_size=TINY.image_size, views=views, tail_stages=tail,
                               prepare=normalize_uint8, device=torch.device("cpu"), dtype=torch.float32,
                               min_scale=0.5, max_aspect=1.33, flip=True, seed=0, cache_dir=folder)


def test_views_are_computed_once_kept_on_disk_and_extended(shapes: Path, tmp_path: Path):
    items = split_items(shapes, "train", 12)
    model = DualEncoder(FROZEN, Vocabulary.build(["a"])).eval()
    before = torch.random.get_rng_state()
    two = _cache(model, items, 2, 1, tmp_path)
    # computing the crops leaves the global generator as it found it: training after a computed cache draws
    # the same numbers as after a cache read from disk
    assert torch.equal(torch.random.get_rng_state(), before)
    assert two.features.shape[:2] == (12, 2) and two.features.dtype == torch.float16
    assert not torch.equal(two.features[:, 0], two.features[:, 1])  # view 1 is an augmented crop
    three = _cache(model, items, 3, 1, tmp_path)  # only the third view is computed
    assert torch.equal(three.features[:, :2], two.features)
    assert len(list(tmp_path.glob("features-*.pt"))) == 1
    pooled = _cache(model, items, 3, 0, tmp_path)  # from the stored maps, through the last stage
    with torch.inference_mode():
        expected = model.image.tail_features(three.features[:, 0].float(), 1)
    assert pooled.features.shape == (12, 3, model.image.feature_dim)
    torch.testing.assert_close(pooled.features[:, 0].float(), expected, atol=2e-2, rtol=1e-2)
    assert len(list(tmp_path.glob("features-*.pt"))) == 2


def test_a_pooled_run_keeps_deeper_maps_for_a_later_tail_stage_run(shapes: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    """keep_stages: a frozen-trunk run (pooled features) also caches the maps one stage earlier, so a following
    run that trains that stage reads no image."""
    items = split_items(shapes, "train", 12)
    model = DualEncoder(FROZEN, Vocabulary.build(["a"])).eval()
    pooled = build_feature_cache(model.image, items, image_size=TINY.image_size, views=2, tail_stages=0,
                                 keep_stages=1, prepare=normalize_uint8, device=torch.device("cpu"),
                                 dtype=torch.float32, min_scale=0.5, max_aspect=1.33, flip=True, seed=0,
                                 cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*.pt"))) == 2  # the pooled features and the maps before them
    direct = _cache(model, items, 2, 0, tmp_path / "direct")
    torch.testing.assert_close(pooled.features.float(), direct.features.float(), atol=2e-2, rtol=1e-2)
    from retrieval.core import features

    def no_decoding(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(features, "load_rgb", no_decoding)
    maps = _cache(model, items, 2, 1, tmp_path)
    assert maps.features.shape[:2] == (12, 2) and maps.features.dim() == 5


def test_cached_views_train_the_last_stage_and_a_second_run_reuses_them(shapes: Path, tmp_path: Path):
    train_items, val_items = split_items(shapes, "train"), split_items(shapes, "val")
    config = replace(CACHED, tail_stages=1, feature_cache_dir=str(tmp_path / "cache"), epochs=2)
    first = train(train_items, val_items, FROZEN, config, tmp_path / "a.pt")
    stored = sorted(p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.pt"))
    second = train(train_items, val_items, FROZEN, config, tmp_path / "b.pt")
    assert first.identity == second.identity  # same views, same draws: the same model
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.pt")) == stored  # nothing recomputed
    seed_everything(config.seed)  # as train() does before building the model: the same initial trunk
    fresh, trained = DualEncoder(FROZEN, Vocabulary.build(["a"])).image.trunk, load_model(first.path).image.trunk
    head = len(trained) - 1
    assert all(torch.equal(a, b) for a, b in zip(fresh[:head].state_dict().values(),
                                                 trained[:head].state_dict().values()))  # frozen head
    assert not all(torch.equal(a, b) for a, b in zip(fresh[head:].parameters(), trained[head:].parameters()))
    metrics, _ = evaluate_model(first.path, shapes, split="test", device="cpu")
    assert metrics.t2i.r10 >= 3 * 100 * 10 / (12 * PER_CLASS["test"]), metrics


def test_glove_vectors_and_words_are_in_the_checkpoint(shapes: Path, tmp_path: Path):
    rng = np.random.default_rng(0)
    words = ["a", "there", "is", "red", "crimson", "circle", "the", "42", "zebra"]
    vectors = rng.normal(size=(len(words), 8)).astype(np.float32)
    glove = tmp_path / "glove.txt"
    glove.write_text("".join(f"{w} {' '.join(f'{v:.5f}' for v in row)}\n" for w, row in zip(words, vectors)))
    config = replace(FAST, epochs=1, glove=str(glove), glove_words=3, freeze_embeddings=True)
    result = train(split_items(shapes, "train"), split_items(shapes, "val"), replace(TINY, word_dim=8), config,
                   tmp_path / "glove.pt")
    glove.unlink()  # queries never need the GloVe file
    model = load_model(result.path)
    assert model.vocab.words[-3:] == ["crimson", "the", "zebra"]  # the 3 most frequent missing ("42": no letters)
    weight = model.text.embed.weight.detach()
    for word in ("red", "crimson", "circle"):
        np.testing.assert_allclose(weight[model.vocab.encode(word)[0]].numpy(), vectors[words.index(word)], atol=1e-4)
    assert model.vocab.unknown_words("a crimson zebra") == []


def test_glove_of_another_size_is_one_clear_error(shapes: Path, tmp_path: Path):
    from retrieval.core.errors import ConfigError

    glove = tmp_path / "glove.txt"
    glove.write_text("red 0.1 0.2\ncircle 0.3 0.4\n")
    with pytest.raises(ConfigError, match="2-dimensional vectors; set word_dim to 2"):
        train(split_items(shapes, "train", 4), split_items(shapes, "val", 4), TINY, replace(FAST, glove=str(glove)),
              tmp_path / "x.pt")


@pytest.mark.parametrize("kind", ["pool", "gru-pool"])
def test_the_pooled_text_encoders_learn(shapes: Path, tmp_path: Path, kind: str):
    config = replace(FROZEN, text_encoder=kind, bidirectional=kind == "gru-pool")
    result = train(split_items(shapes, "train"), split_items(shapes, "val"), config,
                   replace(CACHED, epochs=4, lr=5e-3), tmp_path / "pool.pt")
    model = load_model(result.path)
    assert model.text.kind == kind and hasattr(model.text, "gru") == (kind == "gru-pool")
    metrics, _ = evaluate_model(result.path, shapes, split="test", device="cpu")
    assert metrics.t2i.r10 >= 3 * 100 * 10 / (12 * PER_CLASS["test"]), metrics


@pytest.mark.parametrize("kind", ["pool", "gru-pool"])
def test_the_pooled_text_encoders_give_the_fusion_head_their_word_states(kind: str):
    """A photos-style model (pooled text encoder) can carry a re-ranking head: per-word states are the word
    layer's (or the GRU's) outputs beside the embeddings, zero past each caption, and the sentence vector is
    forward()'s."""
    vocab = Vocabulary.build(["a red circle", "a big blue square on grass"])
    model = DualEncoder(replace(FROZEN, text_encoder=kind, bidirectional=True, fusion_dim=8), vocab).eval()
    tokens, lengths = model.tokenize(["a red circle", "a big blue square on grass"])
    with torch.inference_mode():
        vectors, states = model.text.with_words(tokens, lengths)
        torch.testing.assert_close(vectors, model.encode_text(tokens, lengths))
        assert states.shape == (2, tokens.shape[1], model.text.state_dim)
        assert not states[0, 3:].any() and states[0, :3].abs().sum(-1).gt(0).all()
        sentence, words = model.encode_text_words(tokens, lengths)
        assert words.shape == (2, tokens.shape[1], 8)
