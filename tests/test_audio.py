"""Audio front end: numerics against an independent HiFi-GAN reference, I/O and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from prosody_vae.audio.mel import AudioConfig, MelSpectrogram, griffin_lim, load_wav, save_wav
from prosody_vae.plugin.errors import AudioError, ConfigError

SR = 22050


def harmonic_signal(seconds: float = 1.0, f0: float = 150.0, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A voiced-speech-like test signal: a vibrato harmonic series over a little noise."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.2 * np.sin(2 * np.pi * 2 * t))) / sr
    wav = sum(0.15 / k * np.sin(k * phase) for k in range(1, 20))
    wav = wav + 0.005 * np.random.default_rng(seed).standard_normal(len(t))
    return wav.astype(np.float32)


def numpy_hifigan_mel(wav: np.ndarray, c: AudioConfig) -> np.ndarray:
    """HiFi-GAN's `mel_spectrogram` recipe, written again in float64 NumPy + librosa filters."""
    import librosa

    pad = (c.n_fft - c.hop_length) // 2
    padded = np.pad(wav.astype(np.float64), (pad, pad), mode="reflect")
    window = librosa.filters.get_window("hann", c.win_length, fftbins=True)
    window = librosa.util.pad_center(window, size=c.n_fft)
    n_frames = 1 + (len(padded) - c.n_fft) // c.hop_length
    frames = np.stack([padded[i * c.hop_length: i * c.hop_length + c.n_fft] for i in range(n_frames)])
    spec = np.fft.rfft(frames * window, axis=1)  # (T, F)
    magnitude = np.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)
    basis = librosa.filters.mel(sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.fmin,
                                fmax=c.fmax, htk=False, norm="slaney")
    return np.log(np.maximum(magnitude @ basis.T, 1e-5))  # (T, n_mels)


@pytest.mark.parametrize("num_samples", [SR, 12345, 1000, 256 * 40])
@pytest.mark.parametrize("config", [AudioConfig(), AudioConfig(n_fft=2048, win_length=1200, hop_length=300, fmax=None)],
                         ids=["hifigan", "other"])
def test_mel_matches_independent_reference(num_samples, config):
    wav = harmonic_signal(num_samples / SR)[:num_samples]
    ours = MelSpectrogram(config)(torch.from_numpy(wav)).numpy()
    reference = numpy_hifigan_mel(wav, config)
    assert ours.shape == (num_samples // config.hop_length, config.n_mels)
    assert reference.shape == ours.shape
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)


def test_parity_with_torchaudio():
    try:
        import torchaudio
    except (ImportError, OSError) as exc:  # the registry's CUDA build fails to load with CPU torch
        pytest.skip(f"torchaudio does not import here: {exc}")
    c = AudioConfig()
    wav = torch.from_numpy(harmonic_signal())
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=c.sample_rate, n_fft=c.n_fft, win_length=c.win_length, hop_length=c.hop_length,
        f_min=c.fmin, f_max=c.fmax, n_mels=c.n_mels, power=1.0, center=False, norm="slaney",
        mel_scale="slaney")
    padded = torch.nn.functional.pad(wav[None, None], (c.stft_padding,) * 2, mode="reflect")[0]
    theirs = torch.log(torch.clamp(transform(padded), min=c.log_floor))[0].T
    ours = MelSpectrogram(c)(wav)
    assert theirs.shape == ours.shape
    # torchaudio's |X| has no 1e-9 inside the sqrt; that moves only near-silent bins slightly
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=0)


