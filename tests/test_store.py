"""indexer.store: schema, WAL, generations, upserts, shared vectors, reading helpers for search."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from indexer.store import SCHEMA_VERSION, ErrorRow, ImageRow, Store, connect_readonly

from retrieval.core.errors import IndexStoreError, ModelMismatchError, QueryError


def row(path: str, digest: str, size: int = 10, mtime: int = 1, width: int = 40, fmt: str = "JPEG") -> ImageRow:
    return ImageRow(path, size, mtime, digest, width, 30, fmt)


def unit(seed: int, dim: int = 4) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "index.db") as opened:
        opened.set_meta(model="model-a", dim=4)
        with opened.write():
            opened.put_vectors({"h1": unit(1), "h2": unit(2)})
            opened.put_images([row("a.jpg", "h1"), row("b/c.png", "h2", width=800, fmt="PNG"), row("copy.jpg", "h1")])
        yield opened


def test_new_database_has_schema_wal_and_generation_zero(tmp_path: Path) -> None:
    with Store.open(tmp_path / "index.db") as store:
        meta = store.meta()
        assert meta.schema_version == SCHEMA_VERSION and store.generation == 0 and store.count() == 0
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert {"images", "vectors", "errors", "meta"} <= set(store.db.table_names())
    with Store.open(tmp_path / "index.db") as again:  # reopening keeps everything
        assert again.meta().created_at == meta.created_at


def test_generation_counts_commits_that_change_vectors_only(store: Store) -> None:
    assert store.generation == 1
    with store.write():
        store.put_errors([ErrorRow("bad.jpg", "corrupt", 3, 4)])
        store.touch_images([(1, 11, 2)])
        store.collect_garbage()
    assert store.generation == 1
    with store.write():
        store.delete_images([2])
    assert store.generation == 2
    with pytest.raises(ValueError), store.write():  # a failed transaction changes nothing
        store.delete_images([1])
        raise ValueError
    assert store.generation == 2 and store.count() == 2


def test_writes_need_a_transaction(store: Store) -> None:
    with pytest.raises(RuntimeError):
        store.put_images([row("x.jpg", "h1")])


def test_upsert_keeps_ids_and_ids_are_never_reused(store: Store) -> None:
    stats = store.file_stats()
    assert stats == {"a.jpg": (1, 10, 1, "h1"), "b/c.png": (2, 10, 1, "h2"), "copy.jpg": (3, 10, 1, "h1")}
    with store.write():
        store.put_vectors({"h3": unit(3)})
        kept, new = store.put_images([row("b/c.png", "h3", size=99), row("new.jpg", "h3")])
        store.delete_images([new])
    with store.write():
        [newer] = store.put_images([row("newer.jpg", "h3")])
    assert kept == 2 and 3 < new < newer  # a deleted id is never handed out again
    assert store.file_stats()["b/c.png"] == (2, 99, 1, "h3")


def test_vectors_are_shared_by_content_and_collected_when_unused(store: Store) -> None:
    ids, matrix = store.vectors()
    assert ids.tolist() == [1, 2, 3] and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[0], matrix[2])  # a.jpg and copy.jpg share h1
    np.testing.assert_array_equal(store.vectors([3, 2, 99])[0], [2, 3])
    assert store.hashes() == {"h1", "h2"}
    np.testing.assert_array_equal(store.vectors_for_hashes(["h2", "nope"])["h2"], unit(2))
    with store.write():
        store.delete_images([2])
        assert store.collect_garbage() == 1
    assert store.hashes() == {"h1"}


def test_errors_are_recorded_and_cleared_when_the_file_is_indexed(store: Store) -> None:
    with store.write():
        store.put_errors([ErrorRow("bad.jpg", "corrupt", 5, 6), ErrorRow("worse.png", "truncated")])
    assert store.error_stats()["bad.jpg"] == (5, 6, "corrupt") and store.error_count() == 2
    assert [e["path"] for e in store.errors()] == ["bad.jpg", "worse.png"]
    with store.write():
        store.put_images([row("bad.jpg", "h2")])
        store.delete_errors(["worse.png"])
    assert store.error_count() == 0


def test_rows_in_the_order_asked(store: Store) -> None:
    rows = store.rows([3, 99, 1])
    assert [r["path"] for r in rows] == ["copy.jpg", "a.jpg"]
    assert set(rows[0]) == {"id", "path", "size", "mtime_ns", "hash", "width", "height", "format", "indexed_at"}


def test_ids_matching_where_glob_and_params(store: Store) -> None:
    assert store.ids_matching().tolist() == [1, 2, 3]
    assert store.ids_matching(where="width > 100").tolist() == [2]
    assert store.ids_matching(glob="*.jpg").tolist() == [1, 3]
    assert store.ids_matching(where="format = ?", glob="b/*", params=["PNG"]).tolist() == [2]
    assert store.ids_matching(where="format = :f", glob="*.png", params={"f": "PNG"}).tolist() == [2]
    assert store.ids_matching(where="1) OR (1", glob="*.png").tolist() == [2]  # where cannot escape the glob
    with pytest.raises(QueryError, match="no such column"):
        store.ids_matching(where="colour = 'red'")


def test_model_mismatch_names_both_models_and_suggests_rebuild(store: Store) -> None:
    store.check_model("model-a")
    store.set_meta(model_path="/models/a.pt")
    with pytest.raises(ModelMismatchError, match=r"model-a \(/models/a.pt\).*model-b \(b.pt\).*--rebuild"):
        store.check_model("model-b", "b.pt")


def test_readonly_reads_and_refuses_writes(store: Store, tmp_path: Path) -> None:
    with Store.open(tmp_path / "index.db", readonly=True) as reader:
        assert reader.count() == 3 and reader.meta().model == "model-a"
        with pytest.raises(IndexStoreError, match="read-only"), reader.write():
            pass
    with pytest.raises(IndexStoreError, match="no index database"):
        Store.open(tmp_path / "missing.db", readonly=True)


def test_newer_schema_is_refused(store: Store, tmp_path: Path) -> None:
    store.set_meta(schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(IndexStoreError, match="newer"):
        Store.open(tmp_path / "index.db")


def test_reset_forgets_images_vectors_and_errors(store: Store) -> None:
    with store.write():
        store.put_errors([ErrorRow("bad.jpg", "corrupt")])
        store.reset()
    assert store.count() == store.error_count() == 0 and store.hashes() == set()
    assert store.meta().model == "model-a"


def test_readonly_open_rolls_back_what_a_killed_writer_left(tmp_path: Path) -> None:
    """A writer killed mid-transaction before WAL mode was on (creating the index) leaves a hot rollback journal,
    which a read-only connection may not roll back ("attempt to write a readonly database"): the reader
    still opens, and sees the last committed state, not the half-written pages."""
    db = tmp_path / "index.db"
    writer = textwrap.dedent(f"""
        import os, sqlite3
        conn = sqlite3.connect({str(db)!r}, isolation_level=None)
        conn.execute("CREATE TABLE t (x BLOB)")
        conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
        conn.execute("PRAGMA cache_size = 2")  # spill the open transaction's pages into the file
        conn.execute("BEGIN")
        for _ in range(20):
            conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
        os._exit(0)  # killed before COMMIT
        """)
    subprocess.run([sys.executable, "-c", writer], check=True, timeout=60)
    assert (tmp_path / "index.db-journal").stat().st_size > 0
    with closing(connect_readonly(db)) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1


def test_meta_is_typed_and_its_keys_are_checked(store: Store) -> None:
    meta = store.meta()
    assert (meta.model, meta.dim, meta.generation) == ("model-a", 4, store.generation) and meta.fusion == ""
    with pytest.raises(TypeError, match="not meta keys: colour"):
        store.set_meta(colour="red")
