"""Metrics against known answers on synthetic voiced signals whose true F0 and timing we control."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prosody_vae.plugin.errors import AudioError, ConfigError, TextError
from prosody_vae.evaluation.metrics import (
    MCD_CONSTANT,
    F0Config,
    cepstra_of_log_mel,
    compare_f0,
    duration_ratio,
    energy,
    f0_track,
    mcd_from_cepstra,
    mel_cepstral_distortion,
    prosody_summary,
    speaking_rate,
    speech_duration,
)

SR = 22050


def voiced_signal(seconds: float = 1.0, f0: float = 150.0, stretch: float = 1.0, tilt: float = 1.0,
                  seed: int = 0) -> np.ndarray:
    """A vibrato harmonic series over a little noise, lasting `seconds * stretch`.

    `stretch` plays the same content slower (vibrato follows the content clock, pitch does not
    change); `tilt` sets the harmonic amplitudes 1 / k**tilt, i.e. the timbre.
    """
    n = int(seconds * stretch * SR)
    content_time = np.arange(n) / n * seconds
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.2 * np.sin(2 * np.pi * 2 * content_time))) / SR
    wav = sum(0.15 / k ** tilt * np.sin(k * phase) for k in range(1, 20))
    wav = wav + 0.005 * np.random.default_rng(seed).standard_normal(n)
    return wav.astype(np.float32)


@pytest.fixture(scope="module")
def reference():
    wav = voiced_signal()
    track = f0_track(wav)
    assert track.voiced.mean() > 0.95  # precondition of every pitch oracle below
    return wav, track


def test_identical_signals_score_zero(reference):
    wav, track = reference
    same = compare_f0(track, f0_track(wav.copy()))
    assert (same.gpe, same.vde, same.ffe, same.f0_rmse_cents) == (0.0, 0.0, 0.0, 0.0)
    assert mel_cepstral_distortion(wav, wav) == 0.0


@pytest.mark.parametrize("factor, gpe", [(1.3, 1.0), (1.05, 0.0), (0.95, 0.0)])
def test_pitch_shift(reference, factor, gpe):
    _, track = reference
    shifted = compare_f0(track, f0_track(voiced_signal(f0=150.0 * factor, seed=1)))
    assert shifted.gpe == gpe
    assert shifted.vde <= 1 / shifted.n_frames
    assert shifted.ffe == pytest.approx(shifted.vde + gpe * shifted.n_joint_voiced / shifted.n_frames)
    # pyin's pitch grid is 10 cents wide: allow a few cents against the exact shift
    assert shifted.f0_rmse_cents == pytest.approx(1200 * abs(math.log2(factor)), abs=5.0)


def test_removed_voicing_gives_the_fraction_of_lost_voiced_frames(reference):
    wav, track = reference
    cut = wav.copy()
    cut[len(cut) // 2:] = 0.0
    result = compare_f0(track, f0_track(cut))
    lost = np.sum(track.voiced & (track.times >= 0.5))
    assert result.vde == pytest.approx(lost / result.n_frames, abs=2 / result.n_frames)
    assert result.gpe == 0.0
    assert result.ffe == result.vde


def test_no_jointly_voiced_frames_gives_nan_pitch_errors(reference):
    _, track = reference
    result = compare_f0(track, f0_track(np.zeros(SR, np.float32)))
    assert math.isnan(result.gpe) and math.isnan(result.f0_rmse_cents)
    assert result.vde == pytest.approx(track.voiced.mean())


def test_compare_f0_rejects_tracks_at_different_frame_rates(reference):
    wav, track = reference
    with pytest.raises(ConfigError, match="frame periods"):
        compare_f0(track, f0_track(wav, F0Config(hop_length=512)))


def test_mcd_separates_tempo_from_timbre(reference):
    wav, _ = reference
    slower = voiced_signal(stretch=1.4, seed=2)
    other_timbre = voiced_signal(tilt=0.3, seed=3)
    tempo_mcd = mel_cepstral_distortion(wav, slower)
    timbre_mcd = mel_cepstral_distortion(wav, other_timbre)
    assert 0 < tempo_mcd < 0.25 * timbre_mcd  # DTW absorbs the tempo change
    assert mel_cepstral_distortion(other_timbre, wav) == pytest.approx(timbre_mcd, rel=0.05)


def test_mcd_constant_scales_mean_euclidean_distance():
    ref = np.zeros((5, 13))
    syn = np.full((5, 13), 0.5)
    assert MCD_CONSTANT == pytest.approx(6.1419, abs=1e-4)
    assert mcd_from_cepstra(ref, syn) == pytest.approx(MCD_CONSTANT * 0.5 * math.sqrt(13))


@pytest.mark.parametrize("quefrency", [1, 4, 13])
def test_cepstra_are_on_the_true_cepstral_scale(quefrency):
    # A log-spectral ripple a*cos(pi d (2k+1) / 2M) is c_d = a/2 in the mcep convention that
    # MCD's constant assumes, so MCD = 6.1419 * a / 2 whatever the number of mel bins.
    n_mels, ripple = 80, 0.3
    k = np.arange(n_mels)
    base = np.random.default_rng(0).normal(size=(20, n_mels))  # (T, M) natural-log mel
    rippled = base + ripple * np.cos(np.pi * quefrency * (2 * k + 1) / (2 * n_mels))
    difference = cepstra_of_log_mel(rippled) - cepstra_of_log_mel(base)  # (T, 13)
    expected = np.zeros(13)
    expected[quefrency - 1] = ripple / 2
    np.testing.assert_allclose(difference, np.broadcast_to(expected, difference.shape), atol=1e-9)
    assert mcd_from_cepstra(cepstra_of_log_mel(base), cepstra_of_log_mel(rippled)) == pytest.approx(
        MCD_CONSTANT * ripple / 2)


def test_cepstra_need_fewer_coefficients_than_mel_bins():
    with pytest.raises(ConfigError, match="n_mfcc"):
        cepstra_of_log_mel(np.zeros((3, 20)), n_mfcc=20)


def test_duration_ratio_ignores_silence_and_follows_tempo(reference):
    wav, _ = reference
    padded = np.concatenate([np.zeros(SR // 2, np.float32), wav, np.zeros(SR, np.float32)])
    # split keeps about two hops of margin at each edge of the speech: ~5% of one second
    assert duration_ratio(wav, padded) == pytest.approx(1.0, abs=0.06)
    assert duration_ratio(wav, voiced_signal(stretch=2.0)) == pytest.approx(2.0, rel=0.03)


def test_speaking_rate_counts_letters_per_second_of_speech(reference):
    wav, _ = reference
    padded = np.concatenate([wav, np.zeros(SR, np.float32)])
    assert speaking_rate(padded, "Hello, world 42!") == pytest.approx(10 / speech_duration(padded))
    assert speaking_rate(padded, "abcdefghij") == pytest.approx(10.0, rel=0.06)
    with pytest.raises(TextError):
        speaking_rate(wav, "1, 2, 3.")


@pytest.mark.parametrize("gain", [0.5, 0.1])
def test_energy_follows_gain(reference, gain):
    wav, _ = reference
    loud, quiet = energy(wav), energy(gain * wav)
    assert loud.mean_db - quiet.mean_db == pytest.approx(-20 * math.log10(gain), abs=0.01)
    assert quiet.std_db == pytest.approx(loud.std_db, abs=0.01)  # the level contour only shifts


def test_prosody_summary_of_a_known_signal(reference):
    wav, _ = reference
    summary = prosody_summary(np.concatenate([wav, np.zeros(SR, np.float32)]), text="abcdefghij")
    assert summary.duration_s == pytest.approx(2.0)
    assert summary.speech_s == pytest.approx(1.0, abs=0.06)
    assert summary.f0_mean_hz == pytest.approx(150.0, rel=0.02)
    # vibrato spans 150 * (1 +- 0.2): the 5-95 percentile range is a little under 12 log2(1.2/0.8)
    assert 5.5 < summary.f0_range_semitones < 12 * math.log2(1.2 / 0.8)
    assert summary.voiced_fraction == pytest.approx(0.5, abs=0.05)
    assert summary.rate == pytest.approx(10.0, rel=0.06)


def test_silence_has_no_speech_and_no_pitch():
    summary = prosody_summary(np.zeros(SR, np.float32), text="abc")
    assert summary.speech_s == 0.0 and summary.voiced_fraction == 0.0
    assert math.isnan(summary.f0_mean_hz) and math.isnan(summary.rate)


@pytest.mark.parametrize("bad", [np.zeros(0, np.float32), np.zeros((2, 100), np.float32),
                                 np.array([0.0, np.nan] * 600, np.float32)], ids=["empty", "2-D", "NaN"])
def test_bad_signals_are_rejected(bad):
    with pytest.raises(AudioError, match="wav"):
        f0_track(bad)
    with pytest.raises(AudioError, match="syn_wav"):
        mel_cepstral_distortion(np.zeros(SR, np.float32), bad)


@pytest.mark.parametrize("kwargs", [dict(fmin=0.0), dict(fmin=300.0, fmax=200.0), dict(fmax=20000.0),
                                    dict(hop_length=0)])
def test_bad_f0_config_is_rejected(kwargs):
    with pytest.raises(ConfigError, match="F0Config"):
        F0Config(**kwargs)
