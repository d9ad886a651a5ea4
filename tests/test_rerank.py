"""Two-stage search: the fusion head (retrieval.core.fusion), its training, and re-ranking in SearchEngine.

A tiny dual encoder is trained on generated scenes *without* hard-negative captions (so it binds attributes
poorly), then a fusion head on top of it with the captions' swaps as negatives; the head must prefer true
captions over their swaps more often than the dual encoder on held-out scenes. Searches with a head:
re-ranked results are a permutation of the first stage's top N, filters still hold, and an index built
without a head answers from the first stage.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from indexer.pipeline import build_index
from retrieval.core.checkpoint import checkpoint_summary, load_model, read_checkpoint
from retrieval.core.config import ModelConfig, TrainConfig
from retrieval.core.errors import ConfigError, QueryError
from retrieval.core.fusion import DEFAULT_DEPTH, dequantize_regions, quantize_regions
from retrieval.core.fusion_train import (BANK_SHARPNESS_CHOICES, BANK_WEIGHT_CHOICES, MIX_CHOICES, _draw, fusion_recall,
                                         train_fusion, word_vectors)
from retrieval.core.model import DualEncoder
from retrieval.core.scenes.corpus import export_corpus, load_records, training_items
from retrieval.core.scenes.quality import swap_pairs
from retrieval.app.search import SearchEngine
from retrieval.core.train import train

pytestmark = pytest.mark.usefixtures("one_training_thread")
SIZE = 48  # 3x3 regions at the end of layer3
MODEL = ModelConfig(backbone="resnet18", image_size=SIZE, pool="grid2", drop_stages=1, embed_dim=32, word_dim=24,
                    hidden_size=32)
FUSED = ModelConfig(fusion_dim=16)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    export_corpus(folder, 700, seed=3, image_size=SIZE, splits=(500, 50, 150))
    return folder


def split(folder: Path, name: str, negatives: bool) -> list:
    records = [r for r in load_records(folder).values() if r.split == name]
    return training_items(folder, records, negatives)


@pytest.fixture(scope="module")
def models(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the dual encoder, the same file plus a trained fusion head)."""
    out = tmp_path_factory.mktemp("fusion")
    config = TrainConfig(epochs=4, batch_size=50, lr=2e-3, augment=False, warmup_epochs=0.5, workers=0,
                         device="cpu", precision="fp32", seed=0, captions_per_image=2)
    train(split(scenes, "train", False), split(scenes, "val", False), MODEL, config, out / "dual.pt")
    head_config = TrainConfig(epochs=10, batch_size=32, lr=3e-3, seed=0, fusion_negatives=7)
    train_fusion(load_model(out / "dual.pt"), split(scenes, "train", True), split(scenes, "val", False), FUSED,
                 head_config, out / "fused.pt", base=out / "dual.pt")
    return out / "dual.pt", out / "fused.pt"


def swap_probe(model: DualEncoder, scenes: Path) -> tuple[float, float]:
    """How often the dual encoder, and the head, score a held-out scene's caption above its attribute swap."""
    records = [r for r in load_records(scenes).values() if r.split == "test"]
    pairs = swap_pairs(records)
    items = training_items(scenes, records, False)
    from retrieval.core.fusion_train import encode_maps

    images, _ = encode_maps(model, items)
    index = torch.tensor([p[0] for p in pairs])
    true_v, true_w, true_l = word_vectors(model, [p[1] for p in pairs])
    false_v, false_w, false_l = word_vectors(model, [p[2] for p in pairs])
    with torch.inference_mode():
        regions = model.fusion.regions(images.maps.float())[index]
        first_true, first_false = (true_v * images.vectors[index]).sum(-1), (false_v * images.vectors[index]).sum(-1)
        fused_true = model.fusion.score(true_w, true_l, regions, first_true)
        fused_false = model.fusion.score(false_w, false_l, regions, first_false)
    assert len(pairs) > 300
    assert torch.all(fused_true.abs() <= 1 + 1e-5)  # a score lives on the cosine scale
    return float((first_true > first_false).float().mean()), float((fused_true > fused_false).float().mean())


