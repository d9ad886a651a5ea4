"""One index on disk: where it is, how it is found, its SQLite store and typed meta, its FAISS vectors.

    FOLDER/.vlsearch/            default place, so that an index travels with its folder
        index.db  (-wal, -shm)   SQLite, the source of truth: images, vectors, regions, errors, meta
        vectors.<G>.faiss        FAISS index saved at SQLite generation G; if G is not the stored
                                 generation (or the file is missing) it is rebuilt from SQLite
        lock                     "PID HOST" of the `vlsearch index` now updating it

The pipeline, :class:`~retrieval.app.search.SearchEngine`, ``vlsearch info`` and the server all go through
:class:`Index`::

    with Index.open(Index.find()) as index:   # $VLSEARCH_INDEX, else .vlsearch/ here or in a parent
        vectors = index.vectors()             # never stale; a read-only index never writes
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import faiss

from indexer import vectors
from indexer.store import IndexMeta, Store
from retrieval.core.errors import IndexStoreError

INDEX_DIR_NAME = ".vlsearch"
DB_NAME = "index.db"
LOCK_NAME = "lock"
INDEX_ENV = "VLSEARCH_INDEX"
_FAISS_NAME = re.compile(r"^vectors\.(\d+)\.faiss$")


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


def default_index_dir(folder: str | os.PathLike) -> Path:
    """Where ``vlsearch index FOLDER`` puts the index of FOLDER unless told otherwise."""
    return Path(folder) / INDEX_DIR_NAME


def find_index(index: str | os.PathLike | None = None, start: str | os.PathLike | None = None) -> Path:
    """The index directory to use: ``index`` (an index, or a folder holding ``.vlsearch/``) if given, else
    ``$VLSEARCH_INDEX``, else the nearest ``.vlsearch/`` in ``start`` (default: the current folder) or its parents."""
    if index is None and os.environ.get(INDEX_ENV):
        index = os.environ[INDEX_ENV]
    if index is not None:
        path = Path(index).expanduser()
        for candidate in (path, default_index_dir(path)):
            if db_path(candidate).is_file():
                return candidate
        raise IndexStoreError(f"no index at {path}; build one with `vlsearch index FOLDER` (it goes to "
                              f"FOLDER/{INDEX_DIR_NAME}) or pass --index DIR")
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = default_index_dir(folder)
        if db_path(candidate).is_file():
            return candidate
    raise IndexStoreError(f"no index found in {here} or its parents; build one with `vlsearch index FOLDER`, "
                          f"or pass --index DIR (or set {INDEX_ENV})")


@dataclass
class Index:
    """An open index: its directory and SQLite store, and the FAISS vectors that mirror the store.

    "Current" has one definition (:meth:`vectors_current`): a FAISS file named for the stored generation,
    of the size recorded when it was saved. Anything else is rebuilt from SQLite, which is never wrong.
    """

    path: Path
    store: Store

    @classmethod
    def open(cls, index_dir: str | os.PathLike, *, readonly: bool = True) -> "Index":
        """Open the index at ``index_dir`` (writable: create it if absent; the caller holds :attr:`lock_path`)."""
        path = Path(index_dir)
        return cls(path, Store.open(db_path(path), readonly=readonly))

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what it holds ---------------------------------------------------------------------------------------

    @property
    def meta(self) -> IndexMeta:
        return self.store.meta()

    def root(self, meta: IndexMeta | None = None) -> Path:
        """The folder whose relative paths the index stores."""
        recorded = (meta or self.meta).root
        if not recorded:
            return self.path.resolve().parent
        return (self.path.resolve() / recorded).resolve()  # an absolute `recorded` wins the join

    def root_for_meta(self, folder: str | os.PathLike) -> str:
        """How meta records ``folder``: relative to the index when the index lies inside it, else absolute."""
        folder, here = Path(folder).resolve(), self.path.resolve()
        return os.path.relpath(folder, here) if here.is_relative_to(folder) else str(folder)

    def size_bytes(self) -> int:
        """Every file of the index directory."""
        return sum(path.stat().st_size for path in self.path.iterdir() if path.is_file())

    # -- FAISS -----------------------------------------------------------------------------------------------

    def vectors_current(self, meta: IndexMeta | None = None) -> bool:
        """Cheap, without loading it: the saved FAISS file is that of the stored generation, of the recorded size."""
        meta = meta or self.meta
        path = faiss_path(self.path, meta.generation)
        return path.is_file() and path.stat().st_size == meta.faiss_bytes

    def saved_vectors(self) -> faiss.Index | None:
        """The saved FAISS index if it is current (and holds as many vectors as SQLite), else None."""
        with self.store.snapshot():
            meta, count = self.meta, self.store.count()
        if not self.vectors_current(meta):
            return None
        try:
            index = vectors.load(faiss_path(self.path, meta.generation))
        except IndexStoreError:
            return None
        return index if index.ntotal == count else None

    def rebuild_vectors(self, factory: str | None = None) -> faiss.Index:
        """A FAISS index built from the SQLite vectors alone (type: ``factory``, else the one meta records)."""
        with self.store.snapshot():
            meta = self.meta
            ids, matrix = self.store.vectors()
        if not meta.dim:
            raise IndexStoreError(f"{self.store.path}: the index records no vector dimension; rebuild it with "
                                  "--rebuild")
        factory = factory or meta.index_type or vectors.choose_index_type(len(ids), meta.dim)
        return vectors.build(factory, meta.dim, ids, matrix)

    def vectors(self) -> faiss.Index:
        """The FAISS index matching SQLite now: the saved file when current, else rebuilt in memory."""
        return self.saved_vectors() or self.rebuild_vectors()

    def save_vectors(self, index: faiss.Index, factory: str) -> Path:
        """Save ``index`` (of type ``factory``) for the stored generation; record it in meta; delete older files."""
        generation = self.store.generation
        path = faiss_path(self.path, generation)
        for leftover in self.path.glob(".vectors.*.tmp"):  # of a save killed half-way (we hold the lock)
            leftover.unlink(missing_ok=True)
        try:
            vectors.save(index, path)
        except IndexStoreError as exc:
            raise IndexStoreError(f"{exc}; nothing is lost: {DB_NAME} holds every image, searches rebuild the "
                                  "vectors from it, and the next `vlsearch index` saves them again") from exc
        self.store.set_meta(index_type=factory, faiss_bytes=path.stat().st_size)
        for old_generation, old in faiss_files(self.path).items():
            if old_generation != generation:
                old.unlink(missing_ok=True)
        return path
