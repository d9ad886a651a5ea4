"""Build or update the index of a folder.

    scan -> diff against SQLite -> executor: read + hash + decode + embed (threads here, or Ray actors)
         -> store + add to FAISS -> commit (one transaction a batch) ... -> remove vanished -> save FAISS

Only this module writes: whatever executor embeds (:mod:`indexer.executor`), the commits, the generation
protocol between SQLite and the FAISS file and so every guarantee of the README's Reliability section
are the same.

    summary = build_index("~/Pictures")  # index in ~/Pictures/.vlsearch, the default model
    print(summary.line())  # added 120, updated 2, removed 1, unchanged 3000, reused 4, failed 1 in 9.8 s

Every image file on disk ends up in exactly one of: *added* / *updated* (new or changed, through the CNN),
*reused* (new or changed, but its bytes were already indexed: a rename, move or copy -- no CNN),
*unchanged* (same size and mtime, or same bytes) and *failed*. *removed* counts indexed files now gone.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from indexer import vectors
from indexer.index import Index, default_index_dir, lock_path
from indexer.executor import Job, ModelRef, Prepared, RayOptions, make_executor, prepare, resolve_model
from indexer.executor_local import in_order
from indexer.lock import IndexLock
from indexer.scan import FileEntry, scan
from indexer.store import ErrorRow, ImageRow
from retrieval.core.errors import IndexStoreError

if TYPE_CHECKING:
    from retrieval.core.model import DualEncoder

__all__ = ["IndexSummary", "Progress", "Plan", "plan", "build_index", "Job", "Prepared", "prepare", "in_order"]
ROWS_PER_COMMIT = 1024  # also commit this often when files need no CNN (a renamed folder, many failures)
_UNLOADED = object()


@dataclass
class IndexSummary:
    """What one run did; ``line()`` is the one-line report."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    reused: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, why), new and known
    total: int = 0  # images in the index afterwards
    index_dir: Path | None = None
    index_type: str = ""  # the FAISS factory string in use
    engine: str = ""  # where the CNN ran, when not in this process: "on 2 nodes, 2 Ray actors"

    @property
    def embedded(self) -> int:
        """Images that went through the CNN."""
        return self.added + self.updated

    def line(self) -> str:
        return (f"added {self.added}, updated {self.updated}, removed {self.removed}, unchanged {self.unchanged}, "
                f"reused {self.reused}, failed {self.failed} in {self.seconds:.1f} s"
                + (f" {self.engine}" if self.engine else ""))


@dataclass
class Progress:
    """Sent to the progress callback after each new or changed file (and once with done=0)."""

    done: int  # files read, hashed and (if needed) decoded
    total: int  # new or changed files in this run
    embedded: int  # images through the CNN so far
    seconds: float  # since the run started


@dataclass
class Plan:
    """The diff between the folder and the index, from stat alone."""

    work: list[Job]  # new or changed files
    unchanged: int
    known_failures: list[tuple[str, str]]  # (path, message) of unchanged files that failed before
    vanished: dict[str, int]  # path -> id of indexed files no longer on disk
    stale_errors: list[str]  # error records of files no longer on disk


def plan(entries: Iterable[FileEntry], indexed: dict[str, tuple[int, int, int, str]],
         failed: dict[str, tuple[int | None, int | None, str]]) -> Plan:
    """Compare scanned files with ``Store.file_stats()`` / ``Store.error_stats()`` (dict look-ups only)."""
    work, unchanged, known_failures, seen = [], 0, [], set()
    for entry in entries:
        seen.add(entry.path)
        row = indexed.get(entry.path)
        if row is not None and row[1] == entry.size and row[2] == entry.mtime_ns:
            unchanged += 1
            continue
        error = failed.get(entry.path)
        if row is None and error is not None and error[:2] == (entry.size, entry.mtime_ns):
            known_failures.append((entry.path, error[2]))
            continue
        work.append(Job(entry, (row[0], row[3]) if row is not None else None))
    vanished = {path: row[0] for path, row in indexed.items() if path not in seen}
    return Plan(work, unchanged, known_failures, vanished, [path for path in failed if path not in seen])




