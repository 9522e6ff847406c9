"""Objective metrics that compare a synthesised utterance with its reference, and describe one.

Spectral distance
    MCD-DTW (Kubichek 1993): mel cepstra c_1..c_13 of both signals are aligned by DTW and

        MCD = (10 / ln 10) * sqrt(2) * mean over aligned pairs of sqrt(sum_d (c_d - c'_d)^2)   [dB]

    with constant 10 * sqrt(2) / ln 10 ~= 6.1419. The constant assumes true cepstra of the
    *natural* log amplitude spectrum, ln|X(w)| = c_0 + 2 * sum_d c_d cos(w d), the convention of
    SPTK's mcep. The cepstra here come from the package's HiFi-GAN log-mel (natural log amplitude,
    80 mels, n_fft 1024, hop 256, see `audio.AudioConfig`): c_d = (1 / M) * sum_k L_k
    cos(pi d (2k + 1) / 2M) over the M mel bins, which is the orthonormal DCT-II divided by
    sqrt(2M). Without that division the figure is sqrt(160) ~= 12.6 times too large, a scale slip
    that makes "MFCC-MCD" numbers incomparable with published ones. So a log-spectral ripple
    a * cos(pi d (2k + 1) / 2M) gives c_d = a / 2 and MCD = 6.1419 * a / 2. c_0 (overall level) is
    dropped so gain differences do not count.

Pitch (Nakatani et al. 2008; Chu & Alwan 2009), frames compared index by index after truncating
both tracks to the shorter one:
    VDE  = frames whose voicing decisions differ / all frames
    GPE  = jointly voiced frames with |f_syn / f_ref - 1| > 20% / jointly voiced frames
    FFE  = (voicing-decision errors + gross pitch errors) / all frames
    RMSE = sqrt(mean over jointly voiced frames of (1200 * log2(f_syn / f_ref))^2)   [cents]
GPE and RMSE are NaN when no frame is voiced in both tracks. F0 is tracked by librosa.pyin.

Timing and level
    speech duration = total length of the intervals librosa.effects.split keeps at `top_db`;
    duration ratio  = speech duration of the synthesis / that of the reference;
    speaking rate   = letters in the text / speech duration (letters per second), a proxy that
                      needs no aligner;
    energy          = frame RMS in dB (20 log10, floored at -100 dB) over non-silent frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..audio.mel import AudioConfig, MelSpectrogram
from ..plugin.errors import AudioError, ConfigError, TextError

MCD_CONSTANT = 10.0 * math.sqrt(2.0) / math.log(10.0)  # ~6.1419 dB per unit of cepstral distance
GROSS_PITCH_ERROR = 0.20  # relative F0 deviation beyond which a voiced frame is a gross error
_DB_FLOOR = 1e-5  # amplitude floor of the dB conversions: -100 dB, the level of digital silence


def _check_wav(wav: np.ndarray, name: str) -> np.ndarray:
    wav = np.asarray(wav)
    if wav.ndim != 1 or wav.size == 0:
        raise AudioError(f"{name} must be a non-empty 1-D signal, got shape {wav.shape}")
    if not np.all(np.isfinite(wav)):
        raise AudioError(f"{name} holds NaN or infinite samples")
    return wav.astype(np.float32, copy=False)


def _amplitude_db(amplitude: np.ndarray) -> np.ndarray:
    return 20.0 * np.log10(np.maximum(amplitude, _DB_FLOOR))


# ---------------------------------------------------------------------------- MCD-DTW
def mel_cepstra(wav: np.ndarray, sample_rate: int = 22050, n_mfcc: int = 13) -> np.ndarray:
    """(T, n_mfcc) cepstra c_1..c_n_mfcc of the HiFi-GAN log-mel, T = len(wav) // 256."""
    wav = _check_wav(wav, "wav")
    mel_spec = MelSpectrogram(AudioConfig(sample_rate=sample_rate))
    with torch.no_grad():
        log_mel = mel_spec(torch.from_numpy(wav)).numpy()  # (T, n_mels), natural log amplitude
    return cepstra_of_log_mel(log_mel, n_mfcc)


def cepstra_of_log_mel(log_mel: np.ndarray, n_mfcc: int = 13) -> np.ndarray:
    """(T, n_mfcc) true cepstra c_1..c_n_mfcc of a (T, M) natural-log mel (scale in the module doc)."""
    import scipy.fft

    n_mels = log_mel.shape[1]
    if not 1 <= n_mfcc < n_mels:
        raise ConfigError(f"n_mfcc must be in [1, {n_mels - 1}] for {n_mels} mel bins, got {n_mfcc}")
    cepstra = scipy.fft.dct(log_mel, type=2, norm="ortho", axis=1) / math.sqrt(2 * n_mels)
    return cepstra[:, 1:n_mfcc + 1]  # (T, n_mfcc): c_0 dropped


