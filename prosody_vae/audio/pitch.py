"""Per-frame log-F0, voicing and energy on the log-mel's own frame grid.

The grid. `audio.MelSpectrogram` reflect-pads (n_fft - hop) / 2 samples on each side and runs a
non-centred STFT, so N samples give T = N // hop frames and frame t is centred on sample

    c_t = t * hop + n_fft // 2 - (n_fft - hop) // 2        (= t * 256 + 128 at the defaults)

Every feature here has exactly T values, frame t describing the audio around c_t, so it can be
read next to mel frame t (and predicted by the same decoder step).

F0 and voicing come from Praat's autocorrelation tracker, "To Pitch (ac)" (Boersma 1993),
through `praat-parselmouth`, at its standard settings with a 60-600 Hz search range, a time step
of one hop, and the signal zero-padded by half an analysis window on each side so the first
and last mel frames get a decision too. Praat's frames are centred on its own grid, so the
track is resampled onto the c_t: voicing of the nearest Praat frame, log-F0 interpolated between
the two neighbours when both are voiced (the offset is under half a hop). `log_f0` is the
natural log of F0 in Hz, and 0 where unvoiced.

Why Praat. benchmarks/pitch_extractors.py scores each candidate on 20 synthetic speech-like
signals with a known F0 on every frame (glides with vibrato, noise, pauses, 30 dB SNR) and times
it on the built-in espeak-ng corpus (60 utterances, 127 s), one thread of a 2-core Intel Xeon VM:

    prosody-vae make-corpus --out /tmp/pc --n 60 --seed 0
    python benchmarks/pitch_extractors.py --data /tmp/pc

    tracker                  GPE vs truth   VDE vs truth   CPU s per hour of audio
    Praat ac (parselmouth)   0.63%          0.62%          16
    Praat cc (parselmouth)   0.85%          0.30%          51
    WORLD DIO + StoneMask    0.14%          2.2%           31
    WORLD Harvest            0.98%          6.8%           638
    librosa pYIN             1.8%           3.7%           612
    this module (Praat ac)   0.63%          0.45%          18   (edges padded: fewer edge errors)

On the espeak corpus, where no truth is known, every pair but Harvest agrees on F0 wherever
both call a frame voiced (GPE 0.12% or less; Harvest 3-4% against each), and they differ on
voicing mostly where a voiced stretch begins or ends: VDE of this module against DIO is 11%
over all frames and 3% over frames more than 2 from a voicing change in either track, against
pYIN 12% and 5%, against Praat cc 4% and 0.03%. Praat ac makes the fewest voicing errors on
the synthetic truth but for cc (three times slower), its F0 errors are second only to DIO's
(whose voicing errs five times as often), and it is the fastest: LJSpeech's 24 h cost about
7 minutes of one core for F0 (pYIN would take about 4 hours). A whole cache fill (`MelCache.get`
from empty: decode, log-mel, F0, energy, writes) measured 26 CPU s per hour of audio, LJSpeech
in about 10 minutes of one core.

Energy is the level of the samples mel frame t sees: the RMS of the reflect-padded signal under
the same Hann window, sqrt(sum_n w[n]^2 x[n]^2 / sum_n w[n]^2), in dB relative to full scale
(20 log10, a full-scale sine reads -3 dB), floored at -100 dB (`ENERGY_FLOOR_DB`, one 16-bit
step is -90 dB). A gain of g dB shifts every frame by g dB. An utterance's speech level
(`speech_level_db`) is the power mean of its frames within SPEECH_TOP_DB of the loudest one: the
frames are chosen relative to the peak, so a gain of g dB moves it by exactly g dB.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..plugin.errors import AudioError, ConfigError
from .mel import AudioConfig

ENERGY_FLOOR_DB = -100.0  # the level of digital silence, and what padding frames hold
SPEECH_TOP_DB = 40.0  # frames this far below an utterance's loudest frame still count as speech
_ENERGY_CHUNK = 2048  # frames per block of the energy computation: 16 MiB of float64 at n_fft 1024


@dataclass(frozen=True)
class PitchConfig:
    """Praat "To Pitch (ac)" settings. Only the range differs from Praat's defaults (75-600 Hz):
    60 Hz reaches the lowest male voices; a lower floor lengthens the window (3 periods of it)."""

    fmin: float = 60.0
    fmax: float = 600.0
    silence_threshold: float = 0.03  # of the global peak: quieter frames lean unvoiced
    voicing_threshold: float = 0.45  # autocorrelation peak needed to call a frame voiced
    octave_cost: float = 0.01
    octave_jump_cost: float = 0.35
    voiced_unvoiced_cost: float = 0.14

    def __post_init__(self) -> None:
        if not 0 < self.fmin < self.fmax:
            raise ConfigError(f"PitchConfig needs 0 < fmin < fmax, got fmin={self.fmin}, fmax={self.fmax}")

    @property
    def window_seconds(self) -> float:
        """Praat's analysis window: three periods of the floor."""
        return 3.0 / self.fmin

    def key(self) -> str:
        """A stable identity for caches; the tracker's name is part of it."""
        return "praat-ac-" + "-".join(f"{k}={v}" for k, v in asdict(self).items())


