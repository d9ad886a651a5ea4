"""``vlsearch train`` and ``vlsearch eval``: thin shells over :func:`retrieval.core.recipe.train_recipe` and
:func:`retrieval.core.evaluate.evaluate_model`."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from retrieval.app.cli import ProgressBar
from retrieval.core.captions import FORMATS
from retrieval.core.options import config_options, explicit
from retrieval.core.config import DataConfig, ModelConfig, TrainConfig

if TYPE_CHECKING:
    from retrieval.core.recipe import Recipe

DEVICES = click.Choice(["auto", "cpu", "cuda"])


def _warn_missing(missing: list[str], label: str) -> None:
    if missing:
        click.echo(f"warning: {len(missing)} {label} images not found, skipped (e.g. {', '.join(missing[:3])})",
                   err=True)


@click.command()
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path),
              help="A recipe file (JSON: data, model, train, stages); the options given here override it.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the best checkpoint (of the last stage).")
@click.option("--init", type=click.Path(dir_okay=False, path_type=Path),
              help="Continue from this model: its architecture and vocabulary win over the model options.")
@click.option("--stages", "stages_json",
              help='Stages as JSON, each overriding options, e.g. \'[{"epochs": 6}, {"freeze_backbone": true, '
                   '"feature_cache": true, "lr": 3e-4}]\' (default: the recipe\'s, or one).')
@config_options(DataConfig, ModelConfig, TrainConfig)
@click.pass_context
def train(ctx: click.Context, out_path: Path, init: Path | None, **_options: Any) -> None:
    """Train a model on captioned images (or a recipe); keeps the best epoch by validation rsum.

    Every ModelConfig/TrainConfig/DataConfig field of retrieval/config.py is an option here and a key in a
    recipe; each stage of a recipe continues from the model of the one before.

    \b
    Example:
      vlsearch train --captions annotations/dataset_coco.json --images coco/ \\
          --backbone resnet50 --weights imagenet --out coco.pt
      vlsearch train --recipe data/scenes.recipe.json --out scenes.pt
    """
    from retrieval.core.recipe import train_recipe

    recipe = planned_recipe(ctx)
    if any(train.feature_cache and not model.freeze_backbone for _, model, train in recipe.stage_configs()):
        click.echo("warning: --feature-cache is off: it needs --freeze-backbone (a trained trunk changes its "
                   "features)", err=True)
    progress = TrainProgress()
    result = train_recipe(recipe, out_path, progress, init)
    progress.close()
    if result.skipped_images:
        click.echo(f"warning: {len(result.skipped_images)} unreadable images skipped "
                   f"(e.g. {', '.join(result.skipped_images[:3])})", err=True)
    click.echo(f"best epoch {result.best_epoch} (rsum {result.best.rsum:.1f}) saved to {result.path} "
               f"[model {result.identity}]")


def planned_recipe(ctx: click.Context) -> "Recipe":
    """The run a ``train`` command line asks for: its --recipe (or the defaults), its --stages, then the
    options it names explicitly (an option left at its default does not override the recipe)."""
    from retrieval.core.recipe import Recipe, load_recipe, parse_stages

    params = ctx.params
    plan = load_recipe(params["recipe"]) if params["recipe"] else Recipe()
    if params["stages_json"] is not None:
        try:
            stages = json.loads(params["stages_json"])
        except ValueError as exc:
            raise click.BadParameter(f"not JSON ({exc})", param_hint="--stages") from None
        plan = replace(plan, stages=parse_stages(stages, "--stages"))
    fields = set(params) - {"recipe", "out_path", "init", "stages_json"}
    return plan.override({name: params[name] for name in explicit(ctx, fields)})


class TrainProgress:
    """Training events -> stderr: a line per stage and per epoch, a progress bar over each epoch's steps."""

    def __init__(self) -> None:
        self.bar: ProgressBar | None = None

    def __call__(self, event: Any) -> None:
        from retrieval.core.fusion_train import FusionEpoch
        from retrieval.core.recipe import StageEvent
        from retrieval.core.train import EpochEvent

        if isinstance(event, StageEvent):
            if event.stages > 1:
                click.echo(f"stage {event.number} of {event.stages}", err=True)
            _warn_missing(event.missing_train, "training")
            _warn_missing(event.missing_val, "validation")
            if event.held_out:
                click.echo(f"the captions name no splits: holding out {event.val_images} of their "
                           f"{event.train_images + event.val_images} images for validation (seeded by --seed; "
                           "or give --val-captions)", err=True)
            click.echo(f"training on {event.train_images} images / {event.train_captions} captions, "
                       f"validating on {event.val_images} images", err=True)
        elif isinstance(event, EpochEvent):
            self.close()
            t2i = event.metrics.t2i
            click.echo(f"epoch {event.epoch}: loss {event.loss:.4f} ({event.loss_name}), {event.images_per_s:.0f} "
                       f"images/s, val t2i R@1/5/10 {t2i.r1:.1f}/{t2i.r5:.1f}/{t2i.r10:.1f}, rsum "
                       f"{event.metrics.rsum:.1f}{' (best, saved)' if event.best else ''}"
                       f"{'  WARNING: embeddings collapsed' if event.collapsed else ''}", err=True)
        elif isinstance(event, FusionEpoch):
            done = f"fusion epoch {event.epoch}: loss {event.loss:.4f}, {event.seconds:.0f} s" if event.epoch \
                else "fusion head as it was, with a query bank"
            bank = "" if event.bank_weight is None else f", query bank weight {event.bank_weight:.2f}"
            click.echo(f"{done}, val t2i R@1 {event.first:.1f} -> {event.reranked:.1f} re-ranked (mix {event.mix:.2f}"
                       f"{bank}){' (best, saved)' if event.best else ''}", err=True)
        else:
            self.bar = self.bar or ProgressBar("batch", desc=f"epoch {event.epoch}")
            self.bar.update(event.step, event.steps, f"loss={event.loss:.3f}, img_s={event.images_per_s:.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@click.command("eval")
@click.option("--model", "model_path", metavar="NAME|FILE",
              help="Model to evaluate: photos, scenes or a checkpoint file  [default: photos]")
@click.option("--captions", "captions_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--images", "images_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True)
@click.option("--split", default="test", show_default=True,
              help="Split to evaluate; files without splits are evaluated whole.")
@click.option("--folds", default=1, show_default=True, type=click.IntRange(1, 100),
              help="Average over this many image folds (5 = COCO-1K protocol).")
@click.option("--device", type=DEVICES, default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--rerank", type=click.IntRange(0, 10000), default=0, show_default=True,
              help="Also report text->image recall after the model's fusion head re-orders each caption's top N "
                   "(one fold, on the CPU).")
def eval_command(model_path: str | None, captions_path: Path, images_dir: Path | None, fmt: str, split: str,
                 folds: int, device: str, as_json: bool, rerank: int) -> None:
    """Evaluate a model: text->image and image->text R@1/5/10, median/mean rank and rsum.

    \b
    Example:
      vlsearch eval --model coco.pt --captions annotations/dataset_coco.json --images coco/ --folds 5
    """
    from retrieval.core.evaluate import evaluate_model

    if rerank:
        if folds > 1:
            raise click.UsageError("--rerank measures the whole split: leave out --folds")
        from retrieval.core.fusion_train import evaluate_reranked

        result, reranked, captions_set = evaluate_reranked(model_path, captions_path, images_dir, fmt=fmt,
                                                           split=split, depth=rerank)
    else:
        result, captions_set = evaluate_model(model_path, captions_path, images_dir, fmt=fmt, split=split,
                                              folds=folds, device=device)
    _warn_missing(captions_set.missing, "evaluation")
    if as_json:
        document = result.to_dict()
        if rerank:
            document["rerank"] = {"depth": rerank, **reranked.to_dict()}
        click.echo(json.dumps(document, indent=2))
        return
    click.echo(f"{result.images} images, {result.captions} captions")
    click.echo(f"{'':12}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'medr':>7}{'meanr':>8}")
    rows = [("t2i", result.t2i), *([("t2i rerank", reranked.t2i)] if rerank else []), ("i2t", result.i2t)]
    for name, recall in rows:
        click.echo(f"{name:12}{recall.r1:7.1f}{recall.r5:7.1f}{recall.r10:7.1f}{recall.medr:7.0f}"
                   f"{recall.meanr:8.1f}")
    click.echo(f"rsum {result.rsum:.1f}" + (f" (with re-ranking of the top {rerank}: {reranked.rsum:.1f})"
                                            if rerank else ""))