class _Run:
    """The state of one indexing run: the open batch, the FAISS index in memory and the counts."""

    def __init__(self, index: Index, dim: int, batch_size: int, todo: Plan, regions: bool = False):
        self.index, self.store, self.dim, self.batch_size = index, index.store, dim, batch_size
        self.keep_regions = regions  # the model has a fusion head: store each new vector's region codes
        self._vector_index: Any = _UNLOADED  # loaded before the first change; None: rebuild at the end
        self.start_generation = self.store.generation
        self.summary = IndexSummary(index_dir=index.path, unchanged=todo.unchanged, failed=len(todo.known_failures),
                                    failures=list(todo.known_failures))
        # read by the executor; only grows during a run (so a hash seen there has a stored vector)
        self.known_hashes = self.store.hashes() if todo.work else set()
        self.gone: dict[str, int] = {}  # path -> id of indexed files found gone while reading
        self._clear()

    def _clear(self) -> None:
        self.rows: list[Prepared] = []  # to insert or update; vector None: reuse the stored one of its hash
        self.fresh: dict[str, np.ndarray] = {}  # hash -> float32 [D], new vectors to store
        self.fresh_regions: dict[str, bytes] = {}  # hash -> int8 [R, d] codes of the new vectors' images
        self.errors: list[ErrorRow] = []
        self.touched: list[tuple[int, int, int]] = []  # (id, size, mtime_ns): same bytes, new stat
        self.dropped: list[int] = []  # indexed files that cannot be read any more

    def take(self, item: Prepared) -> None:
        """Sort one prepared and embedded file into the batch; commit when the batch is full."""
        job, entry = item.job, item.job.entry
        if item.gone:
            if job.known:
                self.gone[entry.path] = job.known[0]
            return
        if item.error is not None:
            self.summary.failed += 1
            self.summary.failures.append((entry.path, item.error))
            self.errors.append(ErrorRow(entry.path, item.error, entry.size, entry.mtime_ns))
            if job.known:
                self.dropped.append(job.known[0])
        elif job.known and job.known[1] == item.hash:  # touched, or rewritten with the same bytes
            self.summary.unchanged += 1
            self.touched.append((job.known[0], entry.size, entry.mtime_ns))
        else:  # an item without a vector has a stored one, or one earlier in this batch (Executor.embed)
            if item.vector is not None and (item.hash in self.known_hashes or item.hash in self.fresh):
                item.vector = None  # the same bytes twice (a copy): one vector
            if item.vector is not None:
                self.fresh[item.hash] = item.vector
                if self.keep_regions and item.regions is not None:
                    self.fresh_regions[item.hash] = np.ascontiguousarray(item.regions, dtype=np.int8).tobytes()
            self.rows.append(item)
        if len(self.fresh) >= self.batch_size or \
                len(self.rows) + len(self.errors) + len(self.touched) >= ROWS_PER_COMMIT:
            self.commit()

    def _load_vectors(self) -> Any:
        """The saved FAISS index if it matches SQLite; called before the first change (after it, it cannot)."""
        if self._vector_index is _UNLOADED:
            self._vector_index = self.index.saved_vectors()
        return self._vector_index

    def commit(self) -> None:
        """Write the batch in one transaction, then mirror it in FAISS."""
        if not (self.rows or self.errors or self.touched or self.dropped):
            return
        self._load_vectors()
        by_hash = dict(self.fresh)
        by_hash.update(self.store.vectors_for_hashes({r.hash for r in self.rows} - by_hash.keys()))
        with self.store.write():
            self.store.put_vectors(self.fresh)
            self.store.put_regions(self.fresh_regions)
            ids = self.store.put_images([ImageRow(r.job.entry.path, r.job.entry.size, r.job.entry.mtime_ns, r.hash,
                                                  r.info.width, r.info.height, r.info.format) for r in self.rows])
            self.store.touch_images(self.touched)
            self.store.put_errors(self.errors)
            self.store.delete_images(self.dropped)
        # FAISS follows the commit; a crash in between leaves a FAISS file older than SQLite: detected, rebuilt
        self._faiss_remove([r.job.known[0] for r in self.rows if r.job.known] + self.dropped)
        if self._vector_index is not None and ids:
            vectors.add(self._vector_index, ids, np.stack([by_hash[r.hash] for r in self.rows]))
        self.known_hashes.update(self.fresh)
        for row in self.rows:
            if row.vector is None:
                self.summary.reused += 1
            elif row.job.known:
                self.summary.updated += 1
            else:
                self.summary.added += 1
        self._clear()

    def _faiss_remove(self, ids: list[int]) -> None:
        if self._vector_index is not None and ids and not vectors.remove(self._vector_index, ids):
            self._vector_index = None  # this index type cannot remove (HNSW): rebuild it at the end

    def remove(self, vanished: dict[str, int], stale_errors: list[str]) -> None:
        """Forget indexed files that are gone, and error records of files that are gone."""
        vanished = {**vanished, **self.gone}
        failed_now = {path for path, _ in self.summary.failures}
        stale_errors = [path for path in stale_errors if path not in failed_now]
        if not (vanished or stale_errors):
            return
        self._load_vectors()
        with self.store.write():
            self.store.delete_images(list(vanished.values()))
            self.store.delete_errors(list(vanished) + stale_errors)
            self.store.collect_garbage()
        self._faiss_remove(list(vanished.values()))
        self.summary.removed = len(vanished)

    def finish_vectors(self, option: str) -> None:
        """Make the saved FAISS index match SQLite: save it if it changed, rebuild it if needed or its type changes."""
        count, meta = self.store.count(), self.index.meta
        factory = vectors.resolve_index_type(option, count, self.dim)
        self.summary.total, self.summary.index_type = count, factory
        if meta.index_type_option != option:
            self.store.set_meta(index_type_option=option)
        if meta.index_type != factory:
            index = self.index.rebuild_vectors(factory)
        elif meta.generation == self.start_generation and self.index.vectors_current(meta):
            return  # nothing changed and the saved file is current (an unchanged run never loads FAISS)
        else:
            index = self._load_vectors() or self.index.rebuild_vectors(factory)
        self.index.save_vectors(index, factory)


