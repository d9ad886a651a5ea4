"""Untrusted input: checkpoints, index files, ``--where`` filters and queries cannot run code, write, or hang.

(test_checkpoint.py refuses pickled checkpoints in the library; test_search.py and test_cli_search.py refuse
``1; DROP TABLE images``-style filters. This file adds the CLI for checkpoints, what an index folder may
contain, the filters that need more than ``mode=ro`` -- ATTACH, PRAGMA, TEMP tables, file functions,
runaway and huge queries -- and hostile query text.)
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from helpers import make_image, run_main
from indexer import store as store_module
from indexer.index import db_path
from indexer.pipeline import build_index
from indexer.store import Store
from retrieval.core.checkpoint import FORMAT, VERSION
from retrieval.core.errors import QueryError
from retrieval.app.search import SearchEngine

IMAGES = 6
SECONDS = 10.0  # "bounded time": far above what any of these takes (tens of ms), far below a hang


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLSEARCH_THREADS", "1")


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    folder = tmp_path_factory.mktemp("untrusted") / "photos"
    for seed in range(IMAGES):
        make_image(folder / f"img{seed}.{'png' if seed % 2 else 'jpg'}", seed)
    build_index(folder, model=tiny_model_path, workers=0)
    return folder / ".vlsearch"


@pytest.fixture(scope="module")
def engine(index: Path, tiny_model_path: Path):
    with SearchEngine.open(index, model=tiny_model_path) as opened:
        yield opened



def fingerprint(index: Path) -> tuple[str, list[str], list[tuple]]:
    """The database's bytes, the folder's files (SQLite's -wal/-shm aside) and every row, as a check of no change."""
    names = sorted(p.name for p in index.iterdir() if not p.name.endswith(("-wal", "-shm")))
    with sqlite3.connect(f"{(index / 'index.db').as_uri()}?mode=ro", uri=True) as conn:
        rows = [row for table in ("images", "vectors", "errors", "meta")
                for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1")]
    return hashlib.sha256((index / "index.db").read_bytes()).hexdigest(), names, rows


# -- checkpoints and index files --------------------------------------------------------------------------


class MakesADirectory:
    """Unpickling this creates a folder: the proof that code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (str(self.path),))


def test_a_checkpoint_that_would_run_code_is_refused_by_index_and_search(
        index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "version": VERSION, "config": MakesADirectory(marker)}, evil)
    folder = index.parent
    for args in (["index", folder, "--model", evil], ["search", "a red circle", "--index", index, "--model", evil]):
        code, out, err = run_main(monkeypatch, capsys, *args)
        assert (code, out) == (1, "")
        assert err.startswith(f"Error: {evil}: not a safe vlsearch checkpoint") and len(err.splitlines()) == 1
        assert not marker.exists()


def is_pickle_or_torch(data: bytes) -> bool:
    return data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") or data[:4] == b"PK\x03\x04"


def test_the_index_folder_holds_only_sqlite_and_faiss_files(index: Path) -> None:
    data = {path.name: path.read_bytes() for path in index.iterdir()}
    [faiss_name] = [name for name in data if re.fullmatch(r"vectors\.\d+\.faiss", name)]
    assert set(data) - {"index.db-wal", "index.db-shm"} == {"index.db", faiss_name}  # no lock or temp file left
    assert data["index.db"].startswith(b"SQLite format 3\x00")
    assert data.get("index.db-wal", b"")[:4] in (b"", b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")  # SQLite's WAL
    assert data[faiss_name][:4] in (b"IxM2", b"IxMp")  # FAISS IndexIDMap(2), read by FAISS's own reader
    assert faiss.read_index(str(index / faiss_name)).ntotal == IMAGES
    assert not any(is_pickle_or_torch(blob) for blob in data.values())


def test_the_database_holds_no_serialised_objects(index: Path) -> None:
    """Only the vectors table holds blobs (the regions table too, for a model with a fusion head: this one has
    none), each exactly D float32; every meta value is JSON."""
    with sqlite3.connect(index / "index.db") as conn:
        objects = conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
                               "ORDER BY name").fetchall()
        assert objects == [("table", "errors"), ("table", "images"), ("index", "images_hash"), ("table", "meta"),
                           ("table", "regions"), ("table", "vectors")]  # no trigger, no view
        dim = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()[0])
        blobs = []
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for column in [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]:
                blobs += [(table, column, size) for (size,) in
                          conn.execute(f"SELECT length({column}) FROM {table} WHERE typeof({column}) = 'blob'")]
        assert blobs == [("vectors", "vector", dim * 4)] * IMAGES
        for key, value in conn.execute("SELECT key, value FROM meta"):
            json.loads(value)


# -- --where filters ----------------------------------------------------------------------------------------


def hostile_filters(tmp: Path) -> dict[str, str]:
    """Filters that try to attach, write files or settings, load code, or run forever."""
    return {
        "attach": f"1) ; ATTACH DATABASE '{tmp / 'attached.db'}' AS evil ; SELECT (1",
        "temp-table": "1) ; CREATE TEMP TABLE t AS SELECT * FROM images ; SELECT (1",
        "pragma": "1) ; PRAGMA writable_schema = ON ; SELECT (1",
        "pragma-function": "(SELECT count(*) FROM pragma_table_info('images')) > 0",
        "writefile": f"writefile('{tmp / 'written'}', 'x') IS NULL",
        "readfile": "length(readfile('/etc/hostname')) > 0",
        "load-extension-nested": "id IN (SELECT id FROM images WHERE load_extension('/nonexistent/evil.so') IS NULL)",
        "fts3-tokenizer": "fts3_tokenizer('simple') IS NOT NULL",
        "huge-blob": "length(randomblob(1000000000)) > 0",
        "endless-recursion": "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                             "SELECT max(x) FROM c) > 0",
        "comment-out-the-rest": "1) ; DELETE FROM images --",
    }


@pytest.mark.parametrize("name", list(hostile_filters(Path("/tmp"))))
def test_a_hostile_filter_is_one_clear_error_and_changes_nothing(
        name: str, index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(store_module, "FILTER_SECONDS", 1.0)
    where = hostile_filters(tmp_path)[name]
    before = fingerprint(index)
    started = time.monotonic()
    code, out, err = run_main(monkeypatch, capsys, "search", "a red circle", "--index", index, "--where", where)
    assert time.monotonic() - started < SECONDS
    assert (code, out) == (2, "")
    assert err.startswith("Error: cannot filter images with") and len(err.splitlines()) == 1, err
    assert fingerprint(index) == before
    assert list(tmp_path.iterdir()) == []  # nothing attached, nothing written
    code, out, _ = run_main(monkeypatch, capsys, "search", "a red circle", "--index", index, "--where", "width > 0",
                            "--paths")
    assert code == 0 and len(out.splitlines()) == IMAGES  # and the index still answers


def test_an_endless_filter_is_stopped_and_says_so(engine: SearchEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "FILTER_SECONDS", 0.3)
    endless = hostile_filters(Path("/tmp"))["endless-recursion"]
    started = time.monotonic()
    with pytest.raises(QueryError, match=r"stopped after 0.3 s"):
        engine.search("a red circle", where=endless)
    assert time.monotonic() - started < SECONDS
    assert len(engine.search("a red circle", where="width > 0")) == IMAGES  # the next filter is not affected


def test_a_read_only_connection_refuses_every_write_whatever_reaches_it(index: Path) -> None:
    """Defence in depth: even a statement that got past the filter syntax could only read."""
    with Store.open(db_path(index), readonly=True) as store:
        conn = store.db.conn
        for statement in ("CREATE TEMP TABLE t (x)", f"ATTACH DATABASE '{index / 'x.db'}' AS x",
                          "PRAGMA query_only = 0", "PRAGMA journal_mode = delete", "DELETE FROM images",
                          "INSERT INTO meta VALUES ('k', '1')", "CREATE TEMP TRIGGER t AFTER INSERT ON meta BEGIN "
                          "SELECT 1; END"):
            with pytest.raises(sqlite3.DatabaseError, match="not authorized|readonly"):
                conn.execute(statement)
        if hasattr(conn, "enable_load_extension"):  # even with extension loading on, a filter cannot use it
            conn.enable_load_extension(True)
        with pytest.raises(QueryError, match="not authorized"):
            store.ids_matching("load_extension('/nonexistent/evil.so') IS NULL")
        assert len(store.ids_matching("width > 0")) == IMAGES
    assert not (index / "x.db").exists()


# -- queries ------------------------------------------------------------------------------------------------


QUERIES = {
    "100k-characters": "a red circle next to a blue square " * 2858,
    "100k-character-word": "x" * 100_000,
    "emoji": "🔴⭕ next to 🟦 🐶🌊",
    "arabic": "دائرة حمراء بجانب مربع أزرق",
    "hebrew-with-rtl-override": "\u202eעיגול אדום a red circle\u202c",
    "control-characters": "a red\x00circle\x1b[31m\x07\r\n\tsquare\x7f",
    "combining-marks": "a re\u0301d ci\u0308rcle" + "\u0301" * 5000,
}
EMPTY = {"empty": "", "spaces": " \t\n\r ", "only-control-characters": "\x00\x01\x1b\x7f",
         "only-invisible-format-characters": "\u200b\u202e\ufeff\u2060"}


@pytest.mark.parametrize("name", list(QUERIES))
def test_a_strange_query_answers_in_bounded_time(name: str, engine: SearchEngine) -> None:
    started = time.monotonic()
    hits = engine.search(QUERIES[name], k=4)
    assert time.monotonic() - started < SECONDS
    assert len(hits) == 4 and all(np.isfinite(hit.score) and -1 - 1e-5 <= hit.score <= 1 + 1e-5 for hit in hits)


@pytest.mark.parametrize("name", list(EMPTY))
def test_a_query_with_nothing_to_read_is_an_empty_query(name: str, engine: SearchEngine) -> None:
    with pytest.raises(QueryError, match="the query is empty"):
        engine.search(EMPTY[name])


@pytest.mark.parametrize("name", ["100k-characters", "emoji", "hebrew-with-rtl-override", "control-characters",
                                  "only-control-characters"])
def test_strange_queries_on_the_command_line(name: str, index: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    query = {**QUERIES, **EMPTY}[name].replace("\x00", "")  # argv cannot hold NUL
    started = time.monotonic()
    code, out, err = run_main(monkeypatch, capsys, "search", query, "--index", index, "-k", 3, "--json")
    assert time.monotonic() - started < SECONDS
    if name in EMPTY:
        assert (code, out) == (2, "") and err.startswith("Error: the query is empty") and len(err.splitlines()) == 1
        return
    assert code == 0, err
    document = json.loads(out)
    assert document["query"] == query and len(document["results"]) == 3
    assert len(err.splitlines()) <= 1  # at most the one-line unknown-words warning
