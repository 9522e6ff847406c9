"""The fast path against plain PyTorch, and against an older revision, as ratios from one session.

This machine's speed drifts by up to +-15% within an hour, so figures are only compared within a
round. Each round runs, one after the other, bench_train.py and bench_infer.py on the fast path,
on the plain path (speedups.py), and, with --base, on the fast path of another revision (checked
out into a temporary git worktree and imported from there):

    python benchmarks/compare_paths.py --base 718b8cc --rounds 3
    python benchmarks/compare_paths.py --preset tiny --rounds 2     # quick look

Ratios: plain / fast (how much the speed-ups earn) and fast / base (below 1: faster than before).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_json(tree: Path, script: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, str(tree / "benchmarks" / script), *args]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout)


def figures(train: dict, infer: dict) -> dict[str, float]:
    out = {"train_step_s": train["train"]["step_s_median"],
           "train_peak_rss_mib": train["train"]["peak_rss_mib_after_train"]}
    for precision, values in infer["speed"].items():
        for batch in (1, 8):
            out[f"infer_ms_per_step_{precision}_batch{batch}"] = values[f"ms_per_step_batch{batch}"]
    return out


def one_round(variants: dict[str, tuple[Path, list[str]]], common: list[str]) -> dict[str, dict[str, float]]:
    return {name: figures(run_json(tree, "bench_train.py", *common, *extra),
                          run_json(tree, "bench_infer.py", *common, *extra))
            for name, (tree, extra) in variants.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="a git revision to compare the fast path with (e.g. 718b8cc)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure, after one warm-up")
    parser.add_argument("--preset", default="tacotron2")
    args = parser.parse_args()
    common = [f"--runs={args.runs}", f"--preset={args.preset}"]
    with tempfile.TemporaryDirectory(prefix="prosody-vae-base-") as scratch:
        variants = {"fast": (REPO, ["--path=fast"]), "plain": (REPO, ["--path=plain"])}
        if args.base:
            base = Path(scratch) / "tree"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), args.base],
                           check=True, capture_output=True)
            variants["base"] = (base, [])
        try:
            rounds = [one_round(variants, common) for _ in range(args.rounds)]
        finally:
            if args.base:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False)
    pairs = [("plain", "fast")] + ([("fast", "base")] if args.base else [])
    summary = {}
    for numerator, denominator in pairs:
        for name in rounds[0][numerator]:
            if name not in rounds[0][denominator]:
                continue
            ratios = [r[numerator][name] / r[denominator][name] for r in rounds]
            summary[f"{name}: {numerator} / {denominator}"] = {
                "ratio_median": round(statistics.median(ratios), 3), "ratios": [round(x, 3) for x in ratios],
                numerator: [round(r[numerator][name], 4) for r in rounds],
                denominator: [round(r[denominator][name], 4) for r in rounds]}
    print(json.dumps({"benchmark": "paths_same_session", "preset": args.preset, "base": args.base,
                      "rounds": args.rounds, "cpu_count": os.cpu_count(), "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
