"""Concurrent use: searches while an indexer writes see a whole state, never half of one; a second indexer
is refused at once naming the lock holder's PID; the lock of a killed indexer is taken over.

A search is consistent when its hits are the images of one committed state: every indexed path once, each
hit's score the cosine of the query with the vector stored for that hit's content hash (a score from
before an update next to a row from after it fails this), best first.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import make_image, run_main
from indexer import vectors
from indexer.index import Index, db_path, lock_path
from indexer.pipeline import build_index
from indexer.store import Store
from retrieval.core.model import DualEncoder
from retrieval.app.search import SearchEngine

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork, SIGKILL")

IMAGES = 8
QUERIES = ["a red circle", "a blue square", "a green triangle"]
ROUNDS = 4  # the indexer rewrites every image this many times, one commit per image
SEARCHERS = 2
ENV = {**os.environ, "VLSEARCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
ROOT = Path(__file__).resolve().parents[1]


def write_version(folder: Path, version: int) -> None:
    """Every image rewritten with new pixels (same paths: an indexer run of updates only, N images throughout)."""
    for i in range(IMAGES):
        path = make_image(folder / f"img{i}.jpg", 1000 * version + i)
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000 * (version + 1)))


def inconsistencies(engine: SearchEngine, text: str, query: np.ndarray, hits: list, paths: set[str]) -> list[str]:
    """What makes ``hits`` not the results of one committed state (an empty list when they are)."""
    problems = []
    if sorted(hit.path for hit in hits) != sorted(paths):
        problems.append(f"{text!r}: {len(hits)} hits over {sorted(hit.path for hit in hits)}")
    stored = engine.store.vectors_for_hashes({hit.hash for hit in hits})  # content-addressed: never change
    for hit in hits:
        if hit.hash not in stored or abs(float(stored[hit.hash] @ query) - hit.score) > 1e-4:
            problems.append(f"{text!r}: {hit.path} scored {hit.score:.5f}, not as its stored vector ({hit.hash})")
    if [hit.score for hit in hits] != sorted((hit.score for hit in hits), reverse=True):
        problems.append(f"{text!r}: not best first")
    return problems


SEARCHER = r"""
import json, os, sys
from pathlib import Path
from retrieval.app.search import SearchEngine
from test_concurrency import QUERIES, inconsistencies
index, model, stop, out = sys.argv[1:5]
searches, problems, states = 0, [], set()
with SearchEngine.open(index, model=model) as engine:
    queries = dict(zip(QUERIES, engine.encode_text(QUERIES)))
    paths = {hit.path for hit in engine.search(QUERIES[0], k=1000)}
    print("ready", flush=True)
    while not os.path.exists(stop):
        for text, vector in queries.items():
            try:
                hits = engine.search(text, k=1000)
                problems += inconsistencies(engine, text, vector, hits, paths)
                states.add(tuple(sorted(hit.hash for hit in hits)))
            except Exception as exc:
                problems.append(f"{text!r}: {exc.__class__.__name__}: {exc}")
            searches += 1
