"""Crashes lose nothing: `vlsearch index` killed with SIGKILL at any moment, and a full disk or an I/O error
while saving, leave an index that opens, searches, and is finished by the next run.

The kill harness runs ``vlsearch index`` (the console entry point ``retrieval.app.cli:main``) over and over and
SIGKILLs it: at random moments spread over the time a measured clean run holds the index lock (imports and
model loading come before it), and at chosen points -- as SQLite begins a COMMIT, inside an open
transaction, between a commit and the FAISS update, half-way through writing the FAISS file, before and
after its rename. To fit ~25 runs into CI time, the runs are forked from one process that has imported
torch, torchvision and faiss once (a fresh ``vlsearch`` spends seconds importing them); one more trial runs
the real ``vlsearch`` executable. After every kill:

* the index opens, and a search answers;
* the SQLite ids equal the FAISS ids -- of the saved file if it claims to be current, else of the index
  that search rebuilds from SQLite;
* a re-run completes, leaves no lock or temp file, and its search results equal those of a clean build of
  the same folder from scratch.

The model here has a fusion head, so each run also stores region vectors (the re-ranker's, in SQLite beside
the vectors): after a kill every stored region blob is whole and belongs to an indexed image, and a
re-ranked search answers; after the re-run every image has its regions, equal to a clean build's.
"""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from helpers import CAPTIONS, TINY_CONFIG, make_image, run_main
from indexer import vectors
from indexer.index import Index, db_path, lock_path, faiss_files
from indexer.pipeline import build_index
from indexer.store import Store, connect_readonly
from retrieval.core.device import score_tolerance
from retrieval.core.checkpoint import load_model, save_checkpoint
from retrieval.core.config import ModelConfig
from retrieval.core.model import DualEncoder
from retrieval.app.search import SearchEngine
from retrieval.core.tokenizer import Vocabulary

FUSION_DIM = 8

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and fork")

QUERIES = ["a red circle", "a blue square", "a green triangle", "a white square"]
# Two folder states; each trial moves the folder to the other one, so every run has work to do:
# B drops img00-02, changes img03-05, adds four new images and moves img06 (a rename: vector reused).
STATE_A = {**{f"img{i:02d}.jpg": i for i in range(10)}, **{f"sub/p{i}.png": 20 + i for i in range(3)}}
STATE_B = {**{p: s for p, s in STATE_A.items() if p not in ("img00.jpg", "img01.jpg", "img02.jpg", "img06.jpg")},
           **{f"img{i:02d}.jpg": 100 + i for i in (3, 4, 5)}, **{f"new/n{i}.jpg": 40 + i for i in range(4)},
           "moved/img06.jpg": 6}
# (kill point, at its n-th occurrence): see arm() in ZYGOTE
POINTS = [("commit", 1), ("commit", 3), ("commit", 6), ("transaction", 2), ("faiss-add", 2), ("garbage", 1),
          ("faiss-write", 1), ("faiss-rename", 1), ("faiss-renamed", 1)]
RANDOM_KILLS = 14
FROM_SCRATCH_EVERY = 3  # every 3rd random kill hits a run that starts without an index (kills during its creation)

