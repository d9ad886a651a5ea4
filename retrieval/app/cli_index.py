"""``vlsearch index`` and ``vlsearch info``: thin click shells over :func:`build_index` and :func:`index_info`.

Heavy imports happen inside the commands, so ``vlsearch index --help`` stays instant.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import click

from retrieval.app.cli import ProgressBar, index_option

INDEX_TYPES = "auto, flat, hnsw, ivf or a FAISS factory string such as 'IVF1024,Flat'"


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


class _IndexProgress(ProgressBar):
    """build_index's progress callback: files done of all, and images embedded per second since the start."""

    def __init__(self, enabled: bool):
        super().__init__("file", enabled=enabled)
        self.start: float | None = None

    def __call__(self, progress: Any) -> None:
        self.start = progress.seconds if self.start is None else self.start
        elapsed = max(progress.seconds - self.start, 1e-9)
        self.update(progress.done, progress.total, f"{progress.embedded / elapsed:.1f} img/s")


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--index", "index_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Index directory  [default: FOLDER/.vlsearch]")
@click.option("--model", metavar="NAME|FILE",
              help="Model: photos (real photographs), scenes (the demo's generated scenes) or a checkpoint file  "
                   "[default: photos]")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1), help="Images per CNN batch.")
@click.option("--workers", type=click.IntRange(0), help="Decoding threads; 0 decodes in the main thread  "
              "[default: CPU count, at most 8]. With --engine ray: Ray actors  [default: one per CPU, or per GPU "
              "share with --gpus-per-worker, of the cluster]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--index-type", help=f"FAISS index: {INDEX_TYPES}  [default: as before, else auto]")
@click.option("--rebuild", is_flag=True, help="Forget the index and embed every file again (e.g. for a new model).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; count unreadable files instead of listing them.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where the CNN runs: this process, or actors of a Ray cluster (pip install \"vlsearch[ray]\"). "
              "Ray workers read FOLDER at the same path, so it must be on storage every node can read (a shared "
              "filesystem), unless --ship-bytes. This process alone writes the index.")
@click.option("--ray-address", help="Ray cluster: auto (the one this machine belongs to) or HOST:PORT  "
              "[default: $RAY_ADDRESS, else a new cluster on this machine]")
@click.option("--gpus-per-worker", type=click.FloatRange(0), default=0, show_default=True,
              help="GPUs per Ray actor (0: CPU actors).")
@click.option("--ship-bytes", is_flag=True, help="With --engine ray: read the files here and ship their bytes "
              "to the workers, for nodes that cannot see FOLDER.")
