"""Build or update the index of a folder.

    scan -> diff against SQLite -> read + hash + decode (threads, bounded look-ahead) -> batch -> embed
         -> store + add to FAISS -> commit (one transaction a batch) ... -> remove vanished -> save FAISS

On the CPU, decoding and the CNN take turns on the cores (they share them); on a GPU they overlap.

    summary = build_index("~/Pictures")  # index in ~/Pictures/.vlsearch, the default model
    print(summary.line())  # added 120, updated 2, removed 1, unchanged 3000, reused 4, failed 1 in 9.8 s

Every image file on disk ends up in exactly one of: *added* / *updated* (new or changed, through the CNN),
*reused* (new or changed, but its bytes were already indexed: a rename, move or copy -- no CNN),
*unchanged* (same size and mtime, or same bytes) and *failed*. *removed* counts indexed files now gone.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar

import numpy as np

from indexer import layout, vectors
from indexer.decode import Decoder, DecodeError, ImageInfo, probe
from indexer.embed import ImageEmbedder, ModelHeader
from indexer.lock import IndexLock
from indexer.scan import SNIFF_BYTES, FileEntry, content_hash, scan, sniff
from indexer.store import ErrorRow, ImageRow, Store
from retrieval.config import resolve_model
from retrieval.errors import CheckpointError, IndexStoreError

if TYPE_CHECKING:  # torch loads at the first batch to embed: an unchanged re-index never imports it
    import torch

    from retrieval.model import DualEncoder

ROWS_PER_COMMIT = 1024  # also commit this often when files need no CNN (a renamed folder, many failures)
_UNLOADED = object()
T = TypeVar("T")
R = TypeVar("R")


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

    @property
    def embedded(self) -> int:
        """Images that went through the CNN."""
        return self.added + self.updated

    def line(self) -> str:
        return (f"added {self.added}, updated {self.updated}, removed {self.removed}, unchanged {self.unchanged}, "
                f"reused {self.reused}, failed {self.failed} in {self.seconds:.1f} s")


@dataclass
class Progress:
    """Sent to the progress callback after each new or changed file (and once with done=0)."""

    done: int  # files read, hashed and (if needed) decoded
    total: int  # new or changed files in this run
    embedded: int  # images through the CNN so far
    seconds: float  # since the run started


@dataclass(frozen=True)
class Job:
    entry: FileEntry
    known: tuple[int, str] | None = None  # (id, hash) when the path is indexed already


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


@dataclass
class Prepared:
    """A file read, hashed and, unless its bytes are indexed already, decoded."""

    job: Job
    hash: str = ""
    info: ImageInfo | None = None
    pixels: torch.Tensor | None = None  # uint8 [3, S, S]; None when the vector can be reused
    error: str | None = None  # why the file cannot be indexed
    gone: bool = False  # vanished, or (no image suffix) not an image after all


def prepare(job: Job, root: Path, decoder: Decoder, known_hashes: set[str]) -> Prepared:
    """Read, sniff, hash and decode one file (runs in a worker thread; never raises for a bad file)."""
    entry = job.entry
    try:
        entry.path.encode("utf-8")
    except UnicodeEncodeError:
        return Prepared(job, error="the file name is not valid UTF-8; rename the file to index it")
    try:
        with open(root / entry.path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
            if sniff(head) is None:
                if not entry.named_as_image:
                    return Prepared(job, gone=True)
                return Prepared(job, error="not a supported image (JPEG, PNG, WebP, BMP, GIF or TIFF content)")
            data = head + handle.read()
    except FileNotFoundError:
        if entry.named_as_image and os.path.islink(root / entry.path):
            return Prepared(job, error="broken symbolic link (its target does not exist)")
        return Prepared(job, gone=True)
    except OSError as exc:
        return Prepared(job, error=f"cannot read the file ({exc.strerror or exc})")
    digest = content_hash(data)
    try:
        if digest in known_hashes:  # a rename, move or copy: the header is enough
            return Prepared(job, digest, probe(data))
        decoded = decoder(data)
    except DecodeError as exc:
        return Prepared(job, digest, error=str(exc))
    return Prepared(job, digest, decoded.info, decoded.pixels)


def in_order(fn: Callable[[T], R], items: list[T], workers: int, lookahead: int,
             go: threading.Event | None = None) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, results in input order, at most ``lookahead`` in flight.

    ``go``: a worker starts an item only while this event is set.
    """
    if workers <= 0:
        yield from map(fn, items)
        return

    def call(item: T) -> R:
        if go is not None:
            go.wait()
        return fn(item)

    pool = ThreadPoolExecutor(workers, thread_name_prefix="vlsearch-decode")
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(call, item))
            if len(pending) >= lookahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _printable(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class _Run:
    """The state of one indexing run: the open batch, the FAISS index in memory and the counts."""

    def __init__(self, store: Store, embedder: ImageEmbedder, index_dir: Path, batch_size: int, todo: Plan):
        self.store, self.embedder, self.index_dir, self.batch_size = store, embedder, index_dir, batch_size
        self._vector_index: Any = _UNLOADED  # loaded before the first change; None: rebuild at the end
        self.start_generation = store.generation
        self.summary = IndexSummary(index_dir=index_dir, unchanged=todo.unchanged, failed=len(todo.known_failures),
                                    failures=list(todo.known_failures))
        # read by the worker threads; only grows during a run (so a hash seen there has a stored vector)
        self.known_hashes = store.hashes() if todo.work else set()
        self.gone: dict[str, int] = {}  # path -> id of indexed files found gone while reading
        # Set while decoding threads may start a file. On the CPU they wait while the CNN runs: a decoding
        # thread that takes a core from one of torch's OpenMP threads leaves the others spinning at the next
        # barrier, so overlapping cost the default model ~25% of its indexing speed on 2 cores (BENCHMARKS.md).
        self.decoding = threading.Event()
        self.decoding.set()
        self._clear()

    def _clear(self) -> None:
        self.rows: list[Prepared] = []  # to insert or update
        self.pixels: list[torch.Tensor] = []  # uint8 [3, S, S] to embed, one per new hash
        self.pixel_hashes: list[str] = []
        self.errors: list[ErrorRow] = []
        self.touched: list[tuple[int, int, int]] = []  # (id, size, mtime_ns): same bytes, new stat
        self.dropped: list[int] = []  # indexed files that cannot be read any more

    def take(self, item: Prepared) -> None:
        """Sort one prepared file into the batch; commit when the batch is full."""
        job, entry = item.job, item.job.entry
        if item.gone:
            if job.known:
                self.gone[entry.path] = job.known[0]
            return
        if item.error is not None:
            self.summary.failed += 1
            self.summary.failures.append((_printable(entry.path), item.error))
            self.errors.append(ErrorRow(_printable(entry.path), item.error, entry.size, entry.mtime_ns))
            if job.known:
                self.dropped.append(job.known[0])
        elif job.known and job.known[1] == item.hash:  # touched, or rewritten with the same bytes
            self.summary.unchanged += 1
            self.touched.append((job.known[0], entry.size, entry.mtime_ns))
        else:  # known_hashes only grows, so a file the worker did not decode has a stored vector
            if item.hash not in self.known_hashes and item.hash not in self.pixel_hashes:
                self.pixels.append(item.pixels)
                self.pixel_hashes.append(item.hash)
            else:
                item.pixels = None
            self.rows.append(item)
        if len(self.pixels) >= self.batch_size or \
                len(self.rows) + len(self.errors) + len(self.touched) >= ROWS_PER_COMMIT:
            self.commit()

    def _load_vectors(self) -> Any:
        """The saved FAISS index if it matches SQLite; called before the first change (after it, it cannot)."""
        if self._vector_index is _UNLOADED:
            self._vector_index = layout.load_current_vectors(self.index_dir, self.store)
        return self._vector_index

    def commit(self) -> None:
        """Embed the batch, write it in one transaction, then mirror it in FAISS."""
        if not (self.rows or self.errors or self.touched or self.dropped):
            return
        self._load_vectors()
        fresh = self._embed() if self.pixels else np.empty((0, self.embedder.dim))
        by_hash = dict(zip(self.pixel_hashes, fresh))
        by_hash.update(self.store.vectors_for_hashes({r.hash for r in self.rows} - by_hash.keys()))
        with self.store.write():
            self.store.put_vectors(dict(zip(self.pixel_hashes, fresh)))
            ids = self.store.put_images([ImageRow(r.job.entry.path, r.job.entry.size, r.job.entry.mtime_ns, r.hash,
                                                  r.info.width, r.info.height, r.info.format) for r in self.rows])
            self.store.touch_images(self.touched)
            self.store.put_errors(self.errors)
            self.store.delete_images(self.dropped)
        # FAISS follows the commit; a crash in between leaves a FAISS file older than SQLite: detected, rebuilt
        self._faiss_remove([r.job.known[0] for r in self.rows if r.job.known] + self.dropped)
        if self._vector_index is not None and ids:
            vectors.add(self._vector_index, ids, np.stack([by_hash[r.hash] for r in self.rows]))
        self.known_hashes.update(self.pixel_hashes)
        for row in self.rows:
            if row.pixels is None:
                self.summary.reused += 1
            elif row.job.known:
                self.summary.updated += 1
            else:
                self.summary.added += 1
        self._clear()

    def _embed(self) -> np.ndarray:
        """The batch's new pixels through the CNN -> [B, D]; on the CPU, with the decoding threads paused."""
        import torch

        if self.embedder.device.type == "cpu":
            self.decoding.clear()
        try:
            return self.embedder(torch.stack(self.pixels))  # uint8 [B, 3, S, S] -> [B, D]
        finally:
            self.decoding.set()

    def _faiss_remove(self, ids: list[int]) -> None:
        if self._vector_index is not None and ids and not vectors.remove(self._vector_index, ids):
            self._vector_index = None  # this index type cannot remove (HNSW): rebuild it at the end

    def remove(self, vanished: dict[str, int], stale_errors: list[str]) -> None:
        """Forget indexed files that are gone, and error records of files that are gone."""
        vanished = {**vanished, **self.gone}
        failed_now = {path for path, _ in self.summary.failures}  # e.g. a non-UTF-8 name, recorded as printable
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
        count, meta = self.store.count(), self.store.meta()
        factory = vectors.resolve_index_type(option, count, self.embedder.dim)
        self.summary.total, self.summary.index_type = count, factory
        if meta.get("index_type_option") != option:
            self.store.set_meta(index_type_option=option)
        if meta.get("index_type") != factory:
            index = layout.rebuild_vectors(self.store, factory)
        elif self.store.generation == self.start_generation and layout.saved_vectors_current(self.index_dir,
                                                                                            self.store):
            return  # nothing changed and the saved file is current (an unchanged run never loads FAISS)
        else:
            index = self._load_vectors() or layout.rebuild_vectors(self.store, factory)
        layout.save_vectors(self.index_dir, index, self.store, factory)


def _embedder(model: DualEncoder | str | os.PathLike | None, index_dir: Path, device: str, precision: str,
              threads: int | None) -> tuple[ImageEmbedder, str | None, str | None]:
    """The embedder, the model path to record and its "size:mtime_ns" (both None for a model passed in loaded).

    A model file that this index recorded, with the same size and mtime, is not even opened: an unchanged
    re-index then never imports torch. Any other file's header is read now, so a bad one fails before work.
    """
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return ImageEmbedder(model, device, precision, threads=threads), None, None
    path = resolve_model(model)
    if model is None and not path.is_file():
        raise CheckpointError(f"no default model is installed yet (expected {path}); pass --model MODEL.pt")
    resolved = str(path.resolve())
    try:
        info = path.stat()
        stat = f"{info.st_size}:{info.st_mtime_ns}"
    except OSError:
        stat = None  # ModelHeader.read names the file and the problem
    header = _recorded_header(index_dir, resolved, stat) if stat else None
    return ImageEmbedder(path, device, precision, header=header, threads=threads), resolved, stat


def _recorded_header(index_dir: Path, model_path: str, model_stat: str) -> ModelHeader | None:
    """The model's header as the index recorded it, if it recorded this very file (same size and mtime)."""
    if not layout.db_path(index_dir).is_file():
        return None
    try:
        with Store.open(layout.db_path(index_dir), readonly=True) as store:
            meta = store.meta()
    except IndexStoreError:
        return None  # opened for writing next, which reports what is wrong
    if meta.get("model_path") != model_path or meta.get("model_stat") != model_stat:
        return None
    return ModelHeader(meta["model"], int(meta["dim"]), int(meta["image_size"]))


def _open_index(store: Store, embedder: ImageEmbedder, model_path: str | None, model_stat: str | None,
                folder: Path, index_dir: Path, rebuild: bool, index_type: str | None) -> str:
    """Check the index fits this model and folder (or reset it for a rebuild); returns the index-type option."""
    meta = store.meta()
    if not rebuild:
        store.check_model(embedder.identity, model_path)
        recorded = layout.resolve_root(index_dir, meta.get("root"))
        if meta.get("root") and store.count() and recorded != folder.resolve():
            raise IndexStoreError(f"the index {index_dir} holds the folder {recorded}, not {folder}; pass --rebuild "
                                  "to re-index it for this folder, or --index DIR for a separate index")
    option = index_type or meta.get("index_type_option") or "auto"
    vectors.resolve_index_type(option, 0, embedder.dim)  # a bad factory string fails before any work
    if rebuild:
        with store.write():
            store.reset()
    if model_path is None and meta.get("model") == embedder.identity:
        # a model passed in loaded: keep the path recorded for it
        model_path, model_stat = meta.get("model_path"), meta.get("model_stat")
    store.set_meta(model=embedder.identity, model_path=model_path, model_stat=model_stat, dim=embedder.dim,
                   image_size=embedder.image_size, root=layout.root_for_meta(folder, index_dir))
    return option


def build_index(folder: str | os.PathLike, index_dir: str | os.PathLike | None = None, *,
                model: DualEncoder | str | os.PathLike | None = None, batch_size: int = 32,
                workers: int | None = None, device: str = "auto", precision: str = "auto",
                index_type: str | None = None, rebuild: bool = False, threads: int | None = None,
                progress: Callable[[Progress], None] | None = None) -> IndexSummary:
    """Build or update the index of ``folder`` (default location ``folder/.vlsearch``).

    ``model``: a loaded model, a checkpoint path, or None for the shipped default model. ``workers``:
    decoding threads (0 decodes in this thread; default: CPU count, at most 8). ``index_type``: auto,
    flat, hnsw, ivf or a FAISS factory string (default: what the index used last, else auto).
    ``rebuild``: forget everything and embed every file again. ``threads``: torch's intra-op threads for
    the CNN (default: torch's own setting).
    """
    started = time.perf_counter()
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise IndexStoreError(f"{folder}: not a folder")
    index_dir = Path(index_dir).expanduser() if index_dir is not None else layout.default_index_dir(folder)
    embedder, model_path, model_stat = _embedder(model, index_dir, device, precision, threads)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    with IndexLock(layout.lock_path(index_dir)), Store.open(layout.db_path(index_dir)) as store:
        option = _open_index(store, embedder, model_path, model_stat, folder, index_dir, rebuild, index_type)
        todo = plan(scan(folder, skip=[index_dir]), store.file_stats(), store.error_stats())
        run = _Run(store, embedder, index_dir, batch_size, todo)
        decoder = Decoder(embedder.image_size, normalise=False)  # uint8: the embedder normalises whole batches
        work = partial(prepare, root=folder, decoder=decoder, known_hashes=run.known_hashes)
        if progress:
            progress(Progress(0, len(todo.work), 0, time.perf_counter() - started))
        for done, item in enumerate(in_order(work, todo.work, workers, max(2 * batch_size, 4 * workers),
                                                      run.decoding), 1):
            run.take(item)
            if progress:
                progress(Progress(done, len(todo.work), run.summary.embedded, time.perf_counter() - started))
        run.commit()
        run.remove(todo.vanished, todo.stale_errors)
        run.finish_vectors(option)
    run.summary.seconds = time.perf_counter() - started
    return run.summary
