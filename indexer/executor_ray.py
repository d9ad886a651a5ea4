"""The Ray embedding executor: read, decode and embed on actors of a Ray cluster; the driver only writes.

    driver: plan -> batches of files -> actors (one model each) -> (file, hash, info, vector, regions) -> commit

Each actor loads the index's model once (the driver ships the checkpoint's bytes through Ray's object
store, so nodes need not see the model file) and the hashes already indexed (so a renamed file skips the
CNN there too). Actors read the files from the folder's path -- storage every node can read, a shared
filesystem -- or, with ``ship_bytes``, the driver reads them and ships the bytes. Per-file work is
:func:`indexer.executor.prepare`, the local path's own, so bad files fail with the same reasons.

A small actor pool rather than Ray Data: at most two batches in flight per actor bound the driver's
memory (shipped bytes included), and a batch whose actor died (its node lost) goes to another actor, so a
run completes while any actor lives. Every Ray import of vlsearch is in this module.
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from retrieval.core.decode import Decoder, ImageInfo
from indexer.executor import Job, ModelRef, Prepared, RayOptions, decode, prepare, read
from indexer.scan import FileEntry
from retrieval.core.errors import RayError, VlsearchError

try:
    import ray
except ImportError:  # the optional extra: require_ray() says how to install it
    ray = None

if TYPE_CHECKING:
    import numpy as np

IN_FLIGHT = 2  # batches per actor: one running, one waiting (hides the round trip)
START_TIMEOUT_S = 300.0  # no actor started by then: the cluster lacks the resources asked for
START_GRACE_S = 30.0  # batches are dealt once every actor has started, or this long after the first did



def require_ray() -> None:
    if ray is None:
        raise RayError('--engine ray needs Ray, which is not installed; install it with: pip install "vlsearch[ray]"')


# A row sent to an actor: (position, path, size, mtime_ns, named_as_image, bytes or None: the actor reads)
# and one sent back: (position, hash, (width, height, format) or None, error, gone, float32 [D] or None,
# int8 [R, d] fusion-head region codes or None)
Sent = tuple[int, str, int, int, bool, "bytes | None"]
Back = tuple[int, str, "tuple[int, int, str] | None", "str | None", bool, "np.ndarray | None", "np.ndarray | None"]


class EmbedWorker:
    """One actor: the model on its device, a decoder, and the hashes indexed when the run started."""

    def __init__(self, model: bytes | Any, image_size: int, root: str, precision: str, threads: int,
                 known_hashes: frozenset[str]):
        from indexer.embed import ImageEmbedder

        if isinstance(model, bytes):  # a checkpoint's bytes: load_model reads files
            with tempfile.NamedTemporaryFile(suffix=".pt", delete=False) as handle:
                handle.write(model)
            try:
                self.embedder = ImageEmbedder(handle.name, "auto", precision, threads=threads)
                self.embedder.model  # noqa: B018 - load the weights now, once
            finally:
                os.unlink(handle.name)
        else:
            self.embedder = ImageEmbedder(model, "auto", precision, threads=threads)
        self.decoder = Decoder(image_size, normalise=False)
        self.root, self.known = Path(root), known_hashes

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def embed(self, rows: list[Sent]) -> list[Back]:
        import torch

        items = []
        for position, path, size, mtime_ns, named, data in rows:
            job = Job(FileEntry(path, size, mtime_ns, named))
            item = prepare(job, self.root, self.decoder, self.known) if data is None else \
                decode(job, data, self.decoder, self.known)
            items.append((position, item))
        first: dict[str, Prepared] = {}
        for _, item in items:
            if item.pixels is not None and item.hash not in first:
                first[item.hash] = item
        if first:
            # uint8 -> [B, D], and int8 [B, R, d] region codes when the model has a fusion head
            fresh, regions = self.embedder.with_regions(torch.stack([item.pixels for item in first.values()]))
            for n, (item, vector) in enumerate(zip(first.values(), fresh)):
                item.vector = vector
                item.regions = regions[n] if regions is not None else None
        return [(position, item.hash, (item.info.width, item.info.height, item.info.format) if item.info else None,
                 item.error, item.gone, item.vector, item.regions) for position, item in items]


class _Pool:
    """The actors as they start, and the batches in flight on each."""

    def __init__(self, actors: list[Any]):
        self.actors = actors
        self.starting = {actor.node.remote(): actor for actor in actors}  # ref of node() -> actor
        self.load: dict[Any, int] = {}  # started actor -> batches in flight
        self.flying: dict[Any, tuple[Any, int, list[tuple[int, Prepared]]]] = {}  # ref -> (actor, batch, failed)
        self.nodes: set[str] = set()
        self.started, self.since, self.first_ready = 0, time.monotonic(), 0.0

    def free(self) -> Any:
        """The least busy started actor with room for a batch, once dealing has begun; else None."""
        if not self.load or (self.starting and time.monotonic() - self.first_ready < START_GRACE_S):
            return None
        actor = min(self.load, key=self.load.__getitem__)
        return actor if self.load[actor] < IN_FLIGHT else None

    def send(self, actor: Any, number: int, rows: list[Sent], failed: list[tuple[int, Prepared]]) -> None:
        self.flying[actor.embed.remote(rows)] = (actor, number, failed)
        self.load[actor] += 1

    def wait(self, jobs: list[Job]) -> tuple[int, list[tuple[int, Prepared]] | None] | None:
        """The next finished batch: (number, items), or (number, None) when its actor died; None: an actor
        started, or nothing within a few seconds."""
        if not (self.starting or self.flying):
            raise RayError("every Ray worker died; the files embedded so far are committed, run again")
        if not self.load and time.monotonic() - self.since > START_TIMEOUT_S:
            raise RayError(f"no Ray worker started in {START_TIMEOUT_S:.0f} s; the cluster has "
                           f"{ray.cluster_resources()} (do --workers or --gpus-per-worker ask for more?)")
        finished, _ = ray.wait([*self.starting, *self.flying], num_returns=1, timeout=5.0)
        if not finished:
            return None
        ref = finished[0]
        if ref in self.starting:
            actor = self.starting.pop(ref)
            try:
                self.nodes.add(ray.get(ref))
            except ray.exceptions.RayActorError:
                return None  # it could not start (its node died): the others carry on
            self.load[actor], self.started = 0, self.started + 1
            self.first_ready = self.first_ready or time.monotonic()
            return None
        actor, number, failed = self.flying.pop(ref)
        try:
            results: list[Back] = ray.get(ref)
        except ray.exceptions.RayActorError:  # its node or process died
            self.load.pop(actor, None)
            return number, None
        except ray.exceptions.RayTaskError as exc:
            raise exc.cause if isinstance(exc.cause, VlsearchError) else exc
        self.load[actor] -= 1
        return number, failed + [(position, Prepared(jobs[position], digest, ImageInfo(*info) if info else None,
                                                     error=error, gone=gone, vector=vector, regions=regions))
                                 for position, digest, info, error, gone, vector, regions in results]

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


class RayExecutor:
    """Batches of files to a pool of actors; results come back in input order."""

    def __init__(self, model: ModelRef, root: Path, *, batch_size: int, precision: str, options: RayOptions):
        require_ray()
        self.model, self.root, self.batch_size, self.precision = model, root, batch_size, precision
        self.options = options
        self._started = not ray.is_initialized()
        if self._started:
            try:
                ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.ERROR, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RayError(f"cannot connect to the Ray cluster at {options.address or 'a new local one'}: "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        self.nodes: set[str] = set()
        self.actors_used = 0

    def _actor_count(self) -> int:
        if self.options.workers:
            return self.options.workers
        resources = ray.cluster_resources()
        if self.options.gpus_per_worker:
            return max(1, int(resources.get("GPU", 0) / self.options.gpus_per_worker))
        return max(1, int(resources.get("CPU", 1)))

    def _start(self, known_hashes: set[str]) -> list[Any]:
        if self.model.loaded is not None:  # pickled; a copy on the CPU if it is on a GPU here
            blob: Any = self.model.loaded
            if any(p.is_cuda for p in blob.parameters()):
                blob = copy.deepcopy(blob).cpu()
        else:
            blob = Path(self.model.path).read_bytes()
        model_ref, known_ref = ray.put(blob), ray.put(frozenset(known_hashes))
        worker = ray.remote(EmbedWorker).options(num_cpus=1, num_gpus=self.options.gpus_per_worker or 0,
                                                 max_restarts=0, max_task_retries=0)
        return [worker.remote(model_ref, self.model.header.image_size, str(self.root.resolve()), self.precision,
                              1, known_ref) for _ in range(self._actor_count())]

    def _rows(self, jobs: list[Job], positions: list[int]) -> tuple[list[Sent], list[tuple[int, Prepared]]]:
        """What to send for these jobs, and the files the driver already found unreadable (``ship_bytes``)."""
        rows, failed = [], []
        for position in positions:
            job, data = jobs[position], None
            if self.options.ship_bytes:
                data = read(job, self.root)
                if isinstance(data, Prepared):
                    failed.append((position, data))
                    continue
            entry = job.entry
            rows.append((position, entry.path, entry.size, entry.mtime_ns, entry.named_as_image, data))
        return rows, failed

    def embed(self, jobs: list[Job], known_hashes: set[str]) -> Iterator[Prepared]:
        """In input order, so that ids follow the same order as locally; ``known_hashes`` as at the start
        (a copy may be embedded twice: the pipeline keeps one vector)."""
        pool = _Pool(self._start(known_hashes))
        batches = [list(range(i, min(i + self.batch_size, len(jobs)))) for i in range(0, len(jobs), self.batch_size)]
        todo = deque(range(len(batches)))  # batch numbers to send (a lost batch goes back to the front)
        done: dict[int, list[tuple[int, Prepared]]] = {}
        next_out = 0
        try:
            while next_out < len(batches):
                if next_out in done:
                    yield from (item for _, item in sorted(done.pop(next_out), key=lambda pair: pair[0]))
                    next_out += 1
                    continue
                window = next_out + 2 * IN_FLIGHT * max(1, len(pool.load))  # bounds the results held back
                while todo and todo[0] < window and (actor := pool.free()) is not None:
                    number = todo.popleft()
                    rows, failed = self._rows(jobs, batches[number])
                    if rows:
                        pool.send(actor, number, rows, failed)
                    else:
                        done[number] = failed
                finished = pool.wait(jobs)
                if finished is not None and finished[1] is None:  # its actor died: another one takes the batch
                    todo.appendleft(finished[0])
                elif finished is not None:
                    done[finished[0]] = finished[1]
        finally:
            pool.close()
        self.nodes, self.actors_used = pool.nodes, pool.started

    def describe(self) -> str:
        nodes, actors = len(self.nodes), self.actors_used
        return f"on {nodes} node{'s' * (nodes != 1)}, {actors} Ray actor{'s' * (actors != 1)}"

    def close(self) -> None:
        if self._started and ray.is_initialized():
            ray.shutdown()
