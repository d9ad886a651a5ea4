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
from typing import Callable, Sequence

from indexer.pipeline import build_index
from retrieval.app.search import SearchEngine
from retrieval.core.config import DEMO_MODEL
from retrieval.core.scenes.corpus import generate_folder, load_scenes
from retrieval.core.scenes.scene import Meaning, Mention, Relation, Scene, satisfies

DEMO_SEED = 2026  # the default model was trained on seed 1: these scenes are unseen
DEFAULT_COUNT = 2000
RESULTS_PER_QUERY = 8


FIXED_QUERIES: tuple[tuple[str, Meaning], ...] = (
    ("a large yellow star", Meaning((Mention("yellow", "star", "large"),))),
    ("a red circle", Meaning((Mention("red", "circle"),))),
)
RELATION_PHRASES = {"left_of": "to the left of", "above": "above", "right_of": "to the right of", "below": "below"}


def example_queries(scenes: Sequence[Scene]) -> list[tuple[str, Meaning]]:
    """Two broad queries, then one precise query per relation (and a count), each describing the first scene
    of the folder that has it, so that every query has at least one true match however small the folder."""
    queries, used = list(FIXED_QUERIES), set()
    for predicate, phrase in RELATION_PHRASES.items():
        found = next(((k, scene, r) for k, scene in enumerate(scenes) if k not in used for r in scene.relations
                      if r.predicate == predicate
                      and scene.objects[r.subject].colour != scene.objects[r.object].colour), None)
        if found is not None:
            k, scene, relation = found
            used.add(k)
            queries.append(_relation_query(scene, relation))
    pair = next((scene for k, scene in enumerate(scenes) if k not in used and len(scene.objects) == 2), None)
    if pair is not None:
        a, b = pair.objects
        meaning = Meaning((Mention(a.colour, a.shape), Mention(b.colour, b.shape)), count=2)
        queries.append((f"two objects: {_a(a.colour)} {a.shape} and {_a(b.colour)} {b.shape}", meaning))
    return queries


def _relation_query(scene: Scene, relation: Relation) -> tuple[str, Meaning]:
    """'a red star above a blue circle' for one relation of a scene (which therefore satisfies it)."""
    a, b = scene.objects[relation.subject], scene.objects[relation.object]
    meaning = Meaning((Mention(a.colour, a.shape), Mention(b.colour, b.shape)), Relation(0, relation.predicate, 1))
    return f"{_a(a.colour)} {a.shape} {RELATION_PHRASES[relation.predicate]} {_a(b.colour)} {b.shape}", meaning


def suggested_query(scenes: Sequence[Scene], avoid: Sequence[str] = ()) -> tuple[str, Meaning] | None:
    """A query for the user to try: a relation between two colours in the folder's last such scene (so at
    least that image answers it), unlike the example queries ``avoid``."""
    for scene in reversed(scenes):
        for relation in scene.relations:
            if scene.objects[relation.subject].colour != scene.objects[relation.object].colour:
                text, meaning = _relation_query(scene, relation)
                if text not in avoid:
                    return text, meaning
    return None


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


@dataclass
class QueryResult:
    text: str
    hits: list  # list[retrieval.app.search.Hit]
    correct: list[bool]  # per hit: does its scene satisfy the query?
    matching: int  # images in the whole folder that satisfy the query

    @property
    def found(self) -> int:
        return sum(self.correct)

    @property
    def possible(self) -> int:
        """The most correct hits any model could return: fewer when few images match."""
        return min(len(self.hits), self.matching)

    def summary(self) -> str:
        matches = "1 image matches" if self.matching == 1 else f"{self.matching} images match"
        return f"{matches}; the top {len(self.hits)} hold {self.found} of {self.possible} possible"


@dataclass
class DemoResult:
    folder: Path
    index_line: str
    queries: list[QueryResult] = field(default_factory=list)
    sheet: Path | None = None
    seconds: float = 0.0
    suggestion: str | None = None  # a query to try, drawn from the folder's own scenes
    suggestion_matches: int = 0  # images in the folder that satisfy it (at least 1)


Stage = Callable[[str, int, int], None]  # (stage name, done, total)


def run_demo(out_dir: str | os.PathLike = "vlsearch-demo", count: int = DEFAULT_COUNT, *, seed: int = DEMO_SEED,
             model: str | os.PathLike | None = None, progress: Stage | None = None) -> DemoResult:
    """Generate ``count`` scenes into ``out_dir/images``, index them, search, write ``out_dir/contact_sheet.html``.

    Running it again reuses what is there: unchanged images are neither redrawn nor re-embedded.
    """
    model = DEMO_MODEL if model is None else model
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
    ordered = [scenes[name] for name in sorted(scenes)]
    with SearchEngine.open(folder / ".vlsearch", model=model) as engine:
        for text, meaning in example_queries(ordered):
            hits = engine.search(text, RESULTS_PER_QUERY)
            matching = sum(satisfies(meaning, scene) for scene in scenes.values())
            result.queries.append(QueryResult(text, hits, [satisfies(meaning, scenes[h.path]) for h in hits], matching))
    suggestion = suggested_query(ordered, [query.text for query in result.queries])
    if suggestion is not None:
        result.suggestion = suggestion[0]
        result.suggestion_matches = sum(satisfies(suggestion[1], scene) for scene in scenes.values())
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
        rows.append(f"<section><h2>{html.escape(query.text)} <small>{query.summary()}</small></h2>"
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
