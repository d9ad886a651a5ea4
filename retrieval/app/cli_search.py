"""``vlsearch search``: a thin shell over :meth:`retrieval.app.search.SearchEngine.search`."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from retrieval.app.cli import index_option

from retrieval.core.errors import IndexStoreError, QueryError


@click.command()
@click.argument("query", required=False)
@index_option
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, 10000), help="How many results.")
@click.option("--image", "image_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Search by an example image instead of text.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--paths", "paths_only", is_flag=True, help="Print absolute paths only, one per line.")
@click.option("--min-score", type=float, help="Drop results scoring below this cosine similarity.")
@click.option("--where", help="SQL condition on the images table, e.g. \"width > 1000 and format = 'PNG'\".")
@click.option("--glob", "glob_pattern", help="Path pattern relative to the folder, e.g. 'holiday/*.jpg'.")
@click.option("--model", "model_path", metavar="NAME|FILE",
              help="Model to encode the query with: photos, scenes or a checkpoint file  [default: the one the index "
                   "was built with]")
@click.option("--rerank", type=click.IntRange(0, 10000),
              help="Re-order FAISS's top N with the model's fusion head (default: 100 when the model has one "
                   "and the index its region vectors; 0: off).")
def search(query: str | None, index_dir: Path | None, k: int, image_path: Path | None, as_json: bool,
           paths_only: bool, min_score: float | None, where: str | None, glob_pattern: str | None,
           model_path: str | None, rerank: int | None) -> None:
    """Find the indexed images that best match a sentence QUERY (or an example image).

    A warning names the query words the model does not know (they change nothing), and says so when it knows
    none of them. Exit status: 0 with results (or none above --min-score), 1 when there is no index or it is
    empty, 2 for a bad query (empty, or an --image that is missing or unreadable).

    \b
    Examples:
      vlsearch search "a small red circle left of a blue square"
      vlsearch search "a dog on a beach" --index ~/Pictures/.vlsearch -k 20 --json
      vlsearch search "a sunset" --where "width > 1000" --glob "2024/*" --paths | xargs feh
      vlsearch search --image example.jpg
    """
    if image_path is None and (query is None or not query.strip()):
        # a QueryError, not a UsageError: one line "Error: ..." and exit status 2, like the library's
        raise QueryError("the query is empty; give a sentence (or --image PATH)")
    if image_path is not None and query:
        raise click.UsageError("give either a sentence or --image, not both")
    if image_path is not None and not image_path.is_file():
        raise QueryError(f"no such file: {image_path}")
    from indexer.index import find_index  # faiss, but not yet torch: a missing index is reported in well under 1 s

    found = find_index(index_dir)
    from indexer.scan import printable
    # torch: only once the options make sense
    from retrieval.app.search import SearchEngine, json_bytes, results_document

    words = None
    with SearchEngine.open(found, model=model_path) as engine:
        if not len(engine):
            raise IndexStoreError(f"the index is empty: {engine.root} holds no indexed image "
                                  f"(index it with `vlsearch index {engine.root}`)")
        if image_path is not None:
            hits = engine.search_image(image_path, k, min_score=min_score, where=where, glob=glob_pattern)
        else:
            hits = engine.search(query, k, min_score=min_score, where=where, glob=glob_pattern, rerank=rerank)
            words = engine.query_words(query)
            if words.warning():
                click.echo(f"warning: {words.warning()}", err=True)
    sys.stdout.flush()
    out = sys.stdout.buffer
    if as_json:
        document = results_document(query, str(image_path) if image_path else None, k, hits, words)
        out.write(json_bytes(document) + b"\n")
    elif paths_only:  # the names' own bytes, whatever their encoding
        out.write(b"".join(os.fsencode(hit.abs_path) + b"\n" for hit in hits))
    else:
        if not hits:
            click.echo("no results", err=True)
            return
        click.echo(f"{'rank':>4}  {'score':>6}  path")
        for rank, hit in enumerate(hits, 1):
            click.echo(f"{rank:>4}  {hit.score:6.3f}  {printable(hit.path)}")