def _open_index(index: Index, model: ModelRef, folder: Path, rebuild: bool, index_type: str | None) -> str:
    """Check the index fits this model and folder (or reset it for a rebuild); returns the index-type option."""
    store, meta, header = index.store, index.meta, model.header
    model_path, model_stat = model.recorded_path, model.recorded_stat
    if not rebuild:
        store.check_model(header.identity, model_path)
        recorded = index.root(meta)
        if meta.root and store.count() and recorded != folder.resolve():
            raise IndexStoreError(f"the index {index.path} holds the folder {recorded}, not {folder}; pass --rebuild "
                                  "to re-index it for this folder, or --index DIR for a separate index")
    option = index_type or meta.index_type_option or "auto"
    vectors.resolve_index_type(option, 0, header.dim)  # a bad factory string fails before any work
    if rebuild:
        with store.write():
            store.reset()
    if meta.fusion != header.fusion:  # regions of another head (or none) mean nothing to this one
        with store.write():
            store.clear_regions()  # before the meta names the new head: a crash between leaves no stale regions
        store.set_meta(fusion=header.fusion)
    if model_path is None and meta.model == header.identity:
        # a model passed in loaded: keep the path recorded for it
        model_path, model_stat = meta.model_path, meta.model_stat
    store.set_meta(model=header.identity, model_path=model_path, model_stat=model_stat, dim=header.dim,
                   image_size=header.image_size, root=index.root_for_meta(folder))
    return option


def build_index(folder: str | os.PathLike, index_dir: str | os.PathLike | None = None, *,
                model: DualEncoder | str | os.PathLike | None = None, batch_size: int = 32,
                workers: int | None = None, device: str = "auto", precision: str = "auto",
                index_type: str | None = None, rebuild: bool = False, threads: int | None = None,
                progress: Callable[[Progress], None] | None = None, engine: str = "local",
                ray: RayOptions | None = None) -> IndexSummary:
    """Build or update the index of ``folder`` (default location ``folder/.vlsearch``).

    ``model``: a loaded model, a checkpoint path, or None for the shipped default model. ``workers``:
    decoding threads (0 decodes in this thread; default: CPU count, at most 8). ``index_type``: auto,
    flat, hnsw, ivf or a FAISS factory string (default: what the index used last, else auto).
    ``rebuild``: forget everything and embed every file again. ``threads``: torch's intra-op threads for
    the CNN (default: torch's own setting). ``engine``: "local" (this process) or "ray" (actors on a Ray
    cluster, configured by ``ray``; ``workers`` is then ``ray.workers`` when that is unset).
    """
    started = time.perf_counter()
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise IndexStoreError(f"{folder}: not a folder")
    index_dir = Path(index_dir).expanduser() if index_dir is not None else default_index_dir(folder)
    if engine == "ray":  # a missing Ray fails before the index is touched
        from indexer.executor_ray import require_ray

        require_ray()
    model_ref = resolve_model(model, index_dir)
    with IndexLock(lock_path(index_dir)), Index.open(index_dir, readonly=False) as index:
        option = _open_index(index, model_ref, folder, rebuild, index_type)
        todo = plan(scan(folder, skip=[index_dir]), index.store.file_stats(), index.store.error_stats())
        run = _Run(index, model_ref.header.dim, batch_size, todo, bool(model_ref.header.fusion))
        if progress:
            progress(Progress(0, len(todo.work), 0, time.perf_counter() - started))
        if todo.work:  # an unchanged re-index starts no executor (and so never loads torch or Ray)
            executor = make_executor(engine, model_ref, folder, batch_size=batch_size, workers=workers,
                                     device=device, precision=precision, threads=threads, ray=ray)
            try:
                for done, item in enumerate(executor.embed(todo.work, run.known_hashes), 1):
                    run.take(item)
                    if progress:
                        progress(Progress(done, len(todo.work), run.summary.embedded + len(run.fresh),
                                          time.perf_counter() - started))
                run.commit()
                run.summary.engine = executor.describe()
            finally:
                executor.close()
        run.remove(todo.vanished, todo.stale_errors)
        run.finish_vectors(option)
    run.summary.seconds = time.perf_counter() - started
    return run.summary
