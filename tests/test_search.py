"""retrieval.app.search.SearchEngine on a real index: a tiny *trained* model, real SQLite and FAISS.

The folder (see trained_model.py) holds 4 images of each of 15 colour+shape classes: PNG in shapes/,
JPEG in more/jpeg/, of several sizes, named like ``red_circle_03``. Filters are checked against direct
sqlite3 queries on the same database; rankings against numpy over the stored vectors.
"""
from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from indexer.index import db_path
from indexer.store import Store
from retrieval.core.checkpoint import checkpoint_summary
from retrieval.core.errors import CheckpointError, IndexStoreError, QueryError, ModelMismatchError
from retrieval.core.device import score_tolerance
from retrieval.app.search import INDEX_ENV, Hit, QueryWords, SearchEngine, find_index
from trained_model import CLASSES, captions_for, one_thread, shapes_index, trained_model_path  # noqa: F401

K = 4  # images per class in the folder
pytestmark = pytest.mark.usefixtures("one_thread")

# (where, glob) pairs, each selecting a different part of the folder
FILTERS = [
    ("format = 'PNG'", None),
    ("width >= 48", None),
    (None, "more/*"),
    (None, "*circle*"),
    ("format = 'JPEG' AND width = 64", "*red*"),
    ("path NOT LIKE '%red%' AND height < 48", "shapes/*"),
    ("id IN (SELECT id FROM images ORDER BY hash LIMIT 7)", None),
]
WRITES = ["1; DROP TABLE images", "id IN (SELECT 1) ; DELETE FROM images", "load_extension('x')",
          "1) ; UPDATE images SET path = 'x' ; SELECT (1"]


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[str, str]]]:
    return shapes_index(tmp_path_factory)


@pytest.fixture(scope="session")
def folder(shapes: tuple[Path, dict[str, tuple[str, str]]]) -> Path:
    return shapes[0]


@pytest.fixture(scope="session")
def labels(shapes: tuple[Path, dict[str, tuple[str, str]]]) -> dict[str, tuple[str, str]]:
    return shapes[1]


@pytest.fixture(scope="module")
def engine(one_thread: None, folder: Path) -> Iterator[SearchEngine]:
    with SearchEngine.open(folder / ".vlsearch") as opened:
        yield opened


def sql_ids(folder: Path, where: str | None, glob: str | None) -> set[int]:
    """The ids a filter must select, asked of the database directly."""
    sql = f"SELECT id FROM images WHERE ({where or 1}) AND path GLOB ?"
    with sqlite3.connect(db_path(folder / ".vlsearch")) as conn:
        return {row[0] for row in conn.execute(sql, [glob or "*"])}


def table_dump(folder: Path) -> tuple[list[tuple], list[tuple]]:
    """Every images row and every meta row, to show a refused statement changed nothing."""
    with sqlite3.connect(db_path(folder / ".vlsearch")) as conn:
        return (conn.execute("SELECT * FROM images ORDER BY id").fetchall(),
                conn.execute("SELECT * FROM meta ORDER BY key").fetchall())


def exact_ranking(engine: SearchEngine, text: str, ids: set[int] | None = None) -> list[int]:
    """Ids ranked by cosine with the query, computed in numpy from the vectors SQLite stores."""
    stored_ids, stored = engine.store.vectors()
    scores = stored @ engine.encode_text([text])[0]
    order = [int(stored_ids[i]) for i in np.argsort(-scores, kind="stable")]
    return [i for i in order if ids is None or i in ids]


# -- retrieval quality ------------------------------------------------------------------------------------


def test_each_caption_finds_images_of_its_class(engine: SearchEngine, labels: dict[str, tuple[str, str]]) -> None:
    top1 = precision = 0.0
    captions = [(label, caption) for label in CLASSES for caption in captions_for(*label)]
    for label, caption in captions:
        found = [labels[hit.path] for hit in engine.search(caption, k=K)]
        assert label in found, f"{caption!r}: no {label} in the top {K}: {found}"
        top1 += found[0] == label
        precision += found.count(label) / K
    assert top1 / len(captions) >= 0.75
    assert precision / len(captions) >= 0.6  # the top results are mostly the right class


def test_hits_are_the_stored_rows_best_first(engine: SearchEngine, folder: Path) -> None:
    hits = engine.search("a green triangle", k=10)
    assert [hit.id for hit in hits] == exact_ranking(engine, "a green triangle")[:10]
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    rows = {row["id"]: row for row in engine.store.rows([hit.id for hit in hits])}
    for hit in hits:
        assert isinstance(hit, Hit)
        assert {k: v for k, v in hit.to_dict().items() if k not in ("score", "abs_path", "stage", "first_score")} == rows[hit.id]
        assert Path(hit.abs_path) == folder.resolve() / hit.path and Path(hit.abs_path).is_file()
        assert -1.0 <= hit.score <= 1.0 + 1e-6


