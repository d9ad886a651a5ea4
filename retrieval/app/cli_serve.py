"""``vlsearch serve``: a thin click shell over :func:`retrieval.app.server.create_app`, apart from the app so that
``vlsearch serve --help`` imports neither the web framework nor torch."""
from __future__ import annotations

from pathlib import Path

import click

from retrieval.app.cli import index_option


@click.command()
@index_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback lets others search and download the images.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--model", "model_path", metavar="NAME|FILE",
              help="Model to encode queries with: photos, scenes or a checkpoint file  [default: the one the index "
                   "was built with]")
def serve(index_dir: Path | None, host: str, port: int, model_path: str | None) -> None:
    """Serve the search API and a web page for one index (model and index are loaded once).

    \b
    Examples:
      vlsearch serve                                 # http://127.0.0.1:8000/
      vlsearch serve --index ~/Pictures/.vlsearch --port 8080
      curl 'http://127.0.0.1:8000/api/search?q=a+red+circle&k=5'
    """
    import uvicorn

    from retrieval.app.search import SearchEngine
    from retrieval.app.server import create_app

    engine = SearchEngine.open(index_dir, model=model_path)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host}: whoever reaches it can search and download the images", err=True)
    click.echo(f"{len(engine)} images from {engine.index_dir}: http://{host}:{port}/  (API: /openapi.json)", err=True)
    uvicorn.run(create_app(engine), host=host, port=port, log_level="warning")
