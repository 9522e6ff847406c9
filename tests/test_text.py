"""Tests for the text front end: normalisation, the symbol table, and its error policies."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prosody_vae.plugin.errors import ConfigError, TextError
from prosody_vae.data.text import ARPABET, PUNCTUATION, TextConfig, TextProcessor, normalize_text


# ---------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("raw, expected", [
    # numbers, decimals, negatives, grouping, leading zeros, large scales
    ("I have 3 cats", "i have three cats"),
    ("0", "zero"),
    ("13 and 40 and 99", "thirteen and forty and ninety nine"),
    ("-7 degrees", "minus seven degrees"),
    ("3.14", "three point one four"),
    ("1,234,567", "one million two hundred thirty four thousand five hundred sixty seven"),
    ("in 1,984 cases", "in one thousand nine hundred eighty four cases"),
    ("1000000000000", "one trillion"),
    ("007", "zero zero seven"),
    ("covid-19", "covid-nineteen"),
    # ordinals
    ("1st", "first"), ("22nd", "twenty second"), ("103rd", "one hundred third"),
    ("12th", "twelfth"), ("40th", "fortieth"), ("5th", "fifth"),
    # currency
    ("$3.50", "three dollars, fifty cents"), ("$1", "one dollar"), ("$0.05", "five cents"),
    ("$1.5", "one point five dollars"), ("$1,000,000", "one million dollars"),
    ("£2", "two pounds"), ("£1.01", "one pound, one penny"), ("€20", "twenty euros"),
    # years
    ("1984", "nineteen eighty four"), ("2005", "two thousand five"), ("1900", "nineteen hundred"),
    ("1905", "nineteen oh five"), ("2023", "twenty twenty three"),
    # times
    ("3:45 pm", "three forty five p m"), ("3:45PM", "three forty five p m"),
    ("10:00", "ten o'clock"), ("7:05 a.m.", "seven oh five a m."), ("99:99", "ninety nine:ninety nine"),
    # percentages and symbols
    ("50%", "fifty percent"), ("2.5%", "two point five percent"), ("salt & pepper", "salt and pepper"),
    # abbreviations
    ("Mr. Smith", "mister smith"), ("Mrs. Smith", "misses smith"), ("Dr. Jekyll", "doctor jekyll"),
    ("St. Paul", "saint paul"), ("Acme Co.", "acme company"), ("Sam Jr.", "sam junior"),
    ("cats, dogs, etc.", "cats, dogs, et cetera"),
    # unidecode, case and whitespace
    ("Café  naïve\n\tX", "cafe naive x"), ("“Quoted” — dash", '"quoted" -- dash'),
    # ARPAbet passes through (numbers around it are still expanded)
    ("say {HH AH0 L OW1} 2 times", "say {HH AH0 L OW1} two times"),
])
def test_normalize_examples(raw, expected):
    assert normalize_text(raw) == expected


_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven "
                                     "twelve thirteen fourteen fifteen sixteen seventeen eighteen "
                                     "nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}


def _words_to_int(words: str) -> int:
    """An independent reader of English cardinals, as the oracle for number spelling."""
    total = group = 0
    for word in words.split():
        if word in _UNITS:
            group += _UNITS[word]
        elif word in _TENS:
            group += _TENS[word]
        elif word == "hundred":
            group *= 100
        else:
            total += group * _SCALES[word]
            group = 0
    return total + group


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10**15 - 1))
def test_cardinal_reads_back_to_the_same_number(n):
    # Comma grouping keeps 4-digit numbers out of the year rule.
    assert _words_to_int(normalize_text(f"{n:,}")) == n


def test_normalize_rejects_non_text():
    with pytest.raises(TextError, match="must be a str"):
        normalize_text(b"bytes")


def test_normalize_is_idempotent_on_its_examples():
    text = normalize_text("Dr. Who paid $3.50 on the 22nd of May, 1984 at 3:45 pm {HH AH0}.")
    assert normalize_text(text) == text


# ---------------------------------------------------------------------------- symbol table
def test_symbol_table_ids_are_pinned():
    # Checkpoints store ids: these must never move.
    tp = TextProcessor()
    assert (tp.pad_id, tp.eos_id, tp.unknown_id) == (0, 1, 2)
    assert tp.symbols[:3] == ["_", "~", "¤"]
    assert tp.symbols.index("a") == 15 and tp.symbols.index("z") == 40
    assert tp.symbols.index("@AA") == 41 and tp.symbols[-1] == "@ZH"
    assert tp.n_symbols == len(tp.symbols) == 125
    assert len(set(tp.symbols)) == tp.n_symbols


def test_encoding_is_deterministic():
    text = "The 2nd time, Mr. Smith said {HH AH0 L OW1}!"
    tp = TextProcessor()
    first = tp.encode(text)
    assert tp.encode(text) == first
    assert TextProcessor().encode(text) == first


@pytest.mark.parametrize("text", [
    "hello world.", "a", "it's (quite) \"fine\": yes; no? ok!", "well-known",
    "{HH AH0 L OW1}", "say {HH AH0 L OW1} twice", "{K AE1 T} and {D AO1 G}, end.",
])
def test_round_trip_examples(text):
    tp = TextProcessor()
    ids = tp.encode(text, normalize=False)
    assert ids[-1] == tp.eos_id
    assert tp.decode(ids) == text


_plain = st.text(alphabet=PUNCTUATION + " " + "abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=20)
_phones = st.lists(st.sampled_from(ARPABET), min_size=1, max_size=5).map(lambda p: "{" + " ".join(p) + "}")
_canonical = st.lists(st.tuples(_plain, st.one_of(st.just(""), _phones)), min_size=1, max_size=6).map(
    lambda pairs: "".join(p + g for p, g in pairs)
).filter(lambda t: "{" in t or any(c.isalpha() for c in t))


@settings(max_examples=200, deadline=None)
@given(_canonical)
def test_round_trip_property(text):
    tp = TextProcessor(TextConfig(unknown="error"))
    assert tp.decode(tp.encode(text, normalize=False)) == text


def test_decode_drops_padding_and_rejects_bad_ids():
    tp = TextProcessor()
    ids = tp.encode("hi {HH AY1}")
    assert tp.decode([tp.pad_id, *ids, tp.pad_id, tp.pad_id]) == "hi {HH AY1}"
    assert tp.decode(torch.tensor(ids)) == "hi {HH AY1}"
    with pytest.raises(TextError, match="125"):
        tp.decode([3, tp.n_symbols])


@pytest.mark.parametrize("add_eos", [True, False])
def test_eos_is_optional(add_eos):
    ids = TextProcessor(TextConfig(add_eos=add_eos)).encode("ab", normalize=False)
    assert len(ids) == 2 + add_eos
    assert (ids[-1] == 1) == add_eos


def test_call_returns_long_tensor():
    tp = TextProcessor()
    out = tp("hello")
    assert out.dtype == torch.long and out.shape == (6,)
    assert out.tolist() == tp.encode("hello")


# ---------------------------------------------------------------------------- ARPAbet
def test_arpabet_encodes_one_id_per_phone():
    tp = TextProcessor()
    ids = tp.encode("{HH AH0 l ow1}", normalize=False)
    assert ids == [tp.symbols.index(s) for s in ("@HH", "@AH0", "@L", "@OW1")] + [tp.eos_id]
    assert tp.decode(ids) == "{HH AH0 L OW1}"  # lowercase phones are accepted, decoded canonically


@pytest.mark.parametrize("text, what", [("{HH XX1}", "'XX1'"), ("a {}", "empty ARPAbet")])
def test_bad_arpabet_follows_unknown_policy(text, what):
    mapped = TextProcessor().encode(text, normalize=False)
    assert TextProcessor().unknown_id in mapped
    with pytest.raises(TextError, match=what):
        TextProcessor(TextConfig(unknown="error")).encode(text, normalize=False)


def test_arpabet_disabled_treats_braces_as_text():
    tp = TextProcessor(TextConfig(use_arpabet=False, unknown="error"))
    with pytest.raises(TextError, match=r"'\{' \(U\+007B\) at position 4"):
        tp.encode("say {HH}", normalize=False)
    ids = TextProcessor(TextConfig(use_arpabet=False)).encode("say {HH AH0}")
    assert not any(tp.symbols[i].startswith("@") for i in ids)


# ---------------------------------------------------------------------------- error policies
def test_unknown_character_map_vs_error():
    tp = TextProcessor()
    ids = tp.encode("ab#c", normalize=False)
    assert ids[2] == tp.unknown_id and tp.unknown_id not in ids[:2] + ids[3:]
    with pytest.raises(TextError, match=r"'#' \(U\+0023\) at position 2"):
        TextProcessor(TextConfig(unknown="error")).encode("ab#c", normalize=False)


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("   \n\t", "empty"), ("☃", "no speakable"),
    ("?!...", "no speakable"), ("-- ; --", "no speakable"), (None, "must be a str"),
])
def test_bad_text_raises_clear_error(text, message):
    with pytest.raises(TextError, match=message):
        TextProcessor().encode(text)


def test_too_long_text_names_both_lengths():
    tp = TextProcessor(TextConfig(max_length=10))
    assert len(tp.encode("a" * 9, normalize=False)) == 10
    with pytest.raises(TextError, match=r"11 symbols, over max_length=10"):
        tp.encode("a" * 10, normalize=False)


@pytest.mark.parametrize("kwargs", [{"unknown": "ignore"}, {"max_length": 0}])
def test_bad_config_is_rejected(kwargs):
    with pytest.raises(ConfigError):
        TextConfig(**kwargs)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.sampled_from(["map", "error"]), st.booleans())
def test_fuzz_only_text_error_escapes(text, unknown, normalize):
    tp = TextProcessor(TextConfig(unknown=unknown))
    try:
        ids = tp.encode(text, normalize=normalize)
    except TextError:
        return
    assert ids and ids[-1] == tp.eos_id and len(ids) <= tp.config.max_length
    assert all(0 <= i < tp.n_symbols for i in ids)
    assert unknown == "map" or tp.unknown_id not in ids
    tp.decode(ids)
