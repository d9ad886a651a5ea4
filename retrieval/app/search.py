"""The query path an app embeds: text -> tokens -> GRU vector -> FAISS neighbours -> SQLite rows.

    from retrieval import SearchEngine
    with SearchEngine.open("photos/.vlsearch") as engine:
        for hit in engine.search("a bridge over a river", k=5):
            print(hit.score, hit.abs_path)

Filters (``where``, ``glob``) pick the candidate ids in SQLite first and FAISS searches only those,
so ``k`` results come back whenever ``k`` images match. One engine is safe to share between threads.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from indexer import vectors
from indexer.embed import ImageEmbedder
from indexer.index import INDEX_ENV, Index, find_index  # noqa: F401  (part of this module's API)
from indexer.store import IndexMeta, Store
from retrieval.app import rerank as second
from retrieval.core.checkpoint import load_model, read_checkpoint
from retrieval.core.config import MODELS, resolve_model, shipped_model_path
from retrieval.core.decode import Decoder, to_rgb
from retrieval.core.device import set_threads, unit_vectors
from retrieval.core.errors import CheckpointError, DecodeError, QueryError


@dataclass(frozen=True)
class Hit:
    """One result: the stored metadata of an indexed image and its similarity to the query."""
    id: int
    path: str  # relative to the indexed folder, '/'-separated
    abs_path: str
    score: float  # cosine similarity in [-1, 1]
    width: int | None
    height: int | None
    format: str | None
    size: int
    mtime_ns: int
    hash: str
    indexed_at: str
    stage: str = "first"  # which stage produced ``score``: "first" (FAISS) or "rerank" (the fusion head)
    first_score: float | None = None  # with stage "rerank": the FAISS score it replaced

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QueryWords:
    """What the model makes of a text query's words (stop words such as "a" and "the" aside)."""
    unknown: list[str]  # content words it has never seen: read as <unk>, they change nothing
    meaningless: bool  # it knows none of the content words: the ranking says nothing about the query

    def warning(self) -> str | None:
        """The one-line warning a user should see, or None."""
        if self.meaningless:
            known = f"the model does not know: {', '.join(self.unknown)}; " if self.unknown else ""
            return f"{known}it knows no word of this query, so the results are meaningless"
        return f"the model does not know: {', '.join(self.unknown)}" if self.unknown else None


def results_document(query: str | None, image: str | None, k: int, hits: Sequence[Hit],
                     words: QueryWords | None = None) -> dict[str, Any]:
    """The JSON document of one search: what ``vlsearch search --json`` prints and ``/api/search`` returns."""
    return {"query": query, "image": image, "k": k,
            "unknown_words": list(words.unknown) if words else [], "meaningless": bool(words and words.meaningless),
            "results": [{"rank": rank, **hit.to_dict()} for rank, hit in enumerate(hits, 1)]}


def json_bytes(document: Any, indent: int | None = 2) -> bytes:
    """UTF-8 JSON of a results document. A file name's bytes that are not UTF-8 are held, as Python holds them,
    as lone surrogates U+DC80-U+DCFF (surrogateescape) and written as JSON escapes ``\\udcXX``: ``json.loads``
    then ``os.fsencode(path)`` gives back the exact bytes."""
    return json.dumps(document, indent=indent, ensure_ascii=False).encode("utf-8", "backslashreplace")


def _model_for_index(meta: IndexMeta, model: str | os.PathLike | None) -> Path:
    """The checkpoint to query an index with: the one asked for, else the one it recorded, else the default."""
    if model is not None:
        return resolve_model(model)
    recorded = meta.model_path
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    for name in MODELS:  # e.g. an index made with data/default_model.pt, shipped today as scenes.pt
        shipped = shipped_model_path(name)
        if shipped.is_file() and read_checkpoint(shipped)["identity"] == meta.model:
            return shipped
    raise CheckpointError(f"the index was built with model {meta.model} ({recorded or 'path unknown'}), "
                          "which is not available here; pass --model with that checkpoint")