def test_batch_equals_items_and_padding_holds_silence():
    mel_spec = MelSpectrogram()
    long, short = harmonic_signal(1.0, 120.0), harmonic_signal(0.5, 220.0)
    batch = torch.zeros(2, len(long))
    batch[0], batch[1, : len(short)] = torch.from_numpy(long), torch.from_numpy(short)
    lengths = torch.tensor([len(long), len(short)])
    mels = mel_spec(batch, lengths)
    assert mels.shape == (2, len(long) // 256, 80)
    torch.testing.assert_close(mels[0], mel_spec(torch.from_numpy(long)))
    n_short = len(short) // 256
    # away from its end, the padded item's frames equal its own analysis
    torch.testing.assert_close(mels[1, : n_short - 2], mel_spec(torch.from_numpy(short))[: n_short - 2])
    assert torch.all(mels[1, n_short:] == AudioConfig().pad_value)
    assert mel_spec.frame_lengths(lengths).tolist() == [len(long) // 256, n_short]


def test_griffin_lim_round_trip():
    mel_spec = MelSpectrogram()
    mel = mel_spec(torch.from_numpy(harmonic_signal()))
    wav = griffin_lim(mel, n_iter=60, mel_spec=mel_spec)
    assert wav.shape == (mel.shape[0] * 256,)
    assert wav.abs().max() <= 1.0
    # measured 0.16 nats mean |log-mel| error (0.07 of it from the pseudo-inverse filter bank)
    assert (mel_spec(wav) - mel).abs().mean() < 0.25
    assert torch.equal(wav, griffin_lim(mel, n_iter=60, mel_spec=mel_spec)), "seeded: deterministic"


def test_griffin_lim_batched_and_rejects_wrong_mels():
    mel = MelSpectrogram()(torch.from_numpy(harmonic_signal(0.3)))
    wavs = griffin_lim(torch.stack([mel, mel]), n_iter=4)
    assert wavs.shape == (2, mel.shape[0] * 256)
    with pytest.raises(AudioError, match="80"):
        griffin_lim(torch.zeros(10, 64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_mel_on_cuda_matches_cpu():
    wav = torch.from_numpy(harmonic_signal())
    cpu = MelSpectrogram()(wav)
    gpu = MelSpectrogram().cuda()(wav.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- wav I/O


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT"])
def test_load_wav_formats(tmp_path, subtype):
    wav = harmonic_signal(0.2)
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, wav, SR, subtype=subtype)
    loaded = load_wav(path, SR)
    assert loaded.dtype == np.float32 and loaded.shape == wav.shape
    np.testing.assert_allclose(loaded, wav, atol=1 / 2 ** 15)


@pytest.mark.parametrize("file_rate", [8000, 16000, 44100, 48000])
def test_load_wav_resamples_to_equivalent_mel(tmp_path, file_rate):
    # the same band-limited tone written at another rate must give (nearly) the same mel
    path = tmp_path / "tone.wav"
    t = np.arange(file_rate) / file_rate
    sf.write(path, 0.4 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1100 * t), file_rate)
    native = (0.4 * np.sin(2 * np.pi * 220 * np.arange(SR) / SR)
              + 0.2 * np.sin(2 * np.pi * 1100 * np.arange(SR) / SR)).astype(np.float32)
    loaded = load_wav(path, SR)
    assert abs(len(loaded) - SR) <= 1
    mel_spec = MelSpectrogram()
    a, b = mel_spec(torch.from_numpy(loaded[: SR - 1])), mel_spec(torch.from_numpy(native[: SR - 1]))
    # compare bins that carry energy (the tones), away from the edges
    loud = b[5:-5] > -4
    assert (a[5:-5][loud] - b[5:-5][loud]).abs().max() < 0.05


def test_load_wav_stereo_is_averaged(tmp_path):
    left, right = harmonic_signal(0.2, 100.0), harmonic_signal(0.2, 300.0)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), SR, subtype="FLOAT")
    np.testing.assert_allclose(load_wav(tmp_path / "stereo.wav", SR), (left + right) / 2, atol=1e-6)


def test_load_wav_bad_files(tmp_path):
    with pytest.raises(AudioError, match="no such audio file"):
        load_wav(tmp_path / "missing.wav")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" + bytes(range(200)))
    with pytest.raises(AudioError, match="corrupt.wav: cannot read audio"):
        load_wav(corrupt)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(AudioError, match="empty.wav: audio file holds no samples"):
        load_wav(empty)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(1000, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: audio holds NaN"):
        load_wav(nan)


def test_save_wav_round_trip_deterministic_and_atomic(tmp_path):
    wav = harmonic_signal(0.3)
    first = save_wav(tmp_path / "a" / "out.wav", wav, SR)
    data = first.read_bytes()
    save_wav(first, torch.from_numpy(wav), SR)
    assert first.read_bytes() == data
    assert [p.name for p in first.parent.iterdir()] == ["out.wav"], "no temporary file left behind"
    np.testing.assert_allclose(load_wav(first, SR), wav, atol=1 / 2 ** 15)
    with pytest.raises(AudioError, match="NaN"):
        save_wav(tmp_path / "bad.wav", np.array([0.0, np.nan]), SR)
    assert not (tmp_path / "bad.wav").exists()


def test_too_short_signal_is_a_clear_error():
    with pytest.raises(AudioError, match="too short"):
        MelSpectrogram()(torch.zeros(100))


@pytest.mark.parametrize("kwargs, field", [({"hop_length": 0}, "hop_length"), ({"win_length": 2048}, "win_length"),
                                           ({"fmax": 20000.0}, "fmax"), ({"n_mels": 80.0}, "n_mels")])
def test_audio_config_validates(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        AudioConfig(**kwargs)


def test_config_key_is_stable():
    assert AudioConfig().key() == AudioConfig().key()
    assert AudioConfig().key() != AudioConfig(n_mels=64).key()