def mcd_from_cepstra(ref: np.ndarray, syn: np.ndarray) -> float:
    """MCD in dB between cepstra ref (T1, D) and syn (T2, D), DTW-aligned on Euclidean distance."""
    import librosa

    if ref.ndim != 2 or syn.ndim != 2 or ref.shape[1] != syn.shape[1] or not len(ref) or not len(syn):
        raise AudioError(f"cepstra must be (T, D) with the same D and T > 0, got {ref.shape} and {syn.shape}")
    _, path = librosa.sequence.dtw(X=ref.T, Y=syn.T, metric="euclidean")  # path (L, 2) index pairs
    distances = np.linalg.norm(ref[path[:, 0]] - syn[path[:, 1]], axis=1)  # (L,)
    return float(MCD_CONSTANT * distances.mean())


def mel_cepstral_distortion(ref_wav: np.ndarray, syn_wav: np.ndarray, sample_rate: int = 22050,
                            n_mfcc: int = 13) -> float:
    """MCD-DTW in dB on c_1..c_n_mfcc (module docstring has the formula); 0 for identical signals."""
    ref_wav, syn_wav = _check_wav(ref_wav, "ref_wav"), _check_wav(syn_wav, "syn_wav")
    return mcd_from_cepstra(mel_cepstra(ref_wav, sample_rate, n_mfcc), mel_cepstra(syn_wav, sample_rate, n_mfcc))


# ---------------------------------------------------------------------------- F0
@dataclass(frozen=True)
class F0Config:
    fmin: float = 55.0
    fmax: float = 500.0
    frame_length: int = 1024
    hop_length: int = 256
    sample_rate: int = 22050

    def __post_init__(self) -> None:
        for name in ("frame_length", "hop_length", "sample_rate"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"F0Config.{name} must be a positive int, got {value!r}")
        if not 0 < self.fmin < self.fmax <= self.sample_rate / 2:
            raise ConfigError(f"F0Config needs 0 < fmin < fmax <= {self.sample_rate / 2}, "
                              f"got fmin={self.fmin}, fmax={self.fmax}")


@dataclass(frozen=True)
class F0Track:
    f0: np.ndarray  # (N,) Hz, NaN where unvoiced
    voiced: np.ndarray  # (N,) bool
    times: np.ndarray  # (N,) seconds, frame centres
    frame_period: float  # seconds between frames


def f0_track(wav: np.ndarray, config: F0Config | None = None) -> F0Track:
    """Track F0 with librosa.pyin over [fmin, fmax] at the config's frame and hop (centred frames)."""
    import librosa

    config = config or F0Config()
    wav = _check_wav(wav, "wav")
    f0, voiced, _ = librosa.pyin(wav, fmin=config.fmin, fmax=config.fmax, sr=config.sample_rate,
                                 frame_length=config.frame_length, hop_length=config.hop_length)
    times = librosa.times_like(f0, sr=config.sample_rate, hop_length=config.hop_length)
    return F0Track(f0=f0, voiced=voiced.astype(bool), times=times,
                   frame_period=config.hop_length / config.sample_rate)


@dataclass(frozen=True)
class F0Comparison:
    gpe: float  # gross pitch error rate over jointly voiced frames (NaN if none)
    vde: float  # voicing decision error rate over all frames
    ffe: float  # F0 frame error rate over all frames
    f0_rmse_cents: float  # over jointly voiced frames (NaN if none)
    n_frames: int  # frames compared
    n_joint_voiced: int


def compare_f0(ref: F0Track, syn: F0Track) -> F0Comparison:
    """GPE, VDE, FFE and F0 RMSE of `syn` against `ref`, frame by frame over the shorter length."""
    if not math.isclose(ref.frame_period, syn.frame_period):
        raise ConfigError(f"F0 tracks have different frame periods: {ref.frame_period} s and {syn.frame_period} s")
    n = min(len(ref.f0), len(syn.f0))
    if n == 0:
        raise AudioError("compare_f0 needs tracks with at least one frame")
    ref_voiced, syn_voiced = ref.voiced[:n], syn.voiced[:n]
    joint = ref_voiced & syn_voiced
    ratio = syn.f0[:n][joint] / ref.f0[:n][joint]  # (n_joint,)
    voicing_errors = int(np.sum(ref_voiced != syn_voiced))
    gross_errors = int(np.sum(np.abs(ratio - 1.0) > GROSS_PITCH_ERROR))
    n_joint = int(joint.sum())
    if n_joint:
        gpe = gross_errors / n_joint
        rmse = float(np.sqrt(np.mean((1200.0 * np.log2(ratio)) ** 2)))
    else:
        gpe = rmse = math.nan
    return F0Comparison(gpe=gpe, vde=voicing_errors / n, ffe=(voicing_errors + gross_errors) / n,
                        f0_rmse_cents=rmse, n_frames=n, n_joint_voiced=n_joint)


