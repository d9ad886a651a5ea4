"""Tokenizer and vocabulary for the text branch: deterministic, offline, JSON-serialisable."""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
MAX_TOKENS = 64  # longer queries are truncated: a caption is a sentence, not a document

_TOKEN = re.compile(r"[^\W_]+|[^\w\s]", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """Lower-case and split into words and single punctuation marks.

    >>> tokenize("A red circle, left of the Blue square.")
    ['a', 'red', 'circle', ',', 'left', 'of', 'the', 'blue', 'square', '.']
    """
    text = unicodedata.normalize("NFKC", text).lower()
    return _TOKEN.findall(text)


@dataclass
class Vocabulary:
    """Word <-> id mapping; id 0 is padding, id 1 stands for every unknown word."""

    words: list[str] = field(default_factory=lambda: [PAD, UNK])

    def __post_init__(self) -> None:
        if self.words[:2] != [PAD, UNK]:
            raise ValueError("a vocabulary starts with <pad>, <unk>")
        self._ids = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> "Vocabulary":
        """Collect words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(tok for caption in captions for tok in tokenize(caption))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls([PAD, UNK, *kept])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self._ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (at least one id, so an empty string still has a length)."""
        ids = [self._ids.get(tok, UNK_ID) for tok in tokenize(text)[:MAX_TOKENS]]
        return ids or [UNK_ID]

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` the model has never seen (punctuation ignored)."""
        return [tok for tok in tokenize(text) if tok not in self._ids and tok.isalnum()]

    def to_list(self) -> list[str]:
        return list(self.words)
