"""indexer.pipeline.build_index on a real folder, tiny model, real SQLite and FAISS: exact incremental counts.

The only stand-in is a spy that *counts* CNN calls (the model still runs).
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import IMAGE_COUNT, make_image
from indexer import vectors
from indexer.index import Index, db_path, lock_path, faiss_files
from retrieval.core.decode import Decoder
from indexer.embed import ImageEmbedder
from indexer.pipeline import IndexSummary, build_index, in_order, plan
from indexer.scan import FileEntry
from indexer.store import Store
from retrieval.core.checkpoint import load_model
from retrieval.core.errors import CheckpointError, IndexStoreError, ModelMismatchError
from retrieval.core.model import DualEncoder


class CnnSpy:
    """Counts calls to ``model.encode_image`` and the images that went through it."""

    def __init__(self, model: DualEncoder):
        self.calls = self.images = 0
        original = model.encode_image

        def counting(batch: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            self.images += len(batch)
            return original(batch)

        model.encode_image = counting  # type: ignore[method-assign]


def counts(summary: IndexSummary) -> tuple[int, ...]:
    return summary.added, summary.updated, summary.removed, summary.unchanged, summary.reused, summary.failed


def later(path: Path) -> None:
    """Make sure a rewritten file's mtime differs from the indexed one, whatever the clock resolution."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def id_sets(index_dir: Path) -> tuple[list[int], list[int]]:
    """(SQLite ids, ids in the saved FAISS file) -- the saved file must be the current one."""
    with Store.open(db_path(index_dir), readonly=True) as store:
        saved = Index(index_dir, store).saved_vectors()
        assert saved is not None, "the saved FAISS file does not match SQLite"
        return sorted(store.ids_matching().tolist()), sorted(vectors.index_ids(saved).tolist())


def search_file(index_dir: Path, model: DualEncoder, image: Path, k: int = 3) -> list[tuple[str, float]]:
    """Embed ``image`` on its own and search the index with it: [(path, score)] best first."""
    query = ImageEmbedder(model, "cpu")(Decoder(model.config.image_size)(image).pixels[None])
    with Store.open(db_path(index_dir), readonly=True) as store:
        scores, ids = vectors.search(Index(index_dir, store).vectors(), query, k)
        paths = {row["id"]: row["path"] for row in store.rows(ids[0])}
    return [(paths[i], float(s)) for i, s in zip(ids[0], scores[0])]


@pytest.fixture
def built(image_folder: Path, tiny_model: DualEncoder) -> Path:
    summary = build_index(image_folder, model=tiny_model, batch_size=8, workers=2)
    assert counts(summary) == (IMAGE_COUNT, 0, 0, 0, 0, 0)
    return image_folder / ".vlsearch"


def test_first_build_indexes_every_image(image_folder: Path, tiny_model: DualEncoder) -> None:
    spy = CnnSpy(tiny_model)
    summary = build_index(image_folder, model=tiny_model, batch_size=8, workers=2)
    assert counts(summary) == (IMAGE_COUNT, 0, 0, 0, 0, 0)
    assert summary.total == IMAGE_COUNT and summary.index_type == "Flat" and spy.images == IMAGE_COUNT
    assert summary.line().startswith(f"added {IMAGE_COUNT}, updated 0, removed 0, unchanged 0, reused 0, failed 0 in ")
    index_dir = image_folder / ".vlsearch"
    sqlite_ids, faiss_ids = id_sets(index_dir)
    assert sqlite_ids == faiss_ids and len(sqlite_ids) == IMAGE_COUNT
    with Store.open(db_path(index_dir), readonly=True) as store:
        meta = store.meta()
        rows = store.rows(sqlite_ids)
    assert meta.model == tiny_model.identity and meta.dim == 16 and meta.root == ".."
    assert {r["path"] for r in rows} >= {"img01.jpg", "sub/img00.png", "sub/deeper/img03.png"}
    assert {(r["width"], r["height"]) for r in rows} == {(40, 40)} and {r["format"] for r in rows} == {"JPEG", "PNG"}
    assert search_file(index_dir, tiny_model, image_folder / "img05.jpg")[0][0] == "img05.jpg"


def test_second_run_embeds_nothing(built: Path, image_folder: Path, tiny_model: DualEncoder) -> None:
    spy = CnnSpy(tiny_model)
    faiss_file = faiss_files(built)
    summary = build_index(image_folder, model=tiny_model)
    assert counts(summary) == (0, 0, 0, IMAGE_COUNT, 0, 0) and spy.calls == 0
    assert faiss_files(built) == faiss_file  # nothing changed, nothing saved