# ---------------------------------------------------------------------------- timing and level
def speech_duration(wav: np.ndarray, sample_rate: int = 22050, top_db: float = 40.0) -> float:
    """Seconds of non-silent audio: intervals within `top_db` of the loudest frame (librosa.effects.split)."""
    import librosa

    wav = _check_wav(wav, "wav")
    if np.abs(wav).max() < _DB_FLOOR:  # split measures relative to the peak, so it would keep all of it
        return 0.0
    intervals = librosa.effects.split(wav, top_db=top_db, frame_length=1024, hop_length=256)  # (K, 2)
    return float(np.sum(intervals[:, 1] - intervals[:, 0])) / sample_rate


def duration_ratio(ref_wav: np.ndarray, syn_wav: np.ndarray, sample_rate: int = 22050,
                   top_db: float = 40.0) -> float:
    """Speech duration of `syn_wav` / that of `ref_wav`: > 1 means the synthesis speaks longer."""
    ref_wav, syn_wav = _check_wav(ref_wav, "ref_wav"), _check_wav(syn_wav, "syn_wav")
    ref_s = speech_duration(ref_wav, sample_rate, top_db)
    if ref_s == 0:
        raise AudioError("ref_wav is silent: its speech duration is 0")
    return speech_duration(syn_wav, sample_rate, top_db) / ref_s


def _letter_count(text: str) -> int:
    letters = sum(ch.isalpha() for ch in text)
    if letters == 0:
        raise TextError(f"speaking-rate text {text!r} has no letters")
    return letters


def speaking_rate(wav: np.ndarray, text: str, sample_rate: int = 22050, top_db: float = 40.0) -> float:
    """Letters of `text` per second of non-silent audio (digits and punctuation do not count)."""
    letters = _letter_count(text)
    seconds = speech_duration(wav, sample_rate, top_db)
    if seconds == 0:
        raise AudioError("speaking_rate: wav is silent")
    return letters / seconds


@dataclass(frozen=True)
class Energy:
    mean_db: float  # dB of the RMS over non-silent frames (power mean, then dB)
    std_db: float  # spread of the frame levels in dB over the same frames


def energy(wav: np.ndarray, frame_length: int = 1024, hop_length: int = 256, top_db: float = 40.0) -> Energy:
    """Level of the non-silent frames: those whose RMS is within `top_db` of the loudest frame."""
    import librosa

    wav = _check_wav(wav, "wav")
    frame_rms = librosa.feature.rms(y=wav, frame_length=frame_length, hop_length=hop_length)[0]  # (T,)
    frame_db = _amplitude_db(frame_rms)
    # selection relative to the peak, so a gain change shifts mean_db by exactly the gain
    loud = frame_db >= frame_db.max() - top_db
    mean_db = float(_amplitude_db(np.sqrt(np.mean(frame_rms[loud] ** 2))))
    return Energy(mean_db=mean_db, std_db=float(frame_db[loud].std()))


# ---------------------------------------------------------------------------- one utterance
@dataclass(frozen=True)
class ProsodySummary:
    duration_s: float  # whole signal
    speech_s: float  # non-silent part
    f0_mean_hz: float  # over voiced frames; NaN if none
    f0_std_hz: float
    f0_range_semitones: float  # 5th to 95th percentile of voiced F0
    voiced_fraction: float  # voiced pyin frames / all pyin frames
    energy_db: float  # Energy.mean_db
    rate: float  # letters per second of speech; NaN without text or speech


def prosody_summary(wav: np.ndarray, sample_rate: int = 22050, text: str | None = None,
                    f0_config: F0Config | None = None) -> ProsodySummary:
    """Duration, pitch, voicing, level and rate of one utterance, for reports and evaluation."""
    f0_config = f0_config or F0Config(sample_rate=sample_rate)
    if f0_config.sample_rate != sample_rate:
        raise ConfigError(f"f0_config.sample_rate ({f0_config.sample_rate}) differs from sample_rate ({sample_rate})")
    wav = _check_wav(wav, "wav")
    speech_s = speech_duration(wav, sample_rate)
    rate = _letter_count(text) / speech_s if text is not None and speech_s > 0 else math.nan
    track = f0_track(wav, f0_config)
    voiced_f0 = track.f0[track.voiced]
    if voiced_f0.size:
        low, high = np.percentile(voiced_f0, [5, 95])
        f0_mean, f0_std, f0_range = float(voiced_f0.mean()), float(voiced_f0.std()), float(12 * np.log2(high / low))
    else:
        f0_mean = f0_std = f0_range = math.nan
    return ProsodySummary(
        duration_s=len(wav) / sample_rate,
        speech_s=speech_s,
        f0_mean_hz=f0_mean, f0_std_hz=f0_std, f0_range_semitones=f0_range,
        voiced_fraction=float(track.voiced.mean()),
        energy_db=energy(wav).mean_db,
        rate=rate,
    )