Path(out).write_text(json.dumps({"searches": searches, "problems": problems[:20], "states": len(states)}))
"""


@pytest.fixture
def folder(tmp_path: Path, tiny_model: DualEncoder) -> Path:
    """IMAGES images, indexed (version 0)."""
    folder = tmp_path / "photos"
    write_version(folder, 0)
    build_index(folder, model=tiny_model, workers=0)
    return folder


@pytest.mark.slow
def test_searches_in_other_processes_see_whole_states_while_an_indexer_writes(
        folder: Path, tmp_path: Path, tiny_model: DualEncoder, tiny_model_path: Path) -> None:
    stop = tmp_path / "stop"
    searchers = [subprocess.Popen([sys.executable, "-c", SEARCHER, str(folder / ".vlsearch"), str(tiny_model_path),
                                   str(stop), str(tmp_path / f"searcher{n}.json")], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT / "tests")
                 for n in range(SEARCHERS)]
    try:
        for searcher in searchers:
            assert searcher.stdout.readline().strip() == "ready", searcher.stderr.read()
        for version in range(1, ROUNDS + 1):  # meanwhile: ROUNDS x IMAGES commits, a FAISS save per round
            write_version(folder, version)
            summary = build_index(folder, model=tiny_model, batch_size=1, workers=0)
            assert (summary.updated, summary.total) == (IMAGES, IMAGES)
    finally:
        stop.touch()
        for searcher in searchers:
            searcher.wait(timeout=120)
    for n, searcher in enumerate(searchers):
        assert searcher.returncode == 0, searcher.stderr.read()
        report = json.loads((tmp_path / f"searcher{n}.json").read_text())
        assert report["problems"] == []
        assert report["searches"] >= 10 and report["states"] >= 2, report  # it searched while the index changed


@pytest.mark.parametrize("where", [None, "width > 0"])
def test_an_update_committed_at_any_point_of_a_search_is_seen_whole_or_not_at_all(
        where: str | None, folder: Path, tiny_model: DualEncoder, tiny_model_path: Path) -> None:
    """Deterministic: the indexer commits an update while the search runs its 1st, 2nd, ... SQL statement."""
    with SearchEngine.open(folder / ".vlsearch", model=tiny_model_path) as engine:
        query = engine.encode_text(QUERIES[:1])[0]
        paths = {hit.path for hit in engine.search(QUERIES[0], k=1000)}
        version, position = 0, 0
        while True:
            position += 1
            statements: list[str] = []

            def update_at_position(sql: str) -> None:
                statements.append(sql)
                if len(statements) == position:  # an indexer run commits between two statements of the search
                    write_version(folder, version + 1)
                    build_index(folder, model=tiny_model, batch_size=IMAGES, workers=0)

            engine.store.db.conn.set_trace_callback(update_at_position)
            try:
                hits = engine.search(QUERIES[0], k=1000, where=where)
            finally:
                engine.store.db.conn.set_trace_callback(None)
            assert inconsistencies(engine, QUERIES[0], query, hits, paths) == [], (position, statements)
            if len(statements) < position:
                break  # past the search's last statement: every point was tried
            version += 1
            after = engine.search(QUERIES[0], k=1000, where=where)  # the next search sees the update
            with Store.open(db_path(folder / ".vlsearch"), readonly=True) as store:
                assert {hit.hash for hit in after} == {row[3] for row in store.file_stats().values()}
        assert position > 3


HOLDER = r"""
import sys, time
from pathlib import Path
from indexer.pipeline import build_index
folder, model, go = sys.argv[1:4]

def pause_at_files_1_and_3(progress):
    if progress.done in (1, 3):
        print(f"paused after {progress.done}", flush=True)
        while not Path(f"{go}{progress.done}").exists():
            time.sleep(0.02)

build_index(folder, model=model, batch_size=1, workers=0, progress=pause_at_files_1_and_3)
"""



def test_a_second_indexer_is_refused_naming_the_pid_and_a_killed_ones_lock_is_taken_over(
        tmp_path: Path, tiny_model: DualEncoder, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VLSEARCH_THREADS", "1")
    folder = tmp_path / "photos"
    write_version(folder, 0)
    index_dir, go = folder / ".vlsearch", tmp_path / "go"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(tiny_model_path), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "paused after 1", holder.stderr.read()
        started = time.monotonic()
        code, out, err = run_main(monkeypatch, capsys, "index", folder, "--model", tiny_model_path)
        assert time.monotonic() - started < 30  # refused at once, not after the holder finishes (it never will)
        assert (code, out) == (1, "")
        assert err.splitlines() == [f"Error: the index {index_dir} is being updated by process {holder.pid}; wait "
                                    f"for it to finish (or, if no such process runs, delete {index_dir / 'lock'})"]
        with SearchEngine.open(index_dir, model=tiny_model_path) as engine:  # the holder's work so far: intact
            assert len(engine.search("a red circle", k=100)) == 1
        (tmp_path / "go1").touch()
        assert holder.stdout.readline().strip() == "paused after 3"  # the refusal did not disturb it
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert lock_path(index_dir).read_text().split()[0] == str(holder.pid)  # left behind, stale
    code, out, err = run_main(monkeypatch, capsys, "index", folder, "--model", tiny_model_path)
    assert code == 0, err
    assert out.startswith(f"added {IMAGES - 3}, updated 0, removed 0, unchanged 3,")
    assert not lock_path(index_dir).exists()
    with Store.open(db_path(index_dir), readonly=True) as store:
        saved = Index(index_dir, store).saved_vectors()
        assert saved is not None and sorted(vectors.index_ids(saved)) == sorted(store.ids_matching())
    build_index(folder, tmp_path / "clean", model=tiny_model, workers=0)
    for text in QUERIES:
        with SearchEngine.open(index_dir, model=tiny_model_path) as taken_over, \
                SearchEngine.open(tmp_path / "clean", model=tiny_model_path) as clean:
            got, expected = taken_over.search(text, k=100), clean.search(text, k=100)
            assert [h.path for h in got] == [h.path for h in expected]
            # the same images, embedded in other batches: equal scores up to float rounding
            np.testing.assert_allclose([h.score for h in got], [h.score for h in expected], atol=1e-5, rtol=0)
