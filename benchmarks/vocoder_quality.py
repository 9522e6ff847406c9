"""Copy-synthesis quality and speed of the named vocoders on espeak-ng speech.

References are either fresh espeak-ng utterances, one per (voice, espeak pitch) pair (repeatable
samples), or with `--corpus DIR` the wavs of a built-in corpus (`prosody-vae make-corpus --out DIR`).
For each: take its log-mel (audio.MelSpectrogram) and its pYIN F0 track (metrics.f0_track, whose
frame n is centred at sample n * 256, half a hop from mel frame n: close enough, 0.3 % of a glide
per frame), vocode the mel back with each vocoder (a pitch-aware one, `uses_pitch`, also gets that
track with 0 where unvoiced), and track F0 of the copy. With `--mels real smooth` each reference is
also vocoded from a SMOOTHED mel: its cepstrum along the mel axis cut to the first `--smooth-keep`
of 80 coefficients, which removes the harmonic ripple of the low bands, as a CPU-trained model's
smooth mels lack it. Per utterance, vocoder and mel it reports

  * f0_error: mean F0 of the copy / mean F0 of the original - 1, both over the frames voiced in
    both (a pitch shift of the whole utterance; 0.02 = 2 % = about a third of a semitone)
  * f0_frame_error: mean over those frames of |F0 of the copy / of the original - 1| (contour error)
  * voiced_kept: frames voiced in both / frames voiced in the original
  * voiced_fraction, ref_voiced_fraction: share of pYIN frames voiced in the copy, in the original
  * gpe: metrics.compare_f0's gross pitch error rate (frames off by more than 20 %)
  * mcd_db: metrics.mel_cepstral_distortion (MCD-DTW) of the copy against the original
  * dnsmos_ovrl: DNSMOS P.835 overall score (1-5, higher is better) of the copy resampled to 16 kHz,
    when the `speechmos` package is installed (`pip install --no-deps speechmos`: it declares no
    dependencies and runs ONNX models it ships, with onnxruntime and librosa); ref_dnsmos_ovrl of
    the original. DNSMOS was trained on noisy recorded speech, not on formant synthesis: espeak-ng
    originals themselves score about 2.

and, per vocoder and mel, the means over references whose own mean F0 is >= 110 Hz, between 100 and
110 Hz, and < 100 Hz, and over all; plus the vocoding speed, seconds of audio per second of wall time
and per second of process CPU time (`--threads` torch threads, after one warm-up call, the median
over utterances). On a shared machine the wall figure drops with the load; the CPU figure does not,
and with `--threads 1` it is the speed of one idle core.

"source-filter:minimum" (benchmark only) imposes the envelope with minimum phase instead of zero
phase; "source-filter>hifigan-universal" (benchmark only) vocodes with source-filter, takes the mel of that,
and gives it to HiFi-GAN: the harmonic fine structure rendered into the mel for HiFi-GAN to voice.

    python benchmarks/vocoder_quality.py                    # 12 voices x pitches 10, 50, 80; JSON
    python benchmarks/vocoder_quality.py --voices en-us+f3 en-us --pitches 50 --rows
    python benchmarks/vocoder_quality.py --voices en-us en-us+f3 --pitches 50 --threads 1   # speed
    prosody-vae make-corpus --out /tmp/sf --n 24 --seed 0
    python benchmarks/vocoder_quality.py --corpus /tmp/sf --mels real smooth --threads 1 \\
        --vocoders source-filter hifigan-universal griffin-lim \
        source-filter:minimum 'source-filter>hifigan-universal'
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.fft
import torch

from prosody_vae.audio.mel import MelSpectrogram, load_wav
from prosody_vae.data.corpus import DEFAULT_VOICES, EspeakSynth, Factors
from prosody_vae.evaluation.metrics import compare_f0, f0_track, mel_cepstral_distortion
from prosody_vae.vocoders.source_filter import SourceFilterVocoder
from prosody_vae.vocoders.registry import available_vocoders, load_vocoder

SENTENCES = (
    "She sells sea shells by the sea shore.",
    "Would you like a cup of tea before we leave?",
    "The old lighthouse keeper watched the storm roll in.",
    "Nobody expected the results to arrive so early.",
)
BANDS = (("f0 >= 110 Hz", 110.0, np.inf), ("100-110 Hz", 100.0, 110.0), ("f0 < 100 Hz", 0.0, 100.0),
         ("all", 0.0, np.inf))
CHAIN = ">"  # "a>b": vocode with a, re-analyse, vocode that mel with b


def joint_f0_error(ref, syn) -> tuple[float, float, float]:
    """(mean-F0 ratio - 1, mean |frame ratio - 1|, fraction of the reference's voiced frames still
    voiced) over the frames voiced in both."""
    n = min(len(ref.f0), len(syn.f0))
    joint = ref.voiced[:n] & syn.voiced[:n]
    kept = joint.sum() / max(ref.voiced[:n].sum(), 1)
    if not joint.any():
        return float("nan"), float("nan"), float(kept)
    ratio = syn.f0[:n][joint] / ref.f0[:n][joint]
    return (float(syn.f0[:n][joint].mean() / ref.f0[:n][joint].mean() - 1.0), float(np.abs(ratio - 1).mean()),
            float(kept))


def smooth_mel(log_mel: torch.Tensor, keep: int) -> torch.Tensor:
    """(B, M, T) log-mel with its DCT along the mel axis cut to the first `keep` coefficients."""
    cepstrum = scipy.fft.dct(log_mel.numpy(), type=2, norm="ortho", axis=1)
    cepstrum[:, keep:] = 0
    return torch.from_numpy(scipy.fft.idct(cepstrum, type=2, norm="ortho", axis=1)).float()


def f0_on_mel_grid(track, num_frames: int) -> torch.Tensor:
    """(1, T) Hz with 0 where unvoiced, from a pYIN track (one frame longer than the mel's)."""
    f0 = np.where(track.voiced, track.f0, 0.0)[:num_frames]
    return torch.from_numpy(np.pad(f0, (0, num_frames - len(f0))))[None]


class Chained:
    """`first` (a pitch-aware vocoder), its output's mel, then `second`: (mel, f0) -> waveform."""

    uses_pitch = True

    def __init__(self, first, second, mel_spec: MelSpectrogram):
        self.first, self.second, self.mel_spec = first, second, mel_spec

    def __call__(self, log_mel: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        return self.second(self.mel_spec(self.first(log_mel, f0=f0)).transpose(1, 2))


def make_vocoder(name: str, mel_spec: MelSpectrogram):
    if name.startswith("source-filter:"):  # "source-filter:minimum": another envelope phase
        return SourceFilterVocoder(phase=name.split(":", 1)[1])
    if CHAIN in name:
        first, second = name.split(CHAIN)
        return Chained(load_vocoder(first), load_vocoder(second), mel_spec)
    return load_vocoder(name)


def vocode(vocoder, mel: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
    return vocoder(mel, f0=f0) if getattr(vocoder, "uses_pitch", False) else vocoder(mel)


def dnsmos_scorer():
    """DNSMOS OVRL of a 22.05 kHz waveform, or None when speechmos is not installed."""
    if importlib.util.find_spec("speechmos") is None:
        return None
    import librosa
    from speechmos import dnsmos

    def score(wav: np.ndarray) -> float:
        wav16 = librosa.resample(np.clip(wav, -1, 1).astype(np.float64), orig_sr=22050, target_sr=16000)
        return float(dnsmos.run(np.clip(wav16, -1, 1), 16000)["ovrl_mos"])  # resampling may overshoot 1

    return score


def references(args) -> list[tuple[str, np.ndarray]]:
    if args.corpus:
        wavs = sorted((Path(args.corpus) / "wavs").glob("*.wav"))[: args.limit]
        return [(path.stem, load_wav(path)) for path in wavs]
    espeak = EspeakSynth()
    out = []
    for i, (voice, pitch) in enumerate((v, p) for v in args.voices for p in args.pitches):
        factors = Factors(voice, 175, pitch, 50, 100)
        wav = espeak.synthesize_pcm(SENTENCES[i % len(SENTENCES)], factors).astype(np.float32) / 32768
        out.append((f"{voice} pitch {pitch}", wav))
    return out


def _mean_or_none(values, digits: int = 3) -> float | None:
    """Mean of the non-NaN values (a copy with no jointly voiced frame has no GPE), None if none."""
    finite = [v for v in values if v == v]
    return round(statistics.mean(finite), digits) if finite else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voices", nargs="+", default=list(DEFAULT_VOICES))
    parser.add_argument("--pitches", nargs="+", type=int, default=[10, 50, 80])
    parser.add_argument("--corpus", default=None, help="a make-corpus folder: its wavs/*.wav instead of espeak voices")
    parser.add_argument("--limit", type=int, default=None, help="at most this many corpus wavs")
    parser.add_argument("--vocoders", nargs="+", default=None,
                        help=f"default: every available one; 'a{CHAIN}b' chains two (see the docstring)")
    parser.add_argument("--mels", nargs="+", choices=("real", "smooth"), default=["real"])
    parser.add_argument("--smooth-keep", type=int, default=16, help="cepstral coefficients the smooth mel keeps")
    parser.add_argument("--no-dnsmos", action="store_true", help="skip DNSMOS even if speechmos is installed")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rows", action="store_true", help="also print one line per utterance and vocoder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    names = args.vocoders or available_vocoders()
    mel_spec = MelSpectrogram()
    vocoders = {name: make_vocoder(name, mel_spec) for name in names}
    dnsmos = None if args.no_dnsmos else dnsmos_scorer()
    espeak = EspeakSynth()
    warm = torch.from_numpy(espeak.synthesize_pcm("Warm up.", Factors("en-us", 175, 50, 50, 100)).astype(np.float32) / 32768)
    warm_mel = mel_spec(warm[None]).transpose(1, 2)
    for vocoder in vocoders.values():
        vocode(vocoder, warm_mel, torch.full((1, warm_mel.shape[2]), 120.0))

    rows, speeds = [], {name: [] for name in names}
    for label, wav in references(args):
        ref = f0_track(wav)
        ref_f0 = float(np.nanmean(ref.f0[ref.voiced])) if ref.voiced.any() else float("nan")
        ref_mos = round(dnsmos(wav), 3) if dnsmos else None
        real = mel_spec(torch.from_numpy(wav)[None]).transpose(1, 2)  # (1, 80, T)
        f0 = f0_on_mel_grid(ref, real.shape[2])  # (1, T)
        for kind in args.mels:
            mel = real if kind == "real" else smooth_mel(real, args.smooth_keep)
            for name, vocoder in vocoders.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                copy = vocode(vocoder, mel, f0)[0].numpy()
                wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
                audio_seconds = len(copy) / 22050
                speeds[name].append((audio_seconds / wall, audio_seconds / cpu))
                syn = f0_track(copy)
                error, frame_error, kept = joint_f0_error(ref, syn)
                rows.append({"ref": label, "ref_f0_hz": round(ref_f0, 1), "mel": kind, "vocoder": name,
                             "f0_error": round(error, 4), "f0_frame_error": round(frame_error, 4),
                             "voiced_kept": round(kept, 3), "voiced_fraction": round(float(syn.voiced.mean()), 3),
                             "ref_voiced_fraction": round(float(ref.voiced.mean()), 3),
                             "gpe": round(compare_f0(ref, syn).gpe, 3),
                             "mcd_db": round(mel_cepstral_distortion(wav, copy), 2),
                             "dnsmos_ovrl": round(dnsmos(copy), 3) if dnsmos else None, "ref_dnsmos_ovrl": ref_mos})
                if args.rows:
                    print(json.dumps(rows[-1]), flush=True)

    summary = {}
    for name in names:
        summary[name] = {"audio_s_per_wall_s": round(statistics.median(s for s, _ in speeds[name]), 2),
                         "audio_s_per_cpu_s": round(statistics.median(s for _, s in speeds[name]), 2)}
        for kind in args.mels:
            for band, low, high in BANDS:
                mine = [r for r in rows if r["vocoder"] == name and r["mel"] == kind and low <= r["ref_f0_hz"] < high]
                if not mine:
                    continue
                errors = [abs(r["f0_error"]) for r in mine if r["f0_error"] == r["f0_error"]]
                summary[name][f"{kind} mel, {band}"] = {
                    "n": len(mine),
                    "mean_abs_f0_error": round(statistics.mean(errors), 4) if errors else None,
                    "max_abs_f0_error": round(max(errors), 4) if errors else None,
                    "mean_f0_frame_error": _mean_or_none((r["f0_frame_error"] for r in mine), 4),
                    "mean_voiced_kept": round(statistics.mean(r["voiced_kept"] for r in mine), 3),
                    "mean_voiced_fraction": round(statistics.mean(r["voiced_fraction"] for r in mine), 3),
                    "mean_ref_voiced_fraction": round(statistics.mean(r["ref_voiced_fraction"] for r in mine), 3),
                    "mean_gpe": _mean_or_none(r["gpe"] for r in mine),
                    "mean_mcd_db": _mean_or_none(r["mcd_db"] for r in mine),
                    "mean_dnsmos_ovrl": _mean_or_none(r["dnsmos_ovrl"] for r in mine if r["dnsmos_ovrl"] is not None),
                    "mean_ref_dnsmos_ovrl": _mean_or_none(r["ref_dnsmos_ovrl"] for r in mine
                                                          if r["ref_dnsmos_ovrl"] is not None),
                }
    print(json.dumps({"threads": args.threads, "summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
