"""Per-frame log-F0, voicing and energy: known answers, and alignment with the log-mel's frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prosody_vae.audio.mel import AudioConfig, MelSpectrogram
from prosody_vae.plugin.errors import AudioError, ConfigError
from prosody_vae.audio.pitch import (ENERGY_FLOOR_DB, PitchConfig, frame_centres, frame_energy_db, frame_features,
                               resample_track, track_pitch)

SR, HOP = 22050, 256


def harmonic(f0: float | np.ndarray, seconds: float | None = None, amplitude: float = 0.2) -> np.ndarray:
    """11 harmonics of `f0` (a constant, or Hz per sample) with 1/k amplitudes, phase continuous."""
    f0 = np.full(int(seconds * SR), float(f0)) if np.isscalar(f0) else np.asarray(f0, dtype=np.float64)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    return sum(amplitude / k * np.sin(k * phase) for k in range(1, 12)).astype(np.float32)


@pytest.mark.parametrize("f0", [70.0, 110.0, 185.0, 333.0, 520.0])
def test_f0_of_a_harmonic_tone_is_exact_within_one_percent(f0):
    features = frame_features(harmonic(f0, 0.6))
    assert features.voiced.mean() == 1.0  # zero-padded edges still get a decision
    hz = np.exp(features.log_f0.astype(np.float64))
    assert np.abs(hz / f0 - 1).max() < 0.01
    np.testing.assert_allclose(features.f0_hz, hz)


def test_silence_and_noise_are_unvoiced_and_log_f0_is_zero_there():
    tone, gap = harmonic(150.0, 0.5), np.zeros(SR // 2, dtype=np.float32)
    noise = np.random.default_rng(0).standard_normal(SR // 2).astype(np.float32) * 0.1
    wav = np.concatenate([tone, gap, noise, tone])
    features = frame_features(wav)
    centres = frame_centres(len(wav), AudioConfig())
    segment = np.minimum(centres // (SR // 2), 3)  # (T,) 0 tone, 1 silence, 2 noise, 3 tone
    far = np.abs(centres - np.rint(centres / (SR // 2)) * (SR // 2)) > 3 * HOP  # (T,) away from a switch
    expected = (segment == 0) | (segment == 3)
    assert np.array_equal(features.voiced[far], expected[far])
    assert np.all(features.log_f0[~features.voiced] == 0.0)


@pytest.mark.parametrize("n_samples", [385, 1000, 5000, 22050, 22050 + 255, 22050 + 256])
def test_every_feature_has_one_value_per_mel_frame(n_samples):
    wav = harmonic(200.0, n_samples / SR)[:n_samples]
    mel = MelSpectrogram()(torch.from_numpy(wav))
    features = frame_features(wav)
    assert len(features) == mel.shape[0] == n_samples // HOP
    assert features.log_f0.shape == features.voiced.shape == features.energy.shape == (n_samples // HOP,)
    assert features.log_f0.dtype == np.float32 and features.energy.dtype == np.float32
    assert features.voiced.dtype == bool


def test_frame_centres_are_those_of_the_mel():
    assert frame_centres(1024, AudioConfig()).tolist() == [128, 384, 640, 896]
    # n_fft 512, hop 128: padding (512 - 128) / 2 = 192, window centre 256 -> 64 + t * 128
    assert frame_centres(512, AudioConfig(n_fft=512, win_length=512, hop_length=128)).tolist() == [64, 192, 320, 448]


@pytest.mark.parametrize("before, after, switch", [(150.0, 210.0, 11025 + 77), (210.0, 150.0, 15000),
                                                    (100.0, 130.0, 20480 + 128), (150.0, 210.0, 20480 + 130)])
def test_a_change_of_pitch_shows_at_the_frame_whose_centre_passes_it(before, after, switch):
    # not an octave: across one, the lower tone's period is a period of the higher one too, and
    # the tracker keeps the old octave a frame or two longer
    f0 = np.where(np.arange(2 * SR) < switch, before, after)
    hz = np.exp(frame_features(harmonic(f0)).log_f0)
    expected = int(np.ceil((switch - HOP // 2) / HOP))  # first frame centred at or after the switch
    crossed = hz > np.sqrt(before * after) if after > before else hz < np.sqrt(before * after)
    found = int(np.argmax(crossed))
    assert abs(found - expected) <= 1, (found, expected)
    assert np.all(crossed[found:]) and not np.any(crossed[:found])


@pytest.mark.parametrize("click", [3000, 3000 + 128, 10_000 + 200])
def test_energy_peaks_on_the_frame_centred_on_a_click(click):
    wav = np.zeros(SR // 2, dtype=np.float32)
    wav[click] = 0.5
    energy = frame_energy_db(wav)
    assert int(np.argmax(energy)) == int(np.rint((click - HOP // 2) / HOP))


def test_energy_is_the_rms_of_what_the_mel_frame_sees():
    noise = np.random.default_rng(1).standard_normal(5000).astype(np.float32) * 0.05
    wav = np.concatenate([harmonic(130.0, 0.3), noise])
    mel_spec = MelSpectrogram()
    power = mel_spec.stft(torch.from_numpy(wav).double()[None])[0].abs().pow(2).numpy()  # (F, T)
    full_spectrum = power[0] + power[-1] + 2 * power[1:-1].sum(axis=0)  # Parseval over all n_fft bins
    window = mel_spec.window.double().numpy()
    rms = np.sqrt(full_spectrum / (1024 * np.sum(window ** 2)))
    np.testing.assert_allclose(frame_energy_db(wav), 20 * np.log10(rms), atol=1e-3)


def test_energy_levels():
    t = np.arange(SR) / SR
    sine = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    # the edge frames see the reflect padding, which is not a sine
    np.testing.assert_allclose(frame_energy_db(sine)[1:-1], -3.0103, atol=1e-3)  # a full-scale sine
    np.testing.assert_allclose(frame_energy_db(0.1 * sine), frame_energy_db(sine) - 20, atol=1e-3)
    assert np.all(frame_energy_db(np.zeros(SR, np.float32)) == ENERGY_FLOOR_DB)


def test_resample_track_interpolates_log_f0_and_takes_the_nearest_voicing():
    times = np.array([0.0, 0.01, 0.02, 0.03])
    f0 = np.array([100.0, 400.0, 0.0, np.nan])
    log_f0, voiced = resample_track(times, f0, np.array([0.005, 0.0149, 0.0151, 0.05]))
    assert voiced.tolist() == [True, True, False, False]  # beyond one frame past the end: unvoiced
    np.testing.assert_allclose(np.exp(log_f0[0]), 200.0, rtol=1e-5)  # geometric midpoint
    np.testing.assert_allclose(np.exp(log_f0[1]), 400.0, rtol=1e-5)  # neighbour unvoiced: the nearest
    assert log_f0[2] == 0.0


def test_bad_input_is_a_clear_error():
    with pytest.raises(AudioError, match="clip.wav: 100 samples is shorter than one mel frame"):
        track_pitch(np.zeros(100, np.float32), source="clip.wav")
    with pytest.raises(AudioError, match="clip.wav: expected finite mono samples"):
        frame_features(np.full(1000, np.nan, np.float32), source="clip.wav")
    with pytest.raises(ConfigError, match="fmin < fmax"):
        PitchConfig(fmin=300, fmax=200)
    with pytest.raises(ConfigError, match="Nyquist"):
        track_pitch(harmonic(100.0, 0.2), AudioConfig(sample_rate=8000, fmax=4000.0), PitchConfig(fmax=5000.0))


def test_config_key_changes_with_every_setting():
    assert PitchConfig().key() == PitchConfig().key()
    assert PitchConfig(fmin=50.0).key() != PitchConfig().key()
    assert PitchConfig(voicing_threshold=0.5).key() != PitchConfig().key()
