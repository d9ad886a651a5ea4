"""``vlsearch search``: a thin shell over :meth:`retrieval.search.SearchEngine.search`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from retrieval.errors import QueryError


@click.command()
@click.argument("query", required=False)
@click.option("--index", "index_dir", type=click.Path(path_type=Path),
              help="Index folder (default: $VLSEARCH_INDEX, else the nearest .vlsearch/ here or above).")
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
def search(query: str | None, index_dir: Path | None, k: int, image_path: Path | None, as_json: bool,
           paths_only: bool, min_score: float | None, where: str | None, glob_pattern: str | None,
           model_path: str | None) -> None:
    """Find the indexed images that best match QUERY.

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
    from retrieval.search import SearchEngine, results_document  # torch and faiss: only once the options make sense
    from retrieval.tokenizer import tokenize

    with SearchEngine.open(index_dir, model=model_path) as engine:
        if image_path is not None:
            hits = engine.search_image(image_path, k, min_score=min_score, where=where, glob=glob_pattern)
        else:
            words = [token for token in tokenize(query) if token.isalnum()]
            unknown = engine.unknown_words(query)
            if words and len(unknown) == len(words):
                click.echo(f"warning: none of the query words are known to the model: {' '.join(unknown)}", err=True)
            hits = engine.search(query, k, min_score=min_score, where=where, glob=glob_pattern)
    if as_json:
        document = results_document(query, str(image_path) if image_path else None, k, hits)
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    elif paths_only:
        for hit in hits:
            click.echo(hit.abs_path)
    else:
        if not hits:
            click.echo("no results", err=True)
            return
        click.echo(f"{'rank':>4}  {'score':>6}  path")
        for rank, hit in enumerate(hits, 1):
            click.echo(f"{rank:>4}  {hit.score:6.3f}  {_printable(hit.path)}")


def _printable(path: str) -> str:
    """A file name may hold newlines or terminal escapes: show those escaped in the table (--json keeps them)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in path)