ZYGOTE = r'''
import json, os, signal, sys, time, traceback
import torch, torchvision, faiss  # the slow imports, once for every run
import retrieval.app.cli, retrieval.app.cli_index, indexer.pipeline
from indexer import store as store_module, vectors as vectors_module
torch.set_num_threads(1)


def arm(point, nth):
    """SIGKILL this process the nth time it reaches `point`."""
    count = [0]

    def reached():
        count[0] += 1
        if count[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(owner, name, before=False, after=False, when=lambda *a, **k: True):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if before and when(*args, **kwargs):
                reached()
            result = original(*args, **kwargs)
            if after and when(*args, **kwargs):
                reached()
            return result
        setattr(owner, name, wrapper)

    if point == "commit":  # as SQLite starts to COMMIT a write of the indexer
        init = store_module.Store.__init__

        def traced(self, db, path, readonly):
            init(self, db, path, readonly)
            if not readonly:
                db.conn.set_trace_callback(lambda sql: reached() if sql.strip().upper() == "COMMIT" else None)
        store_module.Store.__init__ = traced
    elif point == "transaction":  # rows inserted, transaction still open
        wrap(store_module.Store, "put_images", after=True)
    elif point == "garbage":  # inside the transaction that removes vanished files
        wrap(store_module.Store, "collect_garbage", after=True)
    elif point == "faiss-add":  # SQLite committed, the FAISS index not yet updated
        wrap(vectors_module, "add", before=True)
    elif point == "faiss-write":  # half of the FAISS temp file written
        write = faiss.write_index

        def half_written(index, path):
            write(index, path)
            os.truncate(path, os.path.getsize(path) // 2)
            reached()
        faiss.write_index = half_written
    elif point in ("faiss-rename", "faiss-renamed"):  # the FAISS file complete; not yet / just renamed into place
        wrap(os, "replace", before=point == "faiss-rename", after=point == "faiss-renamed",
             when=lambda src, dst, *a, **k: str(dst).endswith(".faiss"))


for line in sys.stdin:
    job = json.loads(line)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        code = 0
        try:
            if job["point"]:
                arm(job["point"], job["nth"])
            sys.argv = ["vlsearch", *job["argv"]]
            retrieval.app.cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    # watch for the lock (taken once imports and the model are loaded); kill `kill_after` seconds later
    locked = kill_at = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        now = time.monotonic()
        if locked is None and os.path.exists(job["lock"]):
            locked = now - started
            if job["kill_after"] is not None:
                kill_at = now + job["kill_after"]
        if kill_at is not None and now >= kill_at:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.005 if kill_at is None else max(0.0, min(0.005, kill_at - now)))
    print(json.dumps({"status": os.waitstatus_to_exitcode(status), "seconds": time.monotonic() - started,
                      "locked": locked}), flush=True)
'''


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's model: conftest's tiny one plus a (random) fusion head, so that regions are stored too."""
    import torch

    torch.manual_seed(0)
    model = DualEncoder(ModelConfig(**TINY_CONFIG, fusion_dim=FUSION_DIM), Vocabulary.build(CAPTIONS),
                        pretrained=False)
    path = tmp_path_factory.mktemp("models") / "fused.pt"
    save_checkpoint(model, path)
    return path


@pytest.fixture
def tiny_model(tiny_model_path: Path) -> DualEncoder:
    return load_model(tiny_model_path)


class Zygote:
    """A process that has imported the heavy modules once and forks one `vlsearch` run per request."""

    def __init__(self, workdir: Path):
        env = {**os.environ, "VLSEARCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
        self.workdir = workdir
        self.runs = 0
        self.process = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=open(workdir / "zygote.log", "w"),
                                        text=True, cwd=workdir, env=env)

    def run(self, argv: list[str], lock: Path, point: str | None = None, nth: int = 0,
            kill_after: float | None = None) -> tuple[int, float, str]:
        """One `vlsearch ARGV` run, SIGKILLed ``kill_after`` s after it takes ``lock`` or at the ``nth`` ``point``.

        Returns (exit status, negative for a signal; seconds it held the lock; its output).
        """
        self.runs += 1
        log = self.workdir / f"run{self.runs}.log"
        job = {"argv": [str(a) for a in argv], "point": point, "nth": nth, "kill_after": kill_after, "log": str(log),
               "lock": str(lock)}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, (self.workdir / "zygote.log").read_text()
        reply = json.loads(line)
        held = reply["seconds"] - reply["locked"] if reply["locked"] is not None else 0.0
        return reply["status"], held, log.read_text(errors="replace")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def apply_state(folder: Path, state: dict[str, int], current: dict[str, int]) -> None:
    """Make ``folder`` hold exactly ``state`` (path -> image seed); ``current`` is what it holds now."""
    for path in [p for p in current if state.get(p) != current[p]]:
        (folder / path).unlink()
        del current[path]
    for path, seed in state.items():
        if path not in current:
            make_image(folder / path, seed)
            stat = (folder / path).stat()  # a fresh mtime even within the clock's resolution
            os.utime(folder / path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
            current[path] = seed


def results(index_dir: Path, model_path: Path) -> dict[tuple[str, str], float]:
    """(query, path) -> FAISS score, for every image and every query."""
    with SearchEngine.open(index_dir, model=model_path) as engine:
        return {(query, hit.path): hit.score for query in QUERIES for hit in engine.search(query, k=1000, rerank=0)}


def regions_by_path(index_dir: Path) -> dict[str, np.ndarray]:
    """path -> stored region codes int8 [R, FUSION_DIM], of every image that has them."""
    with Store.open(db_path(index_dir), readonly=True) as store:
        ids = store.ids_matching()
        paths = {row["id"]: row["path"] for row in store.rows(ids)}
        return {paths[i]: np.frombuffer(blob, dtype=np.int8).reshape(-1, FUSION_DIM)
                for i, blob in store.regions(ids).items()}


def assert_same_regions(index_dir: Path, clean_dir: Path) -> None:
    """Every image has its regions, equal to a clean build's (one int8 step apart at most: batch sizes differ)."""
    actual, expected = regions_by_path(index_dir), regions_by_path(clean_dir)
    assert sorted(actual) == sorted(expected)
    for path, codes in expected.items():
        assert np.abs(actual[path].astype(int) - codes.astype(int)).max() <= 1, path


