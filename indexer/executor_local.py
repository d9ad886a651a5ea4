"""The local embedding executor: decoding threads with a bounded look-ahead, and the CNN in this process.

On the CPU, decoding and the CNN take turns on the cores (they share them); on a GPU they overlap.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from retrieval.core.decode import Decoder
from indexer.embed import ImageEmbedder
from indexer.executor import Job, ModelRef, Prepared, prepare

PENDING_LIMIT = 1024  # files without a new vector held back at most before a (partial) batch goes out
T = TypeVar("T")
R = TypeVar("R")


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


class LocalExecutor:
    """Files in input order, a batch at a time: each batch's new pixels go through the CNN together."""

    def __init__(self, model: ModelRef, root: Path, *, batch_size: int, workers: int | None, device: str,
                 precision: str, threads: int | None):
        self.root, self.batch_size = root, batch_size
        self.workers = min(8, os.cpu_count() or 1) if workers is None else workers
        source = model.loaded if model.loaded is not None else model.path
        self.embedder = ImageEmbedder(source, device, precision, header=model.header, threads=threads)
        # Set while decoding threads may start a file. On the CPU they wait while the CNN runs: a decoding
        # thread that takes a core from one of torch's OpenMP threads leaves the others spinning at the next
        # barrier, so overlapping cost the default model ~25% of its indexing speed on 2 cores (BENCHMARKS.md).
        self.decoding = threading.Event()
        self.decoding.set()

    def embed(self, jobs: list[Job], known_hashes: set[str]) -> Iterator[Prepared]:
        decoder = Decoder(self.embedder.image_size, normalise=False)  # uint8: the embedder normalises batches
        work = partial(prepare, root=self.root, decoder=decoder, known_hashes=known_hashes)
        held: list[Prepared] = []  # in order since the last batch went out
        batch: dict[str, Prepared] = {}  # hash -> the first file with it, to embed
        for item in in_order(work, jobs, self.workers, max(2 * self.batch_size, 4 * self.workers), self.decoding):
            held.append(item)
            if item.pixels is not None:
                if item.hash in known_hashes or item.hash in batch:  # embedded meanwhile, or twice in a batch
                    item.pixels = None
                else:
                    batch[item.hash] = item
            if len(batch) >= self.batch_size or len(held) >= PENDING_LIMIT:
                self._embed(list(batch.values()))
                yield from held
                held, batch = [], {}
        self._embed(list(batch.values()))
        yield from held

    def _embed(self, items: list[Prepared]) -> None:
        """The batch's pixels through the CNN, into each item's vector; on the CPU, with decoding paused."""
        if not items:
            return
        import torch

        if self.embedder.device.type == "cpu":
            self.decoding.clear()
        try:
            # uint8 [B, 3, S, S] -> [B, D], and int8 [B, R, d] region codes when the model has a fusion head
            fresh, regions = self.embedder.with_regions(torch.stack([item.pixels for item in items]))
        finally:
            self.decoding.set()
        for n, (item, vector) in enumerate(zip(items, fresh)):
            item.vector, item.pixels = vector, None
            item.regions = regions[n] if regions is not None else None

    def describe(self) -> str:
        return ""

    def close(self) -> None:
        pass
