"""Realised against requested for the prosody knobs, transfer strength and n_samples variety.

    cp /work/demo_model/run/checkpoints/best.pt /tmp/demo.pt
    prosody-vae calibrate --checkpoint /tmp/demo.pt --data /work/demo_model/corpus
    python benchmarks/knob_sweep.py --checkpoint /tmp/demo.pt --data /work/demo_model/corpus --out /tmp/sweep

Texts are held-out sentences (sentences.py with another seed, none in the corpus); references are
corpus utterances, each used at its posterior mean. Every output is rendered with the
"source-filter" vocoder and measured on the audio: F0 by pyin (metrics.f0_track), mean and
5-95 percentile range in semitones; speaking rate as syllables per second of the speech span and
energy as in stats.py (frame levels of pitch.frame_energy_db). A knob's realised change is each
item's measure at the knob value minus (for ratios: divided by) the same item at the neutral
value, averaged over items; slope and Pearson r are fitted to realised against requested, in
the fitted units (semitones, ln ratio, dB). Writes OUT/knob_sweep.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from prosody_vae.inference.calibrate import prosody_targets, statistic_targets
from prosody_vae.inference.knobs import KNOBS
from prosody_vae.data.ljspeech import read_metadata
from prosody_vae.inference.synthesizer import Synthesizer
from prosody_vae.evaluation.metrics import f0_track
from prosody_vae.audio.pitch import frame_energy_db
from prosody_vae.data.sentences import make_sentence
from prosody_vae.data.stats import SPEECH_TOP_DB, corpus_stats, count_syllables, semitones

# how far each sweep reaches at most, in fitted units (semitones, ln ratio, dB); it stops earlier
# at the knob's calibrated range, sweeping both ends and the halfway points
EXTENT = {"pitch": 4.0, "pitch_range": math.log(1.6), "rate": math.log(1.6), "energy": 4.0}


def sweep_values(synth: Synthesizer, name: str) -> list[float]:
    knob, calibrated = KNOBS[name], synth.controls[name]
    low = max(knob.to_target(calibrated.minimum), -EXTENT[name])
    high = min(knob.to_target(calibrated.maximum), EXTENT[name])
    return [knob.from_target(t) for t in (low, low / 2, 0.0, high / 2, high)]


def measure(wav: np.ndarray, text: str, sample_rate: int, hop: int) -> np.ndarray:
    """(4,) F0 mean (st), ln F0 range (st), ln rate, energy (dB) of rendered audio."""
    track = f0_track(wav)
    voiced = semitones(track.f0[track.voiced]) if track.voiced.any() else np.array([])
    level = frame_energy_db(wav).astype(np.float64)
    loud = level >= level.max() - SPEECH_TOP_DB
    first, last = np.flatnonzero(loud)[[0, -1]]
    rate = count_syllables(text) / ((last + 1 - first) * hop / sample_rate)
    energy = 10 * np.log10(np.mean(10 ** (level[loud] / 10)))
    low, high = np.percentile(voiced, [5, 95]) if len(voiced) else (math.nan, math.nan)
    return prosody_targets(float(voiced.mean()) if len(voiced) else math.nan, float(high - low), rate, energy)


def render(synth: Synthesizer, texts: list[str], z: torch.Tensor, **kwargs) -> np.ndarray:
    """(items, 4) measures of every text spoken with every z row (items = len(z) * len(texts))."""
    items = [t for _ in range(len(z)) for t in texts]
    out = synth.tts(items, z=z.repeat_interleave(len(texts), dim=0), seed=0, **kwargs)
    return np.array([measure(w, t, synth.audio.sample_rate, synth.audio.hop_length) for w, t in zip(out.wav, items)])


def fit(requested: np.ndarray, realised: np.ndarray) -> tuple[float, float]:
    slope = float(np.polyfit(requested, realised, 1)[0])
    return slope, float(np.corrcoef(requested, realised)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-references", type=int, default=10)
    parser.add_argument("--n-texts", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, help="the corpus's feature cache (default DATA/.mel_cache)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    synth = Synthesizer.from_checkpoint(args.checkpoint, vocoder="source-filter")
    utterances = read_metadata(args.data)
    seen = {u.text for u in utterances}
    texts = [s.text for s in (make_sentence(777, i) for i in range(200)) if 6 <= s.n_words <= 10 and s.text not in seen]
    texts = texts[: args.n_texts]
    picked = np.random.default_rng(0).choice(len(utterances), args.n_references, replace=False)
    references = [utterances[i].wav_path for i in picked]
    z_refs = synth.encode(references).mean  # (R, latent)
    report: dict = {"texts": texts, "references": [str(r) for r in references], "sweeps": {}}

    baseline = render(synth, texts, z_refs)  # (items, 4)
    paths = {"pitch": ("z", "f0"), "pitch_range": ("z", "f0"), "rate": ("auto",), "energy": ("auto",)}
    rows = []
    for k, (name, knob) in enumerate(KNOBS.items()):
        for path in paths[name]:
            synth.pitch_path = "auto" if path == "auto" else path
            values = sweep_values(synth, name)
            requested = np.array([knob.to_target(v) for v in values])
            realised = []  # (values, 4) mean realised change of each quantity
            for value in values:
                measured = baseline if value == knob.neutral else render(synth, texts, z_refs, controls={name: value})
                realised.append(np.nanmean(measured - baseline, axis=0))
            realised = np.array(realised)
            own_slope, own_r = fit(requested, realised[:, k])
            cross = [fit(requested, realised[:, j])[0] for j in range(len(KNOBS))]
            label = name if path == "auto" else f"{name} ({path})"
            report["sweeps"][label] = {"values": values, "realised": realised.tolist(), "slope": own_slope,
                                       "r": own_r, "cross_slopes": cross}
            rows.append((label, own_slope, own_r, cross))
            print(f"{label}: slope {own_slope:.2f}, r {own_r:.3f}", flush=True)
    synth.pitch_path = "auto"

    strengths = [0.0, 0.25, 0.5, 0.75, 1.0]
    by_strength = np.stack([render(synth, texts, s * z_refs) for s in strengths])  # (S, items, 4)
    toward = np.sign(by_strength[-1] - by_strength[0])  # (items, 4) the reference's side of the prior mean
    steps = np.diff(by_strength, axis=0) * toward  # (S - 1, items, 4) > 0: moving towards the reference
    moved = np.abs(by_strength[-1] - by_strength[0]) > np.array([0.5, 0.05, 0.05, 0.5])  # (items, 4) beyond noise
    monotone = {q: f"{int(((steps[:, :, j] >= 0).all(axis=0) & moved[:, j]).sum())} of {int(moved[:, j].sum())}"
                for j, q in ((0, "f0_mean"), (2, "rate"))}
    means = by_strength.mean(axis=1)
    report["strength"] = {"strengths": strengths, "mean_f0_st": means[:, 0].tolist(), "mean_ln_rate": means[:, 2].tolist(),
                          "items_monotone_of_items_that_move": monotone,
                          "mean_abs_distance_to_reference": np.abs(by_strength - by_strength[-1]).mean(axis=1).tolist()}

    samples = synth.tts(texts[0], temperature=1.0, n_samples=20, seed=0)
    measured = np.array([measure(w, texts[0], synth.audio.sample_rate, synth.audio.hop_length) for w in samples.wav])
    durations = np.array([len(w) / synth.audio.sample_rate for w in samples.wav])
    low, high = np.nanpercentile(statistic_targets(corpus_stats(args.data, cache_dir=args.cache_dir)), [5, 95], axis=0)
    spread = high - low  # (4,) the corpus's 5-95 percentile spread of each quantity, fitted units
    report["n_samples"] = {
        "distinct_outputs": len({w.tobytes() for w in samples.wav}), "distinct_durations": len(set(durations.round(4))),
        "duration_s": [float(durations.min()), float(durations.max())],
        "f0_mean_st": [float(np.nanmin(measured[:, 0])), float(np.nanmax(measured[:, 0]))],
        "rate": [float(np.exp(measured[:, 2].min())), float(np.exp(measured[:, 2].max()))],
        "corpus_f0_mean_st_p5_p95": [float(low[0]), float(high[0])],
        "corpus_rate_p5_p95": [float(np.exp(low[2])), float(np.exp(high[2]))]}

    print("\n| knob | slope | r | d F0 mean (st) | d ln range | d ln rate | d energy (dB) |")
    print("|---|---|---|---|---|---|---|")
    for label, slope, r, cross in rows:
        print(f"| {label} | {slope:.2f} | {r:.3f} | " + " | ".join(f"{c:+.2f}" for c in cross) + " |")
    print("\nThe same slopes in corpus spreads (a change of the knob by its quantity's 5-95 % corpus spread, "
          "in each quantity's spread):\n\n| knob | F0 mean | F0 range | rate | energy |\n|---|---|---|---|---|")
    for label, _, _, cross in rows:
        k = list(KNOBS).index(label.split()[0])
        print(f"| {label} | " + " | ".join(f"{c * spread[k] / spread[j]:+.2f}" for j, c in enumerate(cross)) + " |")
    report["corpus_spread"] = spread.tolist()
    print("\nstrength:", json.dumps(report["strength"], indent=None))
    print("n_samples=20:", json.dumps(report["n_samples"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "knob_sweep.json").write_text(json.dumps({**report, "strength_per_item": by_strength.tolist()}, indent=1))


if __name__ == "__main__":
    main()
