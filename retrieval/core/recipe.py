"""Recipes: a whole training run as data (``vlsearch train --recipe RECIPE.json``), and the stages it runs.

A recipe file::

    {"name": "scenes", "description": "...",
     "data":  {DataConfig fields},  "model": {ModelConfig fields},  "train": {TrainConfig fields},
     "stages": [{field overrides of stage 1}, {... of stage 2}, ...]}

Every section and key is optional; a missing field keeps its dataclass default (the option's default). A
stage is a flat dict of fields of any section (or ``{"train": {...}, "model": {...}}``); stages run in
order, each continuing from the model the previous one kept (``freeze_backbone`` + ``feature_cache`` make
a frozen-trunk stage); no stages means one. Options given on the command line win over the recipe and
over every stage. Relative paths in ``data`` are relative to the current folder, as on the command line
(the shipped recipes in ``data/`` are run from the repository root).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from retrieval.core.captions import ImageCaptions, load_captions
from retrieval.core.checkpoint import checkpoint_summary, load_model, save_checkpoint
from retrieval.core.config import DataConfig, ModelConfig, TrainConfig
from retrieval.core.errors import ConfigError
from retrieval.core.evaluate import EvalResult, Recall
from retrieval.core.fusion_train import train_fusion
from retrieval.core.options import config_fields, convert_field
from retrieval.core.scenes.corpus import export_corpus, load_records, training_items
from retrieval.core.train import EpochEvent, StepEvent, TrainResult, hold_out, train

SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
KEYS = ("name", "description", *SECTIONS, "stages")
FIELDS = config_fields(*SECTIONS.values())


@dataclass
class Recipe:
    """A training run: data, model and optimisation settings, and the stages that override them in turn."""
    name: str = ""
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list[dict[str, Any]] = field(default_factory=list)  # checked field name -> value, per stage

    def override(self, values: dict[str, Any]) -> "Recipe":
        """The recipe with ``values`` (field name -> value, e.g. from the command line) over it and every stage."""
        sections = {name: replace(getattr(self, name), **{k: v for k, v in values.items()
                                                          if FIELDS[k][0] is cls})
                    for name, cls in SECTIONS.items()}
        stages = [{k: v for k, v in stage.items() if k not in values} for stage in self.stages]
        return replace(self, stages=stages, **sections)

    def stage_configs(self) -> list[tuple[DataConfig, ModelConfig, TrainConfig]]:
        """(data, model, train) of each stage, in order."""
        configs = []
        for stage in self.stages or [{}]:
            configs.append(tuple(replace(getattr(self, name), **{k: v for k, v in stage.items()
                                                                 if FIELDS[k][0] is cls})
                                 for name, cls in SECTIONS.items()))
        return configs  # type: ignore[return-value]


@dataclass
class StageEvent:
    """A stage's data is ready: what it trains and validates on, and the named images that were not found."""
    number: int
    stages: int
    train_images: int
    train_captions: int
    val_images: int
    missing_train: list[str]
    missing_val: list[str]
    held_out: bool = False  # the captions name no splits: validation images were held out of them (seeded)


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file; any problem is one ConfigError naming the file and the key."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read recipe ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: not a JSON recipe ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a JSON object with keys {', '.join(KEYS)}")
    for key in raw:
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}{_did_you_mean(key, KEYS)} (a recipe has {', '.join(KEYS)})")
    for key in ("name", "description"):
        if not isinstance(raw.get(key, ""), str):
            raise ConfigError(f"{path}: {key}: expected a string")
    sections = {}
    for name, cls in SECTIONS.items():
        values = raw.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: {name}: expected an object of {cls.__name__} fields")
        sections[name] = cls(**check_fields(values, f"{path}: {name}", {f.name for f in dataclasses.fields(cls)}))
    return Recipe(raw.get("name", ""), raw.get("description", ""), stages=parse_stages(raw.get("stages", []), path),
                  **sections)


def parse_stages(stages: Any, where: str | Path) -> list[dict[str, Any]]:
    """Check a list of stage overrides (flat field names, or grouped under "data"/"model"/"train")."""
    if not isinstance(stages, list):
        raise ConfigError(f"{where}: stages: expected a list of objects of field overrides")
    checked = []
    for number, stage in enumerate(stages, 1):
        label = f"{where}: stages[{number}]"
        if not isinstance(stage, dict):
            raise ConfigError(f"{label}: expected an object of field overrides")
        flat: dict[str, Any] = {}
        for key, value in stage.items():
            if key in SECTIONS and isinstance(value, dict):
                flat.update(check_fields(value, f"{label}.{key}", {f.name for f in dataclasses.fields(SECTIONS[key])}))
            else:
                flat.update(check_fields({key: value}, label, set(FIELDS)))
        checked.append(flat)
    return checked


def check_fields(values: dict[str, Any], where: str, allowed: set[str]) -> dict[str, Any]:
    """Field name -> checked value; an unknown name or a bad value is a ConfigError naming it."""
    checked = {}
    for key, value in values.items():
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown field{_did_you_mean(key, allowed)}")
        cls, spec = FIELDS[key]
        try:
            checked[key] = convert_field(cls, spec, value)
        except ValueError as exc:
            raise ConfigError(f"{where}.{key}: {exc}") from None
    return checked


