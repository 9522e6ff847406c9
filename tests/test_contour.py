"""Contour metrics (evaluation/contour.py) on signals whose melody, timing and pauses are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prosody_vae.evaluation.contour import (centred_correlation, dtw_f0_correlation, mean_interval, pause_placement,
                                            pauses)

SR = 22050


def utterance(contour, seconds: float, pause_at: float | None = None, pause_s: float = 0.3,
              register: float = 140.0) -> np.ndarray:
    """A harmonic 'vowel' of `seconds` whose F0 is register * 2**(contour(u) / 12), u in [0, 1] the
    position in the speech, with a silent pause of `pause_s` inserted at position `pause_at`."""
    n = int(seconds * SR)
    u = np.arange(n) / n
    f0 = register * 2 ** (contour(u) / 12)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    # a formant sweeping up through the utterance, the same in Hz at any register, gives the
    # spectral alignment something to follow, as vowels and consonants do in speech
    formant = 500 + 2000 * u
    wav = sum((0.3 / k + np.exp(-0.5 * ((k * f0 - formant) / 250) ** 2)) * np.sin(k * phase) * (k * f0 < SR / 2)
              for k in range(1, 40))
    wav *= np.minimum(1.0, np.minimum(u * n, (1 - u) * n) / (0.03 * SR))
    if pause_at is not None:
        cut = int(pause_at * n)
        wav = np.concatenate([wav[:cut], np.zeros(int(pause_s * SR)), wav[cut:]])
    return np.concatenate([np.zeros(int(0.2 * SR)), wav, np.zeros(int(0.2 * SR))]).astype(np.float32)


RISE_FALL = lambda u: 6 * np.sin(np.pi * u)  # semitones: up a fourth and back
FALL_RISE = lambda u: -6 * np.sin(np.pi * u)


def test_the_same_melody_at_another_tempo_and_register_correlates_and_its_mirror_does_not():
    reference = utterance(RISE_FALL, 1.2)
    slower_lower = utterance(RISE_FALL, 1.8, register=100.0)
    assert dtw_f0_correlation(reference, slower_lower, SR) > 0.9
    assert dtw_f0_correlation(reference, utterance(FALL_RISE, 1.8, register=100.0), SR) < -0.5


def test_too_little_voicing_is_nan_not_a_number():
    silence = np.zeros(SR, dtype=np.float32)
    silence[::500] = 1e-3
    assert math.isnan(dtw_f0_correlation(utterance(RISE_FALL, 1.0), silence, SR))


def test_pauses_are_gaps_between_speech_and_short_gaps_are_not():
    found = pauses(utterance(RISE_FALL, 1.0, pause_at=0.5, pause_s=0.3), SR)
    assert found.shape == (1, 2) and found[0, 1] - found[0, 0] == pytest.approx(0.3, abs=0.05)
    assert pauses(utterance(RISE_FALL, 1.0, pause_at=0.5, pause_s=0.05), SR).shape == (0, 2)


def test_a_pause_in_the_same_place_at_another_tempo_is_found_and_a_missing_or_moved_one_is_not():
    reference = utterance(RISE_FALL, 1.2, pause_at=0.6)
    same = pause_placement(reference, utterance(RISE_FALL, 1.8, pause_at=0.6), SR)
    assert (same.n_reference, same.n_output, same.recall, same.precision, same.f1) == (1, 1, 1.0, 1.0, 1.0)
    missing = pause_placement(reference, utterance(RISE_FALL, 1.8), SR)
    assert (missing.n_output, missing.recall, missing.f1) == (0, 0.0, 0.0) and math.isnan(missing.precision)
    moved = pause_placement(reference, utterance(RISE_FALL, 1.8, pause_at=0.15), SR)
    assert moved.n_output == 1 and moved.recall == 0.0 and moved.f1 == 0.0
    neither = pause_placement(utterance(RISE_FALL, 1.0), utterance(RISE_FALL, 1.4), SR)
    assert math.isnan(neither.f1)


def test_centring_per_text_removes_the_texts_own_effect():
    rng = np.random.default_rng(0)
    references = [f"ref{i}" for i in range(8)]
    reference_rate = {r: rng.normal(0, 1) for r in references}
    text_rate = {"short": 10.0, "medium": 0.0, "long": -10.0}  # each text's own speed dwarfs the reference's
    rows = [(reference_rate[r], text_rate[t] + 0.8 * reference_rate[r] + rng.normal(0, 0.1), t, r)
            for t in text_rate for r in references]
    reference, output, texts, refs = map(list, zip(*rows))
    # the reference values do not depend on the text, so raw r sees almost only the texts' spread
    raw = np.corrcoef(reference, output)[0, 1]
    centred = centred_correlation(reference, output, texts, refs, seed=0)
    assert abs(raw) < 0.2 and centred.value > 0.95 and centred.n == 24
    assert centred.low <= centred.value <= centred.high <= 1.0 and centred.low > 0.8
    assert centred_correlation(reference, output, texts, refs, seed=0) == centred  # seeded
    # a group may be any hashable, e.g. (text, target voice)
    assert centred_correlation(reference, output, [(t, "v") for t in texts], refs, seed=0) == centred
    noise = centred_correlation(reference, list(rng.normal(0, 1, 24)), texts, refs, seed=0)
    assert noise.low < 0 < noise.high  # no relation: the interval spans 0


def test_pairs_with_a_nan_are_left_out_and_too_few_give_nan():
    short = centred_correlation([1.0, math.nan, 2.0], [1.0, 2.0, 3.0], ["a"] * 3, ["r1", "r2", "r3"])
    assert short.n == 2 and math.isnan(short.value)
    with pytest.raises(ValueError, match="one text and reference per pair"):
        centred_correlation([1.0], [1.0, 2.0], ["a"], ["r"])


def test_the_mean_interval_holds_the_mean_and_narrows_with_more_items():
    rng = np.random.default_rng(1)
    few, many = mean_interval(rng.normal(0.5, 0.2, 8)), mean_interval(rng.normal(0.5, 0.2, 200))
    assert few.low < few.value < few.high and many.low < 0.5 < many.high
    assert many.high - many.low < few.high - few.low
    assert mean_interval([0.3, math.nan]).n == 1
