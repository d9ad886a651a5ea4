"""The seam between planning and committing: an *embedding executor* turns planned files into vectors.

    plan (pipeline) -> Executor.embed(jobs, known_hashes) -> Prepared(+vector) ... -> commit (pipeline)

An executor reads, hashes, decodes and embeds; it never writes. The pipeline alone writes SQLite and
FAISS, one transaction a batch, so its crash-safety does not depend on where the CNN runs. Two exist:
``LocalExecutor`` (decoding threads and the CNN in this process, :mod:`indexer.executor_local`) and
``RayExecutor`` (actors on a Ray cluster, :mod:`indexer.executor_ray`, imported only for ``engine="ray"``).
This module holds what both share: the per-file work (:func:`prepare`) and the model's resolution.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol

from indexer.embed import ModelHeader
from indexer.index import Index, db_path
from indexer.scan import SNIFF_BYTES, FileEntry, content_hash, sniff
from retrieval.core.config import resolve_model as resolve_model_path
from retrieval.core.decode import Decoder, ImageInfo, probe
from retrieval.core.errors import CheckpointError, DecodeError, IndexStoreError, VlsearchError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from retrieval.core.model import DualEncoder

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Job:
    entry: FileEntry
    known: tuple[int, str] | None = None  # (id, hash) when the path is indexed already


@dataclass
class Prepared:
    """A file read, hashed and, unless its bytes are indexed already, decoded and embedded."""
    job: Job
    hash: str = ""
    info: ImageInfo | None = None
    pixels: torch.Tensor | None = None  # uint8 [3, S, S] between decoding and the CNN (local executor only)
    error: str | None = None  # why the file cannot be indexed
    gone: bool = False  # vanished, or (no image suffix) not an image after all
    vector: np.ndarray | None = None  # float32 [D], unit length; None: reuse the stored vector of its hash
    regions: np.ndarray | None = None  # int8 [R, d] fusion-head region codes with a new vector, if the model has a head


@dataclass
class ModelRef:
    """The index's model as executors need it: its header, and a loaded model or a checkpoint to load."""
    header: ModelHeader
    path: Path | None = None  # the checkpoint; None for a model passed in loaded
    loaded: DualEncoder | None = field(default=None, repr=False)
    recorded_path: str | None = None  # what the index records (both None for a model passed in loaded)
    recorded_stat: str | None = None  # "size:mtime_ns" of that file


class Executor(Protocol):
    """Turns planned jobs into prepared files with their vectors; writes nothing."""
    def embed(self, jobs: list[Job], known_hashes: set[str]) -> Iterator[Prepared]:
        """Each job once, in any order. ``known_hashes`` (it only grows while this runs) holds the hashes
        with a stored vector. An item comes back without a vector only if its hash was in ``known_hashes``
        or came earlier in this stream with a vector."""
        ...

    def describe(self) -> str:
        """Where the work ran, for the summary ("" for this process)."""
        ...

    def close(self) -> None:
        ...


