"""An index directory: the files in it, the folder it describes, and a FAISS index that matches its SQLite.

    FOLDER/.vlsearch/            default place, so that an index travels with its folder
        index.db  (-wal, -shm)   SQLite, the source of truth: images, vectors, errors, meta
        vectors.<G>.faiss        FAISS index saved at SQLite generation G; if G is not the stored
                                 generation (or the file is missing) it is rebuilt from SQLite
        lock                     "PID HOST" of the `vlsearch index` now updating it

Search opens an index with::

    store = Store.open(db_path(index_dir), readonly=True)
    index = open_vectors(index_dir, store)   # never stale; never writes
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import faiss

from indexer import vectors
from indexer.store import Store
from retrieval.errors import IndexStoreError

INDEX_DIR_NAME = ".vlsearch"
DB_NAME = "index.db"
LOCK_NAME = "lock"
INDEX_ENV = "VLSEARCH_INDEX"
_FAISS_NAME = re.compile(r"^vectors\.(\d+)\.faiss$")


def default_index_dir(folder: str | os.PathLike) -> Path:
    return Path(folder) / INDEX_DIR_NAME


def db_path(index_dir: str | os.PathLike) -> Path:
    return Path(index_dir) / DB_NAME


def lock_path(index_dir: str | os.PathLike) -> Path:
    return Path(index_dir) / LOCK_NAME


def faiss_path(index_dir: str | os.PathLike, generation: int) -> Path:
    return Path(index_dir) / f"vectors.{generation}.faiss"


def faiss_files(index_dir: str | os.PathLike) -> dict[int, Path]:
    """generation -> FAISS file, for every FAISS file in the folder."""
    found = {}
    for path in Path(index_dir).glob("vectors.*.faiss"):
        match = _FAISS_NAME.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def find_index_dir(path: str | os.PathLike) -> Path:
    """``path`` itself if it is an index, else ``path/.vlsearch`` if that is one."""
    path = Path(path)
    for candidate in (path, default_index_dir(path)):
        if db_path(candidate).is_file():
            return candidate
    raise IndexStoreError(f"no index at {path}; build one with `vlsearch index FOLDER` (it goes to "
                          f"FOLDER/{INDEX_DIR_NAME}) or pass --index DIR")


def find_index(index: str | os.PathLike | None = None, start: str | os.PathLike | None = None) -> Path:
    """``index`` if given, else ``$VLSEARCH_INDEX``, else the nearest ``.vlsearch/`` in ``start`` or its parents."""
    if index is not None:
        return find_index_dir(index)
    if os.environ.get(INDEX_ENV):
        return find_index_dir(os.environ[INDEX_ENV])
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = default_index_dir(folder)
        if db_path(candidate).is_file():
            return candidate
    raise IndexStoreError(f"no index found in {here} or its parents; build one with `vlsearch index FOLDER`, "
                          f"or pass --index DIR (or set {INDEX_ENV})")


def root_for_meta(folder: str | os.PathLike, index_dir: str | os.PathLike) -> str:
    """How meta records the folder: relative to the index when the index lies inside it, else absolute."""
    folder, index_dir = Path(folder).resolve(), Path(index_dir).resolve()
    if index_dir.is_relative_to(folder):
        return os.path.relpath(folder, index_dir)
    return str(folder)


def resolve_root(index_dir: str | os.PathLike, recorded: str | None) -> Path:
    """The folder whose relative paths the index stores (``recorded`` is meta's ``root``)."""
    if not recorded:
        return Path(index_dir).resolve().parent
    return (Path(index_dir).resolve() / recorded).resolve()  # an absolute `recorded` wins the join


def saved_vectors_current(index_dir: str | os.PathLike, store: Store) -> bool:
    """Cheap check, without loading it: a FAISS file exists for the stored generation, of the recorded size."""
    with store.snapshot():
        meta = store.meta()
    path = faiss_path(index_dir, int(meta.get("generation") or 0))
    return path.is_file() and path.stat().st_size == meta.get("faiss_bytes")


def load_current_vectors(index_dir: str | os.PathLike, store: Store) -> faiss.Index | None:
    """The saved FAISS index if it matches SQLite's generation and size, else None."""
    with store.snapshot():
        generation, count = store.generation, store.count()
    path = faiss_path(index_dir, generation)
    if not path.is_file():
        return None
    try:
        index = vectors.load(path)
    except IndexStoreError:
        return None
    return index if index.ntotal == count else None


def rebuild_vectors(store: Store, factory: str | None = None) -> faiss.Index:
    """A FAISS index built from the SQLite vectors alone (type: ``factory``, else the one meta records)."""
    with store.snapshot():
        meta = store.meta()
        ids, matrix = store.vectors()
    dim = int(meta.get("dim") or 0)
    if not dim:
        raise IndexStoreError(f"{store.path}: the index records no vector dimension; rebuild it with --rebuild")
    factory = factory or meta.get("index_type") or vectors.choose_index_type(len(ids), dim)
    return vectors.build(factory, dim, ids, matrix)


def open_vectors(index_dir: str | os.PathLike, store: Store) -> faiss.Index:
    """The FAISS index matching SQLite now: the saved file when current, else rebuilt in memory."""
    return load_current_vectors(index_dir, store) or rebuild_vectors(store)


def save_vectors(index_dir: str | os.PathLike, index: faiss.Index, store: Store, factory: str) -> Path:
    """Save ``index`` (of type ``factory``) for the stored generation; record it in meta; delete older files."""
    generation = store.generation
    path = faiss_path(index_dir, generation)
    for leftover in Path(index_dir).glob(".vectors.*.tmp"):  # of a save killed half-way (we hold the lock)
        leftover.unlink(missing_ok=True)
    try:
        vectors.save(index, path)
    except IndexStoreError as exc:
        raise IndexStoreError(f"{exc}; nothing is lost: {DB_NAME} holds every image, searches rebuild the "
                              "vectors from it, and the next `vlsearch index` saves them again") from exc
    store.set_meta(index_type=factory, faiss_bytes=path.stat().st_size)
    for old_generation, old in faiss_files(index_dir).items():
        if old_generation != generation:
            old.unlink(missing_ok=True)
    return path
