"""Does a trained model carry a reference's rate and pitch onto new texts? One JSON of numbers.

    python benchmarks/transfer_check.py --checkpoint RUN/checkpoints/last.pt --corpus CORPUS \
        [--vocoder NAME] [--device cuda] [--n-texts 4] --out transfer.json

The measurement of tests/test_transfer.py, on any checkpoint and reported rather than asserted:
two references from CORPUS/factors.csv, the extremes of requested rate + pitch (score =
pitch / 80 + rate / 180, min "slow" and max "fast"), each transferred (posterior mean) onto texts
the corpus never spoke. Per text and reference: output frames (the rate), the mean pyin F0 of the
rendered audio in semitones re 100 Hz, its voiced fraction, and the median |pyin - predicted F0|
in cents over jointly voiced frames (pitch-head models only). Per text: whether the outputs'
durations and F0 order like the references'. The expected order is read from the references'
measured duration per word and F0, not from the requested factors, so a reference pair that did
not come out as requested cannot pass by accident.

References are drawn from one voice (--voice, default en-us as in the test), because the built-in
corpus mixes voices whose own F0 differs by an octave: across voices the requested pitch says
little about the heard one. With fewer than two utterances of that voice, every row is used.

The vocoder is "source-filter" when this package has it (it voices the predicted F0, which is
what the track error measures), else the best available; the JSON says which, and whether it
reads the F0 track at all.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

# The unseen texts of tests/test_transfer.py, so the numbers compare with that test's.
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Please bring the blue box to the kitchen tomorrow.",
         "Where did you leave the old green bicycle?", "We still need apples and bread for the picnic."]


def score(row: dict) -> float:
    return int(row["pitch"]) / 80 + int(row["rate"]) / 180


def pick_references(corpus: Path, voice: str) -> tuple[dict, dict, str]:
    """(slow and low, fast and high) rows of factors.csv, and the voice they were drawn from."""
    with open(corpus / "factors.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    same_voice = [row for row in rows if row["voice"] == voice]
    if voice != "any" and len(same_voice) >= 2:
        rows = same_voice
    else:
        voice = "any"
    if len(rows) < 2:
        raise SystemExit(f"{corpus}/factors.csv: need at least two utterances, found {len(rows)}")
    return min(rows, key=score), max(rows, key=score), voice


def describe(row: dict) -> dict:
    return {"id": row["id"], "voice": row["voice"], "rate": int(row["rate"]), "pitch": int(row["pitch"]),
            "score": score(row), "duration_s": float(row["duration_s"]), "n_words": int(row["n_words"]),
            "seconds_per_word": float(row["duration_s"]) / max(int(row["n_words"]), 1),
            "f0_mean_hz": float(row["f0_mean_hz"])}


def spoken_texts(corpus: Path) -> set[str]:
    """Every transcript of metadata.csv (both columns), lower-cased, to tell unseen texts."""
    texts = set()
    for line in (corpus / "metadata.csv").read_text(encoding="utf-8").splitlines():
        texts.update(part.strip().lower() for part in line.split("|")[1:])
    return texts


def pick_vocoder(requested: str | None) -> str:
    from prosody_vae.vocoders.registry import available_vocoders, best_available_vocoder

    if requested:
        return requested
    return "source-filter" if "source-filter" in available_vocoders() else best_available_vocoder()


def finite(value: float) -> float | None:
    """JSON has no NaN: a quantity with nothing to measure is null."""
    value = float(value)
    return value if math.isfinite(value) else None


def measure(result, hop_length: int, sample_rate: int) -> list[dict]:
    """Per output: frames, stop, pyin F0 (semitones re 100 Hz), voiced fraction, track error."""
    from prosody_vae.evaluation.metrics import f0_track

    outputs = []
    predicted_tracks = result.f0 or [None] * len(result.wav)  # empty without a pitch head
    for mel, wav, hit_max, predicted in zip(result.mel, result.wav, result.hit_max_steps, predicted_tracks):
        track = f0_track(wav)
        voiced = track.voiced & np.isfinite(track.f0)
        semitones = 12 * np.log2(np.mean(track.f0[voiced]) / 100.0) if voiced.any() else math.nan
        error = math.nan
        if predicted is not None:
            # pyin's frames are centred on hop multiples, the mel's on t * hop + hop / 2: interpolate
            centres = (np.arange(len(predicted)) * hop_length + hop_length / 2) / sample_rate
            predicted_hz = np.interp(track.times, centres, predicted.cpu().numpy(), left=0.0, right=0.0)
            joint = voiced & (predicted_hz > 0)
            if joint.any():
                error = np.median(np.abs(1200 * np.log2(track.f0[joint] / predicted_hz[joint])))
        outputs.append({"frames": int(mel.shape[0]), "hit_max_steps": bool(hit_max),
                        "f0_semitones": finite(semitones), "voiced_fraction": finite(voiced.mean()),
                        "track_error_cents": finite(error)})
    return outputs


def check(checkpoint: Path, corpus: Path, vocoder: str | None, device: str, n_texts: int, voice: str,
          max_decoder_steps: int) -> dict:
    from prosody_vae import Synthesizer

    started = time.perf_counter()
    slow, fast, voice = pick_references(corpus, voice)
    references = {"slow": describe(slow), "fast": describe(fast)}
    # the order the outputs should have if the rate and pitch transfer
    expect_longer_from_slow = references["slow"]["seconds_per_word"] > references["fast"]["seconds_per_word"]
    expect_higher_from_fast = references["fast"]["f0_mean_hz"] > references["slow"]["f0_mean_hz"]
    vocoder = pick_vocoder(vocoder)
    synth = Synthesizer.from_checkpoint(checkpoint, device=device, vocoder=vocoder)
    texts = TEXTS[:n_texts]
    outputs = {}
    for name, row in (("slow", slow), ("fast", fast)):
        result = synth.tts(texts, reference=corpus / "wavs" / f"{row['id']}.wav", mode="mean",
                           max_decoder_steps=max_decoder_steps)
        outputs[name] = measure(result, synth.audio.hop_length, synth.audio.sample_rate)
    seen = spoken_texts(corpus)
    per_text = []
    for i, text in enumerate(texts):
        s, f = outputs["slow"][i], outputs["fast"][i]
        log_ratio = math.log(s["frames"] / f["frames"])
        f0_gap = None if None in (s["f0_semitones"], f["f0_semitones"]) else f["f0_semitones"] - s["f0_semitones"]
        per_text.append({
            "text": text, "spoken_by_corpus": text.lower() in seen, "slow": s, "fast": f,
            "log_duration_ratio_slow_over_fast": log_ratio,
            "f0_semitones_fast_minus_slow": f0_gap,
            "duration_order_like_references": (log_ratio > 0) == expect_longer_from_slow and log_ratio != 0,
            "f0_order_like_references": f0_gap is not None and f0_gap != 0 and (f0_gap > 0) == expect_higher_from_fast,
        })
    every_output = [o for name in outputs for o in outputs[name]]
    errors = [o["track_error_cents"] for o in every_output if o["track_error_cents"] is not None]
    gaps = [t["f0_semitones_fast_minus_slow"] for t in per_text if t["f0_semitones_fast_minus_slow"] is not None]
    return {
        "checkpoint": str(checkpoint), "corpus": str(corpus), "device": device, "vocoder": vocoder,
        "vocoder_uses_pitch": bool(getattr(synth.vocoder, "uses_pitch", False)),
        "pitch_head": bool(synth.model.config.pitch_head), "max_decoder_steps": max_decoder_steps,
        "voice": voice, "references": references,
        "reference_gap": {"log_seconds_per_word_slow_over_fast": math.log(
                              references["slow"]["seconds_per_word"] / references["fast"]["seconds_per_word"]),
                          "f0_semitones_fast_minus_slow": 12 * math.log2(
                              references["fast"]["f0_mean_hz"] / references["slow"]["f0_mean_hz"])},
        "texts": per_text,
        "summary": {
            "durations_order_like_references_on_every_text": all(t["duration_order_like_references"] for t in per_text),
            "f0_orders_like_references_on_every_text": all(t["f0_order_like_references"] for t in per_text),
            "mean_log_duration_ratio": float(np.mean([t["log_duration_ratio_slow_over_fast"] for t in per_text])),
            "mean_f0_semitones_fast_minus_slow": float(np.mean(gaps)) if gaps else None,
            "median_track_error_cents": float(np.median(errors)) if errors else None,
            "median_voiced_fraction": finite(np.median([o["voiced_fraction"] or 0.0 for o in every_output])),
            "every_output_stopped": not any(o["hit_max_steps"] for o in every_output),
        },
        "check_seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--corpus", type=Path, required=True, help="built-in corpus folder (with factors.csv)")
    parser.add_argument("--vocoder", help="default: source-filter if available, else the best available")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--n-texts", type=int, default=len(TEXTS), choices=range(1, len(TEXTS) + 1))
    parser.add_argument("--voice", default="en-us", help="draw both references from this voice ('any': all)")
    # 200 steps of r = 4 are 800 frames, twice the slowest reference's pace on these texts (as in
    # the test): a model that has not learned to stop costs seconds, not minutes
    parser.add_argument("--max-decoder-steps", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    report = check(args.checkpoint, args.corpus, args.vocoder, args.device, args.n_texts, args.voice,
                   args.max_decoder_steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    summary = report["summary"]
    print(f"{args.out}: vocoder {report['vocoder']}; durations ordered on every text: "
          f"{summary['durations_order_like_references_on_every_text']}, F0 ordered on every text: "
          f"{summary['f0_orders_like_references_on_every_text']}; median track error "
          f"{summary['median_track_error_cents']} cents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
