"""Tests for the built-in espeak-ng prosody corpus: sentences, factors, synthesis, layout, and
whether the requested prosody actually reaches the waveform."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from prosody_vae.data.corpus import (DEFAULT_VOICES, FACTOR_COLUMNS, SAMPLE_RATE, CorpusConfig, EspeakSynth,
                                Factors, make_corpus, synthesize)
from prosody_vae.data.sentences import MAX_WORDS, MIN_WORDS, SENTENCE_KINDS, make_sentence
from prosody_vae.data.ljspeech import read_metadata
from prosody_vae.plugin.errors import ConfigError, CorpusError


def read_factors(root: Path) -> list[dict[str, str]]:
    with (root / "factors.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus72(tmp_path_factory) -> tuple[Path, object]:
    """The default corpus, seed 0, first 72 utterances, measured with 2 workers."""
    out = tmp_path_factory.mktemp("corpus72")
    return out, make_corpus(out, CorpusConfig(n=72, seed=0, workers=2))


# ---------------------------------------------------------------------------- sentences and factors
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_sentences_are_deterministic_varied_and_within_the_word_range(seed):
    sentences = [make_sentence(seed, i) for i in range(400)]
    assert sentences == [make_sentence(seed, i) for i in range(400)]
    assert all(MIN_WORDS <= s.n_words <= MAX_WORDS for s in sentences)
    assert {s.n_words for s in sentences} >= {MIN_WORDS, MAX_WORDS - 2}  # the range is used
    assert set(Counter(s.kind for s in sentences)) == set(SENTENCE_KINDS)
    long = [s.text for s in sentences if s.kind != "short"]
    assert len(set(long)) > 0.97 * len(long)  # short phrases repeat by nature; the rest hardly ever
    for s in sentences:
        assert s.text[0].isupper() and "|" not in s.text and not any(c.isdigit() for c in s.text)
        if s.kind in ("yes_no_question", "wh_question"):
            assert s.text.endswith("?")
        elif s.kind == "exclamation":
            assert s.text.endswith("!")
        elif s.kind in ("clause", "list"):
            assert "," in s.text
        elif s.kind == "short":
            assert s.n_words <= 3 and s.text[-1] in ".!?"
        else:
            assert s.text[-1] in ".!"
    assert [s.text for s in sentences[:20]] != [make_sentence(seed + 1, i).text for i in range(20)]


def test_factors_are_deterministic_and_span_the_configured_ranges():
    config = CorpusConfig(seed=4, rate=(100, 300), pitch=(10, 90), pitch_range=(5, 95), volume=(50, 150),
                          voices=("en-us", "en+f3", "en-us+m1"))
    factors = [config.sample_factors(i) for i in range(600)]
    assert factors == [config.sample_factors(i) for i in range(600)]
    assert {f.voice for f in factors} == set(config.voices)
    for name in ("rate", "pitch", "pitch_range", "volume"):
        low, high = getattr(config, name)
        values = np.array([getattr(f, name) for f in factors])
        assert values.min() >= low and values.max() <= high
        assert values.max() - values.min() >= 0.9 * (high - low)  # wide, not clustered


@pytest.mark.parametrize("field, value", [
    ("n", 0), ("workers", 0), ("voices", ()), ("rate", (300, 200)), ("rate", (50, 200)),
    ("pitch", (0, 101)), ("pitch_range", (-1, 50)), ("volume", (60, 201)), ("pitch", (20.5, 80)),
])
def test_config_rejects_out_of_range_fields(field, value):
    with pytest.raises(ConfigError, match=field):
        CorpusConfig(**{field: value})


# ---------------------------------------------------------------------------- espeak-ng
def test_synthesize_gives_audible_speech_whose_length_follows_the_rate():
    text = "The old farmer carried seven baskets to the market."
    slow = synthesize(text, Factors("en-us", 120, 50, 50, 100))
    fast = synthesize(text, Factors("en-us", 240, 50, 50, 100))
    for wav in (slow, fast):
        assert wav.dtype == np.float32 and wav.ndim == 1
        assert 0.05 < np.abs(wav).max() <= 1.0
    assert 1.6 < len(slow) / len(fast) < 2.4  # duration ~ 1 / words per minute
    assert 1.0 < len(slow) / SAMPLE_RATE < 6.0


def test_fresh_synths_repeat_each_other_exactly():
    text, factors = "Did you buy apples, bread or honey?", Factors("en-us+f3", 190, 60, 70, 110)
    first, second = EspeakSynth(), EspeakSynth()
    runs = [[synth.synthesize_pcm(text, factors) for _ in range(3)] for synth in (first, second)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("voice", ["en-us+nosuchvariant", "xx-nowhere", "en-gb+f3"])
def test_unknown_voices_are_refused(voice):
    with pytest.raises(CorpusError, match="voice"):
        EspeakSynth.shared().validate_voice(voice)


def test_every_default_voice_exists():
    synth = EspeakSynth.shared()
    for voice in DEFAULT_VOICES:
        synth.validate_voice(voice)


# ---------------------------------------------------------------------------- the corpus folder
def test_same_seed_gives_byte_identical_folders_and_another_seed_does_not(tmp_path):
    config = CorpusConfig(n=12, seed=5, measure=False)
    make_corpus(tmp_path / "a", config)
    make_corpus(tmp_path / "b", config)
    make_corpus(tmp_path / "c", CorpusConfig(n=12, seed=6, measure=False))
    a, b, c = (tree_bytes(tmp_path / name) for name in "abc")
    assert len(a) == 12 + 2 and a == b
    assert a["metadata.csv"] != c["metadata.csv"]


@pytest.mark.slow
def test_a_corpus_is_a_prefix_of_a_larger_one_whatever_the_workers(corpus72, tmp_path):
    """n=12 with 1 worker, after the process's own espeak has spoken, equals the first 12 of n=72."""
    big, _ = corpus72
    synthesize("Something else first, to move the shared espeak state on.")
    small = tmp_path / "small"
    make_corpus(small, CorpusConfig(n=12, seed=0, workers=1))
    wavs = sorted(p.name for p in (small / "wavs").iterdir())
    assert wavs == [f"utt{i:05d}.wav" for i in range(12)]
    for name in wavs:
        assert (small / "wavs" / name).read_bytes() == (big / "wavs" / name).read_bytes(), name
    for name, lines in (("metadata.csv", 12), ("factors.csv", 1 + 12)):  # factors has a header
        assert (small / name).read_text().splitlines() == (big / name).read_text().splitlines()[:lines]