@dataclass
class FrameFeatures:
    """Prosody of one utterance, one value per log-mel frame."""

    log_f0: np.ndarray  # (T,) float32, natural log of Hz; 0 where unvoiced
    voiced: np.ndarray  # (T,) bool
    energy: np.ndarray  # (T,) float32, dB full scale, >= ENERGY_FLOOR_DB

    def __len__(self) -> int:
        return len(self.voiced)

    @property
    def f0_hz(self) -> np.ndarray:
        """(T,) float64 F0 in Hz, NaN where unvoiced."""
        return np.where(self.voiced, np.exp(self.log_f0.astype(np.float64)), np.nan)


def frame_centres(n_samples: int, audio: AudioConfig) -> np.ndarray:
    """(T,) sample index of each log-mel frame's centre, T = n_samples // hop."""
    offset = audio.n_fft // 2 - audio.stft_padding
    return np.arange(n_samples // audio.hop_length) * audio.hop_length + offset


def track_pitch(wav: np.ndarray, audio: AudioConfig | None = None, config: PitchConfig | None = None,
                source: str = "wav") -> tuple[np.ndarray, np.ndarray]:
    """(log_f0 (T,) float32 with 0 where unvoiced, voiced (T,) bool) of mono `wav` on the mel grid."""
    try:
        import parselmouth
    except ImportError:
        raise ImportError("F0 extraction needs praat-parselmouth: pip install praat-parselmouth") from None

    audio, config = audio or AudioConfig(), config or PitchConfig()
    if config.fmax > audio.sample_rate / 2:
        raise ConfigError(f"PitchConfig.fmax ({config.fmax}) is above the Nyquist frequency of "
                          f"{audio.sample_rate} Hz audio")
    sr, hop = audio.sample_rate, audio.hop_length
    targets = (frame_centres(len(wav), audio) + 0.5) / sr  # (T,) s; parselmouth puts sample n at (n + 0.5) / sr
    if not len(targets):
        raise AudioError(f"{source}: {len(wav)} samples is shorter than one mel frame")
    # half a window of zeros plus a hop on each side: Praat only analyses where the whole window
    # fits, and short signals (under one window) become trackable
    pad = int(math.ceil(config.window_seconds * sr / 2)) + hop
    sound = parselmouth.Sound(np.pad(wav.astype(np.float64), pad), sampling_frequency=sr, start_time=-pad / sr)
    try:
        pitch = sound.to_pitch_ac(time_step=hop / sr, pitch_floor=config.fmin, pitch_ceiling=config.fmax,
                                  silence_threshold=config.silence_threshold,
                                  voicing_threshold=config.voicing_threshold, octave_cost=config.octave_cost,
                                  octave_jump_cost=config.octave_jump_cost,
                                  voiced_unvoiced_cost=config.voiced_unvoiced_cost)
    except parselmouth.PraatError as exc:
        raise AudioError(f"{source}: pitch tracking failed ({str(exc).strip()})") from None
    return resample_track(pitch.xs(), pitch.selected_array["frequency"], targets)


def resample_track(times: np.ndarray, f0: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A track at `times` (F0 in Hz, 0 or NaN where unvoiced) -> (log_f0, voiced) at `targets`.

    Voicing is that of the nearest source frame; log-F0 is interpolated linearly between the two
    neighbours when both are voiced, else taken from the nearest. Targets more than one source
    frame beyond either end are unvoiced.
    """
    f0 = np.where(np.isfinite(f0) & (f0 > 0), f0, 0.0)  # (S,)
    if len(times) < 2:
        raise AudioError(f"a pitch track needs at least 2 frames, got {len(times)}")
    position = np.interp(targets, times, np.arange(len(times)))  # (T,) fractional source index, clamped
    nearest = np.rint(position).astype(np.int64)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, len(times) - 1)
    log_source = np.log(np.where(f0 > 0, f0, 1.0))  # (S,)
    frac = position - low
    both = (f0[low] > 0) & (f0[high] > 0)
    log_f0 = np.where(both, (1 - frac) * log_source[low] + frac * log_source[high], log_source[nearest])
    step = times[1] - times[0]
    voiced = (f0[nearest] > 0) & (targets >= times[0] - step) & (targets <= times[-1] + step)
    return np.where(voiced, log_f0, 0.0).astype(np.float32), voiced


def frame_energy_db(wav: np.ndarray, audio: AudioConfig | None = None) -> np.ndarray:
    """(T,) float32 level in dB of each mel frame's Hann-weighted samples (module docstring)."""
    audio = audio or AudioConfig()
    n_frames = len(wav) // audio.hop_length
    padded = np.pad(wav.astype(np.float64), audio.stft_padding, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, audio.n_fft)[:: audio.hop_length][:n_frames]
    # the STFT's window: periodic Hann of win_length centred in n_fft
    hann = np.zeros(audio.n_fft)
    left = (audio.n_fft - audio.win_length) // 2
    hann[left: left + audio.win_length] = np.sin(np.pi * np.arange(audio.win_length) / audio.win_length) ** 2
    weights = hann ** 2 / np.sum(hann ** 2)  # (n_fft,)
    rms = np.empty(n_frames)  # (T,)
    for start in range(0, n_frames, _ENERGY_CHUNK):  # in chunks: the frames overlap 4x, so a copy of all would be 4 N
        rms[start: start + _ENERGY_CHUNK] = np.sqrt(np.square(frames[start: start + _ENERGY_CHUNK]) @ weights)
    return np.maximum(20.0 * np.log10(np.maximum(rms, 1e-300)), ENERGY_FLOOR_DB).astype(np.float32)


def frame_features(wav: np.ndarray, audio: AudioConfig | None = None, config: PitchConfig | None = None,
                   source: str = "wav") -> FrameFeatures:
    """Log-F0, voicing and energy of mono float `wav` (N,), T = N // hop frames each."""
    audio = audio or AudioConfig()
    wav = np.asarray(wav)
    if wav.ndim != 1 or not np.isfinite(wav).all():
        raise AudioError(f"{source}: expected finite mono samples (N,), got shape {wav.shape}")
    log_f0, voiced = track_pitch(wav, audio, config, source)
    return FrameFeatures(log_f0=log_f0, voiced=voiced, energy=frame_energy_db(wav, audio))


def speech_level_db(energy: np.ndarray, top_db: float = SPEECH_TOP_DB) -> float:
    """An utterance's level in dB full scale from its frame energies (T,) in dB: the power mean
    of the frames within `top_db` of the loudest."""
    energy = np.asarray(energy, dtype=np.float64)
    if energy.size == 0:
        raise AudioError("speech_level_db: no frames")
    loud = energy[energy >= energy.max() - top_db]
    return float(10.0 * np.log10(np.mean(10.0 ** (loud / 10.0))))