def test_model_weights_load_only_when_something_needs_the_cnn(image_folder: Path, tiny_model_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import retrieval.core.checkpoint

    loads = []
    real = retrieval.core.checkpoint.load_model
    monkeypatch.setattr(retrieval.core.checkpoint, "load_model", lambda *args, **kw: loads.append(args) or real(*args, **kw))
    assert build_index(image_folder, model=tiny_model_path).added == IMAGE_COUNT and len(loads) == 1
    assert build_index(image_folder, model=tiny_model_path).unchanged == IMAGE_COUNT and len(loads) == 1
    make_image(image_folder / "new.jpg", seed=77)
    assert build_index(image_folder, model=tiny_model_path).added == 1 and len(loads) == 2


def test_modify_delete_rename_copy(built: Path, image_folder: Path, tiny_model: DualEncoder) -> None:
    make_image(image_folder / "img01.jpg", seed=101)  # modified: new pixels
    later(image_folder / "img01.jpg")
    (image_folder / "img02.jpg").unlink()  # deleted
    (image_folder / "moved").mkdir()
    (image_folder / "img04.jpg").rename(image_folder / "moved" / "renamed.jpg")  # renamed and moved
    shutil.copy2(image_folder / "img05.jpg", image_folder / "sub" / "copy-of-05.jpg")  # copied
    spy = CnnSpy(tiny_model)
    summary = build_index(image_folder, model=tiny_model)
    #                        added updated removed unchanged       reused failed
    assert counts(summary) == (0, 1, 2, IMAGE_COUNT - 3, 2, 0)
    assert spy.images == 1 and summary.total == IMAGE_COUNT
    sqlite_ids, faiss_ids = id_sets(built)
    assert sqlite_ids == faiss_ids
    top = search_file(built, tiny_model, image_folder / "img01.jpg")
    assert top[0][0] == "img01.jpg" and top[0][1] == pytest.approx(1.0, abs=1e-4)
    assert search_file(built, tiny_model, image_folder / "moved" / "renamed.jpg")[0][0] == "moved/renamed.jpg"
    twins = search_file(built, tiny_model, image_folder / "img05.jpg", k=2)
    assert {path for path, _ in twins} == {"img05.jpg", "sub/copy-of-05.jpg"}
    assert [score for _, score in twins] == pytest.approx([1.0, 1.0], abs=1e-4)
    with Store.open(db_path(built), readonly=True) as store:
        paths = set(store.file_stats())
        assert "img02.jpg" not in paths and "img04.jpg" not in paths
        assert len(store.hashes()) == IMAGE_COUNT - 1  # the copy shares a vector; old img01/img02 collected
    assert counts(build_index(image_folder, model=tiny_model)) == (0, 0, 0, IMAGE_COUNT, 0, 0)


def test_touched_files_are_unchanged_and_not_embedded(built: Path, image_folder: Path,
                                                      tiny_model: DualEncoder) -> None:
    later(image_folder / "img07.jpg")
    spy = CnnSpy(tiny_model)
    assert counts(build_index(image_folder, model=tiny_model)) == (0, 0, 0, IMAGE_COUNT, 0, 0)
    assert spy.calls == 0
    assert counts(build_index(image_folder, model=tiny_model)) == (0, 0, 0, IMAGE_COUNT, 0, 0)  # stat recorded


def test_duplicates_in_one_run_are_embedded_once(tmp_path: Path, tiny_model: DualEncoder) -> None:
    folder = tmp_path / "dups"
    make_image(folder / "a.png", seed=3)
    for name in ("b.png", "c/d.png"):
        (folder / name).parent.mkdir(exist_ok=True)
        shutil.copy(folder / "a.png", folder / name)
    make_image(folder / "e.jpg", seed=4)
    spy = CnnSpy(tiny_model)
    assert counts(build_index(folder, model=tiny_model, batch_size=2)) == (2, 0, 0, 0, 2, 0)
    assert spy.images == 2


def test_rebuild_embeds_everything_again(built: Path, image_folder: Path, tiny_model: DualEncoder) -> None:
    spy = CnnSpy(tiny_model)
    summary = build_index(image_folder, model=tiny_model, rebuild=True)
    assert counts(summary) == (IMAGE_COUNT, 0, 0, 0, 0, 0) and spy.images == IMAGE_COUNT
    assert id_sets(built)[0] == id_sets(built)[1]


def test_corrupt_and_fake_images_land_in_errors_and_the_rest_is_indexed(image_folder: Path,
                                                                        tiny_model: DualEncoder) -> None:
    good = (image_folder / "img01.jpg").read_bytes()
    (image_folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (image_folder / "notes.png").write_text("not an image")
    (image_folder / "README").write_text("no suffix and not an image: silently skipped")
    shutil.copy(image_folder / "img02.jpg", image_folder / "no_suffix_image")  # content decides
    summary = build_index(image_folder, model=tiny_model)
    assert counts(summary) == (IMAGE_COUNT, 0, 0, 0, 1, 2)
    assert dict(summary.failures).keys() == {"truncated.jpg", "notes.png"}
    assert "corrupt or truncated" in dict(summary.failures)["truncated.jpg"]
    index_dir = image_folder / ".vlsearch"
    with Store.open(db_path(index_dir), readonly=True) as store:
        assert [e["path"] for e in store.errors()] == ["notes.png", "truncated.jpg"]
        assert "no_suffix_image" in store.file_stats()
    spy = CnnSpy(tiny_model)
    again = build_index(image_folder, model=tiny_model)  # known failures: reported, not retried
    assert counts(again) == (0, 0, 0, IMAGE_COUNT + 1, 0, 2) and spy.calls == 0
    (image_folder / "truncated.jpg").write_bytes(good[:-1] + b"\xd9")  # repaired (a fresh mtime)
    later(image_folder / "truncated.jpg")
    (image_folder / "notes.png").unlink()
    fixed = build_index(image_folder, model=tiny_model)
    assert counts(fixed) == (0, 0, 0, IMAGE_COUNT + 1, 1, 0)  # same pixels as img01 -> reused
    with Store.open(db_path(index_dir), readonly=True) as store:
        assert store.error_count() == 0


def test_all_failures_still_finish(tmp_path: Path, tiny_model: DualEncoder) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    summary = build_index(tmp_path, model=tiny_model)
    assert counts(summary) == (0, 0, 0, 0, 0, 1) and summary.total == 0


def test_a_different_model_is_refused_naming_both(built: Path, image_folder: Path, tiny_model: DualEncoder,
                                                  other_model_path: Path) -> None:
    with pytest.raises(ModelMismatchError) as refused:
        build_index(image_folder, model=other_model_path)
    message = str(refused.value)
    assert tiny_model.identity in message and str(other_model_path.resolve()) in message and "--rebuild" in message
    summary = build_index(image_folder, model=other_model_path, rebuild=True)
    assert counts(summary) == (IMAGE_COUNT, 0, 0, 0, 0, 0)
    build_index(image_folder, model=load_model(other_model_path))  # a loaded model keeps the recorded path
    with Store.open(db_path(built), readonly=True) as store:
        assert store.meta().model_path == str(other_model_path.resolve())


def test_index_type_is_pluggable_and_remembered(built: Path, image_folder: Path, tiny_model: DualEncoder) -> None:
    spy = CnnSpy(tiny_model)
    summary = build_index(image_folder, model=tiny_model, index_type="hnsw")
    assert summary.index_type == "HNSW32,Flat" and spy.calls == 0 and counts(summary)[3] == IMAGE_COUNT
    (image_folder / "img08.jpg").unlink()  # HNSW cannot remove: rebuilt from SQLite instead
    summary = build_index(image_folder, model=tiny_model)  # no --index-type: keeps hnsw
    assert summary.index_type == "HNSW32,Flat" and counts(summary)[2] == 1
    sqlite_ids, faiss_ids = id_sets(built)
    assert sqlite_ids == faiss_ids and len(faiss_ids) == IMAGE_COUNT - 1
    assert build_index(image_folder, model=tiny_model, index_type="IVF2,Flat").index_type == "IVF2,Flat"
    assert search_file(built, tiny_model, image_folder / "img10.jpg")[0][0] == "img10.jpg"


def test_index_elsewhere_stores_an_absolute_root_and_refuses_another_folder(tmp_path: Path, image_folder: Path,
                                                                           tiny_model: DualEncoder) -> None:
    index_dir = tmp_path / "indexes" / "photos"
    build_index(image_folder, index_dir, model=tiny_model)
    with Store.open(db_path(index_dir), readonly=True) as store:
        assert Index(index_dir, store).root() == image_folder.resolve()
    other = tmp_path / "other"
    make_image(other / "x.jpg", seed=1)
    with pytest.raises(IndexStoreError, match="holds the folder"):
        build_index(other, index_dir, model=tiny_model)


def test_a_default_located_index_travels_with_its_folder(built: Path, image_folder: Path, tmp_path: Path,
                                                         tiny_model: DualEncoder) -> None:
    moved = tmp_path / "elsewhere" / "photos"
    moved.parent.mkdir()
    image_folder.rename(moved)
    spy = CnnSpy(tiny_model)
    assert counts(build_index(moved, model=tiny_model)) == (0, 0, 0, IMAGE_COUNT, 0, 0) and spy.calls == 0
    with Store.open(db_path(moved / ".vlsearch"), readonly=True) as store:
        assert Index(moved / ".vlsearch", store).root() == moved.resolve()


def test_a_second_indexer_is_refused(built: Path, image_folder: Path, tiny_model: DualEncoder) -> None:
    from indexer.lock import IndexLock
    from retrieval.core.errors import IndexLockedError

    with IndexLock(lock_path(built)):
        with pytest.raises(IndexLockedError, match=f"process {os.getpid()}"):
            build_index(image_folder, model=tiny_model)


def test_missing_default_model_is_a_clear_error(image_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("retrieval.core.config.default_model_path", lambda: Path("/nowhere/default_model.pt"))
    with pytest.raises(CheckpointError, match="no default model is installed yet.*--model"):
        build_index(image_folder)
    assert not (image_folder / ".vlsearch").exists()


def test_not_a_folder(tmp_path: Path, tiny_model: DualEncoder) -> None:
    with pytest.raises(IndexStoreError, match="not a folder"):
        build_index(tmp_path / "missing", model=tiny_model)


def test_plan_is_a_dict_diff() -> None:
    entries = [FileEntry("same.jpg", 1, 1, True), FileEntry("changed.jpg", 2, 9, True),
               FileEntry("new.jpg", 3, 3, True), FileEntry("bad.jpg", 4, 4, True), FileEntry("bad2.jpg", 5, 6, True)]
    indexed = {"same.jpg": (1, 1, 1, "h1"), "changed.jpg": (2, 2, 2, "h2"), "gone.jpg": (3, 3, 3, "h3")}
    failed = {"bad.jpg": (4, 4, "corrupt"), "bad2.jpg": (5, 5, "corrupt"), "old.jpg": (1, 1, "corrupt")}
    todo = plan(entries, indexed, failed)
    assert [(job.entry.path, job.known) for job in todo.work] == \
        [("changed.jpg", (2, "h2")), ("new.jpg", None), ("bad2.jpg", None)]
    assert todo.unchanged == 1 and todo.known_failures == [("bad.jpg", "corrupt")]
    assert todo.vanished == {"gone.jpg": 3} and todo.stale_errors == ["old.jpg"]


def test_vectors_in_sqlite_match_the_model(built: Path, image_folder: Path, tiny_model: DualEncoder) -> None:
    with Store.open(db_path(built), readonly=True) as store:
        [row_id] = store.ids_matching(glob="img11.jpg")
        _, stored = store.vectors([row_id])
    query = ImageEmbedder(tiny_model, "cpu")(Decoder(32)(image_folder / "img11.jpg").pixels[None])
    np.testing.assert_allclose(stored, query, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, rtol=1e-5)


def test_a_file_that_vanishes_before_it_is_read_is_gone_not_failed(tmp_path: Path) -> None:
    from indexer.pipeline import Job, prepare

    gone = prepare(Job(FileEntry("vanished.jpg", 10, 1, True), (7, "h")), tmp_path, Decoder(32), set())
    assert gone.gone and gone.error is None


def test_in_order_keeps_input_order_and_starts_items_only_while_go_is_set() -> None:
    go = threading.Event()  # the pipeline clears it while the CNN runs on the CPU
    started_early = []

    def square(n: int) -> int:
        started_early.append(not go.is_set())
        time.sleep(0.002 * (n % 3))  # finish out of order
        return n * n

    threading.Timer(0.05, go.set).start()
    assert list(in_order(square, list(range(20)), workers=3, lookahead=5, go=go)) == [n * n for n in range(20)]
    assert len(started_early) == 20 and not any(started_early)


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="file names there are always Unicode")
def test_a_file_name_that_is_not_utf8_is_indexed_renamed_and_recorded_exactly(image_folder: Path,
                                                                             tiny_model: DualEncoder) -> None:
    raw = os.fsencode(image_folder)
    shutil.copy(image_folder / "img01.jpg", os.path.join(raw, b"caf\xe9.jpg"))  # a copy: its vector is reused
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    os.rename(image_folder / "broken.jpg", os.path.join(raw, b"cass\xe9.jpg"))  # unreadable: an error
    assert counts(build_index(image_folder, model=tiny_model)) == (IMAGE_COUNT, 0, 0, 0, 1, 1)
    assert counts(build_index(image_folder, model=tiny_model)) == (0, 0, 0, IMAGE_COUNT + 1, 0, 1)  # not retried
    os.rename(os.path.join(raw, b"caf\xe9.jpg"), os.path.join(raw, b"th\xe9.jpg"))  # a rename: no CNN
    assert counts(build_index(image_folder, model=tiny_model)) == (0, 0, 1, IMAGE_COUNT, 1, 1)
    with Store.open(db_path(image_folder / ".vlsearch"), readonly=True) as store:
        paths = [os.fsencode(row["path"]) for row in store.rows(store.ids_matching().tolist())]
        assert b"th\xe9.jpg" in paths and b"caf\xe9.jpg" not in paths
        assert [os.fsencode(e["path"]) for e in store.errors()] == [b"cass\xe9.jpg"]