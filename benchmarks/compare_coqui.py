"""Our figures against the reference implementation's, as ratios measured in one session.

This machine's speed drifts by up to +-15% within an hour, so a ratio of two figures taken at
different times can be off by as much. This script alternates the two implementations for
`--rounds` rounds and reports each round's ratio and their median:

    python benchmarks/compare_coqui.py --coqui-python /tmp/coquienv/bin/python

Per round: `bench_coqui.py` (Coqui TTS 0.28 Tacotron2 + Capacitron, in the environment of
benchmarks/coqui_requirements.txt), then our `bench_train.py` and `bench_reference.py --variant V+T`.
Ratios are ours / Coqui's, so below 1 is better: training step time, peak RSS after training,
ms per decoder step at batch 1 (both measured the same way: 200 free-running steps minus 1), and
the reference encoder + text summary forward + backward at batch 16 (Coqui's full V+T layer, and
its ReferenceEncoder module alone, the figure Coqui's quoted 85 ms matches).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_json(python: str, script: str, *args: str) -> dict:
    out = subprocess.run([python, str(HERE / script), *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def one_round(coqui_python: str, runs: int) -> dict:
    coqui = run_json(coqui_python, "bench_coqui.py", f"--runs={runs}")
    ours = run_json(sys.executable, "bench_train.py", f"--runs={runs}")
    reference = run_json(sys.executable, "bench_reference.py", "--variant=V+T", f"--runs={max(runs, 7)}")["results"][0]
    figures = {
        "train_step_s": (ours["train"]["step_s_median"], coqui["train"]["step_s_median"]),
        "peak_rss_mib": (ours["train"]["peak_rss_mib_after_train"], coqui["train"]["peak_rss_mib_after_train"]),
        "infer_ms_per_step_batch1": (ours["infer"][0]["ms_per_decoder_step"], coqui["infer"][0]["ms_per_decoder_step"]),
        "reference_vt_ms": (reference["median_ms"], coqui["reference"]["median_ms"]),
        "reference_vt_ms_vs_coqui_encoder_alone": (reference["median_ms"],
                                                   coqui["reference"]["reference_encoder_only_median_ms"]),
    }
    return {name: {"ours": a, "coqui": b, "ratio": a / b} for name, (a, b) in figures.items()} | {
        "load_average_1min": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coqui-python", default="/tmp/coquienv/bin/python",
                        help="python of the environment with coqui-tts (see benchmarks/coqui_requirements.txt)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure, after a warm-up")
    args = parser.parse_args()
    rounds = [one_round(args.coqui_python, args.runs) for _ in range(args.rounds)]
    summary = {name: {"ratio_median": statistics.median(r[name]["ratio"] for r in rounds),
                      "ratios": [round(r[name]["ratio"], 3) for r in rounds],
                      "ours": [round(r[name]["ours"], 3) for r in rounds],
                      "coqui": [round(r[name]["coqui"], 3) for r in rounds]}
               for name in rounds[0] if name != "load_average_1min"}
    print(json.dumps({"benchmark": "ours_vs_coqui_same_session", "rounds": args.rounds,
                      "cpu_count": os.cpu_count(), "summary": summary,
                      "load_average_1min": [r["load_average_1min"] for r in rounds]}, indent=1))


if __name__ == "__main__":
    main()