def assert_same_results(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    # identical ids; scores within the documented tolerance (bf16 vectors depend a little on their batch)
    np.testing.assert_allclose([actual[key] for key in sorted(expected)], [expected[key] for key in sorted(expected)],
                               atol=score_tolerance(), rtol=0)


def check_after_kill(index_dir: Path, model_path: Path) -> str:
    """The index a kill left: it opens and searches, and its FAISS ids are SQLite's. Returns what it found."""
    db = db_path(index_dir)
    if not db.exists():
        return "no index yet"
    with closing(connect_readonly(db)) as conn:
        if not conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'meta'").fetchone()[0] or \
                not conn.execute("SELECT count(*) FROM meta WHERE key = 'dim'").fetchone()[0]:
            return "no index yet"  # killed before the first run had recorded anything but the schema
    with Store.open(db, readonly=True) as store:
        sqlite_ids = sorted(store.ids_matching().tolist())
        saved = Index(index_dir, store).saved_vectors()
        if saved is not None:  # a file that claims to be current must hold exactly SQLite's ids
            assert sorted(vectors.index_ids(saved).tolist()) == sqlite_ids
        assert sorted(vectors.index_ids(Index(index_dir, store).vectors()).tolist()) == sqlite_ids
        blobs = store.regions(sqlite_ids)  # whatever a kill left: whole blobs of indexed images only
        assert all(len(blob) % FUSION_DIM == 0 and len(blob) for blob in blobs.values())
        fusion = store.meta().fusion
    assert fusion in ("", load_model(model_path, with_image=False).fusion_identity)
    with SearchEngine.open(index_dir, model=model_path) as engine:
        assert len(engine.search("a red circle", k=1000)) == len(sqlite_ids)
        assert len(engine.search("a red circle", k=1000, rerank=1000)) == len(sqlite_ids)
    return "FAISS current" if saved is not None else "FAISS stale, rebuilt from SQLite"


def check_finished(index_dir: Path) -> None:
    """After a completed run: no lock, no temp file, one FAISS file holding exactly the SQLite ids."""
    assert not lock_path(index_dir).exists()
    assert [p.name for p in index_dir.iterdir() if p.name.endswith(".tmp")] == []
    assert len(faiss_files(index_dir)) == 1
    with Store.open(db_path(index_dir), readonly=True) as store:
        saved = Index(index_dir, store).saved_vectors()
        assert saved is not None and Index(index_dir, store).vectors_current()
        assert sorted(vectors.index_ids(saved).tolist()) == sorted(store.ids_matching().tolist())


def vlsearch_command() -> list[str]:
    script = Path(sys.executable).with_name("vlsearch")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from retrieval.app.cli import main; main()"]


@pytest.mark.slow
def test_sigkill_at_any_moment_loses_nothing(tmp_path: Path, tiny_model_path: Path, tiny_model: DualEncoder) -> None:
    rng = random.Random(7)
    folder, index_dir, current = tmp_path / "photos", tmp_path / "photos" / ".vlsearch", {}
    folder.mkdir()
    zygote = Zygote(tmp_path)
    try:
        # clean builds from scratch: the expected results of each state
        expected = {}
        for name, state in (("A", STATE_A), ("B", STATE_B)):
            apply_state(folder, state, current)
            build_index(folder, tmp_path / f"clean-{name}", model=tiny_model, batch_size=4, workers=0)
            expected[name] = results(tmp_path / f"clean-{name}", tiny_model_path)
        argv = ["index", folder, "--model", tiny_model_path, "--batch-size", "1", "--workers", "1", "--quiet"]
        lock = lock_path(index_dir)
        # clean CLI runs (the same results) time the two kinds of run the kills are spread over
        apply_state(folder, STATE_A, current)
        status, full_seconds, output = zygote.run(argv, lock)
        assert status == 0 and output.startswith("added 13,"), output
        assert_same_results(results(index_dir, tiny_model_path), expected["A"])
        apply_state(folder, STATE_B, current)
        status, update_seconds, output = zygote.run(argv, lock)
        assert status == 0 and output.startswith("added 4, updated 3, removed 4,"), output
        assert_same_results(results(index_dir, tiny_model_path), expected["B"])

        plan = [("point", point, nth, False) for point, nth in POINTS]
        plan += [("random", None, (i + rng.random()) / RANDOM_KILLS, i % FROM_SCRATCH_EVERY == 0)
                 for i in range(RANDOM_KILLS)]  # stratified over the time the run holds the lock
        rng.shuffle(plan)
        plan.append(("executable", None, rng.random(), False))
        kills, seen, points_killed, trial = 0, {}, set(), 0
        while plan:
            how, point, share, scratch = plan.pop(0)
            trial += 1
            name = "A" if trial % 2 else "B"
            apply_state(folder, STATE_A if name == "A" else STATE_B, current)
            if scratch:
                shutil.rmtree(index_dir)
            span = full_seconds if scratch else update_seconds
            if how == "point":
                status, _, output = zygote.run(argv, lock, point=point, nth=share)
                assert status == -signal.SIGKILL, f"{point} #{share} was never reached: {output}"
                points_killed.add(point)
            elif how == "random":
                status, _, output = zygote.run(argv, lock, kill_after=share * span)
            else:  # the real executable (it imports for seconds, then takes the lock)
                started = subprocess.Popen(vlsearch_command() + [str(a) for a in argv], stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, env={**os.environ, "VLSEARCH_THREADS": "1"})
                deadline = time.monotonic() + 120
                while not lock.exists() and started.poll() is None:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                time.sleep(share * span)
                started.send_signal(signal.SIGKILL)
                output = started.communicate(timeout=60)[0].decode(errors="replace")
                status = started.returncode
            assert status in (0, -signal.SIGKILL), output
            kills += status == -signal.SIGKILL
            if not plan and kills < 20 and trial < 40:  # a run finished before its kill: add another
                plan.append(("random", None, rng.random() * 0.9, False))
            found = check_after_kill(index_dir, tiny_model_path)
            seen[found] = seen.get(found, 0) + 1
            build_index(folder, model=tiny_model, batch_size=4, workers=0)  # the re-run completes
            check_finished(index_dir)
            assert_same_results(results(index_dir, tiny_model_path), expected[name])
            assert_same_regions(index_dir, tmp_path / f"clean-{name}")
    finally:
        zygote.close()
    assert kills >= 20 and points_killed == {point for point, _ in POINTS}
    assert seen.get("FAISS stale, rebuilt from SQLite", 0) >= 5, seen  # the kills did land mid-update


# -- a full disk or an I/O error while saving ---------------------------------------------------------------



@pytest.fixture
def indexed(tmp_path: Path, tiny_model: DualEncoder, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> tuple[Path, dict[str, int], dict]:
    """A folder in STATE_A, indexed: (folder, its state, its search results)."""
    monkeypatch.setenv("VLSEARCH_THREADS", "1")
    folder, current = tmp_path / "photos", {}
    apply_state(folder, STATE_A, current)
    build_index(folder, model=tiny_model, batch_size=8, workers=0)
    return folder, current, results(folder / ".vlsearch", tiny_model_path)


def fail_faiss_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up half-way through writing the FAISS file."""
    import faiss

    write = faiss.write_index

    def disk_full(index, path):  # type: ignore[no-untyped-def]
        write(index, path)
        os.truncate(path, os.path.getsize(path) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(faiss, "write_index", disk_full)


def fail_faiss_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk reports an I/O error as the FAISS file is renamed into place."""
    replace = os.replace

    def io_error(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(dst).endswith(".faiss"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", io_error)


@pytest.mark.parametrize("failure,reason", [(fail_faiss_write, "No space left on device"),
                                            (fail_faiss_rename, "Input/output error")])
def test_a_failed_faiss_save_keeps_the_index_usable_and_says_what_happened(
        failure, reason: str, indexed: tuple[Path, dict, dict], tmp_path: Path, tiny_model: DualEncoder,
        tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    folder, current, _ = indexed
    index_dir = folder / ".vlsearch"
    [old_faiss] = faiss_files(index_dir).values()
    apply_state(folder, STATE_B, current)
    with monkeypatch.context() as patch:
        failure(patch)
        code, out, err = run_main(monkeypatch, capsys, "index", folder, "--model", tiny_model_path, "-q")
    assert (code, out) == (1, "")
    [line] = err.splitlines()
    assert line.startswith(f"Error: {index_dir}/vectors.") and f"cannot save the FAISS index ({reason})" in line
    assert "nothing is lost" in line
    assert old_faiss.is_file() and [p for p in index_dir.iterdir() if p.name.endswith(".tmp")] == []
    assert not lock_path(index_dir).exists()
    build_index(folder, tmp_path / "clean", model=tiny_model, workers=0)
    clean = results(tmp_path / "clean", tiny_model_path)
    assert_same_results(results(index_dir, tiny_model_path), clean)  # what SQLite committed, searchable now
    code, out, err = run_main(monkeypatch, capsys, "index", folder, "--model", tiny_model_path, "-q")
    assert code == 0 and out.startswith("added 0, updated 0, removed 0, unchanged 14"), err  # saved, nothing redone
    check_finished(index_dir)
    assert_same_results(results(index_dir, tiny_model_path), clean)


def test_a_full_disk_during_an_sqlite_commit_rolls_back_and_says_what_happened(
        indexed: tuple[Path, dict, dict], tmp_path: Path, tiny_model: DualEncoder, tiny_model_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    folder, current, before = indexed
    index_dir = folder / ".vlsearch"
    long_names = {f"{'long-name-' * 20}{i:02d}.jpg": 200 + i for i in range(30)}  # the batch needs new pages
    apply_state(folder, {**STATE_A, **long_names}, current)
    migrate = Store._migrate

    def full_disk(self: Store) -> None:  # SQLite's own "disk full": the file may not grow any more
        migrate(self)
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        self.db.execute(f"PRAGMA max_page_count = {pages}")

    with monkeypatch.context() as patch:
        patch.setattr(Store, "_migrate", full_disk)
        code, out, err = run_main(monkeypatch, capsys, "index", folder, "--model", tiny_model_path, "-q",
                                  "--batch-size", 64)
    assert (code, out) == (1, "")
    [line] = err.splitlines()
    assert line.startswith(f"Error: {index_dir / 'index.db'}: cannot write to the index database (database or "
                           "disk is full); the unfinished change was rolled back")
    assert not lock_path(index_dir).exists()
    check_finished(index_dir)  # the previous index, untouched: its FAISS file is still the current one
    assert_same_results(results(index_dir, tiny_model_path), before)
    code, out, err = run_main(monkeypatch, capsys, "index", folder, "--model", tiny_model_path, "-q")
    assert code == 0 and out.startswith("added 30, updated 0, removed 0, unchanged 13"), err
    check_finished(index_dir)
    build_index(folder, tmp_path / "clean", model=tiny_model, workers=0)
    assert_same_results(results(index_dir, tiny_model_path), results(tmp_path / "clean", tiny_model_path))
