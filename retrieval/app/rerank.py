"""The second stage of a text search: the model's fusion head re-orders FAISS's top N (retrieval.core.fusion).

FAISS recalls the N nearest images (after the filters) by one vector each; the head then scores each of
them with the query's words attending over the image's stored region vectors, and the top ``k`` of that
order are returned. Every re-ranked hit says so (``stage="rerank"``) and keeps its FAISS score
(``first_score``). A search re-ranks only when every candidate has region vectors made by this very head
(an index built by a model without one, or by another head, answers from the first stage alone).
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from retrieval.core.errors import QueryError
from retrieval.core.fusion import DEFAULT_DEPTH, dequantize_regions

if TYPE_CHECKING:
    from retrieval.app.search import Hit
    from retrieval.core.model import DualEncoder

MAX_DEPTH = 10000


def rerank_depth(requested: int | None, model: DualEncoder, index_fusion: str | None) -> int:
    """How many first-stage candidates to re-rank: ``requested`` (0: none; None: the default), and none
    unless the model has a head and the index holds that head's regions."""
    if requested is not None and not 0 <= requested <= MAX_DEPTH:
        raise QueryError(f"rerank must be 0 to {MAX_DEPTH}, not {requested}")
    # regions made by another head (or none) would be scored by the wrong projection: first stage only
    usable = model.fusion is not None and bool(index_fusion) and index_fusion == model.fusion_identity
    return (DEFAULT_DEPTH if requested is None else requested) if usable else 0


def rerank(model: DualEncoder, text: str, hits: Sequence[Hit], regions: dict[int, bytes], k: int) -> list[Hit]:
    """The top ``k`` of ``hits`` (FAISS's, best first) as the fusion head orders them; ``regions``: id ->
    stored int8 codes. Without a head, or with a candidate lacking regions, the first ``k`` hits as they are."""
    if model.fusion is None or not hits or any(hit.id not in regions for hit in hits):
        return list(hits[:k])


    dim = model.fusion.words.proj.out_features
    codes = np.stack([np.frombuffer(regions[hit.id], dtype=np.int8).reshape(-1, dim) for hit in hits])
    with torch.inference_mode():
        tokens, lengths = model.tokenize([text])
        _, words = model.encode_text_words(tokens, lengths)  # [1, L, d]
        first = torch.tensor([[hit.score for hit in hits]], dtype=torch.float32)  # [1, N]
        scores = model.fusion.score_matrix(words, lengths, dequantize_regions(torch.from_numpy(codes)), first)[0]
    order = torch.argsort(scores, descending=True, stable=True)[:k].tolist()
    return [replace(hits[i], score=float(scores[i]), stage="rerank", first_score=hits[i].score) for i in order]
