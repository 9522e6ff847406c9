"""Where a served request's time goes, in-process: the pieces of `prosody-vae serve`'s work, timed.

    PYTHONPATH=$PWD nice -n 5 python benchmarks/serve_profile.py --checkpoint /work/demo_model/run/checkpoints/best.pt

Times (median of --repeats, seconds) the model worker's batched decode (`tts(vocode=False)`) at
batch 1 and at --batch, the vocoder per item, the WAV encoding per item, and the vocoding of a
batch's items one after the other against on a thread pool (as the server's request threads do).
The load test's texts, so the figures match benchmarks/load_test.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from load_test import text_for
from prosody_vae.inference.synthesizer import Synthesizer
from prosody_vae.serve.app import _wav_bytes


def timed(work, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--vocoder", default="auto")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    synth = Synthesizer.from_checkpoint(args.checkpoint, vocoder=args.vocoder)
    texts = [text_for(client, 0) for client in range(args.batch)]
    synth.tts(texts, vocode=False)  # warm up
    out = synth.tts(texts, vocode=False)
    items = list(zip(out.mel, out.f0 or [None] * len(texts)))
    wavs = [synth.vocode(mel, f0) for mel, f0 in items]
    sample_rate = synth.audio.sample_rate
    figures = {
        "decode_batch_1_s": timed(lambda: synth.tts(texts[:1], vocode=False), args.repeats),
        f"decode_batch_{args.batch}_s": timed(lambda: synth.tts(texts, vocode=False), args.repeats),
        "vocode_per_item_s": timed(lambda: [synth.vocode(mel, f0) for mel, f0 in items], args.repeats) / len(items),
        "wav_encode_per_item_s": timed(lambda: [_wav_bytes(w, sample_rate) for w in wavs], args.repeats) / len(wavs),
        "audio_per_item_s": sum(len(w) for w in wavs) / len(wavs) / sample_rate,
    }
    for workers in (2, 4):
        with ThreadPoolExecutor(workers) as pool:
            figures[f"vocode_{args.batch}_items_on_{workers}_threads_s"] = timed(
                lambda: list(pool.map(lambda item: synth.vocode(*item), items)), args.repeats)
    figures[f"vocode_{args.batch}_items_in_turn_s"] = figures["vocode_per_item_s"] * len(items)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    for name, value in figures.items():
        print(f"{name:<36}{value:8.4f}")
    return figures


if __name__ == "__main__":
    main()
