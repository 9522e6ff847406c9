"""Audio front end: wav I/O, the HiFi-GAN-compatible log-mel spectrogram, and Griffin-Lim.

Every audio constant of the package lives in `AudioConfig`. The defaults are the HiFi-GAN
LJSpeech recipe (jik876/hifi-gan `meldataset.mel_spectrogram`), so a mel from this module feeds a
user's LJSpeech HiFi-GAN unchanged:

    22050 Hz, n_fft 1024, win 1024, hop 256, 80 mels, fmin 0, fmax 8000,
    Slaney mel scale and Slaney area norm (librosa filters),
    reflect-pad (n_fft - hop) / 2 samples on each side, then a non-centred STFT,
    magnitude sqrt(re^2 + im^2 + 1e-9), natural log of max(mel, 1e-5).

With that padding a signal of N samples gives exactly N // hop frames. Mel tensors are laid out
(B, T, n_mels) at every module boundary; padding frames hold `AudioConfig.pad_value` = log(1e-5),
the value of digital silence.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from ..atomic import atomic_write
from ..plugin.errors import AudioError, ConfigError, ReferenceInputError
from ..plugin.masked_norm import length_mask


@dataclass(frozen=True)
class AudioConfig:
    sample_rate: int = 22050
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = 8000.0  # None: Nyquist
    log_floor: float = 1e-5  # mel magnitudes are clamped here before the log
    magnitude_eps: float = 1e-9  # inside the sqrt, keeps the gradient of |X| finite at 0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"AudioConfig.{name} must be a positive int, got {value!r}")
        if self.win_length > self.n_fft:
            raise ConfigError(f"AudioConfig.win_length ({self.win_length}) exceeds n_fft ({self.n_fft})")
        if self.hop_length > self.n_fft or (self.n_fft - self.hop_length) % 2:
            raise ConfigError(
                "AudioConfig: n_fft - hop_length must be even and >= 0 for the symmetric "
                f"HiFi-GAN padding, got n_fft={self.n_fft}, hop_length={self.hop_length}")
        nyquist = self.sample_rate / 2
        if not 0 <= self.fmin < (self.fmax if self.fmax is not None else nyquist) <= nyquist:
            raise ConfigError(f"AudioConfig needs 0 <= fmin < fmax <= {nyquist}, got "
                              f"fmin={self.fmin}, fmax={self.fmax}")
        if self.log_floor <= 0:
            raise ConfigError(f"AudioConfig.log_floor must be > 0, got {self.log_floor}")

    @property
    def pad_value(self) -> float:
        """The log-mel of silence: what padding frames hold."""
        return math.log(self.log_floor)

    @property
    def stft_padding(self) -> int:
        return (self.n_fft - self.hop_length) // 2

    @property
    def min_samples(self) -> int:
        """Shortest signal the reflect padding accepts (it needs more samples than the pad)."""
        return self.stft_padding + 1

    def key(self) -> str:
        """A stable, readable identity for caches: equal configs give equal keys."""
        return "-".join(f"{k}={v}" for k, v in asdict(self).items())


def mel_filterbank(config: AudioConfig) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) Slaney-scale, Slaney-normalised filters, as HiFi-GAN builds them."""
    import librosa  # heavy import, only needed when a filter bank is built

    return librosa.filters.mel(sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
                               fmin=config.fmin, fmax=config.fmax, htk=False, norm="slaney")


