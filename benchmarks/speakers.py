"""Voice and prosody apart: the speaker figures of one or more checkpoints on one multi-speaker corpus.

    python benchmarks/speakers.py --data CORPUS --checkpoint unconditioned=A.pt conditioned=B.pt

Per checkpoint, on the checkpoint's own split of CORPUS (its metadata must name the speakers):
- the linear speaker probe on the posterior means of `--n-probe` training utterances
  (cross-validated accuracy, and chance);
- cross-speaker transfer: each held-out reference spoken in two other voices on another held-out
  utterance's text; how often the output is closer (resemblyzer) to the target voice than to the
  reference's; Pearson r of speaking rate and of speaker-relative F0 (pyin on the rendered audio,
  "source-filter" vocoder); and the mean semitone distance of the output F0 from relative transfer
  (target register + the reference's offset) and from the reference's Hz. A model with speakers
  is measured with pitch_mode="relative" and "absolute".
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

import torch

from prosody_vae import Synthesizer
from prosody_vae.data import read_metadata, split_train_val
from prosody_vae.speaker_leakage import (cross_speaker_transfer, enrol_voices, posterior_means, speaker_probe,
                                         summarise_pairs)


def measure(checkpoint: str, data: str, n_probe: int, n_references: int, seed: int) -> dict:
    synth = Synthesizer.from_checkpoint(checkpoint, vocoder="source-filter")
    utterances = read_metadata(data)
    training, held_out = split_train_val(utterances, synth.config.data.n_val, synth.config.data.seed)
    probed = training[:n_probe]
    started = time.perf_counter()
    figures = {"checkpoint": checkpoint, "speakers": len(synth.speakers),
               "probe": asdict(speaker_probe(posterior_means(synth, probed), [u.speaker for u in probed], seed=seed))}
    voices = enrol_voices(training, synth.audio.sample_rate)
    references = held_out[:n_references]
    texts = [u.text for u in references[1:] + references[:1]]
    for pitch in ("relative", "absolute") if synth.speakers else ("relative",):
        pairs = cross_speaker_transfer(synth, references, texts, voices, seed=seed, pitch_mode=pitch)
        figures[f"cross_speaker_{pitch}"] = summarise_pairs(pairs)
        figures[f"pairs_{pitch}"] = [asdict(p) for p in pairs]
    figures["seconds"] = time.perf_counter() - started
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--checkpoint", nargs="+", required=True, help="NAME=PATH ...")
    parser.add_argument("--n-probe", type=int, default=360)
    parser.add_argument("--n-references", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for item in args.checkpoint:
        name, path = item.split("=", 1)
        results[name] = measure(path, args.data, args.n_probe, args.n_references, args.seed)
        print(json.dumps({name: {k: v for k, v in results[name].items() if not k.startswith("pairs")}}), flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