def index(folder: Path, index_dir: Path | None, model: str | None, batch_size: int, workers: int | None,
          device: str, index_type: str | None, rebuild: bool, quiet: bool, engine: str, ray_address: str | None,
          gpus_per_worker: float, ship_bytes: bool) -> None:
    """Build or update the index of an image folder.

    Only new and changed files go through the model: renamed, moved or copied files reuse their
    vectors, and deleted files leave the index. Unreadable files are reported and skipped.
    Exit status: 0 when the index holds images, 1 when FOLDER has no image files or none could be read
    (or on any other error), 2 for bad options.

    \b
    Examples:
      vlsearch index ~/Pictures                   # index in ~/Pictures/.vlsearch
      vlsearch index ~/Pictures --model my.pt --index /tmp/pictures-index
      vlsearch index ~/Pictures --rebuild         # embed everything again
      vlsearch index /shared/photos --engine ray --ray-address auto
    """
    from PIL import Image

    from indexer.executor import RayOptions
    from indexer.pipeline import build_index
    from retrieval.core.device import default_threads

    bar = _IndexProgress(enabled=not quiet)
    try:
        with warnings.catch_warnings():  # big JPEGs are decoded at reduced size, so the warning misleads
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            summary = build_index(folder, index_dir, model=model, batch_size=batch_size, workers=workers,
                                  device=device, index_type=index_type, rebuild=rebuild, threads=default_threads(),
                                  progress=bar, engine=engine,
                                  ray=RayOptions(ray_address, workers, gpus_per_worker, ship_bytes))
    finally:
        bar.close()
    if quiet and summary.failures:
        click.echo(f"warning: {_files(len(summary.failures))} could not be read (run without --quiet to list them)",
                   err=True)
    elif summary.failures:
        from indexer.scan import printable

        for path, message in summary.failures:
            click.echo(f"warning: {printable(path)}: {message}", err=True)
    click.echo(summary.line())
    if summary.failed and not summary.total:
        raise click.ClickException(f"no image in {folder} could be read")
    if not summary.total:
        from indexer.scan import IMAGE_SUFFIX_LIST

        raise click.ClickException(f"no images found in {folder} (looked for {', '.join(IMAGE_SUFFIX_LIST)}, "
                                   "and files without a suffix)")


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _card_lines(card: dict[str, Any] | None) -> list[tuple[str, str]]:
    """What a model card says: what the model was trained on and its measured text->image recall."""
    if not card:
        return []
    lines = [("trained on", str(card["trained_on"]))] if card.get("trained_on") else []
    t2i = (card.get("recall") or {}).get("t2i")
    if t2i:
        where = f" on {card['recall_on']}" if card.get("recall_on") else ""
        lines.append(("recall", f"text->image R@1/5/10 {t2i['r1']:.1f}/{t2i['r5']:.1f}/{t2i['r10']:.1f}{where}"))
    reranked = ((card.get("fusion") or {}).get("rerank") or {}).get("t2i")
    if reranked:  # the model's fusion head, measured on the same split
        lines.append(("re-ranked", f"text->image R@1/5/10 {reranked['r1']:.1f}/{reranked['r5']:.1f}/"
                                   f"{reranked['r10']:.1f} with the fusion head (top 100)"))
    return lines


def _index_lines(info: dict[str, Any]) -> list[tuple[str, str]]:
    card = info.get("model_card") or {}
    model = (f"{card['name']}, " if card.get("name") else "") + info["model"]
    model += f" ({info['model_path']})" if info["model_path"] else ""
    index_type = info["index_type"] + (f" ({info['index_type_option']})" if info["index_type_option"] else "")
    if not info["vectors_current"]:
        index_type += ", FAISS file stale (rebuilt from SQLite on the next run or search)"
    return [("index", info["index_dir"]), ("folder", info["root"]), ("images", str(info["images"])),
            ("unreadable", _files(info["errors"])), ("model", model), *_card_lines(info.get("model_card")),
            ("dimension", str(info["dim"])),
            ("index type", index_type), ("on disk", _size(info["size_bytes"])), ("updated", info["updated_at"])]


def _model_lines(summary: dict[str, Any]) -> list[tuple[str, str]]:
    config = ", ".join(f"{key}={value}" for key, value in summary["config"].items())
    metrics = ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                        for key, value in summary["metrics"].items())
    card = summary.get("card") or {}
    return [("model", (f"{card['name']}, " if card.get("name") else "") + summary["identity"]),
            *_card_lines(card), ("config", config), ("vocabulary", f"{summary['vocab_size']} words"),
            ("metrics", metrics or "none stored")]


@click.command()
@index_option
@click.option("--model", "model_path", metavar="NAME|FILE",
              help="Describe this model (photos, scenes or a checkpoint file): identity, config, vocabulary, "
                   "metrics.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {\"index\": {...}, \"model\": {...}}.")
def info(index_dir: Path | None, model_path: str | None, as_json: bool) -> None:
    """Show what an index holds (and which model made it), or describe a model checkpoint.

    \b
    Examples:
      vlsearch info --index ~/Pictures
      vlsearch info --model my.pt --json
    """
    from indexer.info import index_info

    report: dict[str, Any] = {}
    if index_dir is not None or model_path is None:
        report["index"] = index_info(index_dir).to_dict()
    if model_path is not None:
        from retrieval.core.checkpoint import checkpoint_summary
        from retrieval.core.config import model_card, resolve_model

        report["model"] = checkpoint_summary(model_path)
        report["model"]["card"] = model_card(report["model"]["identity"], resolve_model(model_path))
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    lines = (_index_lines(report["index"]) if "index" in report else []) + \
        (_model_lines(report["model"]) if "model" in report else [])
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        click.echo(f"{label:<{width}}  {value}")