@pytest.mark.slow
def test_the_folder_is_ljspeech_with_consistent_factors(corpus72):
    root, summary = corpus72
    utterances = read_metadata(root)
    rows = read_factors(root)
    assert [u.id for u in utterances] == [r["id"] for r in rows] and len(rows) == 72
    assert list(rows[0]) == list(FACTOR_COLUMNS)
    assert sorted(p.name for p in (root / "wavs").iterdir()) == sorted(f"{u.id}.wav" for u in utterances)
    for utterance, row in zip(utterances, rows):
        info = sf.info(str(utterance.wav_path))
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
        assert float(row["duration_s"]) == pytest.approx(info.frames / SAMPLE_RATE, abs=1e-4)
        assert utterance.raw_text == utterance.text and int(row["n_words"]) == len(utterance.text.split())
        assert row["voice"] in DEFAULT_VOICES and row["sentence_type"] in SENTENCE_KINDS
        assert 55 <= float(row["f0_mean_hz"]) <= 500 and 0 < float(row["rms"]) < 1
    assert summary.n == 72
    assert summary.total_seconds == pytest.approx(sum(float(r["duration_s"]) for r in rows), rel=1e-6)
    assert summary.stats["pitch"][0] == min(int(r["pitch"]) for r in rows)
    text = summary.format()
    assert all(name in text for name in ("rate", "pitch_range", "f0_mean_hz", "rms", "72 utterances"))


def _partial_r(x: np.ndarray, y: np.ndarray, controls: np.ndarray) -> float:
    """Pearson r of x and y after removing from both what a linear model of `controls` explains."""
    residual = lambda v: v - controls @ np.linalg.lstsq(controls, v, rcond=None)[0]
    return float(np.corrcoef(residual(x), residual(y))[0, 1])


