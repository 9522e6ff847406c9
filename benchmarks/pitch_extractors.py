"""Which F0 tracker should fill the feature cache: accuracy and speed of the candidates.

    prosody-vae make-corpus --out /tmp/pc --n 60 --seed 0
    python benchmarks/pitch_extractors.py --data /tmp/pc              # one JSON object

Every candidate is read on the log-mel's own frame grid (22050 Hz, hop 256, frame t centred on
sample t * 256 + 128), so tracks compare frame by frame:

- praat-ac: Praat's "To Pitch (ac)" through parselmouth (its defaults but floor 60, ceiling 600 Hz).
- praat-cc: Praat's "To Pitch (cc)", same range.
- dio: WORLD's DIO + StoneMask through pyworld (floor 60, ceiling 600 Hz).
- harvest: WORLD's Harvest through pyworld (same range).
- pyin: librosa.pyin (the tracker of prosody_vae.evaluation.metrics), frame 1024, same range.
- package: prosody_vae.audio.pitch.track_pitch, what the feature cache runs (Praat ac, edges zero-padded).

Accuracy, two ways:

1. Synthetic speech-like signals with a known F0 on every frame (`--n-synthetic`): harmonic
   glides with vibrato and spectral tilt, unvoiced stretches of noise, pauses, and noise at
   30 dB SNR. GPE (jointly voiced frames more than 20% off) and VDE (voicing decisions that
   differ, over all frames) against the truth; frames within 2 of a voicing boundary are left
   out, since where a segment begins inside a 46 ms window is a matter of convention.
2. The built-in espeak-ng corpus (`--data`): GPE and VDE of every pair of candidates, pooled
   over all frames of the corpus. No truth here: agreement between independent methods. VDE is
   also given over the frames more than 2 from a voicing change in either track, to show how
   much of the disagreement is where a voiced stretch begins or ends.

Speed: seconds of CPU for an hour of audio, one thread, each candidate on the whole corpus
(after one untimed utterance), the best of `--runs` passes. The log-mel alone and a whole cache
fill (`MelCache.get` from an empty cache: decode, log-mel, F0, energy, writes) are timed too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

SR, HOP = 22050, 256
FMIN, FMAX = 60.0, 600.0

Track = tuple[np.ndarray, np.ndarray]  # f0 Hz (T,) with 0 where unvoiced, voiced (T,) bool


def mel_frame_times(n_samples: int, offset: float = 0.0) -> np.ndarray:
    """(T,) seconds: centres of the log-mel frames, T = n_samples // HOP."""
    return (np.arange(n_samples // HOP) * HOP + HOP // 2 + offset) / SR


def onto_grid(times: np.ndarray, f0: np.ndarray, targets: np.ndarray) -> Track:
    """Resample a track given at `times` onto `targets`: voicing of the nearest frame, log-F0
    linearly interpolated between the two neighbours when both are voiced, else the nearest."""
    f0 = np.where(np.isfinite(f0) & (f0 > 0), f0, 0.0)
    pos = np.interp(targets, times, np.arange(len(times)))  # fractional index (clamped at the ends)
    near = np.rint(pos).astype(int)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(times) - 1)
    voiced = f0[near] > 0
    both = (f0[lo] > 0) & (f0[hi] > 0)
    frac = pos - lo
    log_lo, log_hi = np.log(np.maximum(f0[lo], 1e-9)), np.log(np.maximum(f0[hi], 1e-9))
    out = np.where(both, np.exp((1 - frac) * log_lo + frac * log_hi), f0[near])
    outside = (targets < times[0] - (times[1] - times[0])) | (targets > times[-1] + (times[1] - times[0]))
    voiced &= ~outside
    return np.where(voiced, out, 0.0), voiced


def praat(method: str) -> Callable[[np.ndarray], Track]:
    import parselmouth

    def track(wav: np.ndarray) -> Track:
        sound = parselmouth.Sound(wav.astype(np.float64), sampling_frequency=SR)
        if method == "ac":
            pitch = sound.to_pitch_ac(time_step=HOP / SR, pitch_floor=FMIN, pitch_ceiling=FMAX)
        else:
            pitch = sound.to_pitch_cc(time_step=HOP / SR, pitch_floor=FMIN, pitch_ceiling=FMAX)
        # parselmouth puts sample n at (n + 0.5) / SR
        return onto_grid(pitch.xs(), pitch.selected_array["frequency"], mel_frame_times(len(wav), 0.5))

    return track


def world(method: str) -> Callable[[np.ndarray], Track]:
    import pyworld

    period_ms = 1000.0 * HOP / SR

    def track(wav: np.ndarray) -> Track:
        x = wav.astype(np.float64)
        if method == "dio":
            f0, times = pyworld.dio(x, SR, f0_floor=FMIN, f0_ceil=FMAX, frame_period=period_ms)
            f0 = pyworld.stonemask(x, f0, times, SR)
        else:
            f0, times = pyworld.harvest(x, SR, f0_floor=FMIN, f0_ceil=FMAX, frame_period=period_ms)
        return onto_grid(times, f0, mel_frame_times(len(wav)))

    return track


def pyin(wav: np.ndarray) -> Track:
    import librosa

    f0, voiced, _ = librosa.pyin(wav, fmin=FMIN, fmax=FMAX, sr=SR, frame_length=1024, hop_length=HOP)
    times = librosa.times_like(f0, sr=SR, hop_length=HOP)  # centred frames: frame k at k * HOP
    return onto_grid(times, np.where(voiced, f0, 0.0), mel_frame_times(len(wav)))


def package(wav: np.ndarray) -> Track:
    from prosody_vae.audio.pitch import track_pitch

    log_f0, voiced = track_pitch(wav)
    return np.where(voiced, np.exp(log_f0), 0.0), voiced


def candidates() -> dict[str, Callable[[np.ndarray], Track]]:
    found: dict[str, Callable[[np.ndarray], Track]] = {}
    try:
        import parselmouth  # noqa: F401

        found |= {"praat-ac": praat("ac"), "praat-cc": praat("cc")}
    except ImportError:
        pass
    try:
        import pyworld  # noqa: F401

        found |= {"dio": world("dio"), "harvest": world("harvest")}
    except ImportError:
        pass
    found["pyin"] = pyin
    try:
        import prosody_vae.audio.pitch  # noqa: F401

        found["package"] = package
    except ImportError:
        pass
    return found


# ---------------------------------------------------------------------------- synthetic truth
def synthetic(seed: int, seconds: float = 3.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A speech-like test signal and its truth: (wav (N,), f0 (T,) Hz, voiced (T,), scored (T,))."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    f0_per_sample = np.zeros(n)
    kind = np.zeros(n, dtype=int)  # 0 pause, 1 voiced, 2 unvoiced noise
    start = int(0.1 * SR)
    while start < n:
        length = int(rng.uniform(0.08, 0.5) * SR)
        end = min(n, start + length)
        segment = rng.choice([1, 1, 2, 0])
        kind[start:end] = segment
        if segment == 1:
            lo, hi = np.exp(rng.uniform(np.log(70), np.log(350), size=2))
            glide = np.exp(np.linspace(np.log(lo), np.log(hi), end - start))
            vibrato = 1 + 0.02 * np.sin(2 * np.pi * rng.uniform(4, 7) * np.arange(end - start) / SR)
            f0_per_sample[start:end] = glide * vibrato
        start = end
    phase = 2 * np.pi * np.cumsum(f0_per_sample) / SR
    tilt = rng.uniform(0.6, 1.0)
    harmonics = sum(tilt ** k / k * np.sin(k * phase) * (k * f0_per_sample < SR / 2) for k in range(1, 30))
    fade = np.convolve((kind == 1).astype(float), np.hanning(221) / np.hanning(221).sum(), mode="same")
    noise = rng.standard_normal(n)
    hiss = np.convolve(noise, [1, -0.9], mode="same") * 0.15 * (kind == 2)
    wav = 0.3 * harmonics * fade + hiss
    wav += rng.standard_normal(n) * np.sqrt(np.mean(wav ** 2)) * 10 ** (-30 / 20)
    centres = np.arange(n // HOP) * HOP + HOP // 2
    voiced = kind[centres] == 1
    return wav.astype(np.float32), f0_per_sample[centres], voiced, away_from_boundaries(voiced)


def away_from_boundaries(voiced: np.ndarray, margin: int = 2) -> np.ndarray:
    """(T,) bool: frames more than `margin` frames from a change of voicing."""
    keep = np.ones(len(voiced), dtype=bool)
    for b in np.flatnonzero(np.diff(voiced.astype(int))) + 1:  # first frame after each change
        keep[max(0, b - margin): b + margin] = False
    return keep


def gpe_vde(ref: Track, est: Track, scored: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """(gross errors, jointly voiced frames, voicing errors, frames) over the scored frames."""
    (ref_f0, ref_v), (est_f0, est_v) = ref, est
    n = min(len(ref_v), len(est_v))
    keep = np.ones(n, dtype=bool) if scored is None else scored[:n]
    ref_v, est_v = ref_v[:n] & keep, est_v[:n] & keep
    joint = ref_v & est_v
    gross = int(np.sum(np.abs(est_f0[:n][joint] / ref_f0[:n][joint] - 1) > 0.2))
    return gross, int(joint.sum()), int(np.sum(ref_v != est_v)), int(keep.sum())


def rate(a: int, b: int) -> float:
    return round(a / b, 4) if b else math.nan


def load_corpus(data: Path, limit: int | None) -> list[np.ndarray]:
    from prosody_vae.audio.mel import load_wav
    from prosody_vae.data.ljspeech import read_metadata

    return [load_wav(u.wav_path, SR) for u in read_metadata(data)[:limit]]


def cache_fill_seconds(data: Path, limit: int | None) -> float:
    """CPU seconds of MelCache.get over the corpus from an empty cache: decode, log-mel, F0,
    energy and the writes, all that filling a training cache costs."""
    import tempfile

    from prosody_vae.data.ljspeech import MelCache, read_metadata

    utterances = read_metadata(data)[:limit]
    with tempfile.TemporaryDirectory() as folder:
        cache = MelCache(folder)
        start = time.process_time()
        for utt in utterances:
            cache.get(utt)
        return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an LJSpeech folder (the built-in corpus)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N utterances")
    parser.add_argument("--n-synthetic", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2, help="timed passes (best counts)")
    parser.add_argument("--skip", nargs="*", default=[], help="candidates to leave out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    methods = {k: v for k, v in candidates().items() if k not in args.skip}
    wavs = load_corpus(args.data, args.limit)
    audio_s = sum(len(w) for w in wavs) / SR
    result: dict = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "corpus": str(args.data), "utterances": len(wavs), "audio_s": round(audio_s, 1),
                    "synthetic_signals": args.n_synthetic}

    # synthetic truth
    truth = [synthetic(seed) for seed in range(args.n_synthetic)]
    synthetic_scores = {}
    for name, method in methods.items():
        totals = np.zeros(4, dtype=int)
        for wav, f0, voiced, scored in truth:
            totals += gpe_vde((f0, voiced), method(wav), scored)
        synthetic_scores[name] = {"gpe": rate(totals[0], totals[1]), "vde": rate(totals[2], totals[3])}
    result["synthetic"] = synthetic_scores

    # speed and the corpus tracks
    tracks: dict[str, list[Track]] = {}
    seconds_per_hour = {}
    for name, method in methods.items():
        method(wavs[0])  # untimed: imports, first-call setup
        best = math.inf
        for _ in range(args.runs):
            start = time.process_time()
            tracks[name] = [method(w) for w in wavs]
            best = min(best, time.process_time() - start)
        seconds_per_hour[name] = round(best / audio_s * 3600, 1)
    from prosody_vae.audio.mel import MelSpectrogram

    mel = MelSpectrogram()
    with torch.no_grad():
        start = time.process_time()
        for w in wavs:
            mel(torch.from_numpy(w))
        seconds_per_hour["log-mel"] = round((time.process_time() - start) / audio_s * 3600, 1)
    seconds_per_hour["cache fill"] = round(cache_fill_seconds(args.data, args.limit) / audio_s * 3600, 1)
    result["cpu_seconds_per_hour_of_audio"] = seconds_per_hour

    # pairwise agreement on the corpus (GPE measured relative to the first of the pair)
    agreement = {}
    names = list(methods)
    for i, ref in enumerate(names):
        for est in names[i + 1:]:
            totals, interior = np.zeros(4, dtype=int), np.zeros(4, dtype=int)
            for a, b in zip(tracks[ref], tracks[est]):
                totals += gpe_vde(a, b)
                interior += gpe_vde(a, b, away_from_boundaries(a[1]) & away_from_boundaries(b[1]))
            agreement[f"{est} vs {ref}"] = {"gpe": rate(totals[0], totals[1]), "vde": rate(totals[2], totals[3]),
                                            "vde_away_from_boundaries": rate(interior[2], interior[3])}
    result["corpus_agreement"] = agreement
    result["voiced_fraction"] = {name: rate(sum(int(v.sum()) for _, v in t), sum(len(v) for _, v in t))
                                 for name, t in tracks.items()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
