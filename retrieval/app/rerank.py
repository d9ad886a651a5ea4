"""The second stage of a text search: the model's fusion head re-orders FAISS's top N (retrieval.core.fusion).

FAISS recalls the N nearest images (after the filters) by one vector each; the head then scores each of
them with the query's words attending over the image's stored region vectors, and the top ``k`` of that
order are returned. Every re-ranked hit says so (``stage="rerank"``) and keeps its FAISS score
(``first_score``). A search re-ranks only when every candidate has region vectors made by this very head
(an index built by a model without one, or by another head, answers from the first stage alone). A head
with a query bank also needs the candidates' stored vectors, to lower hubs (retrieval.core.fusion).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from retrieval.core.device import unit_vectors
from retrieval.core.errors import QueryError
from retrieval.core.fusion import DEFAULT_DEPTH, dequantize_regions

if TYPE_CHECKING:
    from retrieval.app.search import Hit
    from retrieval.core.model import DualEncoder

MAX_DEPTH = 10000


@dataclass
class Query:
    """A text query as both stages need it, from one pass of the text branch."""
    vector: np.ndarray  # [D] float32, unit: what FAISS searches with
    words: torch.Tensor | None = None  # [1, L, d] the fusion head's word vectors (None: no head)
    lengths: torch.Tensor | None = None  # [1]


def encode_query(model: DualEncoder, text: str) -> Query:
    """``text`` -> its vector and, when the model has a fusion head, the head's word vectors."""
    with torch.inference_mode():
        tokens, lengths = model.tokenize([text])
        if model.fusion is None:
            return Query(unit_vectors(model.encode_text(tokens, lengths))[0].cpu().numpy())
        vectors, words = model.encode_text_words(tokens, lengths)
        return Query(unit_vectors(vectors)[0].cpu().numpy(), words, lengths)


def rerank_depth(requested: int | None, model: DualEncoder, index_fusion: str | None) -> int:
    """How many first-stage candidates to re-rank: ``requested`` (0: none; None: the default), and none
    unless the model has a head and the index holds that head's regions."""
    if requested is not None and not 0 <= requested <= MAX_DEPTH:
        raise QueryError(f"rerank must be 0 to {MAX_DEPTH}, not {requested}")
    # regions made by another head (or none) would be scored by the wrong projection: first stage only
    usable = model.fusion is not None and bool(index_fusion) and index_fusion == model.fusion_identity
    return (DEFAULT_DEPTH if requested is None else requested) if usable else 0


def rerank(model: DualEncoder, query: Query, hits: Sequence[Hit], regions: dict[int, bytes], k: int,
           vectors: dict[int, np.ndarray] | None = None) -> list[Hit]:
    """The top ``k`` of ``hits`` (FAISS's for ``query``, best first) as the fusion head orders them;
    ``regions``: id -> stored int8 codes; ``vectors``: id -> stored vector, for a head with a query bank.
    Without a head, or with a candidate lacking what the head needs, the first ``k`` hits as they are."""
    head, vectors = model.fusion, vectors or {}
    banked = head is not None and head.bank is not None
    if head is None or query.words is None or not hits or any(
            hit.id not in regions or (banked and hit.id not in vectors) for hit in hits):
        return list(hits[:k])
    dim = head.words.proj.out_features
    codes = np.stack([np.frombuffer(regions[hit.id], dtype=np.int8).reshape(-1, dim) for hit in hits])
    device = query.words.device  # the model's: stored codes and vectors are read onto it
    with torch.inference_mode():
        first = torch.tensor([[hit.score for hit in hits]], dtype=torch.float32, device=device)  # [1, N]
        hubness = head.hubness(torch.from_numpy(np.stack([vectors[hit.id] for hit in hits])).to(device)) \
            if banked else None  # [N]
        region_vectors = dequantize_regions(torch.from_numpy(codes).to(device))  # [N, R, d]
        scores = head.score_matrix(query.words, query.lengths, region_vectors, first, hubness)[0].cpu()
    order = torch.argsort(scores, descending=True, stable=True)[:k].tolist()
    return [replace(hits[i], score=float(scores[i]), stage="rerank", first_score=hits[i].score) for i in order]
