"""``vlsearch demo``: generate unseen scenes, index them with the default model, run example queries,
and write an HTML contact sheet. Everything is offline and deterministic.

Because the demo folder keeps its scene graphs (``.scenes.jsonl``), every result is judged: a ✓ means
the image really satisfies the query, so the demo shows the model's precision, not just its output.
"""
from __future__ import annotations

import html
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from retrieval.scenes.scene import Meaning, Mention, Relation

DEMO_SEED = 2026  # the default model was trained on seed 1: these scenes are unseen
DEFAULT_COUNT = 2000
RESULTS_PER_QUERY = 8


def _m(colour: str | None, shape: str | None, size: str | None = None) -> Mention:
    return Mention(colour, shape, size)


EXAMPLE_QUERIES: tuple[tuple[str, Meaning], ...] = (
    ("a red circle to the left of a blue square",
     Meaning((_m("red", "circle"), _m("blue", "square")), Relation(0, "left_of", 1))),
    ("a blue square to the left of a red circle",
     Meaning((_m("blue", "square"), _m("red", "circle")), Relation(0, "left_of", 1))),
    ("a large yellow star", Meaning((_m("yellow", "star", "large"),))),
    ("a green triangle above a purple diamond",
     Meaning((_m("green", "triangle"), _m("purple", "diamond")), Relation(0, "above", 1))),
    ("a small white cross below a big orange circle",
     Meaning((_m("white", "cross", "small"), _m("orange", "circle", "large")), Relation(0, "below", 1))),
    ("two objects: a black diamond and a green star",
     Meaning((_m("black", "diamond"), _m("green", "star")), count=2)),
)


@dataclass
class QueryResult:
    text: str
    hits: list  # list[retrieval.search.Hit]
    correct: list[bool]  # per hit: does its scene satisfy the query?

    @property
    def precision(self) -> float:
        return 100.0 * sum(self.correct) / len(self.correct) if self.correct else 0.0


@dataclass
class DemoResult:
    folder: Path
    index_line: str
    queries: list[QueryResult] = field(default_factory=list)
    sheet: Path | None = None
    seconds: float = 0.0


Stage = Callable[[str, int, int], None]  # (stage name, done, total)


def run_demo(out_dir: str | os.PathLike = "vlsearch-demo", count: int = DEFAULT_COUNT, *, seed: int = DEMO_SEED,
             model: str | os.PathLike | None = None, progress: Stage | None = None) -> DemoResult:
    """Generate ``count`` scenes into ``out_dir/images``, index them, search, write ``out_dir/contact_sheet.html``.

    Running it again reuses what is there: unchanged images are neither redrawn nor re-embedded.
    """
    from indexer.pipeline import build_index
    from retrieval.scenes.corpus import generate_folder, load_scenes
    from retrieval.scenes.scene import satisfies
    from retrieval.search import SearchEngine

    started = time.perf_counter()
    out = Path(out_dir)
    folder = out / "images"
    scenes_ready = (folder / ".scenes.jsonl").is_file() and len(load_scenes(folder)) == count
    if not scenes_ready:
        generate_folder(folder, count, seed, workers=min(2, os.cpu_count() or 1),
                        progress=(lambda done, total: progress("generating scenes", done, total)) if progress else None)
    scenes = load_scenes(folder)
    summary = build_index(folder, model=model, progress=(lambda p: progress("indexing", p.done, p.total))
                          if progress else None)
    result = DemoResult(out, summary.line())
    with SearchEngine.open(folder / ".vlsearch", model=model) as engine:
        for text, meaning in EXAMPLE_QUERIES:
            hits = engine.search(text, RESULTS_PER_QUERY)
            result.queries.append(QueryResult(text, hits, [satisfies(meaning, scenes[h.path]) for h in hits]))
    result.sheet = write_contact_sheet(out / "contact_sheet.html", result.queries)
    result.seconds = time.perf_counter() - started
    return result


def write_contact_sheet(path: Path, queries: list[QueryResult]) -> Path:
    """One row per query: its results as thumbnails with score and ✓/✗ (links relative, so the folder can move)."""
    rows = []
    for query in queries:
        cells = "".join(
            f'<figure class="{"ok" if ok else "bad"}"><a href="{html.escape(_relative(hit.abs_path, path))}">'
            f'<img src="{html.escape(_relative(hit.abs_path, path))}" alt="{html.escape(hit.path)}"></a>'
            f'<figcaption>{hit.score:.3f} {"✓" if ok else "✗"}<br>{html.escape(hit.path)}</figcaption></figure>'
            for hit, ok in zip(query.hits, query.correct))
        rows.append(f"<section><h2>{html.escape(query.text)} <small>precision {query.precision:.0f} %</small></h2>"
                    f"<div class=row>{cells}</div></section>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vlsearch demo</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
.row {{ display: flex; flex-wrap: wrap; gap: 10px; }}
figure {{ margin: 0; text-align: center; font-size: 12px; }}
img {{ width: 128px; height: 128px; image-rendering: pixelated; border: 3px solid #ccc; }}
.ok img {{ border-color: #2a2; }} .bad img {{ border-color: #d33; }}
small {{ color: #666; font-weight: normal; }}
</style></head><body>
<h1>vlsearch demo</h1>
<p>Each row: a query and its top results from the default model. Green ✓: the image's scene satisfies the
query; red ✗: it does not. Scores are cosine similarities.</p>
{''.join(rows)}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def _relative(target: str, page: Path) -> str:
    return Path(os.path.relpath(target, page.parent)).as_posix()
