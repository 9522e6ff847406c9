"""CPU speed and memory of ProsodyTacotron: one training step and free-running decoder steps.

The reference configuration (the settings of Coqui TTS's Capacitron recipe): the `tacotron2`
preset (r = 2, 128-d latent) with Dynamic Convolution Attention and the "V+T" posterior, batch 16,
60 characters, 400 frames, 80 mels:

    python benchmarks/bench_train.py                  # one JSON object, fast path
    python benchmarks/bench_train.py --path plain     # the same on plain PyTorch (speedups.py)
    python benchmarks/bench_train.py --attention location --posterior V
    python benchmarks/bench_train.py --preset tiny --runs 9

benchmarks/compare_paths.py alternates both paths (and an older revision) in one session.

- train: seconds per step (forward, loss with DualAscent, backward, clipping, fused Adam) and mel
  frames per second (batch * frames / step time), peak RSS of the process after training.
- infer: milliseconds per decoder step (r frames per item) at batch 1 and batch 8, and the mel
  frames per second over the whole batch, free-running over 200
  steps (the stop threshold is set out of reach so every item runs the full length), and the
  real-time factor at batch 1 (seconds of compute per second of audio).

On the fast path, as in the trainer, glibc malloc keeps freed memory (`cpu_memory.keep_freed_memory`;
turn that off with `--default-malloc`). Torch threads = the machine's cores. Each figure is the median of `--runs` timings after
`--warmup` untimed ones. The 1-minute load average is printed with the figures: on a shared
machine, compare timings only against others taken at a similar load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
import warnings

import torch

from prosody_vae.plugin import speedups
from prosody_vae.plugin.capacity import DualAscent
from prosody_vae.training.cpu_memory import keep_freed_memory
from prosody_vae.data.ljspeech import Batch
from prosody_vae.training.losses import TacotronLoss
from prosody_vae.model.tacotron import ProsodyTacotron, TacotronConfig


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed(fn, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_train(model: ProsodyTacotron, batch_size: int, chars: int, frames: int, warmup: int, runs: int,
                bf16: bool) -> dict:
    config = model.config
    batch = Batch(ids=[str(i) for i in range(batch_size)],
                  text=torch.randint(3, config.n_symbols, (batch_size, chars)),
                  text_lengths=torch.full((batch_size,), chars),
                  mel=torch.randn(batch_size, frames, config.n_mels) - 5.0,
                  mel_lengths=torch.full((batch_size,), frames),
                  speaker_ids=torch.zeros(batch_size, dtype=torch.long))
    loss_fn, controller = TacotronLoss(), DualAscent(capacity=50.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # as the trainer
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)  # as the trainer: last step's gradients freed before the forward
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            output = model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths)
            terms = loss_fn(output, batch, controller, 0)
        terms.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        controller.update(terms.kl.detach())

    times = timed(step, warmup, runs)
    median = statistics.median(times)
    return {"step_s_median": median, "step_s_all": times, "mel_frames_per_s": batch_size * frames / median,
            "peak_rss_mib_after_train": peak_rss_mib()}


@torch.no_grad()
def bench_infer(model: ProsodyTacotron, batch_size: int, chars: int, steps: int, warmup: int, runs: int,
                bf16: bool) -> dict:
    model.eval()
    config = model.config
    text = torch.randint(3, config.n_symbols, (batch_size, chars))
    lengths = torch.full((batch_size,), chars)
    stop_threshold, config.stop_threshold = config.stop_threshold, 1 - 1e-12  # run every step

    def decode(n: int):
        with warnings.catch_warnings(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            warnings.simplefilter("ignore")  # the max-steps warning is expected here
            return model.infer(text, lengths, max_decoder_steps=n)

    # subtract a 1-step call, so encoder and set-up cost do not count as decoder-step time
    times = timed(lambda: decode(steps), warmup, runs)
    setup = timed(lambda: decode(1), warmup, runs)
    config.stop_threshold = stop_threshold
    per_step = (statistics.median(times) - statistics.median(setup)) / (steps - 1)
    audio_seconds_per_step = config.reduction_factor * 256 / 22050
    return {"batch": batch_size, "ms_per_decoder_step": per_step * 1e3,
            "mel_frames_per_s": batch_size * config.reduction_factor / per_step,
            "real_time_factor": per_step / audio_seconds_per_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tacotron2")
    parser.add_argument("--attention", default="dca", choices=["location", "forward", "dca"])
    parser.add_argument("--posterior", default="V+T", choices=["V", "V+T"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--chars", type=int, default=60)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--infer-steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (on CPUs with bf16 units)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--path", default="fast", choices=["fast", "plain"],
                        help="the CPU speed-ups (speedups.py), or plain PyTorch")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc malloc as it is (the trainer calls cpu_memory.keep_freed_memory)")
    args = parser.parse_args()
    speedups.set_fast_path(args.path == "fast")
    malloc_tuned = False if args.default_malloc or args.path == "plain" else keep_freed_memory()

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ProsodyTacotron(TacotronConfig.preset(args.preset, attention_kind=args.attention,
                                                  posterior=args.posterior))
    result = {"preset": args.preset, "attention": args.attention, "posterior": args.posterior,
              "parameters": sum(p.numel() for p in model.parameters()),
              "threads": threads, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "bf16": args.bf16, "batch": args.batch, "chars": args.chars, "frames": args.frames,
              "runs": args.runs, "path": args.path, "keep_freed_memory": malloc_tuned}
    if not args.skip_train:
        result["train"] = bench_train(model, args.batch, args.chars, args.frames, args.warmup, args.runs, args.bf16)
    result["infer"] = [bench_infer(model, b, args.chars, args.infer_steps, args.warmup, args.runs, args.bf16)
                       for b in (1, 8)]
    result["infer_batch8_vs_batch1_mel_frames_per_s"] = (result["infer"][1]["mel_frames_per_s"]
                                                        / result["infer"][0]["mel_frames_per_s"])
    result["load_average_1min"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