def read(job: Job, root: Path) -> bytes | Prepared:
    """The file's bytes, or a Prepared that says why there are none (never raises for a bad file)."""
    entry = job.entry
    try:
        with open(root / entry.path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
            if sniff(head) is None:
                if not entry.named_as_image:
                    return Prepared(job, gone=True)
                return Prepared(job, error="not a supported image (JPEG, PNG, WebP, BMP, GIF or TIFF content)")
            return head + handle.read()
    except FileNotFoundError:
        if entry.named_as_image and os.path.islink(root / entry.path):
            return Prepared(job, error="broken symbolic link (its target does not exist)")
        return Prepared(job, gone=True)
    except OSError as exc:
        return Prepared(job, error=f"cannot read the file ({exc.strerror or exc})")


def decode(job: Job, data: bytes, decoder: Decoder, known_hashes: set[str]) -> Prepared:
    """Hash the bytes and decode them, unless a vector for them is stored (never raises for a bad file)."""
    digest = content_hash(data)
    try:
        if digest in known_hashes:  # a rename, move or copy: the header is enough
            return Prepared(job, digest, probe(data))
        decoded = decoder(data)
    except DecodeError as exc:
        return Prepared(job, digest, error=str(exc))
    return Prepared(job, digest, decoded.info, decoded.pixels)


def prepare(job: Job, root: Path, decoder: Decoder, known_hashes: set[str]) -> Prepared:
    """Read, sniff, hash and decode one file (runs in a worker thread or actor; never raises for a bad file)."""
    data = read(job, root)
    return data if isinstance(data, Prepared) else decode(job, data, decoder, known_hashes)


def resolve_model(model: DualEncoder | str | os.PathLike | None, index_dir: Path) -> ModelRef:
    """The model to index with, and the path and "size:mtime_ns" to record for it.

    A model file that this index recorded, with the same size and mtime, is not even opened: an unchanged
    re-index then never imports torch. Any other file's header is read now, so a bad one fails before work.
    """
    if model is not None and not isinstance(model, (str, os.PathLike)):
        if model.image is None:
            raise ValueError("the model was loaded without its image branch (with_image=False)")
        return ModelRef(ModelHeader(model.identity, model.config.embed_dim, model.config.image_size,
                                    _fusion_identity(model)), loaded=model)
    path = resolve_model_path(model)
    if model is None and not path.is_file():
        raise CheckpointError(f"no default model is installed yet (expected {path}); pass --model MODEL.pt")
    resolved = str(path.resolve())
    try:
        info = path.stat()
        stat = f"{info.st_size}:{info.st_mtime_ns}"
    except OSError:
        stat = None  # ModelHeader.read names the file and the problem
    header = (_recorded_header(index_dir, resolved, stat) if stat else None) or ModelHeader.read(path)
    return ModelRef(header, path, recorded_path=resolved, recorded_stat=stat)


def _fusion_identity(model: DualEncoder) -> str:
    """The identity of a loaded model's fusion head ("" without one), computed if it was never saved."""
    if model.fusion is None:
        return ""
    if not model.fusion_identity:

        from retrieval.core.checkpoint import fusion_identity

        model.fusion_identity = fusion_identity(asdict(model.config), model.state_dict())
    return model.fusion_identity


def _recorded_header(index_dir: Path, model_path: str, model_stat: str) -> ModelHeader | None:
    """The model's header as the index recorded it, if it recorded this very file (same size and mtime)."""
    if not db_path(index_dir).is_file():
        return None
    try:
        with Index.open(index_dir) as index:
            meta = index.meta
    except IndexStoreError:
        return None  # opened for writing next, which reports what is wrong
    if meta.model_path != model_path or meta.model_stat != model_stat:
        return None
    return ModelHeader(meta.model, meta.dim, meta.image_size, meta.fusion)


@dataclass
class RayOptions:
    """Where and how ``engine="ray"`` runs (see :mod:`indexer.executor_ray`)."""
    address: str | None = None  # "auto", "HOST:PORT", or None: a cluster in this process (RAY_ADDRESS if set)
    workers: int | None = None  # actors; default: one per GPU share, else one per CPU of the cluster
    gpus_per_worker: float = 0.0
    ship_bytes: bool = False  # the driver reads the files and ships their bytes (nodes need not see the folder)


def make_executor(engine: str, model: ModelRef, root: Path, *, batch_size: int, workers: int | None,
                  device: str, precision: str, threads: int | None, ray: RayOptions | None = None) -> Executor:
    """The executor for ``engine`` ("local" or "ray"); Ray is imported only for "ray"."""
    if engine == "local":
        from indexer.executor_local import LocalExecutor

        return LocalExecutor(model, root, batch_size=batch_size, workers=workers, device=device,
                             precision=precision, threads=threads)
    if engine == "ray":
        from indexer.executor_ray import RayExecutor

        options = ray or RayOptions()
        if options.workers is None and workers:
            options = replace(options, workers=workers)
        return RayExecutor(model, root, batch_size=batch_size, precision=precision, options=options)
    raise VlsearchError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