def _did_you_mean(key: str, choices: Sequence[str] | set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


Event = Callable[[StepEvent | EpochEvent | StageEvent], None]


def train_recipe(recipe: Recipe, out_path: str | Path, on_event: Event | None = None,
                 init: str | Path | None = None) -> TrainResult:
    """Run every stage of ``recipe``; the last stage's best model goes to ``out_path``.

    Each stage continues from the model the previous one kept (the first from ``init``, if given). Earlier
    stages write ``OUT.stageN.pt`` beside ``out_path``, removed once the run is done.
    """
    out_path = Path(out_path)
    stages = recipe.stage_configs()
    model = load_model(init) if init is not None else None
    base = Path(init) if init is not None else None  # the checkpoint ``model`` came from
    kept: list[Path] = []
    for number, (data, model_config, train_config) in enumerate(stages, 1):
        train_items, val_items, missing, held_out = stage_data(data, model_config, train_config, out_path)
        if on_event:
            on_event(StageEvent(number, len(stages), len(train_items), sum(len(i.captions) for i in train_items),
                                len(val_items), *missing, held_out))
        last = number == len(stages)
        path = out_path if last else out_path.with_name(f"{out_path.stem}.stage{number}{out_path.suffix}")
        if train_config.fusion_stage:
            result = _fusion_stage(model, base, train_items, val_items, model_config, train_config, path, on_event)
        else:
            result = train(train_items, val_items, model_config, train_config, path, on_event, model)
        if not last:
            kept.append(path)
            model, base = load_model(path), path
    if train_config.save_half and not train_config.fusion_stage:  # a fusion stage keeps the stored precision
        stored = checkpoint_summary(out_path)
        identity = save_checkpoint(load_model(out_path), out_path, metrics=stored["metrics"],
                                   train_config=stored["train_config"], half=True)
        result = replace(result, identity=identity)
    for path in kept:
        path.unlink(missing_ok=True)
    return result


def _fusion_stage(model: Any, base: Path | None, train_items: list[ImageCaptions], val_items: list[ImageCaptions],
                  model_config: ModelConfig, train_config: TrainConfig, path: Path, on_event: Event | None
                  ) -> TrainResult:
    """A stage that trains only the fusion head of the model so far (retrieval.core.fusion_train)."""
    if model is None:
        raise ConfigError("a fusion stage trains a head on a trained model: give --init MODEL or an earlier stage")
    best = train_fusion(model, train_items, val_items, model_config, train_config, path, base,
                        on_event=on_event and (lambda event: on_event(event) if not isinstance(event, str) else None))
    summary = checkpoint_summary(path)
    stored = best["reranked"]
    metrics = EvalResult(Recall(**stored["t2i"]), Recall(**stored["i2t"]), stored["rsum"], stored["images"],
                         stored["captions"])
    return TrainResult(path, summary["identity"], best["epoch"], metrics)


def stage_data(data: DataConfig, model: ModelConfig, config: TrainConfig, out_path: Path
               ) -> tuple[list[ImageCaptions], list[ImageCaptions], tuple[list[str], list[str]], bool]:
    """Training and validation items of one stage, the images their captions named but that are missing, and
    whether the validation images were held out of captions that name no splits."""
    if data.scenes and data.captions:
        raise ConfigError("give either captions or scenes as training data, not both")
    if data.scenes:
        folder = export_scenes(data, model, out_path, config.workers)
        records = list(load_records(folder).values())
        return (training_items(folder, [r for r in records if r.split == "train"], data.scene_negatives),
                training_items(folder, [r for r in records if r.split == "val"], False), ([], []), False)
    if not data.captions:
        raise ConfigError("no training data: give --captions (or --scenes, or a --recipe that names them)")
    train_set = load_captions(data.captions, data.images, data.format, split=data.split)
    if not data.val_captions and not train_set.has_splits:
        train_items, val_items = hold_out(train_set.items, config.seed)
        return train_items, val_items, (train_set.missing, []), True
    val_set = (load_captions(data.val_captions, data.images, data.format) if data.val_captions
               else load_captions(data.captions, data.images, data.format, split="val"))
    return train_set.items, val_set.items, (train_set.missing, val_set.missing), False


def export_scenes(data: DataConfig, model: ModelConfig, out_path: str | Path, workers: int = 1) -> Path:
    """Write a stage's generated corpus (train, val, test splits) to ``data.scene_dir``; returns that folder."""
    folder = scene_folder(data, out_path)
    # example i of a seed never changes: a larger corpus extends a smaller one, val and test follow train
    export_corpus(folder, data.scenes + data.scene_val + data.scene_test, data.scene_seed, image_size=model.image_size,
                  splits=(data.scenes, data.scene_val, data.scene_test), workers=max(1, workers))
    return folder


def scene_folder(data: DataConfig, out_path: str | Path) -> Path:
    """Where a run's generated scenes go: ``data.scene_dir``, or ``OUT-scenes/`` beside the model."""
    return Path(data.scene_dir) if data.scene_dir else Path(out_path).with_name(f"{Path(out_path).stem}-scenes")
