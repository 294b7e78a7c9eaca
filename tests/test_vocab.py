"""vocab.py: ids <-> text is exact, and the tokenizer.json we write agrees with our arrays."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from charlstm.data.vocab import Vocab, codepoints, smallest_uint
from charlstm.errors import CharLSTMError

TEXTS = {
    "ascii": "To be, or not to be: that is the question.\n\tWhether 'tis nobler...  ",
    "cjk": "漢字かな交じり文。中文，한국어 텍스트",
    "emoji": "ok 😀👍🏽 👩‍👩‍👧 🇫🇷!",
    "combining": "Cafe\u0301 nai\u0308ve A\u030a \u0915\u094d\u0937 e\u0301\u0323",
    "crlf": "line one\r\nline two\r\n\r\nlast\rlone cr\n",
}
# text that the three normalizations change in different ways
NORMALIZABLE = "Cafe\u0301 ÉCOLE ﬁne Ⅻ ① Å Σίσυφος ΟΔΟΣ x\u00b2 ＡＢＣ\r\n"
OPTIONS = [("none", False), ("nfc", False), ("nfkc", False), ("none", True), ("nfkc", True)]


def vocab_for(text: str, normalize: str = "none", lowercase: bool = False) -> Vocab:
    """The char vocabulary a corpus consisting of ``text`` gets (what tokenize's survey builds)."""
    normalized = Vocab(normalize=normalize, lowercase=lowercase).normalize_text(text)
    return Vocab.from_codepoints(np.unique(codepoints(normalized)), normalize, lowercase)


def written_tokenizer(vocab: Vocab, tmp_path) -> Tokenizer:
    path = tmp_path / "tokenizer.json"
    vocab.save(path)
    return Tokenizer.from_file(str(path))


# -- code points -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "dtype"),
    [
        ("plain ascii", np.uint8),
        ("bmp: é 東", np.uint16),
        ("astral: 😀 𝔸", np.uint32),
        ("", np.uint8),
        ("trailing nuls: é\x00\x00", np.uint16),  # numpy's str dtype must not drop them
        ("😀\x00", np.uint32),
        ("lone surrogate \ud800 é", np.uint16),
    ],
)
def test_codepoints_are_ord_in_the_narrowest_dtype(text, dtype):
    cps = codepoints(text)
    assert cps.dtype == dtype
    assert cps.tolist() == [ord(c) for c in text]


@pytest.mark.parametrize(
    ("n", "dtype"),
    [(1, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16), (65537, np.uint32)],
)
def test_smallest_uint(n, dtype):
    assert smallest_uint(n) == dtype


# -- char level ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TEXTS))
def test_char_encode_decode_identity(name):
    text = TEXTS[name]
    vocab = vocab_for(text)
    ids = vocab.encode(text)
    assert len(ids) == len(text)
    assert vocab.decode(ids) == text
    assert vocab.chars == "".join(sorted(set(text)))


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_char_ids_agree_with_tokenizer_json(name, tmp_path):
    text = TEXTS[name]
    vocab = vocab_for(text)
    tok = written_tokenizer(vocab, tmp_path)
    ids = vocab.encode(text)
    assert tok.get_vocab_size() == vocab.size
    assert tok.encode(text).ids == ids.tolist()
    assert tok.decode(ids.tolist()) == text


def test_char_ids_are_sorted_by_code_point():
    vocab = vocab_for("cab\n")
    assert vocab.chars == "\nabc"
    assert vocab.encode("abc\n").tolist() == [1, 2, 3, 0]


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_char_round_trip_and_tokenizer_agree_on_any_text(text):
    vocab = vocab_for(text)
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text
    tok = Tokenizer.from_str(vocab.to_json())
    assert tok.encode(text).ids == ids.tolist()
    assert tok.decode(ids.tolist()) == text


# -- byte level ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TEXTS))
def test_byte_level_is_utf8_and_agrees_with_tokenizer_json(name, tmp_path):
    text = TEXTS[name]
    vocab = Vocab.bytes()
    ids = vocab.encode(text)
    assert ids.tolist() == list(text.encode("utf-8"))
    assert vocab.decode(ids) == text
    assert (vocab.size, vocab.dtype) == (256, np.uint8)
    tok = written_tokenizer(vocab, tmp_path)
    assert tok.get_vocab_size() == 256
    assert tok.encode(text).ids == ids.tolist()
    assert tok.decode(ids.tolist()) == text


def test_byte_stream_decoder_holds_back_partial_utf8():
    decode = Vocab.bytes().stream_decoder()
    pieces = [decode([b]) for b in "a😀b".encode()]
    assert pieces == ["a", "", "", "", "😀", "b"]


