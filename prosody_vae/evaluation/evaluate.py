"""`prosody-vae evaluate`: objective prosody-control figures for one checkpoint on one corpus.

On the held-out utterances of the checkpoint's own split (data.n_val, data.seed):

- reconstruction: each utterance's text with its own recording as reference (posterior mean),
  against the recording: MCD-DTW, GPE / VDE / FFE / F0 RMSE, duration ratio;
- parallel transfer (built-in corpus only: it needs `factors.csv` to re-speak a text): the
  utterance's text is spoken by espeak-ng with another utterance's factors, and that recording is
  the reference; the output is compared with it, as above;
- contours (contour.py), for reconstruction and parallel transfer: the DTW-aligned F0 contour r
  and pause placement F1, each a mean with a 95% bootstrap interval;
- non-parallel transfer: each text with every other held-out utterance as reference; the output's
  speaking rate, F0 mean and F0 range against the reference's (Pearson r over all pairs), and the
  per-text-centred r of rate, pitch offset within the voice's range, F0 range and level, each
  with a 95% bootstrap interval over references;
- prior sampling: one text at `n_prior` seeds, temperature 1: spread of F0 mean and duration;
- speakers (a corpus whose metadata names two or more speakers; speaker_leakage.py): the
  cross-validated accuracy of a linear speaker probe on the posterior means of `n_probe` training
  utterances, against chance; and cross-speaker transfer, each held-out reference spoken in two
  other voices: how often the output is closer (resemblyzer) to the target voice than to the
  reference's, and the rate and speaker-relative F0 correlations between outputs and references.
  A multi-speaker model speaks the single-speaker conditions above in the reference's own voice;
- quality (quality.py), for each of those conditions: DNSMOS of the outputs, of their references
  and of the references' copy-synthesis through the same vocoder (the ceiling that vocoder
  allows), speaker similarity of each output to its reference, voiced fractions, and Pearson r of
  F0 mean, F0 range and speaking rate between outputs and references. Without the optional
  packages those numbers are skipped with one line naming the pip command.

Outputs are vocoded with Griffin-Lim (or the Synthesizer's vocoder), and F0 is pyin's on that
audio: a model whose mels carry no harmonics yet shows NaN F0, which the report keeps as NaN
rather than hiding. Writes evaluation.json, evaluation.md and plots into the output folder.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..audio.mel import load_wav
from ..data.corpus import Factors, synthesize
from ..data.ljspeech import read_metadata, split_train_val
from ..inference.synthesizer import Synthesizer
from ..plugin.errors import DataError
from .contour import centred_correlation, dtw_f0_correlation, mean_interval, pause_placement
from .metrics import compare_f0, duration_ratio, f0_track, mel_cepstral_distortion, prosody_summary
from .quality import QUALITY_NOTE, MissingExtraError, QualityMeter, pearson, quality_table
from .speaker_leakage import cross_speaker_transfer, enrol_voices, posterior_means, speaker_probe, summarise_pairs


@dataclass
class PairScores:
    """Output against a recording with the same text."""

    mcd_db: float
    gpe: float
    vde: float
    ffe: float
    f0_rmse_cents: float
    duration_ratio: float  # output speech seconds / recording speech seconds
    f0_contour_r: float  # DTW-aligned, mean-centred log-F0 contours (contour.py)
    pause_f1: float  # pause placement; NaN where neither pauses


def _scores(recording: np.ndarray, output: np.ndarray, sample_rate: int) -> PairScores:
    pitch = compare_f0(f0_track(recording), f0_track(output))
    return PairScores(mel_cepstral_distortion(recording, output, sample_rate), pitch.gpe, pitch.vde, pitch.ffe,
                      pitch.f0_rmse_cents, duration_ratio(recording, output, sample_rate),
                      dtw_f0_correlation(recording, output, sample_rate), pause_placement(recording, output, sample_rate).f1)


def _contour_intervals(scores: list[dict], seed: int) -> dict:
    return {name: asdict(mean_interval([s[name] for s in scores], seed)) for name in ("f0_contour_r", "pause_f1")}


# the per-sentence-centred quantities of non-parallel transfer, and how each is read from a pair
CENTRED = {"rate": "rate", "offset_st": "f0_offset_st", "range_st": "f0_range_semitones", "level_db": "energy_db"}


def _mean(values) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def evaluate(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
             n_items: int = 8, n_prior: int = 8, seed: int = 0, synthesizer=None, quality: bool = True,
             n_probe: int = 360) -> dict:
    """`quality=False` leaves out the quality section (DNSMOS, speaker similarity, voicing);
    `n_probe=0` leaves out the speaker section."""
    synth = synthesizer or Synthesizer.from_checkpoint(checkpoint)
    meter = QualityMeter.for_synthesizer(synth) if quality else None
    conditions = {}  # name -> ConditionQuality
    config, sr = synth.config, synth.audio.sample_rate
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    utterances = read_metadata(data_dir)
    training, held_out = split_train_val(utterances, config.data.n_val, config.data.seed)
    items = held_out[:n_items]
    if len(items) < 2:
        raise DataError(f"{data_dir}: evaluation needs at least 2 held-out utterances, got {len(items)}")
    recordings = {u.id: load_wav(u.wav_path, sr) for u in items}
    factors = _read_factors(data_dir)

    voice_of = lambda u: (u.speaker or "") if synth.speakers else None  # the reference's own voice
    own_voices = [voice_of(u) for u in items] if synth.speakers else None
    reconstruction = synth.tts([u.text for u in items], reference=[u.wav_path for u in items], seed=seed,
                               speaker=own_voices, reference_speaker=own_voices)
    results: dict = {"checkpoint": str(checkpoint), "data": str(data_dir), "items": [u.id for u in items],
                     "reconstruction": [asdict(_scores(recordings[u.id], w, sr))
                                        for u, w in zip(items, reconstruction.wav)]}
    results["reconstruction_contour"] = _contour_intervals(results["reconstruction"], seed)
    texts = [u.text for u in items]
    if meter:
        conditions["reconstruction"] = meter.measure(reconstruction.wav, texts, [recordings[u.id] for u in items],
                                                     reference_texts=texts)

    if factors is not None:
        parallel, references, outputs = [], [], []
        for i, u in enumerate(items):
            other = factors[items[(i + 1) % len(items)].id]  # another utterance's voice and prosody
            references.append(synthesize(u.text, other))
            speaker = other.voice if other.voice in synth.speakers else None
            outputs.append(synth.tts(u.text, reference=references[-1], seed=seed, speaker=speaker,
                                     reference_speaker=speaker).wav[0])
            parallel.append(asdict(_scores(references[-1], outputs[-1], sr)))
        results["parallel_transfer"] = parallel
        results["parallel_contour"] = _contour_intervals(parallel, seed)
        if meter:
            conditions["parallel_transfer"] = meter.measure(outputs, texts, references, reference_texts=texts)

    pairs, outputs, output_texts, output_summaries, reference_of = [], [], [], [], []
    for i, reference in enumerate(items):
        other_texts = [u.text for j, u in enumerate(items) if j != i]
        result = synth.tts(other_texts, reference=reference.wav_path, seed=seed, speaker=voice_of(reference),
                           reference_speaker=voice_of(reference))
        ref_summary = prosody_summary(recordings[reference.id], sr, text=reference.text)
        for text, wav in zip(other_texts, result.wav):
            out_summary = prosody_summary(wav, sr, text=text)
            pairs.append({"reference": reference.id, "text": text,
                          **{f"reference_{k}": v for k, v in asdict(ref_summary).items()},
                          **{f"output_{k}": v for k, v in asdict(out_summary).items()}})
            outputs.append(wav)
            output_texts.append(text)
            output_summaries.append(out_summary)
            reference_of.append(i)
    for p in pairs:  # the pitch offset within the voice's own range; the voice is the reference's
        register = _register_hz(synth, voice_of(next(u for u in items if u.id == p["reference"])), items, recordings)
        for side in ("reference", "output"):
            p[f"{side}_f0_offset_st"] = 12 * math.log2(p[f"{side}_f0_mean_hz"] / register)
    results["non_parallel_transfer"] = pairs
    results["transfer_correlation"] = {
        name: pearson([p[f"reference_{name}"] for p in pairs], [p[f"output_{name}"] for p in pairs])
        for name in ("rate", "f0_mean_hz", "f0_range_semitones", "speech_s")}
    results["transfer_centred"] = {
        name: asdict(centred_correlation([p[f"reference_{key}"] for p in pairs], [p[f"output_{key}"] for p in pairs],
                                         [p["text"] for p in pairs], [p["reference"] for p in pairs], seed))
        for name, key in CENTRED.items()}
    if meter:
        conditions["non_parallel_transfer"] = meter.measure(
            outputs, output_texts, [recordings[u.id] for u in items], reference_of, texts, output_summaries)

    prior_wavs = [synth.tts(items[0].text, temperature=1.0, seed=s).wav[0] for s in range(seed, seed + n_prior)]
    prior = [prosody_summary(wav, sr, text=items[0].text) for wav in prior_wavs]
    if meter:
        conditions["prior_sampling"] = meter.measure(prior_wavs, [items[0].text] * n_prior, output_summaries=prior)
    results["prior_sampling"] = {"text": items[0].text, "n": n_prior,
                                 "f0_mean_hz_std": float(np.nanstd([p.f0_mean_hz for p in prior])),
                                 "speech_s_std": float(np.std([p.speech_s for p in prior])),
                                 "speech_s_mean": float(np.mean([p.speech_s for p in prior]))}
    if n_probe and len({u.speaker for u in utterances}) > 1:
        results["speakers"] = _speaker_figures(synth, training, [u for u in utterances if u not in items], items,
                                               n_probe, seed)
    if meter:
        results["quality"] = {name: asdict(q) for name, q in conditions.items()}
        results["quality_skipped"] = meter.skipped
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot_item(synth, items[0], recordings[items[0].id], reconstruction, out_dir / "reconstruction.png")
    (out_dir / "evaluation.json").write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    (out_dir / "evaluation.md").write_text(_markdown(results, conditions), encoding="utf-8")
    return results


def _register_hz(synth, voice, items, recordings) -> float:
    """The register (Hz) a voice's pitch offset is taken from: the speaker table's; for a model
    without registers, the geometric mean F0 of the evaluated recordings (pyin)."""
    register = synth.reference_registers(voice, 1)[0] if voice else math.nan
    if math.isfinite(register):
        return math.exp(register)
    means = [prosody_summary(recordings[u.id], synth.audio.sample_rate).f0_mean_hz for u in items]
    return math.exp(float(np.nanmean(np.log(means))))


def _speaker_figures(synth, training: list, enrolment: list, items: list, n_probe: int, seed: int) -> dict:
    """The speaker probe on training utterances, and cross-speaker transfer from `items` (each
    voice known from utterances of `enrolment`) where resemblyzer is installed."""
    probed = training[:n_probe]
    figures = {"probe": asdict(speaker_probe(posterior_means(synth, probed), [u.speaker or "" for u in probed],
                                             seed=seed))}
    try:
        voices = enrol_voices(enrolment, synth.audio.sample_rate)
    except MissingExtraError as exc:
        return {**figures, "cross_speaker_skipped": str(exc)}
    pairs = cross_speaker_transfer(synth, items, [u.text for u in items[1:] + items[:1]], voices, seed=seed)
    if not pairs:
        return {**figures, "cross_speaker_skipped": "no held-out reference's voice has other recordings"}
    return {**figures, "cross_speaker": summarise_pairs(pairs), "cross_speaker_pairs": [asdict(p) for p in pairs]}


def _read_factors(data_dir: Path) -> Optional[dict]:
    path = data_dir / "factors.csv"
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        return {row["id"]: Factors(row["voice"], int(row["rate"]), int(row["pitch"]), int(row["pitch_range"]),
                                   int(row["volume"])) for row in csv.DictReader(f)}


def _plot_item(synth, utterance, recording: np.ndarray, result, path: Path) -> None:
    """Target and reconstructed mel, attention, and both F0 contours of one utterance."""
    from matplotlib.figure import Figure

    target = synth.reference_mel(recording).cpu()
    figure = Figure(figsize=(10, 8), layout="constrained")
    axes = figure.subplots(4, 1)
    for axis, mel, title in zip(axes[:2], (target, result.mel[0].cpu()), ("recording", "reconstruction")):
        axis.imshow(mel.T.numpy(), origin="lower", aspect="auto", interpolation="none")
        axis.set(title=f"{title}: {utterance.id}", ylabel="mel bin")
    axes[2].imshow(result.alignment[0].T.cpu().numpy(), origin="lower", aspect="auto", interpolation="none")
    axes[2].set(title="attention", xlabel="decoder step", ylabel="character")
    for wav, label in ((recording, "recording"), (result.wav[0], "reconstruction")):
        track = f0_track(wav)
        axes[3].plot(track.times, track.f0, label=label)
    axes[3].set(title="F0 (pyin)", xlabel="seconds", ylabel="Hz")
    axes[3].legend()
    figure.savefig(path, dpi=80)


def _markdown(r: dict, conditions: dict) -> str:
    def table(rows: list[dict]) -> list[str]:
        keys = list(rows[0])
        return [f"| {' | '.join(keys)} |", f"|{'---|' * len(keys)}",
                f"| {' | '.join(f'{_mean(row[k] for row in rows):.3f}' for k in keys)} |"]

    lines = ["# Evaluation", "", f"Checkpoint `{r['checkpoint']}` on `{r['data']}`, {len(r['items'])} held-out "
             "utterances. Means over items; F0 by pyin on vocoded audio (NaN: no pitch found).", "",
             "## Reconstruction (own recording as reference)", "", *table(r["reconstruction"]), ""]
    if "parallel_transfer" in r:
        lines += ["## Parallel transfer (espeak-ng re-speaks the text with another utterance's factors)", "",
                  *table(r["parallel_transfer"]), ""]
    lines += ["## Contours (DTW-aligned F0 contour r, pause placement F1; mean [95% interval], n)", "",
              "| condition | F0 contour r | pause F1 |", "|---|---|---|",
              *(f"| {name} | {_interval(r[key]['f0_contour_r'])} | {_interval(r[key]['pause_f1'])} |"
                for name, key in (("reconstruction", "reconstruction_contour"),
                                  ("parallel transfer", "parallel_contour")) if key in r), ""]
    lines += ["## Non-parallel transfer: Pearson r, reference vs output, over all pairs", "",
              "| quantity | r |", "|---|---|",
              *(f"| {k} | {v:.3f} |" for k, v in r["transfer_correlation"].items()), "",
              "Centred per output text (each text's own effect removed), 95% bootstrap interval over references:", "",
              "| quantity | r [95% interval] (pairs) |", "|---|---|",
              *(f"| {k} | {_interval(v)} |" for k, v in r["transfer_centred"].items()), "",
              "## Prior sampling", "",
              f"{r['prior_sampling']['n']} samples of one text: speech duration {r['prior_sampling']['speech_s_mean']:.2f} "
              f"± {r['prior_sampling']['speech_s_std']:.2f} s, F0 mean spread {r['prior_sampling']['f0_mean_hz_std']:.1f} Hz.",
              ""]
    if "speakers" in r:
        lines += _speaker_markdown(r["speakers"])
    if conditions:
        lines += ["## Quality", "", QUALITY_NOTE, "", *quality_table(conditions), "",
                  *(f"Skipped {measure}: {why}" for measure, why in r["quality_skipped"].items()), ""]
    lines += ["![reconstruction](reconstruction.png)"]
    return "\n".join(lines) + "\n"


def _interval(i: dict) -> str:
    return f"{i['value']:.2f} [{i['low']:.2f}, {i['high']:.2f}] (n {i['n']})"


def _speaker_markdown(figures: dict) -> list[str]:
    probe = figures["probe"]
    lines = ["## Speakers", "",
             f"Linear speaker probe on posterior means: {probe['accuracy']:.3f} accuracy ({probe['folds']}-fold "
             f"cross-validated, {probe['n_utterances']} utterances, {probe['n_speakers']} speakers; chance "
             f"{probe['chance']:.3f}).", ""]
    if "cross_speaker" in figures:
        c = figures["cross_speaker"]
        low, high = c["target_voice_wins_95ci"]
        lines += [f"Cross-speaker transfer, {c['pairs']} pairs (a held-out reference spoken in another voice):", "",
                  "| closer to target voice | similarity to target | to reference voice | rate r | relative F0 r "
                  "| relative F0 error (st) | absolute F0 error (st) |", "|---|---|---|---|---|---|---|",
                  f"| {c['target_voice_wins']:.0%} (95% CI {low:.0%}-{high:.0%}) | {c['similarity_to_target']:.3f} | "
                  f"{c['similarity_to_reference']:.3f} | {c['rate_r']:.3f} | {c['relative_f0_r']:.3f} | "
                  f"{c['relative_f0_error_st']:.2f} | {c['absolute_f0_error_st']:.2f} |", ""]
    if "cross_speaker_skipped" in figures:
        lines += [f"Skipped cross-speaker transfer: {figures['cross_speaker_skipped']}", ""]
    return lines
