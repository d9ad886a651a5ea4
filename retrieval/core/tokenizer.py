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

# words that carry no content of their own: a query of only these (or with only these known) means nothing,
# and their being unknown is not worth a warning
STOP_WORDS = frozenset({"a", "an", "the", "of", "and", "or", "is", "are", "there", "this", "that", "it", "its",
                        "some"})

_TOKEN = re.compile(r"[^\W_]+|[^\w\s]", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """Lower-case and split into words and single punctuation marks.

    >>> tokenize("A red circle, left of the Blue square.")
    ['a', 'red', 'circle', ',', 'left', 'of', 'the', 'blue', 'square', '.']
    """
    text = unicodedata.normalize("NFKC", text).lower()
    return _TOKEN.findall(text)


def _content_words(text: str) -> list[str]:
    return [tok for tok in tokenize(text)[:MAX_TOKENS] if tok.isalnum() and tok not in STOP_WORDS]


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
        """Content words of ``text`` the model has never seen, each once (punctuation and stop words ignored)."""
        return list(dict.fromkeys(tok for tok in _content_words(text) if tok not in self._ids))

    def known_content_words(self, text: str) -> list[str]:
        """Content words of ``text`` the model knows."""
        return [tok for tok in _content_words(text) if tok in self._ids]

    def to_list(self) -> list[str]:
        return list(self.words)