class SearchEngine:
    """An open index plus the model that built it. Create with :meth:`open`; close (or use ``with``)."""
    def __init__(self, index: Index, model_path: Path, device: str = "cpu"):
        self.index = index
        self.model_path = model_path
        self.device = device
        self.root = index.root()
        self._lock = threading.RLock()
        self._text_model = load_model(model_path, device=device, with_image=False)
        self.store.check_model(self._text_model.identity, str(model_path))
        self._image_embedder: Any = None  # loaded on the first image query
        self._generation = -1
        self._vectors: Any = None
        self.refresh()

    @classmethod
    def open(cls, index_dir: str | os.PathLike | None = None, *, model: str | os.PathLike | None = None,
             device: str = "cpu") -> "SearchEngine":
        """Open an index (discovered like :func:`find_index` when not given) read-only, with its model."""
        set_threads()
        index = Index.open(find_index(index_dir))
        try:
            return cls(index, _model_for_index(index.meta, model), device)
        except BaseException:
            index.close()
            raise

    # -- lifecycle ----------------------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        return self.index.store

    @property
    def index_dir(self) -> Path:
        return self.index.path

    def refresh(self) -> bool:
        """Load the vectors again if an indexer has committed since; True when something changed."""
        with self._lock, self.store.snapshot():
            return self._refresh()

    def _refresh(self) -> bool:
        """:meth:`refresh` inside the caller's snapshot, so the vectors are those of the rows it reads."""
        generation = self.store.generation
        if generation == self._generation:
            return False
        self._vectors = self.index.vectors()
        self._generation = generation
        return True

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> "SearchEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._vectors.ntotal)

    # -- encoding -----------------------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        """Content hash of the model (the index records the same)."""
        return self._text_model.identity

    def unknown_words(self, text: str) -> list[str]:
        """Content words of ``text`` the model's vocabulary lacks (it reads them as <unk>: they change nothing)."""
        return self._text_model.vocab.unknown_words(text)

    def query_words(self, text: str) -> QueryWords:
        """The unknown content words of ``text``, and whether the model knows none of them."""
        vocab = self._text_model.vocab
        return QueryWords(vocab.unknown_words(text), not vocab.known_content_words(text))

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Sentences -> unit vectors [N, D] float32."""
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings")

        with self._lock, torch.inference_mode():
            return unit_vectors(self._text_model.encode_captions(list(texts))).cpu().numpy()

    def encode_image(self, image: str | os.PathLike | bytes | Image.Image) -> np.ndarray:
        """An image (path, file bytes or PIL image) -> unit vector [1, D] float32, decoded and embedded as the
        indexer does (a PIL image skips the decoder's EXIF and size steps: pass the file when there is one)."""
        if isinstance(image, (str, os.PathLike)) and not Path(image).is_file():
            raise QueryError(f"no such file: {image}")
        with self._lock:
            if self._image_embedder is None:
                self._image_embedder = ImageEmbedder(load_model(self.model_path, device=self.device), self.device)
            embedder = self._image_embedder
            decoder = Decoder(embedder.image_size, normalise=False)  # uint8: the embedder normalises
            try:
                pixels = decoder.transform(to_rgb(image)) if isinstance(image, Image.Image) else decoder(image).pixels
            except DecodeError as exc:
                raise QueryError(f"{'the image' if isinstance(image, bytes) else image}: {exc}") from exc
            return embedder(pixels.unsqueeze(0))  # [1, D]

    # -- searching ----------------------------------------------------------------------------------------

    def search(self, text: str, k: int = 10, *, min_score: float | None = None, where: str | None = None,
               glob: str | None = None, rerank: int | None = None) -> list[Hit]:
        """The ``k`` images most similar to a sentence (one with nothing visible in it is a :class:`QueryError`).

        ``rerank``: how many of FAISS's nearest (after the filters; ``min_score`` applies to their FAISS
        score) the model's fusion head re-orders (:mod:`retrieval.app.rerank`); None: 100 when the model has a
        head and the index its regions, 0: off."""
        if not isinstance(text, str) or not any(ch.isprintable() and not ch.isspace() for ch in text):
            raise QueryError("the query is empty; describe the image you are looking for")
        with self._lock, self.store.snapshot():  # the regions of the same committed state as the hits
            query = second.encode_query(self._text_model, text)  # one text pass for both stages
            depth = second.rerank_depth(rerank, self._text_model, self.index.meta.fusion)
            hits = self.search_vector(query.vector, max(k, depth), min_score=min_score, where=where, glob=glob)
            if not depth:
                return hits[:k]
            ids = [hit.id for hit in hits]
            vectors = dict(zip(*self.store.vectors(ids))) if self._text_model.fusion.bank is not None else None
            return second.rerank(self._text_model, query, hits, self.store.regions(ids), k, vectors)

    def search_image(self, image: str | os.PathLike | bytes | Image.Image, k: int = 10, *,
                     min_score: float | None = None, where: str | None = None, glob: str | None = None) -> list[Hit]:
        """The ``k`` indexed images most similar to an example image."""
        return self.search_vector(self.encode_image(image)[0], k, min_score=min_score, where=where, glob=glob)

    def search_vector(self, vector: np.ndarray, k: int = 10, *, min_score: float | None = None,
                      where: str | None = None, glob: str | None = None) -> list[Hit]:
        """Nearest neighbours of a query vector [D], filtered in SQLite before FAISS looks."""
        if k < 1:
            raise QueryError(f"k must be at least 1, not {k}")
        with self._lock, self.store.snapshot():  # one state: an indexer's commit is seen whole or not at all
            self._refresh()
            candidates = self.store.ids_matching(where, glob) if (where or glob) else None
            if candidates is not None and not len(candidates):
                return []
            scores, ids = vectors.search(self._vectors, vector.reshape(1, -1), k, candidates)
            found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
            if min_score is not None:
                found = [(i, s) for i, s in found if s >= min_score]
            rows = {row["id"]: row for row in self.store.rows([i for i, _ in found])}
        return [Hit(score=score, abs_path=str(self.root / rows[i]["path"]), **rows[i]) for i, score in found
                if i in rows]

    def stats(self) -> dict[str, Any]:
        """Counts, model and index type (what ``vlsearch info`` and the web API show)."""
        with self._lock, self.store.snapshot():
            meta = self.index.meta
            return {"images": self.store.count(), "errors": self.store.error_count(), "model": meta.model or None,
                    "index_type": meta.index_type or None, "dim": meta.dim or None, "root": str(self.root),
                    "updated_at": meta.updated_at or None}