def test_k_larger_than_the_index_returns_every_image(engine: SearchEngine, labels: dict) -> None:
    hits = engine.search("a blue square", k=1000)
    assert sorted(hit.path for hit in hits) == sorted(labels)


def test_min_score_drops_weaker_results(engine: SearchEngine) -> None:
    scores = [hit.score for hit in engine.search("a yellow circle", k=20)]
    threshold = scores[5]
    kept = engine.search("a yellow circle", k=20, min_score=threshold)
    assert [hit.score for hit in kept] == [s for s in scores if s >= threshold]
    assert engine.search("a yellow circle", k=20, min_score=1.5) == []


def test_encode_text_gives_unit_vectors(engine: SearchEngine) -> None:
    vectors = engine.encode_text(["a red circle", "there is a blue square", "zzz"])
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(TypeError):
        engine.encode_text("a red circle")  # type: ignore[arg-type]


# -- filters ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where,glob", FILTERS)
def test_filters_select_exactly_the_matching_rows(engine: SearchEngine, folder: Path, where: str | None,
                                                 glob: str | None) -> None:
    expected = sql_ids(folder, where, glob)
    assert 0 < len(expected) < 60
    everything = engine.search("a purple square", k=60, where=where, glob=glob)
    assert sorted(hit.id for hit in everything) == sorted(expected)
    k = min(5, len(expected))
    top = engine.search("a purple square", k=k, where=where, glob=glob)
    assert [hit.id for hit in top] == exact_ranking(engine, "a purple square", expected)[:k]


def test_a_filter_is_applied_before_ranking_not_after(engine: SearchEngine, labels: dict) -> None:
    unfiltered = engine.search("a red circle", k=5)
    assert any(labels[hit.path][0] == "red" for hit in unfiltered)
    hits = engine.search("a red circle", k=5, where="path NOT LIKE '%red%'")
    assert len(hits) == 5  # a post-filter of the top 5 would return fewer
    assert not any(labels[hit.path][0] == "red" for hit in hits)


def test_filters_matching_nothing_return_nothing(engine: SearchEngine) -> None:
    assert engine.search("a red circle", where="width > 10000") == []
    assert engine.search("a red circle", glob="nowhere/*") == []


@pytest.mark.parametrize("where", WRITES)
def test_a_filter_that_tries_to_write_is_refused_and_changes_nothing(engine: SearchEngine, folder: Path,
                                                                   where: str) -> None:
    before = table_dump(folder)
    with pytest.raises(QueryError, match="cannot filter images"):
        engine.search("a red circle", where=where)
    assert table_dump(folder) == before
    assert len(engine.search("a red circle", k=3)) == 3  # the engine still works


def test_a_bad_filter_is_a_query_error_naming_it(engine: SearchEngine) -> None:
    with pytest.raises(QueryError, match="no_such_column"):
        engine.search("a red circle", where="no_such_column > 3")


# -- image queries ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["shapes/red_circle_00.png", "shapes/green_square_02.png",
                                  "more/jpeg/blue_triangle_01.jpg", "more/jpeg/yellow_circle_03.jpg"])
def test_an_indexed_image_finds_itself_first(engine: SearchEngine, folder: Path, name: str) -> None:
    hits = engine.search_image(folder / name, k=3)
    assert hits[0].path == name
    assert 1.0 - score_tolerance() <= hits[0].score <= 1.0 + 1e-5  # unit vectors in float32, any precision


def test_a_missing_image_query_is_named(engine: SearchEngine, tmp_path: Path) -> None:
    with pytest.raises(QueryError, match=f"^no such file: {tmp_path / 'nonexist.jpg'}$"):
        engine.search_image(tmp_path / "nonexist.jpg")


def test_an_image_query_takes_a_pil_image_and_filters(engine: SearchEngine, folder: Path) -> None:
    with Image.open(folder / "shapes/purple_triangle_02.png") as image:
        hits = engine.search_image(image, k=3, glob="shapes/*")
    assert hits[0].path == "shapes/purple_triangle_02.png"
    assert all(hit.path.startswith("shapes/") for hit in hits)


