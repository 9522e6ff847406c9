"""`prosody-vae demo`: the whole product on the built-in corpus, on a CPU, in about 15 minutes.

    make the espeak-ng corpus -> train the `tiny` ProsodyTacotron with dual ascent (C = 10 nats)
    -> synthesise: reconstructions, transfer from two contrasting references, prior samples, and
       (a model with speakers) one reference spoken in another voice
    -> wavs (the best installed vocoder: "source-filter" for a model with a pitch head, which
       voices the predicted F0), plots and report.md in one folder, with quality numbers (quality.py:
       DNSMOS, speaker similarity, voicing, prosody correlations) where their packages are installed

Every stage reuses what a previous run left in the folder (corpus, mel cache, checkpoints), so an
interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .audio.mel import load_wav, save_wav
from .data.corpus import VOICE_SETS, CorpusConfig, make_corpus, measure_prosody
from .data.ljspeech import read_metadata
from .evaluation.quality import (QUALITY_NOTE, ConditionQuality, MissingExtraError, QualityMeter, copy_synthesis,
                                 quality_table)
from .evaluation.speaker_leakage import cross_speaker_similarity, enrol_voices
from .inference.calibrate import calibrate_with_best
from .inference.synthesizer import Synthesizer
from .plugin.errors import ConfigError, ControlError
from .training.config import load_config, recipe_config
from .training.runlog import read_metrics
from .training.trainer import train
from .vocoders.registry import best_available_vocoder

TRANSFER_SENTENCES = ("The painter carried a wooden ladder across the river.",
                      "Did you find the golden key near the station?",
                      "We bought apples, bread and honey at the market.")
F0_FLOOR_MARGIN_HZ = 65.0  # pyin searches from 55 Hz: estimates below this sit on its floor


@dataclass
class DemoReport:
    out_dir: Path
    wall_seconds: float
    metrics: dict
    transfer: list[dict]
    vocoder: str
    quality: dict[str, ConditionQuality] = field(default_factory=dict)
    quality_skipped: dict[str, str] = field(default_factory=dict)  # measure -> why, with the pip command
    cross_voice_similarity: dict[str, float] = field(default_factory=dict)  # see _voice_similarity

    def format(self) -> str:
        return (self.out_dir / "report.md").read_text(encoding="utf-8")


def run_demo(out_dir: str | Path, n_utterances: int = 1000, max_steps: int | None = None,
             config_path: str | Path | None = None, seed: int = 0,
             max_decoder_steps: int | None = None, voices: str = "demo") -> DemoReport:
    """Run the demo into `out_dir` with the demo recipe (the wide recipe for `voices="wide"`) or
    `config_path`. `max_steps` and `max_decoder_steps` (free-running synthesis; default: the
    model config's) override the config, for a quick run. `voices`: the corpus's voice set
    (data/corpus.py, VOICE_SETS)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if voices not in VOICE_SETS:
        raise ConfigError(f"voices must be one of {', '.join(sorted(VOICE_SETS))}, got {voices!r}", field="voices")
    config = load_config(config_path or recipe_config("wide" if voices == "wide" else "demo"))
    n_voices = len(VOICE_SETS[voices])
    if config.model.n_speakers and config.model.n_speakers < n_voices:  # before minutes of corpus making
        raise ConfigError(f"{config_path or 'the recipe'}: model.n_speakers is {config.model.n_speakers}, the "
                          f"{voices!r} voice set has {n_voices} voices", field="voices")

    corpus = out_dir / "corpus"
    if not (corpus / "metadata.csv").is_file():
        print(f"[1/3] making the built-in corpus ({n_utterances} utterances, {n_voices} voices) in {corpus}", flush=True)
        print(make_corpus(corpus, CorpusConfig(n=n_utterances, seed=seed, voices=VOICE_SETS[voices])).format(),
              flush=True)
    run = out_dir / "run"
    print(f"[2/3] training ({max_steps or config.max_steps} steps) in {run}; TensorBoard: "
          f"tensorboard --logdir {run / 'tensorboard'}", flush=True)
    result = train(config, corpus, run, resume=True, max_steps=max_steps)

    print("[3/3] calibrating the knobs, synthesising and writing the report", flush=True)
    try:  # the pitch/rate/energy knobs, stored in the checkpoint and in best.pt (what the README serves)
        calibrate_with_best(result.checkpoint, corpus)
    except ControlError as exc:  # a smoke run's few utterances cannot fit them; the report then has no knobs
        print(f"knobs not calibrated: {exc}", flush=True)
    vocoder = best_available_vocoder(pitch=config.model.pitch_head)
    synth = Synthesizer.from_checkpoint(result.checkpoint, vocoder=vocoder)
    config = synth.config
    synthesis = _synthesise(synth, corpus, out_dir, seed, max_decoder_steps)
    meter = QualityMeter.for_synthesizer(synth)
    quality = _measure_quality(meter, corpus, out_dir, synthesis, synth.audio.sample_rate)
    records = read_metrics(run / "metrics.jsonl")
    validations = [r for r in records if r.get("split") == "val"]
    _plot_training(records, out_dir / "plots" / "training.png", config)
    similarity = _voice_similarity(corpus, synthesis, out_dir, synth.audio.sample_rate)
    report = DemoReport(out_dir, time.perf_counter() - started, validations[-1] if validations else {}, synthesis,
                        vocoder, quality, meter.skipped, similarity)
    _write_report(report, config)
    return report


def _contrasting_references(corpus: Path) -> dict[str, dict]:
    """The slowest-and-lowest and the fastest-and-highest utterances, by requested factors, of one
    voice (the one with the most usable utterances): the voices' own F0 differ by up to an
    octave, so across voices a "high" setting can sound lower than a "low" one."""
    with open(corpus / "factors.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    usable = [r for r in rows if float(r["duration_s"]) > 1.5] or rows  # long enough to carry a rate and a contour
    voices = [r.get("voice", "") for r in usable]
    voice = max(set(voices), key=voices.count)
    rows = [r for r in usable if r.get("voice", "") == voice]
    rate = np.array([float(r["rate"]) for r in rows])
    pitch = np.array([float(r["pitch"]) for r in rows])
    score = (rate - rate.mean()) / (rate.std() or 1.0) + (pitch - pitch.mean()) / (pitch.std() or 1.0)
    order = np.argsort(score)
    return {"slow_low": rows[order[0]], "fast_high": rows[order[-1]]}


def _synthesise(synth, corpus: Path, out_dir: Path, seed: int, max_decoder_steps: int | None) -> list[dict]:
    """Three sentences in each prosody condition, vocoded and saved; one row per output."""
    wav_dir, sample_rate = out_dir / "wavs", synth.audio.sample_rate
    texts = list(TRANSFER_SENTENCES)

    def speak(name: str, **prosody) -> list[dict]:
        out = synth.tts(texts, seed=seed, max_decoder_steps=max_decoder_steps, **prosody)
        _plot_alignments(out.alignment, out_dir / "plots" / f"alignment_{name}.png")
        return [{"condition": name, "sentence": i,
                 "wav": str(save_wav(wav_dir / f"{name}_sentence{i}.wav", wav, sample_rate).relative_to(out_dir)),
                 "seconds": len(wav) / sample_rate, "f0_mean_hz": _f0_mean(wav, sample_rate),
                 "stopped": not hit_max} for i, (wav, hit_max) in enumerate(zip(out.wav, out.hit_max_steps))]

    rows = []
    references = _contrasting_references(corpus)
    for name, ref in references.items():
        wav = load_wav(corpus / "wavs" / f"{ref['id']}.wav", sample_rate)
        save_wav(wav_dir / f"reference_{name}.wav", wav, sample_rate)
        # the same measurement on the reference's own mel (and F0) through the same vocoder: what a
        # perfect model would give
        resynthesised = copy_synthesis([wav], synth.audio, synth.vocoder, synth.griffin_lim_iterations, synth.device)[0]
        rows += [dict(r, reference_id=ref["id"], reference_rate=float(ref["rate"]),
                      reference_copy_f0_hz=_f0_mean(resynthesised, sample_rate),
                      reference_pitch=float(ref["pitch"]), reference_seconds=float(ref["duration_s"]),
                      reference_f0_hz=float(ref["f0_mean_hz"] or "nan"))
                 for r in speak(f"transfer_{name}", reference=wav, mode="mean", **_own_voice(synth, ref))]
    if len(synth.speakers) > 1:
        rows += _cross_voice(synth, corpus, references["fast_high"], speak)
    rows += speak("prior_sample", temperature=1.0)
    rows += speak("prior_mean", temperature=0.0)
    for name, value in _knob_examples(synth):
        rows += speak(f"knob_{name}_{value:.3g}", temperature=0.0, controls={name: value})
    return rows


def _knob_examples(synth) -> list[tuple[str, float]]:
    """Two settings each of the pitch and rate knobs, inside their calibrated ranges, applied to
    the prior mean: the report compares them with the `prior_mean` rows."""
    wanted = {"pitch": (-3.0, 3.0), "rate": (0.8, 1.25)}
    return [(name, min(max(value, knob.minimum), knob.maximum)) for name, values in wanted.items()
            if (knob := synth.controls.get(name)) is not None and knob.path != "none" for value in values]


def _own_voice(synth, row: dict) -> dict:
    """tts arguments that speak in the voice of a factors.csv row, the voice that speaks the
    reference (none for a model without speakers)."""
    voice = row.get("voice")
    return {"speaker": voice, "reference_speaker": voice} if voice in synth.speakers else {}


def _cross_voice(synth, corpus: Path, reference: dict, speak) -> list[dict]:
    """The reference spoken in the voice whose register lies farthest from its own, with
    pitch_mode="relative" and "absolute" (the F0 moved by the registers' difference)."""
    table = synth.speaker_table
    source = reference["voice"]
    registers = {n: table.f0_mean_hz(n) for n in synth.speakers}
    others = [n for n in synth.speakers if n != source and np.isfinite(registers[n])]
    if not (others and np.isfinite(registers.get(source, np.nan))):
        return []  # no pitch recorded for these voices (a corpus too small to have trained on each)
    target = max(others, key=lambda n: abs(np.log(registers[n] / registers[source])))
    wav = load_wav(corpus / "wavs" / f"{reference['id']}.wav", synth.audio.sample_rate)
    extra = dict(cross_reference_id=reference["id"], reference_voice=source, target_voice=target,
                 reference_f0_hz=float(reference["f0_mean_hz"] or "nan"),
                 reference_register_hz=registers[source], target_register_hz=registers[target])
    return [dict(r, pitch=pitch, **extra)
            for pitch in ("relative", "absolute")
            for r in speak(f"cross_voice_{pitch}", reference=wav, speaker=target, reference_speaker=source,
                           pitch_mode=pitch)]


def _voice_similarity(corpus: Path, rows: list[dict], out_dir: Path, sample_rate: int) -> dict[str, float]:
    """Mean resemblyzer similarity of the cross-voice outputs to the target and to the reference
    voice (each enrolled from its first ENROLMENT_UTTERANCES corpus utterances); {} without
    resemblyzer."""
    cross = [r for r in rows if r["condition"] == "cross_voice_relative"]
    if not cross:
        return {}
    wanted = {cross[0]["reference_voice"], cross[0]["target_voice"]}
    try:
        voices = enrol_voices([u for u in read_metadata(corpus) if u.speaker in wanted], sample_rate)
    except MissingExtraError:
        return {}
    outputs = [load_wav(out_dir / r["wav"], sample_rate) for r in cross]
    to_target, to_reference = cross_speaker_similarity(outputs, sample_rate, voices[cross[0]["target_voice"]],
                                                       voices[cross[0]["reference_voice"]])
    return {"to_target": float(np.mean(to_target)), "to_reference": float(np.mean(to_reference)),
            "target_wins": int(np.sum(to_target > to_reference)), "n": len(cross)}


def _measure_quality(meter: QualityMeter, corpus: Path, out_dir: Path, rows: list[dict], sample_rate: int
                     ) -> dict[str, ConditionQuality]:
    """Quality of the saved outputs (the 16-bit files a listener hears): the transfer outputs
    against their references, and the prior conditions on their own."""
    reference_texts = {u.id: u.text for u in read_metadata(corpus)}
    transfer = [r for r in rows if "reference_id" in r]
    names = list(dict.fromkeys(r["condition"] for r in transfer))  # reference order: slow/low, fast/high
    references = [load_wav(out_dir / "wavs" / f"reference_{name.removeprefix('transfer_')}.wav", sample_rate)
                  for name in names]
    ids = [next(r["reference_id"] for r in transfer if r["condition"] == name) for name in names]
    conditions = {"transfer": meter.measure(
        [load_wav(out_dir / r["wav"], sample_rate) for r in transfer],
        [TRANSFER_SENTENCES[r["sentence"]] for r in transfer], references,
        [names.index(r["condition"]) for r in transfer], [reference_texts[i] for i in ids])}
    for name in dict.fromkeys(r["condition"] for r in rows if "reference_id" not in r):
        own = [r for r in rows if r["condition"] == name]
        conditions[name] = meter.measure([load_wav(out_dir / r["wav"], sample_rate) for r in own],
                                         [TRANSFER_SENTENCES[r["sentence"]] for r in own])
    return conditions


def _f0_mean(wav: np.ndarray, sample_rate: int) -> float:
    return float(measure_prosody(wav, sample_rate).f0_mean_hz)


def _figure(rows: int, cols: int, size: tuple[float, float]):
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    figure = Figure(figsize=size, layout="constrained")
    return figure, figure.subplots(rows, cols, squeeze=False)


def _plot_alignments(alignments: list, path: Path) -> None:
    """One panel per item: alignment (decoder steps, characters)."""
    figure, axes = _figure(1, len(alignments), (4 * len(alignments), 3))
    for i, (axis, alignment) in enumerate(zip(axes[0], alignments)):
        axis.imshow(alignment.T.cpu().numpy(), origin="lower", aspect="auto", interpolation="none")
        axis.set(xlabel="decoder step", ylabel="character", title=f"sentence {i}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)


def _plot_training(records: list[dict], path: Path, config) -> None:
    train_rows = [r for r in records if r.get("split") == "train"]
    val_rows = [r for r in records if r.get("split") == "val"]
    figure, axes = _figure(1, 3, (13, 3.2))
    steps = [r["step"] for r in train_rows]
    axes[0, 0].plot(steps, [r["postnet_l1"] for r in train_rows], label="train")
    axes[0, 0].plot([r["step"] for r in val_rows], [r["postnet_l1"] for r in val_rows], "o-", label="validation")
    axes[0, 0].set(title="postnet L1", xlabel="step")
    axes[0, 0].legend()
    axes[0, 1].plot(steps, [r["kl"] for r in train_rows], label="KL")
    axes[0, 1].axhline(config.controller.capacity or 0.0, color="k", linestyle="--", label="C")
    axes[0, 1].set(title="KL (nats per utterance)", xlabel="step")
    axes[0, 1].legend()
    axes[0, 2].plot(steps, [r["beta"] for r in train_rows], color="tab:blue")
    axes[0, 2].set(title="beta (blue) and alignment score (orange)", xlabel="step", ylabel="beta")
    align_axis = axes[0, 2].twinx()
    align_axis.plot(steps, [r["align"] for r in train_rows], color="tab:orange")
    align_axis.set(ylabel="alignment score", ylim=(0, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)


def _cross_voice_lines(rows: list[dict], similarity: dict[str, float]) -> list[str]:
    by_pitch = {p: [r for r in rows if r.get("pitch") == p] for p in ("relative", "absolute")}
    if not by_pitch["relative"]:
        return []
    first = by_pitch["relative"][0]
    f0 = {p: np.mean([r["f0_mean_hz"] for r in own]) for p, own in by_pitch.items()}
    lines = ["## Across voices", "",
             f"Reference `{first['cross_reference_id']}` in voice `{first['reference_voice']}` (F0 "
             f"{first['reference_f0_hz']:.0f} Hz; the voice's register {first['reference_register_hz']:.0f} Hz), "
             f"spoken in voice `{first['target_voice']}` (register {first['target_register_hz']:.0f} Hz).", "",
             f"- output F0 {f0['relative']:.0f} Hz on average with `pitch_mode=\"relative\"`, {f0['absolute']:.0f} Hz "
             f"with `pitch_mode=\"absolute\"` (the F0 moved by the registers' difference)."]
    if similarity:
        lines.append(f"- resemblyzer similarity of the outputs to the target voice {similarity['to_target']:.2f}, to "
                     f"the reference's voice {similarity['to_reference']:.2f}: closer to the target in "
                     f"{similarity['target_wins']} of {similarity['n']}.")
    return lines + [""]


def _knob_lines(rows: list[dict]) -> list[str]:
    """Each knob setting's mean duration and F0 against the prior mean it was applied to."""
    base = [r for r in rows if r["condition"] == "prior_mean"]
    knobs = sorted({r["condition"] for r in rows if r["condition"].startswith("knob_")})
    if not (base and knobs):
        return []
    mean = lambda rs, key: float(np.nanmean([r[key] for r in rs]))
    lines = ["## Knobs", "", "Calibrated knobs (`prosody-vae inspect` lists them) applied to the prior mean, "
             "3 sentences each; F0 by pyin on the rendered audio.", "",
             "| setting | seconds | F0 mean (Hz) |", "|---|---|---|",
             f"| none (prior mean) | {mean(base, 'seconds'):.2f} | {mean(base, 'f0_mean_hz'):.0f} |"]
    for condition in knobs:
        own = [r for r in rows if r["condition"] == condition]
        name, value = condition.removeprefix("knob_").rsplit("_", 1)
        lines.append(f"| {name} {value} | {mean(own, 'seconds'):.2f} | {mean(own, 'f0_mean_hz'):.0f} |")
    return lines + [""]


def _write_report(report: DemoReport, config) -> None:
    m, rows = report.metrics, report.transfer
    capacity = config.controller.capacity
    lines = [
        "# prosody_vae demo", "",
        f"Wall time {report.wall_seconds / 60:.1f} min. Model: `tiny` preset, r = {config.model.reduction_factor}, "
        f"latent {config.model.latent_dim}, dual ascent at C = {capacity} nats.", "",
        "## Final validation (teacher-forced, held-out utterances)", "",
        "| step | postnet L1 | KL (nats) | C | beta | alignment score |", "|---|---|---|---|---|---|",
        f"| {m.get('step')} | {m.get('postnet_l1', float('nan')):.3f} | {m.get('kl', float('nan')):.2f} | "
        f"{capacity} | {m.get('beta', float('nan')):.3f} | {m.get('align', float('nan')):.3f} |", "",
        "The alignment score is the mean over decoder steps of the largest attention weight "
        "(1 = sharp, 1/L = uniform).", "",
        f"## Synthesis (free-running, vocoder `{report.vocoder}`)", "",
        "| condition | sentence | seconds | F0 mean (Hz) | stopped | wav |", "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['condition']} | {r['sentence']} | {r['seconds']:.2f} | {r['f0_mean_hz']:.0f} | "
              f"{'yes' if r['stopped'] else 'no (max steps)'} | [{Path(r['wav']).name}]({r['wav']}) |" for r in rows]
    slow = [r for r in rows if r["condition"] == "transfer_slow_low"]
    fast = [r for r in rows if r["condition"] == "transfer_fast_high"]
    if slow and fast:
        longer = sum(s["seconds"] > f["seconds"] for s, f in zip(slow, fast))
        lower = sum(s["f0_mean_hz"] < f["f0_mean_hz"] for s, f in zip(slow, fast))
        # pyin's search starts at 55 Hz; an estimate near that floor (or none) means the output mel
        # carries no clear harmonics yet, which a mel-only vocoder cannot invent
        pitched = all(r["f0_mean_hz"] > F0_FLOOR_MARGIN_HZ for r in slow + fast)
        lines += ["", "## Transfer", "",
                  f"References: slow/low `{slow[0]['reference_id']}` (rate {slow[0]['reference_rate']:.0f} wpm, "
                  f"pitch {slow[0]['reference_pitch']:.0f}, F0 {slow[0]['reference_f0_hz']:.0f} Hz) and fast/high "
                  f"`{fast[0]['reference_id']}` (rate {fast[0]['reference_rate']:.0f} wpm, pitch "
                  f"{fast[0]['reference_pitch']:.0f}, F0 {fast[0]['reference_f0_hz']:.0f} Hz).", "",
                  f"- The slow reference gave the longer output for {longer} of {len(slow)} sentences.",
                  (f"- The low reference gave the lower mean F0 for {lower} of {len(slow)} sentences "
                   f"(F0 measured by pyin on the rendered audio; on the references' own mels through the same "
                   f"vocoder it reads {slow[0]['reference_copy_f0_hz']:.0f} and {fast[0]['reference_copy_f0_hz']:.0f} Hz)."
                   if pitched else
                   "- F0 is not measurable yet: pyin finds no pitch above its floor in the outputs, while on "
                   "the references' own mels through the same vocoder it finds "
                   f"{slow[0]['reference_copy_f0_hz']:.0f} and {fast[0]['reference_copy_f0_hz']:.0f} Hz. "
                   "The output mels are still too smooth to carry harmonics: train longer, or train with "
                   "a pitch head and the source-filter vocoder."), ""]
    lines += _cross_voice_lines(rows, report.cross_voice_similarity)
    lines += _knob_lines(rows)
    if report.quality:
        lines += ["## Quality", "", QUALITY_NOTE, "", *quality_table(report.quality), "",
                  *(f"Skipped {measure}: {why}" for measure, why in report.quality_skipped.items()), ""]
    lines += ["## Plots", "", "![training](plots/training.png)", "",
              *(f"![{r}](plots/alignment_{r}.png)" for r in sorted({r['condition'] for r in rows}))]
    (report.out_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (report.out_dir / "report.json").write_text(json.dumps(
        {"wall_seconds": report.wall_seconds, "validation": m, "vocoder": report.vocoder, "synthesis": rows,
         "quality": {name: asdict(q) for name, q in report.quality.items()}, "quality_skipped": report.quality_skipped},
        indent=1), encoding="utf-8")
