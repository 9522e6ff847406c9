"""CPU inference speed of ProsodyTacotron at fp32, bf16 and int8 decoder weights, and the quality cost.

At the `tacotron2` preset with the reference implementation's settings (r = 2, DCA attention,
"V+T" posterior, 128-d latent), 60 characters, free-running over 200 decoder steps (the stop
threshold is set out of reach so every item runs the full length):

    python benchmarks/bench_infer.py                                   # one JSON object, fast path
    python benchmarks/bench_infer.py --path plain                      # on plain PyTorch (speedups.py)
    python benchmarks/bench_infer.py --checkpoint runs/demo/checkpoints/best.pt   # + MCD

- ms per decoder step (r frames per item) at batch 1 and batch 8, per precision. A step's time is
  (time of a `steps`-step call - time of a 1-step call) / (steps - 1), so text encoding and set-up
  do not count; the postnet, which runs over every frame, does.
- mel frames per second per item at batch 1 and 8, and the whole batch's frames per second at
  batch 8 over batch 1 (at most 8: the 8 items share each weight read, so the ratio says how well
  batching amortises the weights; bench_train.py's `infer_batch8_vs_batch1_mel_frames_per_s`).
- real-time factor at batch 1: seconds of compute per second of audio (22.05 kHz, hop 256).
- with --checkpoint: MCD-DTW (dB) between the fp32 mel and each reduced precision's mel for the
  same texts and seed (so the same prior draw of z and prenet-dropout noise); cepstra of the
  log-mel (metrics.cepstra_of_log_mel), so no vocoder noise enters the figure; and whether every
  text stopped at the same step.

The machine may be shared: precisions and batch sizes are interleaved within each round, so slow
phases hit all of them alike; each figure is the median of `--runs` rounds after `--warmup`.
Torch threads = the machine's cores unless --threads is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings

import torch

from prosody_vae.plugin import speedups
from prosody_vae.inference.quantize import PRECISIONS, reduce_precision
from prosody_vae.model.tacotron import ProsodyTacotron, TacotronConfig

TEXTS = ["The boat arrived at noon, and nobody was waiting.", "Did you really see it?",
         "Bread, milk and honey!", "She sells sea shells by the shore."]


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def bench_speed(model: ProsodyTacotron, chars: int, steps: int, warmup: int, runs: int) -> dict:
    model.eval()
    config = model.config
    config.stop_threshold = 1 - 1e-12  # never stop: every call runs exactly the steps asked for
    models = {precision: reduce_precision(model, precision) for precision in PRECISIONS}

    def decode(precision: str, batch: int, n_steps: int) -> None:
        text = torch.randint(3, config.n_symbols, (batch, chars))
        generators = [torch.Generator().manual_seed(i) for i in range(batch)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the max-steps warning is expected here
            models[precision].infer(text, torch.full((batch,), chars), max_decoder_steps=n_steps,
                                    generator=generators)

    cases = [(precision, batch) for precision in PRECISIONS for batch in (1, 8)]
    for precision, batch in cases * warmup:
        decode(precision, batch, steps)
    long, short = ({case: [] for case in cases} for _ in range(2))
    for _ in range(runs):
        for case in cases:
            long[case].append(seconds(lambda: decode(*case, steps)))
            short[case].append(seconds(lambda: decode(*case, 1)))
    audio_seconds_per_step = config.reduction_factor * 256 / 22050
    result = {}
    for precision in PRECISIONS:
        per_step = {batch: (statistics.median(long[precision, batch]) - statistics.median(short[precision, batch]))
                    / (steps - 1) for batch in (1, 8)}
        throughput = {batch: batch * config.reduction_factor / per_step[batch] for batch in (1, 8)}
        result[precision] = {
            "ms_per_step_batch1": per_step[1] * 1e3, "ms_per_step_batch8": per_step[8] * 1e3,
            "frames_per_s_per_item_batch1": throughput[1], "frames_per_s_per_item_batch8": throughput[8] / 8,
            "frames_per_s_batch8_vs_batch1": throughput[8] / throughput[1],
            "real_time_factor_batch1": per_step[1] / audio_seconds_per_step,
        }
    for precision in PRECISIONS:
        result[precision]["speedup_batch1_vs_fp32"] = (result["fp32"]["ms_per_step_batch1"]
                                                       / result[precision]["ms_per_step_batch1"])
    return result


def bench_quality(checkpoint: str, texts: list[str]) -> dict:
    from prosody_vae.inference.synthesizer import Synthesizer
    from prosody_vae.evaluation.metrics import cepstra_of_log_mel, mcd_from_cepstra

    outputs = {precision: Synthesizer.from_checkpoint(checkpoint, precision=precision).tts(texts, seed=0, vocode=False)
               for precision in PRECISIONS}
    reference = outputs["fp32"]
    result = {}
    for precision in PRECISIONS[1:]:
        mcd = [mcd_from_cepstra(cepstra_of_log_mel(a.numpy()), cepstra_of_log_mel(b.numpy()))
               for a, b in zip(reference.mel, outputs[precision].mel)]
        result[precision] = {"mcd_dtw_db_vs_fp32": mcd, "mcd_dtw_db_vs_fp32_mean": statistics.mean(mcd),
                             "same_stop_steps": outputs[precision].stop_step == reference.stop_step}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tacotron2")
    parser.add_argument("--attention", default="dca", choices=("location", "forward", "dca"))
    parser.add_argument("--posterior", default="V+T", choices=("V", "V+T"))
    parser.add_argument("--latent", type=int, default=128)
    parser.add_argument("--r", type=int, default=2)
    parser.add_argument("--chars", type=int, default=60)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--path", default="fast", choices=("fast", "plain"),
                        help="the CPU speed-ups (speedups.py), or plain PyTorch")
    parser.add_argument("--checkpoint", help="a trained checkpoint: also measure MCD-DTW of bf16/int8 vs fp32")
    args = parser.parse_args()

    speedups.set_fast_path(args.path == "fast")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = TacotronConfig.preset(args.preset, attention_kind=args.attention, posterior=args.posterior,
                                   latent_dim=args.latent, reduction_factor=args.r)
    model = ProsodyTacotron(config)
    result = {"preset": args.preset, "attention": args.attention, "posterior": args.posterior,
              "latent": args.latent, "r": args.r, "parameters": sum(p.numel() for p in model.parameters()),
              "threads": args.threads, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "load_average_at_start": os.getloadavg(),
              "chars": args.chars, "steps": args.steps, "runs": args.runs, "path": args.path,
              "speed": bench_speed(model, args.chars, args.steps, args.warmup, args.runs)}
    result["load_average_at_end"] = os.getloadavg()  # other processes on the machine slow every figure
    if args.checkpoint:
        result["quality"] = {"checkpoint": args.checkpoint, "texts": TEXTS, **bench_quality(args.checkpoint, TEXTS)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
