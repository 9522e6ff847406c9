"""`prosody-vae` command line.

Every expected failure (a `ProsodyVAEError`, or an OSError such as an unwritable output) prints
one line on stderr and exits with status 2; `--debug` shows the full traceback instead. A bad
command line is one line too (argparse's error, without the usage block; see --help).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

import numpy as np

from .audio.mel import save_wav
from .data.corpus import VOICE_SETS, CorpusConfig, make_corpus
from .data.stats import corpus_stats, speaker_stats, speakers_path, write_speaker_stats, write_stats
from .demo import run_demo
from .evaluation.analysis import analyze_runs
from .evaluation.evaluate import evaluate
from .inference.calibrate import calibrate_checkpoint
from .inference.enrolment import enrolment_file
from .inference.synthesizer import Synthesizer, save_result
from .plugin.errors import AudioError, ProsodyVAEError, TextError
from .serve import ServeConfig, serve
from .training.config import load_config, recipe_config
from .training.trainer import train
from .version import __version__


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def cmd_make_corpus(args: argparse.Namespace) -> None:
    voices = (args.voice,) if args.voice else VOICE_SETS[args.voices]
    summary = make_corpus(args.out, CorpusConfig(n=args.n, seed=args.seed, workers=args.workers, voices=voices))
    print(summary.format())
    print(f"wrote {args.out}/metadata.csv, {args.out}/factors.csv and {args.out}/wavs/")


def cmd_stats(args: argparse.Namespace) -> None:
    rows = corpus_stats(args.data, cache_dir=args.cache_dir)
    out = args.out or args.data / "prosody_stats.csv"
    speakers = speaker_stats(rows)
    write_stats(out, rows)
    write_speaker_stats(speakers_path(out), speakers)
    f0 = [r.f0_mean_hz for r in rows if not math.isnan(r.f0_mean_hz)]  # NaN where nothing is voiced
    print(f"{len(rows)} utterances, {len(speakers)} speaker(s); median F0 "
          f"{statistics.median(f0) if f0 else math.nan:.1f} Hz, median rate "
          f"{statistics.median(r.speaking_rate for r in rows):.2f} syllables/s")
    print(f"wrote {out} and {speakers_path(out)}")


def cmd_train(args: argparse.Namespace) -> None:
    config = load_config(args.config or recipe_config(args.recipe))
    result = train(config, args.data, args.out, resume=args.resume, max_steps=args.max_steps)
    if result.checkpoint is not None:  # rank 0 reports; other ranks of a torchrun job stay quiet
        how = "stopped by signal" if result.stopped_by_signal else "finished"
        print(f"{how} at step {result.step}; checkpoint {result.checkpoint}")
        if result.metrics:
            print("validation: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(result.metrics.items())))


def cmd_demo(args: argparse.Namespace) -> None:
    report = run_demo(args.out, n_utterances=args.n, max_steps=args.max_steps, config_path=args.config,
                      max_decoder_steps=args.max_decoder_steps, voices=args.voices)
    print(report.format())
    print(f"wrote {args.out}/report.md, {args.out}/wavs/ and {args.out}/plots/ "
          f"in {report.wall_seconds / 60:.1f} min")


def _synthesizer(args: argparse.Namespace):
    return Synthesizer.from_checkpoint(args.checkpoint, device=args.device, precision=args.precision,
                                       vocoder=args.vocoder, max_reference_seconds=args.max_reference_seconds)


def _check_text(synth, text: str, where: str) -> None:
    """Encode `text` once up front, so a refused text names its flag or file line before any work."""
    try:
        synth.text.encode(text)
    except TextError as exc:
        raise TextError(f"{where}: {exc}") from None


def _wav_files(paths: list[Path]) -> list[Path]:
    """Files as given, and the .wav files inside any folder, sorted; a folder without one is an error."""
    files = []
    for path in paths:
        found = sorted(path.glob("*.wav")) if path.is_dir() else [path]
        if not found:
            raise AudioError(f"{path}: folder holds no .wav files")
        files += found
    return files


def cmd_synthesize(args: argparse.Namespace) -> None:
    synth = _synthesizer(args)
    _check_text(synth, args.text, "--text")
    if args.reference_text is not None:
        _check_text(synth, args.reference_text, "--reference-text")
    controls = {name: value for name in ("pitch", "pitch_range", "rate", "energy")
                if (value := getattr(args, name)) is not None}
    result = synth.tts(args.text, reference=args.reference, reference_text=args.reference_text, mode=args.mode,
                       temperature=args.temperature, seed=args.seed, n_samples=args.n_samples,
                       strength=args.strength, controls=controls, speaker=args.speaker,
                       reference_speaker=args.reference_speaker, pitch_mode=args.pitch_mode,
                       reference_range=args.reference_range, reference_level=args.reference_level)

    outs = [args.out] if args.n_samples == 1 else [args.out.with_name(f"{args.out.stem}_{i:02d}{args.out.suffix}")
                                                   for i in range(args.n_samples)]
    for i, out in enumerate(outs):
        save_wav(out, result.wav[i], synth.audio.sample_rate)
        stop = "no stop token (max steps)" if result.hit_max_steps[i] else f"stopped at decoder step {result.stop_step[i]}"
        print(f"wrote {out}: {len(result.wav[i]) / synth.audio.sample_rate:.2f} s, {stop}")


def cmd_calibrate(args: argparse.Namespace) -> None:
    calibration = calibrate_checkpoint(args.checkpoint, args.data, out=args.out, cache_dir=args.cache_dir)
    for knob in calibration.knobs.values():
        print(f"{knob.name:<12} {knob.minimum:+.3g} .. {knob.maximum:+.3g} {knob.unit}, path {knob.path} "
              f"(fit r2 {knob.r2:.2f}, realised gain {knob.realised_gain:.2f})")
    print(f"wrote the calibration into {args.out or args.checkpoint}")


def cmd_inspect(args: argparse.Namespace) -> None:
    card = _synthesizer(args).model_card()
    print(json.dumps(card.to_dict(), indent=1) if args.json else card.format())


def cmd_enroll(args: argparse.Namespace) -> None:
    synth = Synthesizer.from_checkpoint(args.checkpoint, vocoder="griffin-lim",  # no audio is made
                                        max_reference_seconds=args.max_reference_seconds)
    enrolment = synth.enroll(args.name, _wav_files(args.recordings))
    print(f"enrolled {enrolment.name!r}: {enrolment.f0_mean_hz:.1f} Hz mean F0 over {enrolment.voiced_seconds:.1f} s "
          f"of voiced speech in {enrolment.n_recordings} recording(s), speech level {enrolment.level_db:.1f} dBFS; "
          f"wrote {enrolment_file(args.checkpoint)}")
    print(f"use it as reference_speaker: --reference-speaker {enrolment.name}")


def cmd_transfer(args: argparse.Namespace) -> None:
    synth = _synthesizer(args)
    try:
        lines = args.texts.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TextError(f"{args.texts}: cannot read the text file ({exc})") from None
    numbered = [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise TextError(f"{args.texts}: no text lines")
    for line_no, text in numbered:
        _check_text(synth, text, f"{args.texts}:{line_no}")
    texts = [text for _, text in numbered]
    for reference in _wav_files(args.references):
        for start in range(0, len(texts), args.batch_size):
            chunk = texts[start: start + args.batch_size]
            result = synth.tts(chunk, reference=reference, mode=args.mode, temperature=args.temperature, seed=args.seed)
            paths = [args.out / reference.stem / f"{start + i:04d}.wav" for i in range(len(chunk))]
            save_result(result, paths, synth.audio.sample_rate)
        print(f"{reference}: {len(texts)} wavs in {args.out / reference.stem}")


def cmd_encode(args: argparse.Namespace) -> None:
    synth = _synthesizer(args)
    files = _wav_files(args.references)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in files:
        posterior = synth.encode(path)
        mean, std = posterior.mean[0].cpu().numpy(), posterior.std[0].cpu().numpy()
        np.save(args.out / f"{path.stem}.npy", mean)
        rows.append(",".join([path.stem, f"{float(posterior.kl[0]):.4f}", *(f"{v:.6f}" for v in mean),
                              *(f"{v:.6f}" for v in std)]))
    dims = range(len(mean))
    header = ",".join(["id", "kl_nats", *(f"mean_{d}" for d in dims), *(f"std_{d}" for d in dims)])
    (args.out / "z.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    print(f"wrote {len(files)} posterior means to {args.out}/*.npy and {args.out}/z.csv")


def cmd_interpolate(args: argparse.Namespace) -> None:
    synth = _synthesizer(args)
    _check_text(synth, args.text, "--text")
    result = synth.interpolate(args.reference_a, args.reference_b, args.text, steps=args.steps, seed=args.seed)
    paths = save_result(result, [args.out / f"step{i:02d}.wav" for i in range(args.steps)], synth.audio.sample_rate)
    print(f"wrote {len(paths)} wavs from {args.reference_a} to {args.reference_b} in {args.out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    evaluate(args.checkpoint, args.data, args.out, n_items=args.n_items, seed=args.seed,
             synthesizer=_synthesizer(args))
    print((args.out / "evaluation.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out}/evaluation.md, evaluation.json and reconstruction.png")


def cmd_analyze(args: argparse.Namespace) -> None:
    print(analyze_runs(args.runs, args.out, data_dir=args.data, max_train_batches=args.max_train_batches))
    print(f"wrote {args.out}/analysis.md, analysis.json and rate_distortion.png")


def cmd_serve(args: argparse.Namespace) -> None:
    config = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         timeout_s=args.timeout, token=args.token or os.environ.get("PROSODY_VAE_TOKEN") or None,
                         cors_origins=tuple(args.cors_origin), threads=args.threads,
                         vocoder_processes=args.vocoder_processes)
    serve(args.checkpoint, host=args.host, port=args.port, config=config, device=args.device,
          precision=args.precision, vocoder=args.vocoder, max_reference_seconds=args.max_reference_seconds)


def _add_prosody_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("mean", "sample"), default="mean", help="posterior mean or a sample")
    p.add_argument("--temperature", type=float, default=1.0, help="scale of the sampling noise (0: the mean)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same audio")


def _add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="a training checkpoint (e.g. RUN/checkpoints/best.pt)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="decoder weights; int8 (CPU only) is the fast path, MCD cost ~0.03 dB")
    p.add_argument("--vocoder", default="auto",
                   help="source-filter, hifigan-universal, hifigan-ljspeech, griffin-lim, or auto: the best "
                        "installed (source-filter for a model with a pitch head)")
    p.add_argument("--max-reference-seconds", type=float, default=30.0,
                   help="refuse longer references (they are not cut: trim them yourself)")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="prosody-vae", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"prosody_vae {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("make-corpus", help="synthesise the built-in espeak-ng prosody corpus")
    p.add_argument("--out", type=Path, required=True, help="output folder (LJSpeech layout)")
    p.add_argument("--n", type=_positive_int, default=1000, help="number of utterances")
    p.add_argument("--seed", type=int, default=0, help="same seed, byte-identical corpus")
    p.add_argument("--workers", type=_positive_int, default=2, help="processes for synthesis and F0")
    p.add_argument("--voices", choices=sorted(VOICE_SETS), default="demo",
                   help="demo: 12 espeak-ng voices; wide: 38, for a model that must generalise to voices it "
                        "never heard (train it with --recipe wide)")
    p.add_argument("--voice", help="one espeak-ng voice only (e.g. en-us+f3), in place of --voices: a "
                                   "single-speaker corpus, as LJSpeech is")
    p.set_defaults(func=cmd_make_corpus)

    p = commands.add_parser("stats", help="per-utterance F0, range, voicing, rate and energy of a corpus (CSV)")
    p.add_argument("--data", type=Path, required=True, help="LJSpeech-format folder")
    p.add_argument("--out", type=Path, help="CSV to write (default DATA/prosody_stats.csv; per-speaker "
                                            "means go beside it as NAME.speakers.csv)")
    p.add_argument("--cache-dir", type=Path, help="feature cache (default DATA/.mel_cache, shared with training)")
    p.set_defaults(func=cmd_stats)

    p = commands.add_parser("train", help="train a ProsodyTacotron (torchrun for several GPUs or nodes)")
    config = p.add_mutually_exclusive_group(required=True)
    config.add_argument("--config", type=Path, help="TOML config, e.g. recipes/demo/config.toml")
    config.add_argument("--recipe", help="a recipe shipped with the package, by name (e.g. demo)")
    p.add_argument("--data", type=Path, required=True, help="LJSpeech-format folder")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, logs, TensorBoard")
    p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in --out")
    p.add_argument("--max-steps", type=_positive_int, help="override the config's total step count")
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("demo", help="make the corpus, train, transfer, and write wavs, plots and a report")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (reused on a re-run)")
    p.add_argument("--n", type=_positive_int, default=1000, help="corpus size")
    p.add_argument("--max-steps", type=_positive_int, help="override the demo config's step count")
    p.add_argument("--max-decoder-steps", type=_positive_int,
                   help="cap free-running synthesis (default: the model config's); with --n and "
                        "--max-steps, for a quick run")
    p.add_argument("--config", type=Path, help="default: the demo recipe (recipes/demo/config.toml), or with "
                                               "--voices wide the wide recipe")
    p.add_argument("--voices", choices=sorted(VOICE_SETS), default="demo", help="the corpus's voice set "
                   "(make-corpus --voices)")
    p.set_defaults(func=cmd_demo)

    p = commands.add_parser("synthesize", help="speak one text, with a reference's prosody or a prior sample")
    _add_checkpoint(p)
    p.add_argument("--text", required=True)
    p.add_argument("--reference", type=Path, help="a wav whose prosody to transfer (none: sample the prior)")
    p.add_argument("--reference-text", help="the reference's transcript (optional, also for V+T models)")
    _add_prosody_options(p)
    p.add_argument("--strength", type=float, default=1.0,
                   help="0: the prior mean, 1: the reference's posterior mean, 1.5: exaggerated")
    p.add_argument("--n-samples", type=_positive_int, default=1, help="different draws, written as OUT_NN.wav")
    knobs = p.add_argument_group("knobs (need `prosody-vae calibrate`; `inspect` shows their ranges)")
    knobs.add_argument("--pitch", type=float, help="semitones, e.g. +2")
    knobs.add_argument("--pitch-range", type=float, help="ratio of the F0 range, e.g. 1.5")
    knobs.add_argument("--rate", type=float, help="ratio of the speaking rate, e.g. 0.8")
    knobs.add_argument("--energy", type=float, help="dB, e.g. -3")
    p.add_argument("--speaker", help="the voice to speak in, for a multi-speaker model (default: its first)")
    p.add_argument("--reference-speaker",
                   help="who speaks the reference (read by --pitch-mode absolute, V+S and V+T+S models, and "
                        "'prosody' models, which otherwise match it to the nearest voice's register)")
    p.add_argument("--pitch-mode", choices=("relative", "absolute"), default="relative",
                   help="keep the reference's pitch relative to the voice, or at its Hz (needs --reference-speaker)")
    p.add_argument("--reference-range", action="store_true",
                   help="scale the output's F0 contour to the reference's pitch range (a model with a pitch head; "
                        "heard through a pitch-driven vocoder such as source-filter)")
    p.add_argument("--reference-level", action="store_true",
                   help="make the output as much louder or softer than usual as the reference is against its "
                        "speaker's enrolled level (needs --reference-speaker, enrolled with `prosody-vae enroll`)")
    p.add_argument("--out", type=Path, required=True, help="output wav")
    p.set_defaults(func=cmd_synthesize)

    p = commands.add_parser("calibrate", help="fit the pitch, range, rate and energy knobs of a checkpoint")
    p.add_argument("--checkpoint", type=Path, required=True, help="a training checkpoint")
    p.add_argument("--data", type=Path, required=True, help="its training data (LJSpeech-format folder)")
    p.add_argument("--out", type=Path, help="checkpoint to write (default: the checkpoint itself, atomically)")
    p.add_argument("--cache-dir", type=Path, help="feature cache (default DATA/.mel_cache, shared with training)")
    p.set_defaults(func=cmd_calibrate)

    p = commands.add_parser("inspect", help="print a checkpoint's model card: sizes, KL per dim, knobs, training")
    _add_checkpoint(p)
    p.add_argument("--json", action="store_true", help="the card as JSON")
    p.set_defaults(func=cmd_inspect)

    p = commands.add_parser("enroll", help="measure the pitch register of a reference speaker the model never heard")
    p.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint to enroll against (the "
                   "enrolments are written beside it, CHECKPOINT.enrolled.json)")
    p.add_argument("--name", required=True, help="the speaker's name, for --reference-speaker later")
    p.add_argument("--recordings", type=Path, nargs="+", required=True,
                   help="wav files or folders of wavs of that speaker (5 or so sentences)")
    p.add_argument("--max-reference-seconds", type=float, default=30.0, help="refuse longer recordings")
    p.set_defaults(func=cmd_enroll)

    p = commands.add_parser("transfer", help="speak every line of a text file in the prosody of each reference")
    _add_checkpoint(p)
    p.add_argument("--texts", type=Path, required=True, help="a text file, one sentence per line")
    p.add_argument("--references", type=Path, nargs="+", required=True, help="wav files or folders of wavs")
    _add_prosody_options(p)
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--out", type=Path, required=True, help="output folder: OUT/<reference>/<line>.wav")
    p.set_defaults(func=cmd_transfer)

    p = commands.add_parser("encode", help="write the posterior of each reference (z per file)")
    _add_checkpoint(p)
    p.add_argument("--references", type=Path, nargs="+", required=True, help="wav files or folders of wavs")
    p.add_argument("--out", type=Path, required=True, help="output folder: <id>.npy and z.csv")
    p.set_defaults(func=cmd_encode)

    p = commands.add_parser("interpolate", help="speak a text with z moving from one reference to another")
    _add_checkpoint(p)
    p.add_argument("--text", required=True)
    p.add_argument("--reference-a", type=Path, required=True)
    p.add_argument("--reference-b", type=Path, required=True)
    p.add_argument("--steps", type=_positive_int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="output folder: stepNN.wav")
    p.set_defaults(func=cmd_interpolate)

    p = commands.add_parser("evaluate", help="reconstruction, transfer and prior-sampling metrics on a corpus")
    _add_checkpoint(p)
    p.add_argument("--data", type=Path, required=True, help="LJSpeech-format folder (factors.csv used if present)")
    p.add_argument("--n-items", type=_positive_int, default=8, help="held-out utterances to evaluate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("analyze", help="rate-distortion over runs and the entropy-sum diagnostic")
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="run folders (e.g. one per capacity)")
    p.add_argument("--data", type=Path, help="re-evaluate each run's best checkpoint on this corpus's splits")
    p.add_argument("--max-train-batches", type=_positive_int, default=20, help="training batches to re-evaluate")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_analyze)

    p = commands.add_parser("serve", help="an HTTP API and a web page for interactive prosody control")
    _add_checkpoint(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    p.add_argument("--port", type=_positive_int, default=8000)
    p.add_argument("--token", help="require `Authorization: Bearer TOKEN` (default: $PROSODY_VAE_TOKEN, if set)")
    p.add_argument("--cors-origin", action="append", default=[], help="allow this origin (repeatable; none: no CORS)")
    p.add_argument("--max-batch", type=_positive_int, default=8, help="items per model batch")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch waits for companions")
    p.add_argument("--max-queue", type=_positive_int, default=32, help="queued requests; beyond it: 429")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request, queueing included")
    p.add_argument("--vocoder-processes", type=int, default=1,
                   help="processes that vocode beside the model worker (0: the request threads do; "
                        "benchmarks/README.md measures both)")
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="torch intra-op threads (requests already run in parallel: worker + vocoding)")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ProsodyVAEError, OSError) as exc:
        if args.debug:
            raise
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"prosody-vae {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prosody-vae {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
