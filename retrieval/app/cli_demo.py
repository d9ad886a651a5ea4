"""``vlsearch demo``: a thin shell over :func:`retrieval.app.demo.run_demo`."""
from __future__ import annotations

from pathlib import Path

import click

from retrieval.app.cli import ProgressBar


@click.command()
@click.option("--out", "out_dir", default="vlsearch-demo", show_default=True, type=click.Path(path_type=Path),
              help="Folder for the generated images, their index and the contact sheet.")
@click.option("--count", default=2000, show_default=True, type=click.IntRange(10, 1_000_000),
              help="How many scenes to generate.")
@click.option("--model", "model_path", metavar="NAME|FILE",
              help="Model: photos, scenes or a checkpoint file  [default: scenes, which knows the demo's scenes]")
def demo(out_dir: Path, count: int, model_path: str | None) -> None:
    """Generate a folder of unseen scenes, index it, and run example queries.

    \b
    Example:
      vlsearch demo --out /tmp/demo --count 500
    Then search it yourself:
      vlsearch search "a green triangle above a purple diamond" --index /tmp/demo/images
    """
    from retrieval.app.demo import run_demo

    bars: dict[str, ProgressBar] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bars.setdefault(stage, ProgressBar("img", desc=stage)).update(done, total)

    result = run_demo(out_dir, count, model=model_path, progress=progress)
    for bar in bars.values():
        bar.close()
    click.echo(f"index: {result.index_line}")
    for query in result.queries:
        click.echo(f"\n{query.text!r}: {query.summary()}")
        click.echo(f"{'rank':>4}  {'score':>6}  ok  path")
        for rank, (hit, ok) in enumerate(zip(query.hits, query.correct), 1):
            click.echo(f"{rank:>4}  {hit.score:6.3f}  {'✓ ' if ok else '✗ '}  {hit.path}")
    found, possible = sum(q.found for q in result.queries), sum(q.possible for q in result.queries)
    click.echo(f"\ncorrect results: {found} of {possible} possible; contact sheet: {result.sheet}")
    click.echo(f"done in {result.seconds:.0f} s.")
    if result.suggestion:
        matches = "1 image in this folder matches" if result.suggestion_matches == 1 else \
            f"{result.suggestion_matches} images in this folder match"
        click.echo(f"Try: vlsearch search \"{result.suggestion}\" --index {out_dir / 'images'} ({matches} it)")