class MelSpectrogram(torch.nn.Module):
    """Batched log-mel spectrogram on any device: (B, N) samples -> (B, N // hop, n_mels)."""

    def __init__(self, config: AudioConfig | None = None):
        super().__init__()
        self.config = config or AudioConfig()
        c = self.config
        # hann of win_length centred in n_fft, as torch.stft does when win_length < n_fft
        window = torch.hann_window(c.win_length)
        left = (c.n_fft - c.win_length) // 2
        window = F.pad(window, (left, c.n_fft - c.win_length - left))
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_basis", torch.from_numpy(mel_filterbank(c)).float(), persistent=False)

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(sample_lengths, self.config.hop_length, rounding_mode="floor")

    def stft(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, N) -> complex (B, n_fft // 2 + 1, N // hop) in the HiFi-GAN framing."""
        c = self.config
        if wav.shape[-1] < c.min_samples:
            raise AudioError(f"signal of {wav.shape[-1]} samples is too short for the STFT: "
                             f"need at least {c.min_samples} ({c.min_samples / c.sample_rate * 1000:.0f} ms)")
        padded = F.pad(wav.unsqueeze(1), (c.stft_padding, c.stft_padding), mode="reflect").squeeze(1)
        return torch.stft(padded, c.n_fft, hop_length=c.hop_length, win_length=c.n_fft,
                          window=self.window.to(wav.dtype), center=False, onesided=True,
                          return_complex=True)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """wav (B, N) or (N,) float in [-1, 1]; lengths (B,) valid samples per item.

        Returns the log-mel (B, T, n_mels), T = N // hop. Frames past an item's valid length are
        set to `pad_value`. The last one or two valid frames of a padded item see the padding
        (zeros) instead of reflection, as in every batched TTS front end; compute per item when
        that matters.
        """
        squeeze = wav.dim() == 1
        wav = wav.unsqueeze(0) if squeeze else wav
        if wav.dim() != 2:
            raise AudioError(f"MelSpectrogram expects (B, N) or (N,) samples, got shape {tuple(wav.shape)}")
        spec = self.stft(wav)  # (B, F, T) complex
        magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + self.config.magnitude_eps)
        mel = torch.matmul(self.mel_basis.to(magnitude.dtype), magnitude)  # (B, n_mels, T)
        log_mel = rearrange(torch.log(torch.clamp(mel, min=self.config.log_floor)), "b m t -> b t m")
        if lengths is not None:
            valid = length_mask(self.frame_lengths(lengths.to(wav.device)), log_mel.shape[1])  # (B, T)
            log_mel = log_mel.masked_fill(~valid[..., None], self.config.pad_value)
        return log_mel.squeeze(0) if squeeze else log_mel


def _overlap_add_istft(spec: torch.Tensor, mel_spec: MelSpectrogram) -> torch.Tensor:
    """Inverse of `MelSpectrogram.stft`: complex (B, F, T) -> (B, T * hop), least-squares OLA."""
    c = mel_spec.config
    num_frames = spec.shape[-1]
    window = mel_spec.window.to(spec.real.dtype)
    frames = torch.fft.irfft(spec, n=c.n_fft, dim=1) * window[None, :, None]  # (B, n_fft, T)
    out_len = (num_frames - 1) * c.hop_length + c.n_fft
    fold = lambda x: F.fold(x, output_size=(1, out_len), kernel_size=(1, c.n_fft), stride=(1, c.hop_length))
    signal = fold(frames).flatten(1)  # (B, out_len)
    envelope = fold(window.pow(2)[None, :, None].expand(1, -1, num_frames)).flatten(1)
    signal = signal / envelope.clamp(min=1e-8)
    return signal[:, c.stft_padding: c.stft_padding + num_frames * c.hop_length]


