"""Every SQL statement of an index, over one SQLite file in WAL mode (readers never block the indexer).

Tables
    images   id (SQLite = FAISS id, never reused), path (relative to the root, '/'-separated, unique),
             size, mtime_ns, hash (of the bytes), width, height, format, indexed_at
    vectors  hash -> float32 BLOB [D]: one row per distinct content, shared by duplicates, so the FAISS
             index can always be rebuilt from ``images JOIN vectors`` alone
    regions  hash -> int8 BLOB [R, d]: the fusion head's region vectors of that content (re-ranking), for
             models with a head; meta ``fusion`` names the head they came from (none: the table is empty)
    errors   path, message, time, size, mtime_ns: files that could not be read (retried once they change)
    meta     key -> JSON value: the fields of :class:`IndexMeta`

Writes to images and vectors happen inside :meth:`Store.write`, one transaction that also bumps
``generation``: a FAISS file saved for generation G is current exactly while the stored generation is G.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from sqlite_utils import Database

from retrieval.core.errors import IndexStoreError, ModelMismatchError, QueryError

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT NOT NULL,
    width INTEGER,
    height INTEGER,
    format TEXT,
    indexed_at TEXT NOT NULL
);
CREATE INDEX images_hash ON images (hash);
CREATE TABLE vectors (hash TEXT PRIMARY KEY, vector BLOB NOT NULL);
CREATE TABLE errors (path TEXT PRIMARY KEY, message TEXT NOT NULL, time TEXT NOT NULL, size INTEGER,
                     mtime_ns INTEGER);
CREATE TABLE regions (hash TEXT PRIMARY KEY, regions BLOB NOT NULL);
"""
# MIGRATIONS[n] upgrades a schema of version n to n + 1; append one per schema change.
MIGRATIONS: dict[int, str] = {1: "CREATE TABLE regions (hash TEXT PRIMARY KEY, regions BLOB NOT NULL)"}
IMAGE_COLUMNS = ("id", "path", "size", "mtime_ns", "hash", "width", "height", "format", "indexed_at")
_CHUNK = 500  # ids per IN (...) clause, under SQLite's variable limit
FILTER_SECONDS = 10.0  # a search filter still running after this long is stopped (e.g. an endless recursive CTE)
MAX_VALUE_BYTES = 16 << 20  # the longest string or blob a read-only connection may make (randomblob(1e9)...)
# A read-only connection may read and nothing else -- a defence in depth beyond mode=ro for the user's
# filters: no PRAGMA, ATTACH, TEMP table or extension, whatever reaches the connection.
_READ_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                           sqlite3.SQLITE_RECURSIVE, sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT})
_UNSAFE_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"})



@dataclass
class ImageRow:
    """One indexed file (its id comes from SQLite)."""

    path: str
    size: int
    mtime_ns: int
    hash: str
    width: int | None
    height: int | None
    format: str | None


