"""Prosody transfer from voices a model never heard: rate, pitch offset, F0 range and level, with
the register guessed and with the voice enrolled. One JSON of numbers.

    python benchmarks/unseen_voices.py --checkpoint RUN/checkpoints/best.pt --out unseen.json \
        [--voices V ...] [--targets en-us+m1 en-us+f3] [--references-per-voice 4] [--enrol 5]

For each reference voice (default HELD_OUT_VOICES of data/corpus.py: variants and accents that no
built-in training set holds), espeak-ng speaks `--references-per-voice` references of corpus-like
sentences with corpus-like factors (CorpusConfig's ranges of rate, pitch, range and level), and
`--enrol` other recordings for enrolment. Each reference is transferred (posterior mean, one seed)
onto three texts the corpus never spoke, in each `--targets` voice, twice:
- "guess":    no reference_speaker, so the model takes the nearest known register;
- "enrolled": reference_speaker = the voice, enrolled from its `--enrol` recordings.
With `--reference-range`, each also with `reference_range=True` ("guess+range", "enrolled+range"):
the output's F0 contour scaled to the reference's spread of ln F0. With `--reference-level`,
"enrolled+level" (and with both flags "enrolled+range+level"): tts(reference_level=True), the
output as much louder or softer than usual as the reference is against its voice's enrolled level.
The outputs are vocoded (source-filter where the model has a pitch head) and measured as a
listener's tools would: pyin F0 and librosa's speech split on the audio (prosody_summary).

Pitch offset is in semitones from the speaker's register: for a reference, its voice's register;
for an output, the target voice's. Both registers are pyin's geometric-mean F0 over
`--register-recordings` espeak-ng recordings of that voice at corpus-like factors, so the two
sides share one tracker and one notion of "this voice's usual pitch" (independent of the
enrolment, which sees only `--enrol` recordings). Level offset is likewise in dB from the voice's
usual level, the mean level of the same recordings: voices differ in loudness as in register,
and what a reference's speaker did is how much louder or softer than usual they spoke.

Figures, per condition: the per-text-centred Pearson r (evaluation/contour.py: each (text,
target) group centred, 95% bootstrap over references) of rate (letters/s), offset, F0 range and
level (and of F0 range from the pitch head's own F0, which tells the model's loss from the
vocoder's); how many outputs the register guess moved more than 2 semitones the wrong way (the
reference below its register and the output more than 2 st above the target's, or the reverse);
and the span of output seconds per word against the references'.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np

from prosody_vae import Synthesizer
from prosody_vae.data.corpus import HELD_OUT_VOICES, CorpusConfig, Factors, synthesize
from prosody_vae.data.sentences import make_sentence
from prosody_vae.evaluation.contour import centred_correlation
from prosody_vae.evaluation.metrics import prosody_summary

# unseen texts (benchmarks/transfer_check.py's first three)
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Please bring the blue box to the kitchen tomorrow.",
         "Where did you leave the old green bicycle?"]
WRONG_WAY_ST = 2.0
QUANTITIES = {"rate": "rate", "offset_st": None, "range_st": "f0_range_semitones", "level_db": "energy_db",
              "level_offset_db": None}


def recordings(voice: str, n: int, seed: int, corpus: CorpusConfig) -> list[tuple[str, np.ndarray]]:
    """n (text, audio) of `voice`, corpus-like sentences (4+ words) and factors, from `seed`."""
    rng, out, index = random.Random(f"unseen:{voice}:{seed}"), [], 0
    while len(out) < n:
        sentence = make_sentence(seed, index)
        index += 1
        if sentence.n_words < 4:
            continue
        factors = Factors(voice, rng.randint(*corpus.rate), rng.randint(*corpus.pitch),
                          rng.randint(*corpus.pitch_range), rng.randint(*corpus.volume))
        out.append((sentence.text, synthesize(sentence.text, factors)))
    return out


def voice_norm(voice: str, n: int, sample_rate: int, corpus: CorpusConfig) -> tuple[float, float]:
    """The voice's register (Hz, geometric mean) and usual level (dB, mean) over n recordings."""
    summaries = [prosody_summary(wav, sample_rate) for _, wav in recordings(voice, n, 7000, corpus)]
    register = math.exp(float(np.nanmean(np.log([s.f0_mean_hz for s in summaries]))))
    return register, float(np.mean([s.energy_db for s in summaries]))


def semitones(hz: float, register: float) -> float:
    return 12 * math.log2(hz / register) if hz > 0 else math.nan


