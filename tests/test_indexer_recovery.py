"""SQLite is the source of truth: a missing, stale or mismatched FAISS file is rebuilt from it, and an
indexer killed at any moment leaves an index that opens and a next run that finishes the job."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import IMAGE_COUNT
from indexer import vectors
from indexer.index import Index, db_path, lock_path, faiss_files
from indexer.pipeline import build_index
from indexer.store import Store
from retrieval.core.model import DualEncoder
from test_indexer import CnnSpy, counts, id_sets


def search_everything(index_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every stored vector as a query against the index: (scores, ids)."""
    with Store.open(db_path(index_dir), readonly=True) as store:
        _, queries = store.vectors()
        return vectors.search(Index(index_dir, store).vectors(), queries, 5)


class Interrupted(Exception):
    pass


def stop_after(files: int):
    def progress(p) -> None:
        if p.done == files:
            raise Interrupted

    return progress


def test_deleted_faiss_file_is_rebuilt_from_sqlite(image_folder: Path, tiny_model: DualEncoder) -> None:
    build_index(image_folder, model=tiny_model)
    index_dir = image_folder / ".vlsearch"
    before = search_everything(index_dir)
    for path in faiss_files(index_dir).values():
        path.unlink()
    with Store.open(db_path(index_dir), readonly=True) as store:
        assert Index(index_dir, store).saved_vectors() is None
    np.testing.assert_array_equal(search_everything(index_dir)[1], before[1])  # search rebuilds in memory
    spy = CnnSpy(tiny_model)
    assert counts(build_index(image_folder, model=tiny_model)) == (0, 0, 0, IMAGE_COUNT, 0, 0)
    assert spy.calls == 0 and len(faiss_files(index_dir)) == 1
    after = search_everything(index_dir)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], rtol=1e-6)


def test_faiss_file_that_does_not_match_sqlite_is_stale(image_folder: Path, tiny_model: DualEncoder) -> None:
    build_index(image_folder, model=tiny_model)
    index_dir = image_folder / ".vlsearch"
    [(generation, path)] = faiss_files(index_dir).items()
    vectors.save(vectors.build("Flat", 16), path)  # right name, wrong content (e.g. a half-finished copy)
    with Store.open(db_path(index_dir), readonly=True) as store:
        assert Index(index_dir, store).saved_vectors() is None
    build_index(image_folder, model=tiny_model)
    assert id_sets(index_dir)[0] == id_sets(index_dir)[1]


def test_interrupted_run_leaves_a_stale_faiss_file_and_the_next_run_finishes(image_folder: Path,
                                                                             tiny_model: DualEncoder) -> None:
    index_dir = image_folder / ".vlsearch"
    spy = CnnSpy(tiny_model)
    with pytest.raises(Interrupted):
        build_index(image_folder, model=tiny_model, batch_size=4, workers=1, progress=stop_after(10))
    with Store.open(db_path(index_dir), readonly=True) as store:
        committed = store.count()
        assert 4 <= committed < IMAGE_COUNT and Index(index_dir, store).saved_vectors() is None
        assert sorted(vectors.index_ids(Index(index_dir, store).vectors()).tolist()) == \
            sorted(store.ids_matching().tolist())
    spy.images = 0
    summary = build_index(image_folder, model=tiny_model)  # the lock was released; the rest gets added
    assert counts(summary) == (IMAGE_COUNT - committed, 0, 0, committed, 0, 0)
    assert spy.images == IMAGE_COUNT - committed
    assert id_sets(index_dir)[0] == id_sets(index_dir)[1]


KILLER = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from indexer.pipeline import build_index
def progress(p):
    if p.done == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
build_index(sys.argv[1], model=sys.argv[2], batch_size=4, workers=2, progress=progress)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_mid_run_leaves_an_index_that_opens(image_folder: Path, tiny_model_path: Path,
                                                    tiny_model: DualEncoder) -> None:
    kill_at = 14  # a few batches of 4 committed, one half-gathered, FAISS not saved yet
    result = subprocess.run([sys.executable, "-c", KILLER, str(image_folder), str(tiny_model_path), str(kill_at)],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    index_dir = image_folder / ".vlsearch"
    assert lock_path(index_dir).exists()  # left behind by the killed process
    with Store.open(db_path(index_dir), readonly=True) as store:
        committed = store.count()
        assert 0 < committed < IMAGE_COUNT
        assert sorted(vectors.index_ids(Index(index_dir, store).vectors()).tolist()) == \
            sorted(store.ids_matching().tolist())
    summary = build_index(image_folder, model=tiny_model)  # takes the stale lock over
    assert counts(summary) == (IMAGE_COUNT - committed, 0, 0, committed, 0, 0)
    assert id_sets(index_dir)[0] == id_sets(index_dir)[1] and summary.total == IMAGE_COUNT