@dataclass
class ErrorRow:
    path: str
    message: str
    size: int | None = None
    mtime_ns: int | None = None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sql_path(path: str) -> str | bytes:
    """A path as SQLite keeps it: TEXT when the name is valid UTF-8 (nearly always), else its raw bytes as a
    BLOB (``os.fsencode``: a name from a non-UTF-8 file system, which Python holds with surrogate escapes).
    A BLOB never equals a TEXT, so no two names collide, and every byte of the name comes back."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def _py_path(value: str | bytes) -> str:
    """:func:`_sql_path` undone: the name as the file system gives it to Python (``os.fsdecode``)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _vector_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def _read_only(action: int, arg1: str | None, arg2: str | None, database: str | None, source: str | None) -> int:
    """SQLite authorizer of read-only connections: reads, pure functions and transactions only."""
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _UNSAFE_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start:start + _CHUNK]


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection that sees every committed transaction, also after a writer was killed.

    A killed writer can leave a WAL whose shared-memory index must be rebuilt before anyone reads it, which a
    read-only connection may not do ("attempt to write a readonly database"): a plain connection rebuilds it
    first (it changes no data). Only in a folder we cannot write is the database read as an immutable snapshot
    (without the WAL: consistent, possibly older)."""
    uri = path.resolve().as_uri()

    def connect(mode: str) -> sqlite3.Connection:
        conn = sqlite3.connect(f"{uri}?mode={mode}", uri=True, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    try:
        return connect("ro")
    except sqlite3.OperationalError:
        pass
    if os.access(path.parent, os.W_OK) and os.access(path, os.W_OK):
        try:
            connect("rw").close()  # recovers the WAL index
            return connect("ro")
        except sqlite3.OperationalError:
            pass
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False)


@dataclass(frozen=True)
class IndexMeta:
    """The ``meta`` table, typed: the one place that knows its keys (an absent key reads as its default)."""

    schema_version: int = 0
    generation: int = 0  # bumped by every write of images/vectors: the FAISS file of generation G is current
    created_at: str = ""
    updated_at: str = ""  # last change to the indexed images
    model: str = ""  # identity of the model that built the index
    model_path: str | None = None
    model_stat: str | None = None  # size and mtime of model_path when recorded (its header can be reused)
    dim: int = 0
    image_size: int = 0
    fusion: str = ""  # identity of the fusion head whose regions the index stores ("" none)
    root: str | None = None  # the indexed folder, relative to the index directory when inside it
    index_type: str = ""  # FAISS factory string of the saved index
    index_type_option: str = ""  # what was asked for: auto, flat, hnsw, ivf or a factory string
    faiss_bytes: int | None = None  # size of the saved FAISS file of this generation

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str]]) -> "IndexMeta":
        """From (key, JSON value) rows; keys this version does not know are ignored."""
        values = {key: json.loads(value) for key, value in rows if key in META_KEYS}
        return cls(**{key: value for key, value in values.items() if value is not None})


META_KEYS = frozenset(f.name for f in fields(IndexMeta))


class Store:
    """An index's SQLite database. Open with :meth:`open`; use as a context manager to close it."""

    def __init__(self, db: Database, path: Path, readonly: bool):
        self.db = db
        self.path = path
        self.readonly = readonly
        self._dirty = False  # images or vectors changed in the open write()

    # -- opening -------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, *, readonly: bool = False) -> "Store":
        """Open (``readonly=False``: create or migrate) the database at ``path``."""
        path = Path(path)
        if readonly:
            if not path.is_file():
                raise IndexStoreError(f"{path}: no index database here; build one with `vlsearch index FOLDER`")
            conn = connect_readonly(path)
            store = cls(Database(conn), path, readonly=True)
            conn.set_authorizer(_read_only)  # after sqlite-utils has set its pragmas
            if hasattr(conn, "setlimit"):  # Python 3.11+
                conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
            store._check_version(store._schema_version())
            return store
        try:
            db = Database(path)
            db.execute("PRAGMA busy_timeout = 10000")
            db.enable_wal()
            db.execute("PRAGMA synchronous = NORMAL")  # WAL: always consistent; a power cut may undo the last commits
        except sqlite3.Error as exc:
            raise IndexStoreError(f"{path}: cannot open the index database ({exc})") from exc
        store = cls(db, path, readonly=False)
        store._migrate()
        return store


    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _schema_version(self) -> int:
        if "meta" not in self.db.table_names():
            return 0
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(json.loads(row[0])) if row else 0

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise IndexStoreError(f"{self.path}: index schema version {version} is newer than this vlsearch "
                                  f"understands ({SCHEMA_VERSION}); upgrade vlsearch")
        if self.readonly and version < SCHEMA_VERSION:
            raise IndexStoreError(f"{self.path}: index schema version {version} is old; run `vlsearch index` "
                                  "on its folder once to upgrade it")

    @contextmanager
    def _writing_errors(self) -> Iterator[None]:
        """SQLite failures while writing (a full disk, an I/O error) as one-line project errors."""
        try:
            yield
        except sqlite3.Error as exc:
            raise IndexStoreError(f"{self.path}: cannot write to the index database ({exc}); the unfinished "
                                  "change was rolled back, everything committed before it is intact") from exc

    def _migrate(self) -> None:
        version = self._schema_version()
        self._check_version(version)
        with self._writing_errors(), self.db.atomic():
            if version == 0:
                self._run_script(SCHEMA)
                stamp = now()
                self._put_meta(schema_version=SCHEMA_VERSION, generation=0, created_at=stamp, updated_at=stamp)
                return
            for step in range(version, SCHEMA_VERSION):
                self._run_script(MIGRATIONS[step])
                self._put_meta(schema_version=step + 1)

    def _run_script(self, script: str) -> None:
        # executescript would commit the open transaction: run the statements one by one instead
        for statement in filter(str.strip, script.split(";")):
            self.db.execute(statement)

    # -- meta ----------------------------------------------------------------------------------------------

    def meta(self) -> "IndexMeta":
        """The meta table, typed (:class:`IndexMeta`)."""
        return IndexMeta.from_rows(self.db.execute("SELECT key, value FROM meta"))

    def set_meta(self, **values: Any) -> None:
        """Set meta keys, each a field of :class:`IndexMeta` (does not count as a change of the vectors)."""
        unknown = set(values) - META_KEYS
        if unknown:
            raise TypeError(f"not meta keys: {', '.join(sorted(unknown))}")
        with self._writing_errors(), self.db.atomic():
            self._put_meta(**values)

    def _put_meta(self, **values: Any) -> None:
        self.db.conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?) "
                                 "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                                 [(key, json.dumps(value)) for key, value in values.items()])

    @property
    def generation(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(json.loads(row[0])) if row else 0

    def check_model(self, identity: str, model_path: str | None = None) -> None:
        """Refuse a model other than the one the index was built with, naming both."""
        meta = self.meta()
        built_with = meta.model
        if not built_with or built_with == identity:
            return
        def describe(ident: str, path: str | None) -> str:
            return f"{ident} ({path})" if path else ident
        raise ModelMismatchError(
            f"the index {self.path.parent} was built with model {describe(built_with, meta.model_path)}, "
            f"not with model {describe(identity, model_path)}; use the model it was built with, or re-index "
            "the folder with `vlsearch index FOLDER --rebuild` (and that model)")

    # -- reading (search) ----------------------------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator["Store"]:
        """Reads inside see one consistent state, even while an indexer commits (WAL)."""
        with self.db.atomic():
            yield self

    def count(self) -> int:
        """Number of indexed images."""
        return self.db["images"].count

    def error_count(self) -> int:
        """Number of files that could not be read."""
        return self.db["errors"].count

    def rows(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Image rows (without vectors) for ``ids``, in the order given; ids not in the index are skipped."""
        ids = [int(i) for i in ids]
        found: dict[int, dict[str, Any]] = {}
        columns = ", ".join(IMAGE_COLUMNS)
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(f"SELECT {columns} FROM images WHERE id IN ({marks})", list(chunk)):
                found[row[0]] = dict(zip(IMAGE_COLUMNS, row), path=_py_path(row[1]))
        return [found[i] for i in ids if i in found]

    def ids_matching(self, where: str | None = None, glob: str | None = None,
                     params: Sequence[Any] | dict[str, Any] | None = None) -> np.ndarray:
        """Ids [N] int64 of images matching an SQL condition on ``images`` and/or a GLOB on ``path``.

        ``where`` is an SQL expression over the images columns, e.g. ``"width > 1000 AND format = 'PNG'"``;
        ``params`` fills its placeholders. GLOB is case-sensitive and ``*`` also matches '/'.
        """
        # Each filter runs as its own query and the id sets are intersected, so that no text in ``where``
        # (say "a) OR (b") can regroup the SQL and escape the glob.
        ids = self._ids_where(where, params or []) if where else self._ids_where("1", [])
        if glob:
            ids = np.intersect1d(ids, self._ids_where(
                "path GLOB ?1 OR (typeof(path) = 'blob' AND CAST(path AS TEXT) GLOB ?1)", [glob]))
        return ids

    def _ids_where(self, condition: str, params: Sequence[Any] | dict[str, Any]) -> np.ndarray:
        sql = f"SELECT id FROM images WHERE ({condition}) ORDER BY id"
        deadline = time.monotonic() + FILTER_SECONDS
        self.db.conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)  # true: interrupt
        try:
            ids = [row[0] for row in self.db.execute(sql, params)]
        except sqlite3.Error as exc:
            if time.monotonic() > deadline:
                raise QueryError(f"cannot filter images with {condition!r}: stopped after {FILTER_SECONDS:g} s"
                                 ) from exc
            raise QueryError(f"cannot filter images with {condition!r}: {exc}") from exc
        finally:
            self.db.conn.set_progress_handler(None, 0)
        return np.asarray(ids, dtype=np.int64)

    def vectors(self, ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids [N] int64, vectors [N, D] float32) of all images, or of ``ids``; sorted by id."""
        dim = self.meta().dim
        base = "SELECT images.id, vectors.vector FROM images JOIN vectors ON vectors.hash = images.hash"
        if ids is None:
            total = self.count()
            cursors = [self.db.execute(base + " ORDER BY images.id")]
        else:
            chosen = sorted({int(i) for i in ids})
            total = len(chosen)
            cursors = [self.db.execute(f"{base} WHERE images.id IN ({','.join('?' * len(c))}) ORDER BY images.id",
                                       list(c)) for c in _chunks(chosen)]
        out_ids = np.empty(total, dtype=np.int64)
        out = np.empty((total, dim), dtype=np.float32)  # filled in place: memory stays at one copy
        n = 0
        for cursor in cursors:
            for row_id, blob in cursor:
                out_ids[n] = row_id
                out[n] = np.frombuffer(blob, dtype="<f4")
                n += 1
        return out_ids[:n], out[:n]

    def regions(self, ids: Sequence[int]) -> dict[int, bytes]:
        """id -> stored region blob (int8 [R, d]) of the images among ``ids`` that have one."""
        found: dict[int, bytes] = {}
        for chunk in _chunks([int(i) for i in ids]):
            marks = ",".join("?" * len(chunk))
            for row_id, blob in self.db.execute(
                    f"SELECT images.id, regions.regions FROM images JOIN regions ON regions.hash = images.hash "
                    f"WHERE images.id IN ({marks})", list(chunk)):
                found[row_id] = blob
        return found

    def region_count(self) -> int:
        """Images with stored region vectors."""
        return self.db.execute("SELECT count(*) FROM images JOIN regions ON regions.hash = images.hash").fetchone()[0]

    def errors(self) -> list[dict[str, Any]]:
        """Files that could not be read: path, message, time."""
        return [{"path": _py_path(path), "message": message, "time": stamp}
                for path, message, stamp in self.db.execute("SELECT path, message, time FROM errors ORDER BY path")]

    # -- indexing ------------------------------------------------------------------------------------------

    def file_stats(self) -> dict[str, tuple[int, int, int, str]]:
        """path -> (id, size, mtime_ns, hash) for every image, in one query (the unchanged-file check)."""
        return {_py_path(path): (row_id, size, mtime, digest) for row_id, path, size, mtime, digest
                in self.db.execute("SELECT id, path, size, mtime_ns, hash FROM images")}

    def error_stats(self) -> dict[str, tuple[int | None, int | None, str]]:
        """path -> (size, mtime_ns, message) for every file that could not be read."""
        return {_py_path(path): (size, mtime, message) for path, size, mtime, message
                in self.db.execute("SELECT path, size, mtime_ns, message FROM errors")}

    def hashes(self) -> set[str]:
        """Every content hash with a stored vector."""
        return {row[0] for row in self.db.execute("SELECT hash FROM vectors")}

    def vectors_for_hashes(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """hash -> vector [D] float32, for the hashes that have one."""
        hashes = list(hashes)
        found = {}
        for chunk in _chunks(hashes):
            marks = ",".join("?" * len(chunk))
            for digest, blob in self.db.execute(f"SELECT hash, vector FROM vectors WHERE hash IN ({marks})",
                                                list(chunk)):
                found[digest] = np.frombuffer(blob, dtype="<f4").copy()
        return found

    @contextmanager
    def write(self) -> Iterator["Store"]:
        """One transaction; if it changed images or vectors, it also bumps ``generation``."""
        if self.readonly:
            raise IndexStoreError(f"{self.path}: opened read-only")
        if self.db.conn.in_transaction:
            raise RuntimeError("Store.write() does not nest")
        self._dirty = False
        with self._writing_errors(), self.db.atomic():
            yield self
            if self._dirty:
                self._put_meta(generation=self.generation + 1, updated_at=now())
        self._dirty = False

    def _writing(self, vectors_change: bool = True) -> None:
        if not self.db.conn.in_transaction:
            raise RuntimeError("call this inside `with store.write():`")
        self._dirty = self._dirty or vectors_change

    def put_vectors(self, vectors: dict[str, np.ndarray]) -> None:
        """Store vectors by content hash (an existing hash keeps its vector)."""
        if not vectors:
            return
        self._writing()
        self.db["vectors"].insert_all(({"hash": digest, "vector": _vector_blob(vector)}
                                       for digest, vector in vectors.items()), ignore=True)

    def put_regions(self, regions: dict[str, bytes]) -> None:
        """Store region blobs by content hash (an existing hash keeps its blob)."""
        if not regions:
            return
        self._writing(vectors_change=False)
        self.db.conn.executemany("INSERT OR IGNORE INTO regions (hash, regions) VALUES (?, ?)", list(regions.items()))

    def clear_regions(self) -> None:
        """Forget every region blob (they came from another fusion head)."""
        self._writing(vectors_change=False)
        self.db.conn.execute("DELETE FROM regions")

    def put_images(self, rows: Sequence[ImageRow]) -> list[int]:
        """Insert new rows and update known ones (by path, keeping their id); returns the ids in order."""
        if not rows:
            return []
        self._writing()
        stamp = now()
        ids = []
        for row in rows:
            cursor = self.db.conn.execute(
                "INSERT INTO images (path, size, mtime_ns, hash, width, height, format, indexed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET size = excluded.size, "
                "mtime_ns = excluded.mtime_ns, hash = excluded.hash, width = excluded.width, "
                "height = excluded.height, format = excluded.format, indexed_at = excluded.indexed_at "
                "RETURNING id", (_sql_path(row.path), *astuple(row)[1:], stamp))
            ids.append(int(cursor.fetchone()[0]))
        self._delete_where_in("errors", "path", [_sql_path(row.path) for row in rows])
        return ids

    def touch_images(self, stats: Sequence[tuple[int, int, int]]) -> None:
        """Record a new (size, mtime_ns) for rows whose content did not change: [(id, size, mtime_ns)]."""
        self._writing(vectors_change=False)
        self.db.conn.executemany("UPDATE images SET size = ?, mtime_ns = ? WHERE id = ?",
                                 [(size, mtime, row_id) for row_id, size, mtime in stats])

    def delete_images(self, ids: Sequence[int]) -> None:
        """Remove images by id (their vectors stay until :meth:`collect_garbage`)."""
        if not len(ids):
            return
        self._writing()
        self._delete_where_in("images", "id", [int(i) for i in ids])

    def put_errors(self, errors: Sequence[ErrorRow]) -> None:
        """Record files that could not be read (replacing an older record of the same path)."""
        self._writing(vectors_change=False)
        stamp = now()
        self.db["errors"].insert_all(({"path": _sql_path(e.path), "message": e.message, "time": stamp, "size": e.size,
                                       "mtime_ns": e.mtime_ns} for e in errors), replace=True)

    def delete_errors(self, paths: Sequence[str]) -> None:
        self._writing(vectors_change=False)
        self._delete_where_in("errors", "path", [_sql_path(path) for path in paths])

    def collect_garbage(self) -> int:
        """Delete vectors no image uses any more; returns how many (the FAISS index does not change)."""
        self._writing(vectors_change=False)
        cursor = self.db.conn.execute("DELETE FROM vectors WHERE hash NOT IN (SELECT hash FROM images)")
        self.db.conn.execute("DELETE FROM regions WHERE hash NOT IN (SELECT hash FROM images)")
        return cursor.rowcount

    def reset(self) -> None:
        """Forget every image, vector and error (for a rebuild); meta stays."""
        self._writing()
        for table in ("images", "vectors", "regions", "errors"):
            self.db.conn.execute(f"DELETE FROM {table}")

    def _delete_where_in(self, table: str, column: str, values: list[Any]) -> None:
        for chunk in _chunks(values):
            self.db.conn.execute(f"DELETE FROM {table} WHERE {column} IN ({','.join('?' * len(chunk))})",
                                 list(chunk))