def head_range_st(f0) -> float:
    """5th to 95th percentile of the pitch head's voiced F0 (Hz, 0 unvoiced) in semitones, as
    prosody_summary measures pyin's; NaN without a pitch head or voiced frames."""
    voiced = f0[f0 > 0].numpy() if f0 is not None else np.empty(0)
    if voiced.size < 2:
        return math.nan
    low, high = np.percentile(voiced, [5, 95])
    return float(12 * np.log2(high / low))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--voices", nargs="+", default=list(HELD_OUT_VOICES))
    parser.add_argument("--targets", nargs="+", default=["en-us+m1", "en-us+f3"])
    parser.add_argument("--references-per-voice", type=int, default=4)
    parser.add_argument("--enrol", type=int, default=5)
    parser.add_argument("--register-recordings", type=int, default=20)
    parser.add_argument("--vocoder", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-range", action="store_true",
                        help="also each condition with tts(reference_range=True)")
    parser.add_argument("--reference-level", action="store_true",
                        help="also the enrolled condition(s) with tts(reference_level=True)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()

    synth = Synthesizer.from_checkpoint(args.checkpoint, vocoder=args.vocoder)
    sr, corpus = synth.audio.sample_rate, CorpusConfig()
    trained = [v for v in args.voices if v in synth.speakers]
    norms = {v: voice_norm(v, args.register_recordings, sr, corpus) for v in [*args.voices, *args.targets]}
    registers, levels = ({v: norm[i] for v, norm in norms.items()} for i in (0, 1))
    # (name, enrolled, reference_range, reference_level)
    conditions = [("guess", False, False, False), ("enrolled", True, False, False)]
    if args.reference_range:
        conditions += [(f"{name}+range", enrolled, True, False) for name, enrolled, _, _ in conditions]
    if args.reference_level:  # an enrolled level is what it reads against
        conditions += [(f"{name}+level", True, ranged, True) for name, enrolled, ranged, _ in conditions if enrolled]
    rows = []
    for voice in args.voices:
        name = f"unseen:{voice}"
        synth.enroll(name, [wav for _, wav in recordings(voice, args.enrol, 5000, corpus)], save=False)
        for r, (ref_text, ref_wav) in enumerate(recordings(voice, args.references_per_voice, 6000, corpus)):
            ref = prosody_summary(ref_wav, sr, text=ref_text)
            for target in args.targets:
                for condition, enrolled, reference_range, reference_level in conditions:
                    result = synth.tts(TEXTS, reference=ref_wav, seed=args.seed, speaker=target,
                                       reference_speaker=name if enrolled else None, reference_range=reference_range,
                                       reference_level=reference_level)
                    for text, wav, f0 in zip(TEXTS, result.wav, result.f0 or [None] * len(TEXTS)):
                        out = prosody_summary(wav, sr, text=text)
                        rows.append({"condition": condition, "voice": voice, "reference": f"{voice}#{r}",
                                     "target": target, "text": text,
                                     "reference_s_per_word": ref.speech_s / len(ref_text.split()),
                                     "output_s_per_word": out.speech_s / len(text.split()),
                                     **{f"reference_{q}": getattr(ref, key) for q, key in QUANTITIES.items() if key},
                                     **{f"output_{q}": getattr(out, key) for q, key in QUANTITIES.items() if key},
                                     "reference_offset_st": semitones(ref.f0_mean_hz, registers[voice]),
                                     "output_offset_st": semitones(out.f0_mean_hz, registers[target]),
                                     "reference_level_offset_db": ref.energy_db - levels[voice],
                                     "output_level_offset_db": out.energy_db - levels[target],
                                     # the pitch head's own F0, before any vocoder or tracker
                                     "output_head_range_st": head_range_st(f0)})

    figures = {}
    for condition, *_ in conditions:
        chosen = [row for row in rows if row["condition"] == condition]
        centred = {q: centred_correlation([row[f"reference_{q}"] for row in chosen], [row[f"output_{q}"] for row in chosen],
                                          [(row["text"], row["target"]) for row in chosen],
                                          [row["reference"] for row in chosen], args.seed).__dict__
                   for q in QUANTITIES}
        wrong = [row for row in chosen
                 if (row["reference_offset_st"] < 0 and row["output_offset_st"] > WRONG_WAY_ST)
                 or (row["reference_offset_st"] > 0 and row["output_offset_st"] < -WRONG_WAY_ST)]
        centred["range_st_pitch_head"] = centred_correlation(
            [row["reference_range_st"] for row in chosen], [row["output_head_range_st"] for row in chosen],
            [(row["text"], row["target"]) for row in chosen], [row["reference"] for row in chosen], args.seed).__dict__
        figures[condition] = {
            "centred_r": centred,
            "moved_wrong_way_over_2st": len(wrong), "outputs": len(chosen),
            "worst_wrong_way_st": max((abs(row["output_offset_st"]) for row in wrong), default=0.0),
            "reference_s_per_word": [min(row["reference_s_per_word"] for row in chosen),
                                     max(row["reference_s_per_word"] for row in chosen)],
            "output_s_per_word": [min(row["output_s_per_word"] for row in chosen),
                                  max(row["output_s_per_word"] for row in chosen)],
        }
    report = {"checkpoint": str(args.checkpoint), "voices": args.voices, "voices_in_training": trained,
              "targets": args.targets, "registers_hz": {v: round(h, 1) for v, h in registers.items()},
              "usual_levels_db": {v: round(d, 2) for v, d in levels.items()},
              "enrolled_hz": {v: round(synth.enrolments[f"unseen:{v}"].f0_mean_hz, 1) for v in args.voices},
              "vocoder": getattr(synth.vocoder, "name", None) or "griffin-lim", "texts": TEXTS,
              "figures": figures, "seconds": round(time.perf_counter() - started, 1), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1, default=float))


if __name__ == "__main__":
    main()