def test_an_unreadable_image_query_is_a_query_error(engine: SearchEngine, tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(QueryError, match="bad.png"):
        engine.search_image(tmp_path / "bad.png")


# -- threads ------------------------------------------------------------------------------------------------


def test_threads_searching_at_once_get_the_sequential_results(engine: SearchEngine, folder: Path) -> None:
    filters = [(None, None), *FILTERS]
    texts = [caption for label in CLASSES for caption in captions_for(*label)]
    jobs = [(text, *filters[n % len(filters)]) for n, text in enumerate(texts)]
    jobs += [("image:shapes/red_circle_00.png", None, None), ("image:more/jpeg/blue_square_01.jpg", None, "more/*")]

    def run(job: tuple[str, str | None, str | None]) -> list[tuple[int, float]]:
        query, where, glob = job
        if query.startswith("image:"):
            hits = engine.search_image(folder / query[6:], k=5, where=where, glob=glob)
        else:
            hits = engine.search(query, k=5, where=where, glob=glob)
        return [(hit.id, hit.score) for hit in hits]

    expected = [run(job) for job in jobs]
    rounds = 6
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, jobs * rounds))
    assert results == expected * rounds


# -- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_an_empty_query_is_a_query_error(engine: SearchEngine, text: str) -> None:
    with pytest.raises(QueryError, match="empty"):
        engine.search(text)


def test_k_below_one_is_a_query_error(engine: SearchEngine) -> None:
    with pytest.raises(QueryError, match="k must be"):
        engine.search("a red circle", k=0)


def test_unknown_words_are_listed_and_the_query_still_answers(engine: SearchEngine) -> None:
    assert engine.unknown_words("a red zebra, on a xylophone! the zebra") == ["zebra", "on", "xylophone"]
    assert engine.unknown_words("a red circle") == []
    assert engine.query_words("a red zebra") == QueryWords(["zebra"], meaningless=False)
    assert engine.query_words("the zebra of a xylophone") == QueryWords(["zebra", "xylophone"], meaningless=True)
    assert engine.query_words("a red circle").warning() is None
    assert engine.query_words("a red zebra").warning() == "the model does not know: zebra"
    assert len(engine.search("zebra xylophone", k=3)) == 3


def test_another_model_is_refused_naming_both_identities(folder: Path, tmp_path_factory: pytest.TempPathFactory,
                                                         tiny_model_path: Path) -> None:
    built_with = checkpoint_summary(trained_model_path(tmp_path_factory))["identity"]
    other = checkpoint_summary(tiny_model_path)["identity"]
    with pytest.raises(ModelMismatchError) as refused:
        SearchEngine.open(folder / ".vlsearch", model=tiny_model_path)
    assert built_with in str(refused.value) and other in str(refused.value)


def test_a_missing_model_file_is_named(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing.pt: no such model file"):
        SearchEngine.open(folder / ".vlsearch", model=tmp_path / "missing.pt")


def test_stats(engine: SearchEngine, tmp_path_factory: pytest.TempPathFactory, folder: Path) -> None:
    stats = engine.stats()
    assert stats["images"] == 60 and stats["errors"] == 0 and len(engine) == 60
    assert stats["model"] == engine.identity == checkpoint_summary(trained_model_path(tmp_path_factory))["identity"]
    assert (stats["index_type"], stats["dim"], stats["root"]) == ("Flat", 32, str(folder.resolve()))


def test_refresh_is_a_no_op_while_nothing_changed(engine: SearchEngine) -> None:
    assert engine.refresh() is False


# -- finding the index --------------------------------------------------------------------------------------


def test_find_index_explicit_folder_or_index_dir(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INDEX_ENV, "/nowhere")  # an explicit index wins over the variable
    assert find_index(folder) == folder / ".vlsearch"
    assert find_index(folder / ".vlsearch") == folder / ".vlsearch"


def test_find_index_from_the_environment(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(INDEX_ENV, str(folder))
    assert find_index() == folder / ".vlsearch"


def test_find_index_in_the_current_folder_or_a_parent(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INDEX_ENV, raising=False)
    monkeypatch.chdir(folder / "more" / "jpeg")
    assert find_index() == (folder / ".vlsearch").resolve()
    with SearchEngine.open() as engine:
        assert len(engine.search("a red square", k=2)) == 2


def test_no_index_anywhere_says_how_to_build_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INDEX_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(IndexStoreError, match="vlsearch index"):
        find_index()
    with pytest.raises(IndexStoreError, match="vlsearch index"):
        SearchEngine.open(tmp_path / "missing")


def test_the_engine_opens_read_only(engine: SearchEngine) -> None:
    assert isinstance(engine.store, Store) and engine.store.readonly
    with pytest.raises(sqlite3.DatabaseError, match="not authorized|readonly"):  # the authorizer, then mode=ro
        engine.store.db.execute("DELETE FROM images")