@pytest.mark.slow
def test_requested_prosody_reaches_the_waveform(corpus72):
    """Physically matched pairings, over the 72 default utterances (12 voices):

    - pitch: espeak scales the voice's own F0 by a factor exponential in the pitch setting, and
      the pitch range lifts the contour above that base. So log F0 is linear in pitch once the
      voice and the range are held fixed: a partial correlation controlling for both. (Raw
      Hz against pitch is about 0.45: the f-voices sit an octave above the m-voices.)
    - rate: words per minute set the time per unit of speech, so seconds per letter (length-free)
      against minutes per word, over utterances of four words or more (in a one-to-three-word
      phrase the pauses and final lengthening, which do not scale with letters, dominate).
    - volume: amplitude scales with volume; RMS over voiced frames, within voice, in logs.
    """
    root, _ = corpus72
    rows = read_factors(root)
    texts = {u.id: u.text for u in read_metadata(root)}
    column = lambda name: np.array([float(r[name]) for r in rows])
    voices = np.array([r["voice"] for r in rows])
    voice_dummies = np.stack([(voices == v).astype(float) for v in sorted(set(voices))], axis=1)
    letters = np.array([sum(c.isalpha() for c in texts[r["id"]]) for r in rows])

    pitch_r = _partial_r(column("pitch"), np.log(column("f0_mean_hz")),
                         np.column_stack([voice_dummies, column("pitch_range")]))
    long = column("n_words") >= 4
    rate_r = float(np.corrcoef((column("duration_s") / letters)[long], (1.0 / column("rate"))[long])[0, 1])
    volume_r = _partial_r(np.log(column("volume")), np.log(column("rms")), voice_dummies)
    assert pitch_r > 0.8, pitch_r
    assert rate_r > 0.8, rate_r
    assert volume_r > 0.8, volume_r


def test_out_dir_policy(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(CorpusError, match="not empty"):
        make_corpus(foreign, CorpusConfig(n=3, measure=False))
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    previous = tmp_path / "previous"
    make_corpus(previous, CorpusConfig(n=6, seed=1, measure=False))
    make_corpus(previous, CorpusConfig(n=3, seed=2, measure=False))  # a corpus may be remade in place
    assert sorted(p.name for p in (previous / "wavs").iterdir()) == [f"utt{i:05d}.wav" for i in range(3)]
    assert [u.id for u in read_metadata(previous)] == [f"utt{i:05d}" for i in range(3)]
    assert all(r["f0_mean_hz"] == "" for r in read_factors(previous))  # not measured, not faked
    assert not list(previous.glob(".*.tmp"))


def test_the_wide_set_holds_the_demo_voices_and_none_of_the_held_out_ones():
    from prosody_vae.data.corpus import HELD_OUT_VOICES, VOICE_SETS, WIDE_VOICES
    from prosody_vae.training.config import load_config, recipe_config

    variant = lambda voice: voice.partition("+")[2]
    assert set(DEFAULT_VOICES) < set(WIDE_VOICES) and len(set(WIDE_VOICES)) == len(WIDE_VOICES) == 38
    # held out by variant: no set trains on any voice of the same formant variant
    assert not {variant(v) for v in HELD_OUT_VOICES} & {variant(v) for s in VOICE_SETS.values() for v in s}
    assert load_config(recipe_config("wide")).model.n_speakers == len(WIDE_VOICES)
    assert load_config(recipe_config("demo")).model.n_speakers == len(DEFAULT_VOICES)


@pytest.mark.parametrize("voice", ["en-gb-x-gbclan+linda", "en-us+klatt6", "en-029+Alicia"])
def test_wide_and_held_out_voices_speak_voiced_audio(voice):
    from prosody_vae.evaluation.metrics import prosody_summary

    summary = prosody_summary(synthesize("We bought apples at the market.", Factors(voice, 175, 50, 50, 100)))
    assert summary.voiced_fraction > 0.3 and 70 < summary.f0_mean_hz < 300


def test_a_demo_whose_recipe_has_too_few_speakers_for_its_voices_stops_before_the_corpus(tmp_path):
    from prosody_vae.demo import run_demo
    from prosody_vae.training.config import recipe_config

    with pytest.raises(ConfigError, match="n_speakers is 12, the 'wide' voice set has 38 voices") as refused:
        run_demo(tmp_path / "demo", voices="wide", config_path=recipe_config("demo"))
    assert refused.value.field == "voices" and not (tmp_path / "demo").exists()


def test_make_corpus_voice_gives_a_single_speaker_corpus_and_refuses_an_unknown_one(tmp_path, capsys):
    from prosody_vae.cli import main

    assert main(["make-corpus", "--out", str(tmp_path / "one"), "--n", "4", "--voice", "en-us+f3"]) == 0
    rows = read_factors(tmp_path / "one")
    assert len(rows) == 4 and {row["voice"] for row in rows} == {"en-us+f3"}
    assert {item.speaker for item in read_metadata(tmp_path / "one")} == {"en-us+f3"}
    capsys.readouterr()
    assert main(["make-corpus", "--out", str(tmp_path / "bad"), "--n", "2", "--voice", "en-us+nosuchvariant"]) == 2
    assert "voice 'en-us+nosuchvariant'" in capsys.readouterr().err
