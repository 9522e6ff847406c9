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
