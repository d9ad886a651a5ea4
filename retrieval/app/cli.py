"""The ``vlsearch`` command: a thin click group whose subcommands live beside the library code they call.

Subcommands are imported only when run, so ``vlsearch --help`` never imports torch or faiss.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import click

from retrieval._version import __version__
from retrieval.core.errors import QueryError, VlsearchError

# name -> (module, attribute, one-line help shown by `vlsearch --help`: the first line of the command's
# docstring, kept here so that --help imports no command; tests/test_cli_options.py checks they agree)
COMMANDS = {
    "demo": ("retrieval.app.cli_demo", "demo",
             "Generate a folder of unseen scenes, index it, and run example queries."),
    "index": ("retrieval.app.cli_index", "index", "Build or update the index of an image folder."),
    "search": ("retrieval.app.cli_search", "search",
               "Find the indexed images that best match a sentence QUERY (or an example image)."),
    "info": ("retrieval.app.cli_index", "info",
             "Show what an index holds (and which model made it), or describe a model checkpoint."),
    "train": ("retrieval.app.cli_train", "train",
              "Train a model on captioned images (or a recipe); keeps the best epoch by validation rsum."),
    "eval": ("retrieval.app.cli_train", "eval_command",
             "Evaluate a model: text->image and image->text R@1/5/10, median/mean rank and rsum."),
    "serve": ("retrieval.app.cli_serve", "serve",
              "Serve the search API and a web page for one index (model and index are loaded once)."),
}

# --index of the commands that read an index (search, info, serve): how it is found when not given
index_option = click.option(
    "--index", "index_dir", type=click.Path(path_type=Path),
    help="Index folder, or a folder indexed into FOLDER/.vlsearch (default: $VLSEARCH_INDEX, else the nearest "
         ".vlsearch/ here or above).")


class ProgressBar:
    """The one progress bar of the commands: tqdm on stderr, created (and tqdm imported) at the first update,
    drawn only when stderr is a terminal and ``enabled``."""

    def __init__(self, unit: str, desc: str | None = None, enabled: bool = True):
        self.unit, self.desc, self.enabled = unit, desc, enabled
        self.bar: Any = None

    def update(self, done: int, total: int, postfix: str | None = None) -> None:
        """Show ``done`` of ``total`` (and ``postfix``, e.g. a rate)."""
        if not self.enabled or not total:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr, dynamic_ncols=True,
                            leave=False, disable=None)
        self.bar.total = total
        if postfix is not None:
            self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._available(name)]

    @staticmethod
    def _available(name: str) -> bool:
        return importlib.util.find_spec(COMMANDS[name][0]) is not None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not self._available(name):
            return None
        module, attribute, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if not rows:
            return
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vlsearch")
def cli() -> None:
    """vlsearch: find images in a folder by describing them.

    \b
    Quick start:
      vlsearch demo                      # generate, index and search a demo folder
      vlsearch index ~/Pictures          # index your own folder (offline)
      vlsearch search "a bridge over a river" --index ~/Pictures/.vlsearch
    """


def main() -> None:
    """Console entry point: project errors become one line on stderr and exit status 1."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except VlsearchError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2 if isinstance(exc, QueryError) else 1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)