# -- normalization -------------------------------------------------------------------------------
@pytest.mark.parametrize(("normalize", "lowercase"), OPTIONS)
def test_normalization_matches_tokenizer_json(normalize, lowercase, tmp_path):
    vocab = vocab_for(NORMALIZABLE, normalize, lowercase)
    expected = NORMALIZABLE
    if normalize != "none":
        expected = unicodedata.normalize(normalize.upper(), expected)
    if lowercase:
        # tokenizers lowercases char by char: a word-final Σ becomes σ, not ς as in str.lower
        expected = "".join(c.lower() for c in expected)
    assert vocab.normalize_text(NORMALIZABLE) == expected
    ids = vocab.encode(NORMALIZABLE)
    assert vocab.decode(ids) == expected
    tok = written_tokenizer(vocab, tmp_path)
    assert tok.encode(NORMALIZABLE).ids == ids.tolist()
    assert tok.decode(ids.tolist()) == expected
    bytes_vocab = Vocab.bytes(normalize, lowercase)
    byte_ids = bytes_vocab.encode(NORMALIZABLE)
    assert byte_ids.tolist() == list(expected.encode("utf-8"))
    assert written_tokenizer(bytes_vocab, tmp_path).encode(NORMALIZABLE).ids == byte_ids.tolist()


def test_nfc_composes_and_nfkc_folds_compatibility_characters():
    assert Vocab(normalize="nfc").normalize_text("e\u0301ﬁ") == "éﬁ"
    assert Vocab(normalize="nfkc").normalize_text("e\u0301ﬁ") == "éfi"
    assert Vocab(normalize="none").normalize_text("e\u0301ﬁ") == "e\u0301ﬁ"


def test_unknown_normalization_is_a_user_error():
    with pytest.raises(CharLSTMError, match="unknown normalization 'nfd'"):
        Vocab(normalize="nfd").normalize_text("x")


# -- tokenizer.json in and out -------------------------------------------------------------------
@pytest.mark.parametrize("level", ["char", "byte"])
@pytest.mark.parametrize(("normalize", "lowercase"), OPTIONS)
def test_from_json_round_trip(level, normalize, lowercase, tmp_path):
    if level == "byte":
        vocab = Vocab.bytes(normalize, lowercase)
    else:
        vocab = vocab_for(TEXTS["emoji"] + TEXTS["crlf"] + TEXTS["cjk"], normalize, lowercase)
    again = Vocab.from_json(vocab.to_json())
    assert again == vocab
    assert (again.level, again.chars, again.normalize, again.lowercase) == (
        vocab.level,
        vocab.chars,
        vocab.normalize,
        vocab.lowercase,
    )
    vocab.save(tmp_path / "tokenizer.json")
    assert Vocab.load(tmp_path / "tokenizer.json") == vocab


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"model": {}}', '{"model": {"vocab": {"ab": 0}}}'],
)
def test_from_json_rejects_foreign_files(text):
    with pytest.raises(CharLSTMError, match="not a charlstm tokenizer.json"):
        Vocab.from_json(text)


def test_load_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(CharLSTMError, match="cannot read vocabulary"):
        Vocab.load(tmp_path / "missing.json")


# -- mistakes ------------------------------------------------------------------------------------
def test_unknown_characters_are_named():
    vocab = vocab_for("abc")
    with pytest.raises(CharLSTMError) as err:
        vocab.encode("abxcz", what="the prime")
    message = str(err.value)
    assert "the prime has 2 character(s) the vocabulary lacks" in message
    assert "'x' at 2" in message and "'z' at 4" in message
    assert "\n" not in message


def test_unknown_characters_beyond_the_last_code_point_and_many_of_them():
    vocab = vocab_for("abc")
    with pytest.raises(CharLSTMError, match=r"6 character\(s\).*'😀' at 0.*'Ж' at 4 and 1 more"):
        vocab.encode("😀\x00東ΩЖÿ")


@pytest.mark.parametrize("text", ["ab\n", "aé\n", "a東", "😀"])
def test_narrow_text_encodes_against_a_vocabulary_with_wider_code_points(text):
    # ASCII text is uint8 and BMP text uint16: the vocabulary's last code point must not be
    # forced into that dtype (it overflowed with numpy 2: `charlstm sample` crashed on any
    # vocabulary holding an emoji)
    vocab = vocab_for("ab\néx東😀")
    assert vocab.decode(vocab.encode_raw(text)) == text
    assert vocab_for("ab\né").encode_raw("東😀").tolist() == [-1, -1]


def test_unknown_characters_can_be_skipped():
    vocab = vocab_for("abc")
    assert vocab.decode(vocab.encode("a😀b東c", unknown="skip")) == "abc"


def test_invalid_vocabularies_are_rejected():
    with pytest.raises(CharLSTMError, match="unknown level 'word'"):
        Vocab("word")
    with pytest.raises(ValueError, match="sorted"):
        Vocab("char", "ba")
    with pytest.raises(ValueError, match="sorted"):
        Vocab("char", "aab")
