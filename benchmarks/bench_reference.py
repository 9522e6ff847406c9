"""CPU throughput and peak memory of the variational reference encoder, forward + backward.

Defaults reproduce two figures, each measured in a fresh process so its peak RSS is its own:
  * "V" at Capacitron size: batch 32, 400 frames, 80 mels, latent 128.
  * "V+T" at batch 16, the setting of the Coqui comparison (Coqui's quoted "reference encoder +
    text summary alone, forward + backward, batch 16: 85 ms"). The text summary is the model's own
    (`layers.summarise_text`): an LSTM of 128 over 512-d embeddings of `--text-len` symbols,
    timed together with the encoder and the embedding's gradient.

    python benchmarks/bench_reference.py                      # both figures, one JSON object
    python benchmarks/bench_reference.py --variant V --batch 8 --frames 200

As in the trainer, glibc malloc keeps freed memory (`cpu_memory.keep_freed_memory`); `--default-malloc`
leaves it alone. Reference lengths are drawn uniformly from [frames / 2, frames] (fixed seed) so the masking path is
exercised as in training. Timing: `--warmup` untimed steps, then the median of `--runs` steps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from prosody_vae.training.cpu_memory import keep_freed_memory
from prosody_vae.plugin.reference import VariationalReferenceEncoder
from prosody_vae.model.layers import summarise_text
from prosody_vae.data.text import SYMBOLS

DEFAULT_BATCH = {"V": 32, "V+T": 16}
TEXT_EMBEDDING_DIM, TEXT_SUMMARY_DIM = 512, 128


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(variant: str, batch: int, frames: int, n_mels: int, latent_dim: int, text_len: int,
            warmup: int, runs: int) -> dict:
    torch.manual_seed(0)
    with_text = variant == "V+T"
    encoder = VariationalReferenceEncoder(n_mels=n_mels, latent_dim=latent_dim,
                                          text_summary_dim=TEXT_SUMMARY_DIM if with_text else 0).train()
    text_rnn = nn.LSTM(TEXT_EMBEDDING_DIM, TEXT_SUMMARY_DIM, batch_first=True) if with_text else None
    embedding = nn.Embedding(len(SYMBOLS), TEXT_EMBEDDING_DIM, padding_idx=0)
    modules = nn.ModuleList([encoder] + ([text_rnn, embedding] if text_rnn is not None else []))
    mel = torch.randn(batch, frames, n_mels)
    lengths = torch.randint(frames // 2, frames + 1, (batch,))
    lengths[0] = frames
    text = torch.randint(1, len(SYMBOLS), (batch, text_len))
    text_lengths = torch.randint(text_len // 2, text_len + 1, (batch,))
    rss_before = peak_rss_mib()

    def step() -> float:
        modules.zero_grad(set_to_none=True)
        start = time.perf_counter()
        text_summary = (summarise_text(text_rnn, embedding, text, text_lengths)  # (B, 128)
                        if text_rnn is not None else None)
        post = encoder(mel, lengths, text_summary=text_summary)
        (post.kl.mean() + post.z.square().mean()).backward()
        return time.perf_counter() - start

    for _ in range(warmup):
        step()
    times_ms = [1e3 * step() for _ in range(runs)]
    median_ms = statistics.median(times_ms)
    return {
        "variant": variant, "batch": batch, "frames": frames, "n_mels": n_mels, "latent_dim": latent_dim,
        "text_len": text_len if with_text else None,
        "parameters": sum(p.numel() for p in modules.parameters()),
        "median_ms": round(median_ms, 2), "min_ms": round(min(times_ms), 2), "runs": runs,
        "utterances_per_s": round(batch / (median_ms / 1e3), 1),
        "rss_before_mib": round(rss_before, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=["V", "V+T", "both"], default="both")
    parser.add_argument("--batch", type=int, help="default: 32 for V, 16 for V+T")
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--n-mels", type=int, default=80)
    parser.add_argument("--latent-dim", type=int, default=128)
    parser.add_argument("--text-len", type=int, default=100, help="characters fed to the V+T text summary")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc malloc as it is (the trainer calls cpu_memory.keep_freed_memory)")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be >= 5 for a meaningful median")

    if args.variant == "both":  # one fresh process per figure, so each peak RSS is its own
        results = []
        for variant in ("V+T", "V"):
            argv = [f"--{name.replace('_', '-')}={value}" for name, value in vars(args).items()
                    if value is not None and name not in ("variant", "default_malloc")]
            argv += ["--default-malloc"] if args.default_malloc else []
            out = subprocess.run([sys.executable, __file__, *argv, f"--variant={variant}"],
                                 check=True, capture_output=True, text=True).stdout
            results.extend(json.loads(out)["results"])
    else:
        torch.set_num_threads(args.threads)
        malloc_tuned = False if args.default_malloc else keep_freed_memory()
        batch = args.batch or DEFAULT_BATCH[args.variant]
        results = [measure(args.variant, batch, args.frames, args.n_mels, args.latent_dim, args.text_len,
                           args.warmup, args.runs)]
        results[0]["keep_freed_memory"] = malloc_tuned
    print(json.dumps({"benchmark": "reference_encoder_forward_backward_cpu", "torch": torch.__version__,
                      "threads": args.threads, "cpu_count": os.cpu_count(), "results": results,
                      "load_average_1min": os.getloadavg()[0]}, indent=2))


if __name__ == "__main__":
    main()