@torch.no_grad()
def griffin_lim(log_mel: torch.Tensor, config: AudioConfig | None = None, n_iter: int = 60,
                momentum: float = 0.99, seed: int = 0, mel_spec: MelSpectrogram | None = None) -> torch.Tensor:
    """Invert a log-mel (B, T, n_mels) or (T, n_mels) to a waveform (B, T * hop) or (T * hop,).

    The mel is mapped back to a linear magnitude with the filter bank's pseudo-inverse (clamped
    at zero), then phase is recovered by fast Griffin-Lim (Perraudin et al. 2013, momentum
    0.99 as torchaudio uses). It runs in the module's own STFT framing, so re-analysing the
    output reproduces the input frames one for one. Meant for listening tests without a neural
    vocoder; quality is that of Griffin-Lim.
    """
    mel_spec = mel_spec or MelSpectrogram(config).to(log_mel.device)
    c = mel_spec.config
    squeeze = log_mel.dim() == 2
    log_mel = log_mel.unsqueeze(0) if squeeze else log_mel
    if log_mel.dim() != 3 or log_mel.shape[-1] != c.n_mels:
        raise AudioError(f"griffin_lim expects (B, T, {c.n_mels}) log-mels, got {tuple(log_mel.shape)}")
    mel = rearrange(torch.exp(log_mel.float()), "b t m -> b m t")
    magnitude = torch.clamp(torch.linalg.pinv(mel_spec.mel_basis.float()) @ mel, min=0.0)  # (B, F, T)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator).to(magnitude.device) * 2 * math.pi
    estimate = magnitude * torch.exp(1j * phase)
    previous = torch.zeros_like(estimate)
    for _ in range(n_iter):
        wav = _overlap_add_istft(estimate, mel_spec)
        rebuilt = mel_spec.stft(wav)
        accelerated = rebuilt - (momentum / (1 + momentum)) * previous
        previous = rebuilt
        estimate = magnitude * accelerated / accelerated.abs().clamp(min=1e-8)
    wav = _overlap_add_istft(estimate, mel_spec).clamp(-1.0, 1.0)
    return wav.squeeze(0) if squeeze else wav


SILENCE_PEAK = 1 / 2**15  # one 16-bit quantisation step: a peak at or below it is digital silence


def load_wav(path: str | os.PathLike, sample_rate: int = 22050, max_seconds: float | None = None) -> np.ndarray:
    """Read any soundfile-readable file as mono float32 at `sample_rate`.

    Integer and float formats are scaled by soundfile; several channels are averaged; another
    rate is resampled (soxr, high quality). Missing, unreadable, empty and non-finite files raise
    `AudioError` naming the file, as does a file longer than `max_seconds` (read from the header,
    so a long file is refused before it is decoded).
    """
    import soundfile as sf

    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        if max_seconds is not None:
            info = sf.info(str(path))
            if info.duration > max_seconds:
                raise AudioError(f"{path}: {info.duration:.1f} s of audio is over the {max_seconds:g} s limit")
        wav, file_rate = sf.read(str(path), dtype="float32", always_2d=True)  # (N, channels)
    except AudioError:
        raise
    except Exception as exc:  # soundfile raises several types for corrupt headers
        raise AudioError(f"{path}: cannot read audio ({exc})") from exc
    if wav.shape[0] == 0:
        raise AudioError(f"{path}: audio file holds no samples")
    if not np.isfinite(wav).all():
        raise AudioError(f"{path}: audio holds NaN or infinite samples")
    # float64 for the mix and the resampler: float audio far outside [-1, 1] must not overflow
    wav = wav.astype(np.float64).mean(axis=1)
    if file_rate != sample_rate:
        import librosa

        wav = librosa.resample(wav, orig_sr=file_rate, target_sr=sample_rate, res_type="soxr_hq")
    if not (np.isfinite(wav).all() and np.abs(wav).max() <= np.finfo(np.float32).max):
        raise AudioError(f"{path}: samples overflow when mixed down or resampled (audio should lie in [-1, 1])")
    return np.ascontiguousarray(wav, dtype=np.float32)


def check_not_silent(wav: np.ndarray | torch.Tensor, source: str, error: type[Exception] = AudioError) -> None:
    """Raise `error` naming `source` if non-empty `wav` never rises above one 16-bit step
    (`SILENCE_PEAK`). Digital silence carries neither prosody for a reference nor speech for
    training, and its log-mel is the padding value throughout, so it is refused, not used."""
    peak = float(abs(wav).max())
    if peak <= SILENCE_PEAK:
        raise error(f"{source}: audio is digital silence (peak |x| = {peak:.2g} <= {SILENCE_PEAK:.2g}); "
                    "it carries no speech or prosody")


