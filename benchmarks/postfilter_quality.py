"""DNSMOS of a model's outputs with and without the global-variance postfilter, against copy-synthesis.

    python benchmarks/postfilter_quality.py --checkpoint RUN/checkpoints/best.pt --data CORPUS [--n-references 10]

Transfers `--n-references` corpus utterances (picked at random with `--seed`) onto the demo's three
unseen sentences, renders each output through the source-filter vocoder with the decoder's own mel
and with the postfiltered mel, and prints mean DNSMOS P.835 (OVRL, SIG, BAK) of both, of the
references, and of the references' copy-synthesis through the same vocoder. Needs a checkpoint
with a pitch head and the `evaluate` extra (speechmos).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from prosody_vae import Synthesizer
from prosody_vae.audio.mel import load_wav
from prosody_vae.demo import TRANSFER_SENTENCES
from prosody_vae.evaluation.quality import copy_synthesis, dnsmos, mean_dnsmos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the corpus (factors.csv or metadata.csv ids)")
    parser.add_argument("--n-references", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    synth = Synthesizer.from_checkpoint(args.checkpoint, vocoder="source-filter")
    if synth.postfilter is None:
        raise SystemExit(f"{args.checkpoint} carries no mel_variance: train it with this version of the trainer")
    with open(args.data / "metadata.csv", encoding="utf-8") as f:
        ids = [row[0] for row in csv.reader(f, delimiter="|")]
    picked = np.random.default_rng(args.seed).choice(len(ids), args.n_references, replace=False)
    sr = synth.audio.sample_rate
    references = [load_wav(args.data / "wavs" / f"{ids[i]}.wav", sr) for i in picked]
    raw, filtered = [], []
    for wav in references:
        out = synth.tts(list(TRANSFER_SENTENCES), reference=wav, vocode=False)
        filtered.extend(synth.vocode(mel, f0) for mel, f0 in zip(out.mel, out.f0))  # the mel tts vocodes
    postfilter, synth.postfilter = synth.postfilter, None  # the same items, the decoder's own mel
    for wav in references:
        out = synth.tts(list(TRANSFER_SENTENCES), reference=wav, vocode=False)
        raw.extend(synth.vocode(mel, f0) for mel, f0 in zip(out.mel, out.f0))
    synth.postfilter = postfilter
    copies = copy_synthesis(references, synth.audio, synth.vocoder)
    for name, wavs in (("references", references), ("copy-synthesis", copies), ("outputs, no postfilter", raw),
                       ("outputs, postfilter", filtered)):
        score = mean_dnsmos(dnsmos(wavs, sr))
        print(f"{name:<24} n={len(wavs):<3} OVRL {score.ovrl:.2f}  SIG {score.sig:.2f}  BAK {score.bak:.2f}")


if __name__ == "__main__":
    main()
