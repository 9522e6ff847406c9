"""Text front end: English normalisation and the symbol table that turns text into ids.

The model reads characters, so everything a reader would say aloud must be spelled out first:
"$3.50" becomes "three dollars, fifty cents", "1984" becomes "nineteen eighty four". That is
`normalize_text`. `TextProcessor` then maps the normalised text to ids from a fixed table.

Pronunciations can be given inline in ARPAbet inside curly braces, "say {HH AH0 L OW1}".
Normalisation leaves such segments alone (apart from collapsing whitespace); the processor
encodes each phone as one symbol and `decode` wraps runs of phones back in braces.

Symbol table. Checkpoints store ids, not characters, so the order below never changes:
    0 "_" pad, 1 "~" end of sentence, 2 "¤" unknown, punctuation, space, "a".."z",
    then the 84 CMUdict ARPAbet phones, sorted, each prefixed with "@" ("@AA", "@AA0", ...).
Pad, end of sentence and unknown are never produced by a character of the text: a "_" or "~"
in the input is an unknown character like any other.

Policies, each raising `TextError` with a message that names the problem:
- empty or whitespace-only text;
- text with no speakable symbol (no letter, no phone) after normalisation, such as "?!" alone:
  the decoder would have nothing to align to, so it is refused rather than synthesised as silence;
- more than `max_length` symbols, counting the end-of-sentence symbol;
- an unknown character (or unknown phone) when `unknown="error"`; with `unknown="map"` it
  becomes the unknown id instead.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from unidecode import unidecode

from ..plugin.errors import ConfigError, TextError

PAD, EOS, UNKNOWN = "_", "~", "¤"
PUNCTUATION = "!'\"(),-.:;?"
_VOWELS = "AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split()
_CONSONANTS = "B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH".split()
ARPABET = sorted(_CONSONANTS + [v + stress for v in _VOWELS for stress in ("", "0", "1", "2")])
SYMBOLS = [PAD, EOS, UNKNOWN, *PUNCTUATION, " ", *string.ascii_lowercase, *("@" + p for p in ARPABET)]

_ARPABET_SEGMENT = re.compile(r"\{[^{}]*\}")

# ---------------------------------------------------------------------------- number words
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (10**3, "thousand"))
_MAX_CARDINAL_DIGITS = 15  # below 10**15 reads as words; longer strings are read digit by digit
_ORDINAL_IRREGULAR = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                      "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}


def _cardinal(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + _cardinal(n % 100))
    scale, name = next((scale, name) for scale, name in _SCALES if n >= scale)
    head, rest = divmod(n, scale)
    return f"{_cardinal(head)} {name}" + ("" if rest == 0 else " " + _cardinal(rest))


def _digits(digits: str) -> str:
    return " ".join(_ONES[int(d)] for d in digits)


def _integer_words(digits: str) -> str:
    # Leading zeros ("007", zip codes) and very long strings are spoken digit by digit.
    if (len(digits) > 1 and digits[0] == "0") or len(digits) > _MAX_CARDINAL_DIGITS:
        return _digits(digits)
    return _cardinal(int(digits))


def _ordinal_words(digits: str) -> str:
    *head, last = _integer_words(digits).split(" ")
    if last in _ORDINAL_IRREGULAR:
        last = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def _year_words(year: int) -> str:
    if 2000 <= year < 2010:
        return _cardinal(year)  # "two thousand five", not "twenty oh five"
    century, rest = divmod(year, 100)
    if rest == 0:
        return _cardinal(century) + " hundred"
    return _cardinal(century) + (" oh " if rest < 10 else " ") + _cardinal(rest)


def _decimal_words(integer: str, fraction: str | None) -> str:
    words = _integer_words(integer.replace(",", ""))
    return words if fraction is None else f"{words} point {_digits(fraction)}"


# ---------------------------------------------------------------------------- normalisation
_INT = r"[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+"  # "1,234,567" or plain digits
_CURRENCY_NAMES = {"$": ("dollar", "dollars", "cent", "cents"),
                   "£": ("pound", "pounds", "penny", "pence"),
                   "€": ("euro", "euros", "cent", "cents")}
_CURRENCY = re.compile(rf"([$£€])\s?({_INT})(?:\.([0-9]+))?")
_LONE_CURRENCY = re.compile(r"[$£€]")
_TIME = re.compile(r"(?<![0-9])([0-9]{1,2}):([0-9]{2})(?![0-9])(?:\s*([ap])\.?m\b)?")
_NUMBER = re.compile(rf"((?<!\w)-)?({_INT})(?:\.([0-9]+))?(%|(?:st|nd|rd|th)\b)?")
_SYMBOL_WORDS = {"&": " and ", "@": " at ", "+": " plus ", "%": " percent "}
_SYMBOL = re.compile("[" + re.escape("".join(_SYMBOL_WORDS)) + "]")
_ABBREVIATIONS = {
    "mr": "mister", "mrs": "misses", "ms": "miz", "dr": "doctor", "st": "saint", "co": "company",
    "jr": "junior", "sr": "senior", "ltd": "limited", "inc": "incorporated", "lt": "lieutenant",
    "capt": "captain", "col": "colonel", "gen": "general", "gov": "governor", "rev": "reverend",
    "sgt": "sergeant", "maj": "major", "mt": "mount", "ft": "fort", "vs": "versus",
    "etc": "et cetera", "e.g": "for example", "i.e": "that is",
}
_ABBREVIATION = re.compile(r"\b(" + "|".join(map(re.escape, _ABBREVIATIONS)) + r")\.")


def _expand_currency(match: re.Match) -> str:
    one, many, one_cent, many_cents = _CURRENCY_NAMES[match[1]]
    whole, fraction = match[2].replace(",", ""), match[3]
    if fraction is not None and len(fraction) != 2:  # "$1.5": not cents, so read the decimal
        return f"{_decimal_words(whole, fraction)} {many}"
    units = f"{_integer_words(whole)} {one if whole.lstrip('0') == '1' else many}"
    cents = int(fraction or 0)
    if cents == 0:
        return units
    cents_words = f"{_cardinal(cents)} {one_cent if cents == 1 else many_cents}"
    return cents_words if int(whole) == 0 else f"{units}, {cents_words}"


def _expand_time(match: re.Match) -> str:
    hour, minute, meridiem = int(match[1]), int(match[2]), match[3]
    if hour > 23 or minute > 59:
        return match[0]  # not a clock time ("99:99"); the number rule reads the parts
    if minute == 0:
        words = _cardinal(hour) + ("" if meridiem else " o'clock")
    else:
        words = _cardinal(hour) + (" oh " if minute < 10 else " ") + _cardinal(minute)
    return words + (f" {meridiem} m" if meridiem else "")


def _expand_number(match: re.Match) -> str:
    sign, integer, fraction, suffix = match[1], match[2], match[3], match[4]
    plain = not sign and fraction is None and "," not in integer
    if plain and suffix and suffix != "%":
        return _ordinal_words(integer)
    if plain and not suffix and len(integer) == 4 and 1100 <= int(integer) <= 2099:
        return _year_words(int(integer))
    words = ("minus " if sign else "") + _decimal_words(integer, fraction)
    if suffix:
        words += " percent" if suffix == "%" else " " + suffix
    return words


def _normalize_plain(text: str) -> str:
    # Currency goes first: unidecode would turn "£" into "PS" and "€" into "EUR".
    text = _CURRENCY.sub(_expand_currency, text)
    text = _LONE_CURRENCY.sub(lambda m: f" {_CURRENCY_NAMES[m[0]][1]} ", text)
    text = unidecode(text).lower()
    text = _ABBREVIATION.sub(lambda m: _ABBREVIATIONS[m[1]], text)
    text = _TIME.sub(_expand_time, text)
    text = _NUMBER.sub(_expand_number, text)
    return _SYMBOL.sub(lambda m: _SYMBOL_WORDS[m[0]], text)


def normalize_text(text: str, arpabet: bool = True) -> str:
    """Spell out `text` as lowercase ASCII words; "{...}" ARPAbet segments pass through.

    With `arpabet=False` braces are not special and their contents are normalised too.
    """
    if not isinstance(text, str):
        raise TextError(f"text must be a str, got {type(text).__name__}")
    if arpabet:
        plain_parts = _ARPABET_SEGMENT.split(text)
        segments = _ARPABET_SEGMENT.findall(text) + [""]
        text = "".join(_normalize_plain(p) + s for p, s in zip(plain_parts, segments))
    else:
        text = _normalize_plain(text)
    return " ".join(text.split())


# ---------------------------------------------------------------------------- symbol table
@dataclass
class TextConfig:
    use_arpabet: bool = True  # parse "{HH AH0}" as phones; if False, braces are unknown characters
    unknown: str = "map"  # "map": unknown id; "error": TextError naming the character
    add_eos: bool = True
    max_length: int = 400  # symbols, end of sentence included

    def __post_init__(self) -> None:
        if self.unknown not in ("map", "error"):
            raise ConfigError(f"TextConfig.unknown must be 'map' or 'error', got {self.unknown!r}")
        if self.max_length < 1:
            raise ConfigError(f"TextConfig.max_length must be >= 1, got {self.max_length}")


class TextProcessor:
    """Encodes text to symbol ids and decodes ids back, under a `TextConfig`."""

    def __init__(self, config: TextConfig | None = None) -> None:
        self.config = config or TextConfig()
        self.symbols = list(SYMBOLS)
        self.n_symbols = len(self.symbols)
        self.pad_id, self.eos_id, self.unknown_id = 0, 1, 2
        self._char_ids = {s: i for i, s in enumerate(self.symbols) if len(s) == 1 and i > 2}
        self._phone_ids = {s[1:]: i for i, s in enumerate(self.symbols) if s.startswith("@")}
        self._speakable = {self._char_ids[c] for c in string.ascii_lowercase}
        self._speakable.update(self._phone_ids.values())

    def encode(self, text: str, normalize: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TextError(f"text must be a str, got {type(text).__name__}")
        if not text.strip():
            raise TextError(f"text is empty: {text!r}")
        if normalize:
            text = normalize_text(text, arpabet=self.config.use_arpabet)
        ids: list[int] = []
        start = 0
        segments = _ARPABET_SEGMENT.finditer(text) if self.config.use_arpabet else ()
        for segment in segments:
            ids += self._encode_chars(text, start, segment.start())
            ids += self._encode_phones(text, segment)
            start = segment.end()
        ids += self._encode_chars(text, start, len(text))
        if not any(i in self._speakable for i in ids):
            raise TextError(f"text has no speakable characters (letters or phones): {text[:60]!r}")
        if self.config.add_eos:
            ids.append(self.eos_id)
        if len(ids) > self.config.max_length:
            raise TextError(f"text encodes to {len(ids)} symbols, over max_length="
                            f"{self.config.max_length}: {text[:60]!r}...")
        return ids

    def _encode_chars(self, text: str, start: int, end: int) -> list[int]:
        ids = []
        for position in range(start, end):
            char = text[position]
            if char in self._char_ids:
                ids.append(self._char_ids[char])
            else:
                ids.append(self._unknown(f"character {char!r} (U+{ord(char):04X})", position, text))
        return ids

    def _encode_phones(self, text: str, segment: re.Match) -> list[int]:
        phones = segment[0][1:-1].split()
        if not phones:
            return [self._unknown("empty ARPAbet segment '{}'", segment.start(), text)]
        ids = []
        for phone in phones:
            if phone.upper() in self._phone_ids:
                ids.append(self._phone_ids[phone.upper()])
            else:
                ids.append(self._unknown(f"ARPAbet phone {phone!r}", segment.start(), text))
        return ids

    def _unknown(self, what: str, position: int, text: str) -> int:
        if self.config.unknown == "error":
            raise TextError(f"unknown {what} at position {position} of {text[:60]!r}")
        return self.unknown_id

    def decode(self, ids: Iterable[int]) -> str:
        """Inverse of `encode` on normalised text: pad and end of sentence are dropped, unknown
        ids come back as "¤", and each run of phones is wrapped in one pair of braces."""
        pieces: list[str] = []
        phones: list[str] = []
        for raw in ids:
            i = int(raw)
            if not 0 <= i < self.n_symbols:
                raise TextError(f"symbol id {i} is out of range [0, {self.n_symbols})")
            if i in (self.pad_id, self.eos_id):
                continue
            symbol = self.symbols[i]
            if symbol.startswith("@"):
                phones.append(symbol[1:])
                continue
            if phones:
                pieces.append("{" + " ".join(phones) + "}")
                phones = []
            pieces.append(symbol)
        if phones:
            pieces.append("{" + " ".join(phones) + "}")
        return "".join(pieces)

    def __call__(self, text: str) -> torch.Tensor:
        return torch.tensor(self.encode(text), dtype=torch.long)  # (L,)
