"""`prosody-vae` command line.

Every expected failure (a `ProsodyVAEError`) prints one line on stderr and exits with status 2;
`--debug` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import ProsodyVAEError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def cmd_make_corpus(args: argparse.Namespace) -> None:
    from .corpus import CorpusConfig, make_corpus

    summary = make_corpus(args.out, CorpusConfig(n=args.n, seed=args.seed, workers=args.workers))
    print(summary.format())
    print(f"wrote {args.out}/metadata.csv, {args.out}/factors.csv and {args.out}/wavs/")


def cmd_train(args: argparse.Namespace) -> None:
    from .config import load_config
    from .train import train

    result = train(load_config(args.config), args.data, args.out, resume=args.resume, max_steps=args.max_steps)
    if result.checkpoint is not None:  # rank 0 reports; other ranks of a torchrun job stay quiet
        how = "stopped by signal" if result.stopped_by_signal else "finished"
        print(f"{how} at step {result.step}; checkpoint {result.checkpoint}")
        if result.metrics:
            print("validation: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(result.metrics.items())))


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    report = run_demo(args.out, n_utterances=args.n, max_steps=args.max_steps, config_path=args.config)
    print(report.format())
    print(f"wrote {args.out}/report.md, {args.out}/wavs/ and {args.out}/plots/ "
          f"in {report.wall_seconds / 60:.1f} min")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prosody-vae", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"prosody_vae {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("make-corpus", help="synthesise the built-in espeak-ng prosody corpus")
    p.add_argument("--out", type=Path, required=True, help="output folder (LJSpeech layout)")
    p.add_argument("--n", type=_positive_int, default=1000, help="number of utterances")
    p.add_argument("--seed", type=int, default=0, help="same seed, byte-identical corpus")
    p.add_argument("--workers", type=_positive_int, default=2, help="processes for synthesis and F0")
    p.set_defaults(func=cmd_make_corpus)

    p = commands.add_parser("train", help="train a ProsodyTacotron (torchrun for several GPUs or nodes)")
    p.add_argument("--config", type=Path, required=True, help="TOML config, e.g. recipes/demo/config.toml")
    p.add_argument("--data", type=Path, required=True, help="LJSpeech-format folder")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, logs, TensorBoard")
    p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in --out")
    p.add_argument("--max-steps", type=_positive_int, help="override the config's total step count")
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("demo", help="make the corpus, train, transfer, and write wavs, plots and a report")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (reused on a re-run)")
    p.add_argument("--n", type=_positive_int, default=1000, help="corpus size")
    p.add_argument("--max-steps", type=_positive_int, help="override the demo config's step count")
    p.add_argument("--config", type=Path, help="default: recipes/demo/config.toml")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ProsodyVAEError as exc:
        if args.debug:
            raise
        print(f"prosody-vae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prosody-vae {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
