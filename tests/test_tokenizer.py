"""Tokenizer and vocabulary: splitting, building, encoding, unknown words."""
from __future__ import annotations

import json

import pytest

from retrieval.core.tokenizer import MAX_TOKENS, PAD, PAD_ID, UNK, UNK_ID, Vocabulary, tokenize


def test_tokenize_lower_cases_and_splits_punctuation():
    assert tokenize("A red circle, left of the Blue square.") == [
        "a", "red", "circle", ",", "left", "of", "the", "blue", "square", "."]


def test_tokenize_keeps_each_punctuation_mark_separate():
    assert tokenize("Wow!? it's (big)") == ["wow", "!", "?", "it", "'", "s", "(", "big", ")"]


def test_tokenize_whitespace_and_empty():
    assert tokenize("  two\tdogs\n\nrunning  ") == ["two", "dogs", "running"]
    assert tokenize("") == []
    assert tokenize("   ") == []


def test_tokenize_unicode_words_stay_whole():
    assert tokenize("Café in Zürich") == ["café", "in", "zürich"]
    assert tokenize("東京の夜") == ["東京の夜"]


def test_tokenize_normalises_compatibility_forms():
    # NFKC: full-width letters and ligatures become plain letters, so they meet the same vocabulary entry
    assert tokenize("ＲＥＤ ﬁsh") == ["red", "fish"]
    # composed and decomposed accents give the same token
    assert tokenize("cafe\u0301") == tokenize("caf\u00e9") == ["café"]


def test_tokenize_drops_underscores_and_keeps_digits():
    assert tokenize("two_dogs 3 cats") == ["two", "dogs", "3", "cats"]


def test_default_vocabulary_is_pad_and_unk():
    vocab = Vocabulary()
    assert vocab.words == [PAD, UNK]
    assert (PAD_ID, UNK_ID) == (0, 1)
    assert len(vocab) == 2


def test_vocabulary_must_start_with_pad_and_unk():
    with pytest.raises(ValueError):
        Vocabulary(["red", PAD, UNK])


def test_build_orders_by_frequency_then_alphabetically():
    vocab = Vocabulary.build(["a red circle", "a blue circle", "A red square"])
    # a: 3, circle: 2, red: 2, blue: 1, square: 1
    assert vocab.words == [PAD, UNK, "a", "circle", "red", "blue", "square"]


def test_build_is_independent_of_caption_order():
    captions = ["a red circle", "a blue circle", "the green square", "a red square"]
    assert Vocabulary.build(captions).words == Vocabulary.build(list(reversed(captions))).words


def test_build_min_count_drops_rare_words():
    vocab = Vocabulary.build(["a red circle", "a blue circle", "a red square"], min_count=2)
    assert vocab.words == [PAD, UNK, "a", "circle", "red"]
    assert "blue" not in vocab and "square" not in vocab


def test_build_counts_punctuation_and_lower_cased_words_together():
    vocab = Vocabulary.build(["Red.", "red ."])
    assert vocab.words == [PAD, UNK, ".", "red"]


def test_encode_maps_known_and_unknown_words():
    vocab = Vocabulary.build(["a red circle"])
    ids = {w: i for i, w in enumerate(vocab.words)}
    assert vocab.encode("A RED triangle") == [ids["a"], ids["red"], UNK_ID]


def test_encode_of_nothing_is_one_unknown():
    vocab = Vocabulary.build(["a red circle"])
    assert vocab.encode("") == [UNK_ID]
    assert vocab.encode("?!") == [UNK_ID, UNK_ID]


def test_encode_truncates_long_text():
    vocab = Vocabulary.build(["word"])
    assert len(vocab.encode("word " * (MAX_TOKENS + 10))) == MAX_TOKENS


def test_encode_never_produces_padding():
    vocab = Vocabulary.build(["a red circle"])
    assert PAD_ID not in vocab.encode(f"{PAD} a red circle {UNK}")


def test_unknown_words_ignores_punctuation_and_known_words():
    vocab = Vocabulary.build(["a red circle"])
    assert vocab.unknown_words("A purple circle, beside a Hexagon!") == ["purple", "beside", "hexagon"]
    assert vocab.unknown_words("a red circle.") == []


def test_vocabulary_round_trips_through_json():
    vocab = Vocabulary.build(["a red circle", "a café"])
    again = Vocabulary(json.loads(json.dumps(vocab.to_list())))
    assert again.words == vocab.words
    assert again.encode("a red café") == vocab.encode("a red café")
