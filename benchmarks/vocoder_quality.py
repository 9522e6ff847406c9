"""Copy-synthesis quality and speed of the named vocoders on espeak-ng speech.

For every (voice, espeak pitch) pair: speak a sentence with a fresh espeak-ng (repeatable
samples), take its log-mel (audio.MelSpectrogram), vocode it back with each vocoder, and track F0
with pYIN (metrics.f0_track) on the original and on the copy. Per utterance it reports

  * f0_error: mean F0 of the copy / mean F0 of the original - 1, both over the frames voiced in
    both (a pitch shift of the whole utterance; 0.02 = 2 % = about a third of a semitone)
  * voiced_kept: frames voiced in both / frames voiced in the original
  * gpe: metrics.compare_f0's gross pitch error rate (frames off by more than 20 %)
  * mcd_db: metrics.mel_cepstral_distortion (MCD-DTW) of the copy against the original

and, per vocoder, the mean |f0_error| and voiced_kept (and GPE, MCD) over references whose own mean F0 is >= 110 Hz,
between 100 and 110 Hz, and < 100 Hz; plus the vocoding speed, seconds of audio per second of
wall time and per second of process CPU time (`--threads` torch threads, after one warm-up call,
the median over utterances). On a shared machine the wall figure drops with the load; the CPU
figure does not, and with `--threads 1` it is the speed of one idle core.

    python benchmarks/vocoder_quality.py                    # 12 voices x pitches 10, 50, 80; JSON
    python benchmarks/vocoder_quality.py --voices en-us+f3 en-us --pitches 50 --rows
    python benchmarks/vocoder_quality.py --voices en-us en-us+f3 --pitches 50 --threads 1   # speed
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from prosody_vae.audio import MelSpectrogram
from prosody_vae.corpus import DEFAULT_VOICES, EspeakSynth, Factors
from prosody_vae.metrics import compare_f0, f0_track, mel_cepstral_distortion
from prosody_vae.vocoders import available_vocoders, load_vocoder

SENTENCES = (
    "She sells sea shells by the sea shore.",
    "Would you like a cup of tea before we leave?",
    "The old lighthouse keeper watched the storm roll in.",
    "Nobody expected the results to arrive so early.",
)
BANDS = (("f0 >= 110 Hz", 110.0, np.inf), ("100-110 Hz", 100.0, 110.0), ("f0 < 100 Hz", 0.0, 100.0))


def joint_f0_error(ref, syn) -> tuple[float, float]:
    """(mean-F0 ratio - 1, fraction of the reference's voiced frames still voiced) over joint frames."""
    n = min(len(ref.f0), len(syn.f0))
    joint = ref.voiced[:n] & syn.voiced[:n]
    kept = joint.sum() / max(ref.voiced[:n].sum(), 1)
    if not joint.any():
        return float("nan"), float(kept)
    return float(syn.f0[:n][joint].mean() / ref.f0[:n][joint].mean() - 1.0), float(kept)


def _mean_or_none(values) -> float | None:
    """Mean of the non-NaN values (a copy with no jointly voiced frame has no GPE), None if none."""
    finite = [v for v in values if v == v]
    return round(statistics.mean(finite), 3) if finite else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voices", nargs="+", default=list(DEFAULT_VOICES))
    parser.add_argument("--pitches", nargs="+", type=int, default=[10, 50, 80])
    parser.add_argument("--vocoders", nargs="+", default=None, help="default: every available one")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rows", action="store_true", help="also print one line per utterance and vocoder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    names = args.vocoders or available_vocoders()
    vocoders = {name: load_vocoder(name) for name in names}
    mel_spec = MelSpectrogram()
    espeak = EspeakSynth()
    warm = torch.from_numpy(espeak.synthesize_pcm("Warm up.", Factors("en-us", 175, 50, 50, 100)).astype(np.float32) / 32768)
    for vocoder in vocoders.values():
        vocoder(mel_spec(warm[None]).transpose(1, 2))

    rows, speeds = [], {name: [] for name in names}
    for i, (voice, pitch) in enumerate((v, p) for v in args.voices for p in args.pitches):
        text = SENTENCES[i % len(SENTENCES)]
        wav = espeak.synthesize_pcm(text, Factors(voice, 175, pitch, 50, 100)).astype(np.float32) / 32768
        ref = f0_track(wav)
        ref_f0 = float(np.nanmean(ref.f0[ref.voiced])) if ref.voiced.any() else float("nan")
        mel = mel_spec(torch.from_numpy(wav)[None]).transpose(1, 2)  # (1, 80, T)
        for name, vocoder in vocoders.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            copy = vocoder(mel)[0].numpy()
            wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            audio_seconds = len(copy) / 22050
            speeds[name].append((audio_seconds / wall, audio_seconds / cpu))
            syn = f0_track(copy)
            error, kept = joint_f0_error(ref, syn)
            rows.append({"voice": voice, "pitch": pitch, "ref_f0_hz": round(ref_f0, 1), "vocoder": name,
                         "f0_error": round(error, 4), "voiced_kept": round(kept, 3),
                         "gpe": round(compare_f0(ref, syn).gpe, 3),
                         "mcd_db": round(mel_cepstral_distortion(wav, copy), 2)})
            if args.rows:
                print(json.dumps(rows[-1]), flush=True)

    summary = {}
    for name in names:
        summary[name] = {"audio_s_per_wall_s": round(statistics.median(s for s, _ in speeds[name]), 2),
                         "audio_s_per_cpu_s": round(statistics.median(s for _, s in speeds[name]), 2)}
        for band, low, high in BANDS:
            mine = [r for r in rows if r["vocoder"] == name and low <= r["ref_f0_hz"] < high]
            if not mine:
                continue
            errors = [abs(r["f0_error"]) for r in mine if r["f0_error"] == r["f0_error"]]
            summary[name][band] = {
                "n": len(mine),
                "mean_abs_f0_error": round(statistics.mean(errors), 4) if errors else None,
                "max_abs_f0_error": round(max(errors), 4) if errors else None,
                "mean_voiced_kept": round(statistics.mean(r["voiced_kept"] for r in mine), 3),
                "mean_gpe": _mean_or_none(r["gpe"] for r in mine),
                "mean_mcd_db": _mean_or_none(r["mcd_db"] for r in mine),
            }
    print(json.dumps({"threads": args.threads, "summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