def test_the_head_binds_attributes_better_than_the_dual_encoder(scenes: Path, models: tuple[Path, Path]) -> None:
    dual, fused = swap_probe(load_model(models[1]), scenes)
    assert fused > dual + 0.03, (dual, fused)


def test_the_head_ships_in_the_checkpoint_and_leaves_the_dual_encoder_as_stored(models: tuple[Path, Path]) -> None:
    dual, fused = read_checkpoint(models[0]), read_checkpoint(models[1])
    assert fused["identity"] == dual["identity"] and fused["fusion_identity"]
    for key, tensor in dual["state_dict"].items():
        assert torch.equal(fused["state_dict"][key], tensor), key
    assert any(key.startswith("fusion.") for key in fused["state_dict"])
    assert load_model(models[0]).fusion is None  # a model without a head loads as before
    text_only = load_model(models[1], with_image=False)
    assert text_only.fusion is not None and text_only.fusion.regions is None
    assert checkpoint_summary(models[1])["config"]["fusion_dim"] == FUSED.fusion_dim


def test_rerank_recall_reports_both_stages(scenes: Path, models: tuple[Path, Path]) -> None:
    first, second = fusion_recall(load_model(models[1]), split(scenes, "test", False), depth=10)
    assert first.captions == second.captions == 750
    assert second.t2i.r10 == pytest.approx(first.t2i.r10)  # re-ordering the top 10 keeps the top 10's set
    assert second.i2t == first.i2t


