"""Deterministic English sentences for the built-in corpus, from word lists and templates.

`make_sentence(seed, index)` draws a sentence kind (statement, question, exclamation, list,
clause, ...) and fills a template with words from the lists below, from a `random.Random`
seeded by (seed, index) alone: 1-15 words, varied syntax and punctuation, no digits, so the
raw text is already normalised. One kind in eight is a short phrase of one to three words
("Thank you.", "Really?", "Three lemons."): people synthesise those all the time, and a model
that never heard one tends to stop before it has spoken it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

_NAMES = ("Anna", "Tom", "Maria", "David", "Lucy", "Peter", "Grace", "Oliver", "Sofia", "James",
          "Emma", "Henry", "Nora", "Samuel")
_DETERMINERS = ("the", "my", "our", "their", "this", "that", "his", "her", "your")
_TRAITS = ("old", "young", "tall", "quiet", "careful", "tired", "clever", "friendly", "gentle",
           "cheerful", "nervous")
_ADJECTIVES = ("old", "small", "bright", "heavy", "golden", "wooden", "empty", "strange", "little",
               "broken", "yellow", "enormous")
_PEOPLE = ("farmer", "teacher", "sailor", "doctor", "baker", "painter", "driver", "neighbor",
           "student", "singer", "captain", "gardener")
_THINGS = ("basket", "letter", "boat", "lamp", "window", "bicycle", "book", "kettle", "ladder",
           "map", "bottle", "blanket", "guitar", "table", "clock")  # plural: add "s"
_GOODS = ("apples", "bread", "cheese", "milk", "onions", "rice", "butter", "honey", "carrots",
          "lemons", "coffee", "tea", "eggs", "flour", "soap", "candles")
_NUMBERS = ("two", "three", "four", "five", "seven", "ten")
_TRANSITIVE = (("carry", "carried"), ("paint", "painted"), ("find", "found"), ("open", "opened"),
               ("sell", "sold"), ("build", "built"), ("clean", "cleaned"), ("watch", "watched"),
               ("bring", "brought"), ("fix", "fixed"), ("move", "moved"), ("hide", "hid"),
               ("borrow", "borrowed"), ("draw", "drew"), ("lose", "lost"), ("wash", "washed"))
_INTRANSITIVE = (("arrive", "arrived"), ("wait", "waited"), ("sleep", "slept"),
                 ("laugh", "laughed"), ("sing", "sang"), ("leave", "left"), ("rest", "rested"),
                 ("work", "worked"), ("smile", "smiled"), ("run", "ran"))
_PLACES = ("in the garden", "near the station", "behind the barn", "across the river",
           "at the market", "under the bridge", "by the lake", "on the hill", "in the kitchen",
           "at the harbor", "inside the museum", "along the road")
_TIMES = ("today", "yesterday", "this morning", "last night", "on Sunday", "after dinner",
          "at noon", "every evening", "before sunrise", "last winter")
_ADVERBS = ("slowly", "quietly", "carefully", "quickly", "happily", "suddenly", "calmly")
_OPENERS = ("After the storm", "Before breakfast", "Later that evening", "In the morning",
            "Without a word", "Luckily", "Of course", "Meanwhile", "As usual", "Once again")
_LIST_VERBS = ("bought", "packed", "forgot", "wanted", "carried", "ordered")
_INTERJECTIONS = ("yes", "no", "hello", "thanks", "really", "okay", "wait", "listen", "sorry", "goodbye",
                  "look", "welcome")
_GREETINGS = ("good morning", "good night", "thank you", "see you", "well done", "not today", "come here",
              "of course")
MIN_WORDS, MAX_WORDS = 1, 15


def _words(*parts: str) -> str:
    return " ".join(" ".join(parts).split())


def _maybe(rng: random.Random, words: tuple[str, ...]) -> str:
    return rng.choice(words) if rng.random() < 0.5 else ""


def _person(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return rng.choice(_NAMES)
    return _words(rng.choice(_DETERMINERS), _maybe(rng, _TRAITS), rng.choice(_PEOPLE))


def _with_article(described: str) -> str:
    return ("an " if described[0] in "aeiou" else "a ") + described


def _thing(rng: random.Random) -> str:
    described = _words(_maybe(rng, _ADJECTIVES), rng.choice(_THINGS))
    choice = rng.random()
    if choice < 0.3:
        return f"{rng.choice(_NUMBERS)} {described}s"
    if choice < 0.6:
        return _with_article(described)
    return f"{rng.choice(_DETERMINERS)} {described}"


def _goods(rng: random.Random, conjunction: str) -> str:
    items = rng.sample(_GOODS, rng.randint(3, 4))
    return ", ".join(items[:-1]) + f" {conjunction} {items[-1]}"


def _base(rng: random.Random, verbs=_TRANSITIVE) -> str:
    return rng.choice(verbs)[0]


def _past(rng: random.Random, verbs=_TRANSITIVE) -> str:
    return rng.choice(verbs)[1]


# kind -> its templates, each a function of the generator; the kind names factors.csv's column
_TEMPLATES: dict[str, tuple[Callable[[random.Random], str], ...]] = {
    "statement": (
        lambda r: _words(_person(r), _past(r), _thing(r), _maybe(r, _PLACES), _maybe(r, _TIMES)) + ".",
        lambda r: _words(_person(r), _past(r, _INTRANSITIVE), r.choice(_ADVERBS), _maybe(r, _PLACES)) + ".",
        lambda r: _words(_person(r), _past(r), _thing(r), r.choice(_PLACES) + ", and", _person(r),
                         _past(r, _INTRANSITIVE), _maybe(r, _TIMES)) + ".",
    ),
    "yes_no_question": (
        lambda r: _words("did", _person(r), _base(r), _thing(r), _maybe(r, _PLACES)) + "?",
        lambda r: _words("will", _person(r), _base(r, _INTRANSITIVE), _maybe(r, _PLACES),
                         _maybe(r, _TIMES)) + "?",
        lambda r: _words("is", _person(r), "really", r.choice(_TRAITS)) + "?",
    ),
    "wh_question": (
        lambda r: _words(r.choice(("where", "why", "when")), "did", _person(r), _base(r), _thing(r)) + "?",
        lambda r: _words("who", _past(r), _thing(r), _maybe(r, _TIMES)) + "?",
        lambda r: _words("what did", _person(r), _base(r), r.choice(_PLACES)) + "?",
    ),
    "exclamation": (
        lambda r: "what " + _with_article(f"{r.choice(_ADJECTIVES)} {r.choice(_THINGS)}") + "!",
        lambda r: _words(_person(r), _past(r), _thing(r), "again") + "!",
        lambda r: _words(r.choice(_NAMES) + ", look at", _thing(r)) + "!",
    ),
    "clause": (
        lambda r: _words(r.choice(_OPENERS) + ",", _person(r), _past(r), _thing(r), _maybe(r, _PLACES)) + ".",
        lambda r: _words(_person(r), _past(r, _INTRANSITIVE), r.choice(_ADVERBS) + ", but", _person(r),
                         _past(r, _INTRANSITIVE), _maybe(r, _PLACES)) + ".",
        lambda r: _words("when", _person(r), _past(r, _INTRANSITIVE), _maybe(r, _PLACES)) + ", "
        + _words(_person(r), _past(r), _thing(r)) + ".",
    ),
    "list": (
        lambda r: _words(_person(r), r.choice(_LIST_VERBS), _goods(r, "and"), _maybe(r, _TIMES)) + ".",
        lambda r: _words("we still need", _goods(r, "and"), "for the",
                         r.choice(("party", "picnic", "journey", "weekend"))) + ".",
        lambda r: _words("did you buy", _goods(r, "or")) + "?",
    ),
    "short": (
        lambda r: r.choice(_INTERJECTIONS) + r.choice((".", "!", "?")),
        lambda r: r.choice(_GREETINGS) + r.choice((".", "!")),
        lambda r: r.choice(_NAMES) + r.choice(("!", "?", ".")),
        lambda r: _words(r.choice(_GREETINGS) + ",", r.choice(_NAMES)) + r.choice((".", "!")),
        lambda r: _words(r.choice(_NUMBERS), r.choice(("apples", "onions", "carrots", "lemons", "eggs"))) + ".",
        lambda r: _words("the", r.choice(_ADJECTIVES), r.choice(_THINGS)) + "?",
    ),
    "imperative": (
        lambda r: _words("please", _base(r), _thing(r), _maybe(r, _PLACES)) + ".",
        lambda r: _words(_base(r), _thing(r), r.choice(_ADVERBS) + ",", r.choice(_NAMES)) + ".",
        lambda r: _words("don't", _base(r), _thing(r), _maybe(r, _TIMES)) + "!",
    ),
}
SENTENCE_KINDS = tuple(_TEMPLATES)


@dataclass(frozen=True)
class Sentence:
    text: str
    kind: str  # one of SENTENCE_KINDS

    @property
    def n_words(self) -> int:
        return len(self.text.split())


def make_sentence(seed: int, index: int) -> Sentence:
    """Sentence `index` of the corpus with this seed: the same pair always gives the same text."""
    rng = random.Random(f"prosody-corpus-text:{seed}:{index}")
    while True:  # redraw the rare sentence outside the word range; deterministic all the same
        kind = rng.choice(SENTENCE_KINDS)
        text = rng.choice(_TEMPLATES[kind])(rng)
        sentence = Sentence(text[0].upper() + text[1:], kind)
        if MIN_WORDS <= sentence.n_words <= MAX_WORDS:
            return sentence