def load_reference(reference, audio: AudioConfig, max_seconds: float | None = None) -> tuple[torch.Tensor, str]:
    """A prosody reference, checked: a wav path, a waveform (N,) or a log-mel (T, n_mels) -> that
    waveform or log-mel as a float32 CPU tensor, and the name of its source (the path, or
    "reference") for messages. Refused with a ReferenceInputError naming the source: a wrong type
    or shape, NaN or infinite values, anything longer than `max_seconds`, a log-mel that is empty
    or all silence, a waveform too short for one frame (`AudioConfig.min_samples`) or digitally
    silent. A file that cannot be read is an AudioError (`load_wav`)."""
    source = "reference"
    if isinstance(reference, (str, os.PathLike)):
        source = str(reference)
        reference = load_wav(reference, audio.sample_rate, max_seconds)
    try:
        tensor = torch.as_tensor(reference, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise ReferenceInputError(f"{source}: expected a wav path, a waveform or a log-mel, "
                                  f"got {type(reference).__name__}") from None
    is_wav = tensor.dim() == 1
    if not (is_wav or (tensor.dim() == 2 and tensor.shape[1] == audio.n_mels)):
        raise ReferenceInputError(f"reference must be a wav path, a waveform (N,) or a log-mel (T, "
                                  f"{audio.n_mels}), got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ReferenceInputError(f"{source}: reference holds NaN or infinite values")
    seconds = tensor.shape[0] / audio.sample_rate * (1 if is_wav else audio.hop_length)
    if max_seconds is not None and seconds > max_seconds:
        raise ReferenceInputError(f"{source}: reference of {seconds:.1f} s is over max_reference_seconds="
                                  f"{max_seconds:g}; trim it or raise the limit")
    if not is_wav:
        if tensor.shape[0] == 0 or tensor.max() <= audio.pad_value + 1e-3:  # all at the log floor
            raise ReferenceInputError(f"{source}: log-mel reference is empty or silence throughout")
        return tensor, source
    if tensor.shape[0] < audio.min_samples:
        raise ReferenceInputError(
            f"{source}: reference of {tensor.shape[0]} samples is too short: one mel frame needs "
            f"{audio.min_samples} ({audio.min_samples / audio.sample_rate * 1000:.0f} ms)")
    check_not_silent(tensor, source, ReferenceInputError)
    return tensor, source


def save_wav(path: str | os.PathLike, wav: np.ndarray | torch.Tensor, sample_rate: int = 22050) -> Path:
    """Write mono float audio as 16-bit PCM, atomically (a temporary file, then a rename).

    Samples are clipped to [-1, 1]. The output depends only on the samples and the rate, so the
    same input always gives byte-identical files.
    """
    import soundfile as sf

    path = Path(path)
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().float().numpy()
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise AudioError(f"save_wav({path}): expected mono samples (N,), got shape {wav.shape}")
    if not np.isfinite(wav).all():
        raise AudioError(f"save_wav({path}): refusing to write NaN or infinite samples")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        sf.write(f, np.clip(wav, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return path


def check_vocoder_mel(log_mel: torch.Tensor, n_mels: int) -> None:
    """AudioError unless `log_mel` is a finite (B, n_mels, T) tensor with frames: what every vocoder reads."""
    if not isinstance(log_mel, torch.Tensor):
        raise AudioError(f"vocoder input log_mel must be a torch.Tensor, got {type(log_mel).__name__}")
    if log_mel.dim() != 3 or log_mel.shape[1] != n_mels:
        hint = (" (it looks like (B, T, n_mels): transpose it with mel.transpose(1, 2))"
                if log_mel.dim() == 3 and log_mel.shape[2] == n_mels else "")
        raise AudioError(f"vocoder input log_mel must be (B, {n_mels}, T), got {tuple(log_mel.shape)}{hint}")
    if log_mel.shape[2] == 0:
        raise AudioError("vocoder input log_mel has no frames (T = 0)")
    if not torch.isfinite(log_mel).all():
        raise AudioError("vocoder input log_mel holds NaN or infinite values")
