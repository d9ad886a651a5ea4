"""Recipes: the shipped scenes recipe runs (a small version) through ``vlsearch train --recipe``, stages
continue from each other, command-line options override only what they name, and bad recipes are one line."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from retrieval.core.checkpoint import checkpoint_summary, load_model, read_checkpoint
from retrieval.app.cli import cli
from retrieval.core.config import DataConfig, ModelConfig, TrainConfig
from retrieval.core.errors import ConfigError
from retrieval.core.recipe import Recipe, StageEvent, load_recipe, parse_stages, train_recipe

ROOT = Path(__file__).resolve().parents[1]
SCENES_RECIPE = ROOT / "data" / "scenes.recipe.json"
# a few hundred generated scenes and one epoch: the shipped recipe in seconds
SMALL = ["--scenes", "160", "--scene-val", "16", "--scene-test", "0", "--epochs", "1", "--workers", "0",
         "--device", "cpu", "--precision", "fp32"]


pytestmark = pytest.mark.usefixtures("one_training_thread")


def test_the_scenes_recipe_describes_the_shipped_model():
    recipe = load_recipe(SCENES_RECIPE)
    # the scenes model's measurements (data/default_model.json while it is the default model)
    metrics = next(ROOT / "data" / name for name in ("scenes.json", "default_model.json")
                   if (ROOT / "data" / name).is_file())
    shipped = json.loads(metrics.read_text())
    assert asdict(recipe.model) == ModelConfig.from_dict(shipped["model_config"]).__dict__
    recorded = {k: v for k, v in shipped["train_config"].items() if k not in ("workers", "device")}
    assert {k: getattr(recipe.train, k) for k in recorded} == recorded
    assert (recipe.data.scenes, recipe.train.epochs, recipe.train.lr) == (20000, 6, 1e-3)  # "20000:6:1e-3"
    assert len(recipe.stage_configs()) == 1


def test_the_scenes_recipe_runs_small(tmp_path: Path):
    out = tmp_path / "scenes.pt"
    result = CliRunner().invoke(cli, ["train", "--recipe", str(SCENES_RECIPE), "--out", str(out),
                                      "--scene-dir", str(tmp_path / "corpus"), *SMALL])
    assert result.exit_code == 0, result.output
    assert "training on 160 images / 800 captions, validating on 16 images" in result.stderr
    recipe = load_recipe(SCENES_RECIPE)
    summary = checkpoint_summary(out)
    assert summary["config"] == asdict(recipe.model)
    # given on the command line: taken; not given: the recipe's, not the options' defaults
    assert summary["train_config"]["epochs"] == 1
    assert (summary["train_config"]["captions_per_image"], summary["train_config"]["pair_weight"]) == (3, 1.0)
    assert summary["identity"] in result.stdout
    weights = read_checkpoint(out)["state_dict"]
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}  # save_half
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "scenes.pt"]


def test_stages_continue_from_each_other(tmp_path: Path):
    recipe = Recipe(data=DataConfig(scenes=48, scene_val=8, scene_test=0, scene_dir=str(tmp_path / "corpus")),
                    model=ModelConfig(image_size=32, embed_dim=16, word_dim=16, hidden_size=16),
                    train=TrainConfig(epochs=1, batch_size=16, augment=False, workers=0, device="cpu", seed=3),
                    stages=parse_stages([{"lr": 1e-3}, {"model": {"freeze_backbone": True, "embed_dim": 99},
                                                        "feature_cache": True, "epochs": 2, "scenes": 64}], "test"))
    events: list[object] = []
    result = train_recipe(recipe, tmp_path / "m.pt", events.append)
    stages = [e for e in events if isinstance(e, StageEvent)]
    assert [(e.number, e.stages, e.train_images) for e in stages] == [(1, 2, 48), (2, 2, 64)]
    summary = checkpoint_summary(result.path)
    # the second stage continued the first: its architecture (embed_dim 16), its freezing, its settings
    assert summary["config"]["embed_dim"] == 16 and summary["config"]["freeze_backbone"] is True
    assert (summary["train_config"]["epochs"], summary["train_config"]["lr"]) == (2, 2e-4)
    assert summary["train_config"]["seed"] == 3
    assert len(result.history) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "m.pt"]  # stage 1's file is gone


def test_command_line_stages_and_init(tmp_path: Path):
    corpus = ["--scenes", "32", "--scene-val", "8", "--scene-test", "0", "--scene-dir", str(tmp_path / "c"),
              "--image-size", "32", "--embed-dim", "16", "--word-dim", "16", "--hidden-size", "16",
              "--batch-size", "16", "--no-augment", "--workers", "0", "--device", "cpu"]
    first = tmp_path / "first.pt"
    result = CliRunner().invoke(cli, ["train", "--out", str(first), "--epochs", "1", *corpus])
    assert result.exit_code == 0, result.output
    second = tmp_path / "second.pt"
    result = CliRunner().invoke(cli, ["train", "--out", str(second), "--init", str(first), *corpus,
                                      "--stages", '[{"epochs": 1}, {"freeze_backbone": true, "feature_cache": true}]'])
    assert result.exit_code == 0, result.output
    assert "stage 1 of 2" in result.stderr and "stage 2 of 2" in result.stderr
    before, after = load_model(first), load_model(second)
    assert after.vocab.to_list() == before.vocab.to_list()
    assert after.config.freeze_backbone and not before.config.freeze_backbone


def test_command_line_overrides_only_what_it_names():
    recipe = Recipe(train=TrainConfig(epochs=6, lr=1e-3), stages=[{"epochs": 2}, {"lr": 5e-4, "seed": 1}])
    overridden = recipe.override({"epochs": 1, "pool": "grid2"})
    assert [(t.epochs, t.lr, t.seed) for _, _, t in overridden.stage_configs()] == [(1, 1e-3, 0), (1, 5e-4, 1)]
    assert all(m.pool == "grid2" for _, m, _ in overridden.stage_configs())


def write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "r.recipe.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a JSON recipe"),
    ([1, 2], "a recipe is a JSON object"),
    ({"modle": {}}, "unknown key 'modle' (did you mean 'model'?)"),
    ({"model": {"bakbone": "resnet18"}}, "model.bakbone: unknown field (did you mean 'backbone'?)"),
    ({"model": {"epochs": 3}}, "model.epochs: unknown field"),
    ({"model": {"pool": "max"}}, "model.pool: 'max' is not one of 'avg', 'grid2'"),
    ({"train": {"lr": "fast"}}, "train.lr: expected a number, got 'fast'"),
    ({"train": {"epochs": -1}}, "train.epochs: -1 is not in the range 0<=x<=100000"),
    ({"train": {"augment": "no"}}, "train.augment: expected true or false"),
    ({"train": []}, "train: expected an object of TrainConfig fields"),
    ({"stages": {"epochs": 1}}, "stages: expected a list"),
    ({"stages": [{"epochs": 1}, {"epoch": 2}]}, "stages[2].epoch: unknown field (did you mean 'epochs'?)"),
    ({"stages": [{"model": {"lr": 1}}]}, "stages[1].model.lr: unknown field"),
    ({"name": 3}, "name: expected a string"),
])
def test_a_bad_recipe_is_one_line_naming_the_key(tmp_path: Path, content: object, message: str):
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as error:
        load_recipe(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_cli_errors_for_recipes_and_data(monkeypatch, capsys, tmp_path: Path):  # type: ignore[no-untyped-def]
    from helpers import run_main

    code, _, err = run_main(monkeypatch, capsys, "train", "--recipe", str(tmp_path / "none.json"), "--out",
                            str(tmp_path / "m.pt"))
    assert code == 1 and err.startswith(f"Error: {tmp_path / 'none.json'}: cannot read recipe")
    code, _, err = run_main(monkeypatch, capsys, "train", "--out", str(tmp_path / "m.pt"))
    assert (code, err) == (1, "Error: no training data: give --captions (or --scenes, or a --recipe that names them)\n")
    missing = write(tmp_path, {"data": {"captions": "gone/captions.json"}})
    code, _, err = run_main(monkeypatch, capsys, "train", "--recipe", str(missing), "--out", str(tmp_path / "m.pt"))
    assert code == 1 and err.count("\n") == 1 and "gone/captions.json" in err
    code, _, err = run_main(monkeypatch, capsys, "train", "--out", str(tmp_path / "m.pt"), "--stages", "[{")
    assert code == 2 and "--stages" in err and "not JSON" in err
    assert not (tmp_path / "m.pt").exists()