def test_a_head_trained_alone_takes_the_mix_that_ranks_validation_best(scenes: Path, models: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    val = split(scenes, "val", False)
    config = TrainConfig(epochs=2, batch_size=32, lr=3e-3, seed=0, fusion_negatives=7, fusion_mix_on_validation=True)
    best = train_fusion(load_model(models[0]), split(scenes, "train", True), val, FUSED, config, tmp_path / "alone.pt",
                        base=models[0])
    model = load_model(tmp_path / "alone.pt")
    chosen = float(model.fusion.mix.detach())
    assert min(abs(chosen - m) for m in MIX_CHOICES) < 1e-3 and chosen == pytest.approx(best["mix"], abs=1e-3)
    recall = {}
    for mix in (MIX_CHOICES[0], chosen, MIX_CHOICES[-1]):
        with torch.no_grad():
            model.fusion.mix_logit.fill_(math.log(mix / (1 - mix)))
        t2i = fusion_recall(model, val, depth=DEFAULT_DEPTH)[1].t2i
        recall[mix] = (t2i.r1, t2i.r10)
    assert recall[chosen] == max(recall.values())  # R@1 first, then R@10: what the choice maximises


@pytest.fixture(scope="module")
def banked(scenes: Path, models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained head given a query bank of 40 training captions and nothing else (--epochs 0): its mix and
    the bank's weight chosen on validation."""
    path = tmp_path_factory.mktemp("banked") / "banked.pt"
    config = TrainConfig(epochs=0, seed=0)
    train_fusion(load_model(models[1]), split(scenes, "train", True), split(scenes, "val", False),
                 ModelConfig(fusion_dim=16, fusion_bank=40), config, path, base=models[1])
    return path


def test_a_query_bank_holds_training_captions_and_its_weight_is_chosen_on_validation(
        scenes: Path, models: tuple[Path, Path], banked: Path) -> None:
    model, before = load_model(banked), load_model(models[1])
    head = model.fusion
    # --epochs 0 changed nothing else, and the bank is not part of what the index's regions depend on
    assert model.fusion_identity == before.fusion_identity and model.identity == before.identity
    assert all(torch.equal(value, before.fusion.state_dict()[key]) for key, value in head.state_dict().items()
               if not key.startswith("bank"))
    assert model.config.fusion_bank == 40 and head.bank.shape == (40, model.config.embed_dim)
    captions = [c for item in split(scenes, "train", False) for c in item.captions]
    vectors = word_vectors(model, captions)[0]
    assert (head.bank @ vectors.T).max(dim=1).values.min() > 0.999  # each row is a training caption's vector
    chosen = (float(head.mix.detach()), float(head.bank_sharpness), float(head.bank_weight))
    assert chosen[1] in BANK_SHARPNESS_CHOICES and chosen[2] in BANK_WEIGHT_CHOICES
    val = split(scenes, "val", False)
    recall = {}
    for weight in BANK_WEIGHT_CHOICES:
        head.bank_weight.fill_(weight)
        t2i = fusion_recall(model, val, depth=DEFAULT_DEPTH)[1].t2i
        recall[weight] = (t2i.r1, t2i.r10)
    assert recall[chosen[2]] == max(recall.values())  # at its mix and the chosen sharpness, no weight ranks better


def test_a_query_bank_goes_on_a_trained_head_or_with_the_mix_chosen_on_validation(
        scenes: Path, models: tuple[Path, Path], tmp_path: Path) -> None:
    captions = sum(len(item.captions) for item in split(scenes, "train", True)[:10])
    for model, bank, epochs, message in ((models[1], 5, 1, "needs --fusion-mix-on-validation"),
                                         (models[1], 0, 0, "only adds a query bank"),
                                         (models[0], 5, 0, "only adds a query bank"),  # to a head it has
                                         (models[1], captions + 1, 0, f"has only {captions} captions")):
        with pytest.raises(ConfigError, match=message):
            train_fusion(load_model(model), split(scenes, "train", True)[:10], split(scenes, "val", False)[:5],
                         ModelConfig(fusion_dim=16, fusion_bank=bank), TrainConfig(epochs=epochs), tmp_path / "x.pt")
    with pytest.raises(ConfigError, match="--epochs 0 trains nothing"):  # a dual encoder must train
        train(split(scenes, "train", False)[:10], split(scenes, "val", False)[:5], MODEL, TrainConfig(epochs=0),
              tmp_path / "y.pt")


def test_search_lowers_each_candidate_by_its_hubness_over_the_bank(indexed: Path, banked: Path) -> None:
    """On the index built before the head had a bank: the same query with the bank's weight at 0 and at 1,
    every re-ranked score drops by exactly the candidate's hubness, log(sum exp(sharpness x cosine to each bank
    caption)) / sharpness, computed here from the index's stored vector; the candidates stay the first stage's."""
    with SearchEngine.open(indexed, model=banked) as engine:
        head = engine._text_model.fusion
        scores = {}
        for weight in (0.0, 1.0):
            head.bank_weight.fill_(weight)
            hits = engine.search("a small red circle", k=30, rerank=30)
            assert [h.stage for h in hits] == ["rerank"] * 30
            scores[weight] = {h.id: h.score for h in hits}
        assert set(scores[0.0]) == set(scores[1.0]) == {h.id for h in engine.search("a small red circle", k=30,
                                                                                      rerank=0)}
        ids, vectors = engine.store.vectors(list(scores[0.0]))
        sharpness = float(head.bank_sharpness)
        hubness = torch.logsumexp(sharpness * torch.from_numpy(vectors) @ head.bank.T, dim=1) / sharpness
        assert [scores[0.0][i] - scores[1.0][i] for i in ids.tolist()] == pytest.approx(hubness.tolist(), abs=1e-5)
        assert hubness.std() > 1e-3  # images differ in hubness, so the bank can re-order them


def test_quantized_regions_keep_their_direction() -> None:
    regions = torch.nn.functional.normalize(torch.randn(5, 9, 64), dim=-1)
    codes = quantize_regions(regions)
    assert codes.dtype == torch.int8 and codes.numel() == 5 * 9 * 64
    assert ((dequantize_regions(codes) * regions).sum(-1) > 0.999).all()


def test_two_region_stages_put_the_finer_map_beside_the_last_one_repeated(models: tuple[Path, Path]) -> None:
    image = load_model(models[0]).image.eval()
    pixels = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        vectors, last = image.with_map(pixels)
        same, both = image.with_map(pixels, 2)
        before = image.trunk[:-1](pixels)  # layer2: 6x6 at 48 px
    assert torch.allclose(vectors, same)  # the first stage's vectors do not depend on the region map
    assert last.shape == (2, 256, 3, 3) and both.shape == (2, 128 + 256, 6, 6)
    assert image.region_channels(1) == 256 and image.region_channels(2) == 128 + 256
    assert torch.allclose(both[:, :128], before)
    assert torch.allclose(both[:, 128:, 4, 1], last[:, :, 2, 0])  # each layer3 cell covers 2x2 of layer2's
    with pytest.raises(ConfigError, match="fusion_region_stages"):
        image.with_map(pixels, len(image.trunk))
    with pytest.raises(ConfigError, match="fusion_region_stages"):
        image.region_channels(len(image.trunk))  # what building a head with that setting asks first


def test_a_widened_head_projects_as_before_until_it_trains(models: tuple[Path, Path], scenes: Path,
                                                           tmp_path: Path) -> None:
    """A head given a second region stage starts from the one it was (the new channels' weights are zero);
    trained, it still binds attributes, an index stores 4x the regions and search re-ranks from them; the dual
    encoder stays as stored."""
    model = load_model(models[1])
    projector = model.fusion.regions
    old = projector.proj
    features = torch.randn(5, 256)
    with torch.no_grad():
        expected = old(features)
        projector.widen(128)
        assert torch.allclose(projector.proj(torch.cat([torch.randn(5, 128), features], dim=1)), expected, atol=1e-5)
    config = TrainConfig(epochs=1, batch_size=32, lr=3e-3, seed=0, fusion_negatives=7)
    train_fusion(load_model(models[1]), split(scenes, "train", True), split(scenes, "val", False),
                 ModelConfig(fusion_dim=16, fusion_region_stages=2), config, tmp_path / "wide.pt", base=models[1])
    wide = load_model(tmp_path / "wide.pt")
    assert wide.config.fusion_region_stages == 2 and wide.identity == load_model(models[1]).identity
    assert wide.fusion_identity != load_model(models[1]).fusion_identity
    dual, fused = swap_probe(wide, scenes)
    assert fused > dual + 0.03, (dual, fused)
    build_index(scenes / "images", tmp_path / "idx", model=tmp_path / "wide.pt", workers=0, batch_size=64)
    with SearchEngine.open(tmp_path / "idx", model=tmp_path / "wide.pt") as engine:
        blobs = engine.store.regions([h.id for h in engine.search("a red circle", k=3, rerank=20)])
        assert [len(blob) for blob in blobs.values()] == [36 * 16] * 3  # 6x6 regions of 16 int8 codes each
        assert [h.stage for h in engine.search("a red circle", k=3, rerank=20)] == ["rerank"] * 3


@pytest.fixture(scope="module")
def indexed(scenes: Path, models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    index = tmp_path_factory.mktemp("index") / "idx"
    summary = build_index(scenes / "images", index, model=models[1], workers=0, batch_size=64)
    assert summary.added == 700
    return index


def test_rerank_is_a_permutation_of_the_first_stage_top_n(indexed: Path, models: tuple[Path, Path]) -> None:
    with SearchEngine.open(indexed, model=models[1]) as engine:
        assert engine.store.region_count() == 700
        query = "a red circle left of a blue square"
        first = engine.search(query, k=30, rerank=0)
        second = engine.search(query, k=30, rerank=30)
        default = engine.search(query, k=5)
        assert [h.stage for h in first] == ["first"] * 30 and all(h.first_score is None for h in first)
        assert sorted(h.id for h in second) == sorted(h.id for h in first)
        assert all(h.stage == "rerank" for h in second)
        assert {h.id: h.first_score for h in second} == pytest.approx({h.id: h.score for h in first})
        # one text pass serves both stages: its vector is the one encode_text gives
        assert [(h.id, h.score) for h in engine.search_vector(engine.encode_text([query])[0], 30)] == \
            [(h.id, pytest.approx(h.score, abs=1e-6)) for h in first]
        assert [h.score for h in second] == sorted((h.score for h in second), reverse=True)
        assert [h.id for h in second] != [h.id for h in first]  # it did re-order
        assert default[0].stage == "rerank"  # on by default when the model has a head
        top = engine.search(query, k=5, rerank=30)
        assert [h.id for h in top] == [h.id for h in second[:5]]
        with pytest.raises(QueryError):
            engine.search(query, rerank=-1)


@pytest.mark.parametrize("where,glob", [("id % 3 = 0", None), (None, "*1.png"), ("id < 200", "*0*")])
def test_rerank_keeps_the_filters(indexed: Path, models: tuple[Path, Path], where: str | None,
                                  glob: str | None) -> None:
    with SearchEngine.open(indexed, model=models[1]) as engine:
        allowed = set(engine.store.ids_matching(where, glob).tolist())
        hits = engine.search("a large green star", k=20, where=where, glob=glob, rerank=50)
        first = engine.search("a large green star", k=50, where=where, glob=glob, rerank=0)
        assert hits and {h.id for h in hits} <= allowed
        assert {h.id for h in hits} <= {h.id for h in first}


def test_an_index_without_regions_answers_from_the_first_stage(scenes: Path, models: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    build_index(scenes / "images", tmp_path / "plain", model=models[0], workers=0, batch_size=64)
    with SearchEngine.open(tmp_path / "plain", model=models[1]) as engine:  # same identity: the index accepts it
        assert engine.store.region_count() == 0
        hits = engine.search("a red circle", k=5)
        assert [h.stage for h in hits] == ["first"] * 5
        assert [h.stage for h in engine.search("a red circle", k=5, rerank=20)] == ["first"] * 5


def test_a_fusion_stage_needs_a_head_size(scenes: Path, models: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fusion-dim"):
        train_fusion(load_model(models[0]), split(scenes, "train", True)[:10], split(scenes, "val", False)[:5],
                     ModelConfig(), TrainConfig(epochs=1), tmp_path / "x.pt")


def test_hard_negatives_are_drawn_from_the_first_stage_pool() -> None:
    """With a pool larger than the negatives per caption, each row gets its own random choice of distinct
    candidates from its own pool, different from step to step; a pool of exactly K is used whole."""
    torch.manual_seed(0)
    pool = torch.arange(40).reshape(4, 10)  # row r holds 10r .. 10r + 9
    first, second = _draw(pool, 3), _draw(pool, 3)
    assert first.shape == (4, 3)
    for row, drawn in enumerate(first.tolist()):
        assert len(set(drawn)) == 3 and all(10 * row <= image < 10 * row + 10 for image in drawn)
    assert not torch.equal(first, second)
    assert torch.equal(_draw(pool[:, :3], 3), pool[:, :3])


def test_a_recipe_fusion_stage_adds_a_head_to_its_init_model(scenes: Path, models: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    from retrieval.core.config import DataConfig
    from retrieval.core.recipe import Recipe, train_recipe

    recipe = Recipe(data=DataConfig(captions=str(scenes / "captions.jsonl")), model=ModelConfig(fusion_dim=8),
                    train=TrainConfig(fusion_stage=True, epochs=1, batch_size=64, lr=3e-3, fusion_negatives=3,
                                       fusion_negative_pool=6))
    result = train_recipe(recipe, tmp_path / "staged.pt", init=models[0])
    model = load_model(tmp_path / "staged.pt")
    assert result.identity == model.identity == read_checkpoint(models[0])["identity"]
    assert model.fusion is not None and model.config.fusion_dim == 8 and model.fusion_identity


def test_eval_rerank_prints_both_stages(scenes: Path, models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import run_main

    code, out, err = run_main(monkeypatch, capsys, "eval", "--model", models[1], "--captions",
                              scenes / "captions.jsonl", "--rerank", 10)
    assert code == 0, err
    rows = {line.split()[0] + (" rerank" if "rerank" in line.split()[:2] else ""): line for line in out.splitlines()}
    assert "t2i rerank" in rows and "t2i" in rows and "i2t" in rows
    code, out, err = run_main(monkeypatch, capsys, "eval", "--model", models[0], "--captions",
                              scenes / "captions.jsonl", "--rerank", 10)
    assert code != 0 and "has no fusion head" in err
