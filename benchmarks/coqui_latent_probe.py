"""What a Coqui ProsodyTacotron2 checkpoint's z holds, and whether it sets the output's length.

    python benchmarks/coqui_latent_probe.py --run RUN_FOLDER --data LJSPEECH_FOLDER [--checkpoint C.pth] [--n 8]

RUN_FOLDER is a Coqui run (its config.json; the checkpoint defaults to final.pth, which
host_transfer.py writes); LJSPEECH_FOLDER is a make-corpus folder with its factors.csv (each
utterance's espeak-ng rate, pitch, range and level, and measured F0 and RMS). Run in an
environment with the `coqui` extra.

1. Factors: the posterior mean of every utterance in the folder; per numeric factor, the R^2 of a
   ridge regression from the means, 5-fold cross-validated (a factor z does not hold scores <= 0).
2. Length: each of host_transfer.py's SENTENCES decoded from the posterior means of the `--n`
   slowest and the `--n` fastest references (5-8 words); decoder steps per output and whether
   the attention reached the last character. If z sets the pace, the slow group's outputs are longer.
Prints and writes one JSON object (`--out`).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from host_transfer import SENTENCES, factor_rows, reference_candidates
from prosody_vae.integrations.coqui import ProsodySynthesizer

NOT_FACTORS = {"id", "voice", "text", "sentence_type"}


def cross_validated_r2(features: np.ndarray, target: np.ndarray, folds: int = 5, ridge: float = 1e-2) -> float:
    """features (N, Z), target (N,): held-out R^2 of a ridge regression with an intercept."""
    design = np.c_[features, np.ones(len(features))]  # (N, Z + 1)
    fold = np.random.default_rng(0).permutation(len(target)) % folds
    predicted = np.empty_like(target)
    for k in range(folds):
        train, test = fold != k, fold == k
        gram = design[train].T @ design[train] + ridge * np.eye(design.shape[1])
        predicted[test] = design[test] @ np.linalg.solve(gram, design[train].T @ target[train])
    return float(1 - ((target - predicted) ** 2).sum() / ((target - target.mean()) ** 2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, help="default: RUN/final.pth")
    parser.add_argument("--n", type=int, default=8, help="references per rate group")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = factor_rows(args.data)
    model = ProsodySynthesizer(tts_checkpoint=args.checkpoint or args.run / "final.pth",
                               tts_config_path=args.run / "config.json").tts_model
    mels = {r["id"]: model.reference_mel(args.data / "wavs" / f"{r['id']}.wav") for r in rows}  # (1, T, n_mels)

    with torch.inference_mode():
        means = np.stack([model.capacitron_vae_layer.posterior(mel, torch.tensor([mel.shape[1]])).mean[0].numpy()
                          for mel in mels.values()])  # (N, Z)
    factors = {}
    for key in rows[0].keys() - NOT_FACTORS:
        factors[key] = round(cross_validated_r2(means, np.array([float(r[key]) for r in rows])), 3)

    candidates = reference_candidates(args.data)
    groups = {"slow": candidates[:args.n], "fast": candidates[-args.n:]}
    lengths = []
    for sentence in SENTENCES:
        ids = torch.tensor(model.tokenizer.text_to_ids(sentence))[None]
        row = {"sentence": sentence}
        for name, refs in groups.items():
            steps, read_all = [], 0
            for r in refs:
                attention = model.inference(ids, {"style_mel": mels[r["id"]]})["alignments"][0]  # (T_dec, T_in)
                steps.append(attention.shape[0])
                read_all += int(attention.argmax(-1).max()) + 1 >= attention.shape[1] - 2
            row[name] = {"wpm": statistics.fmean(int(r["rate"]) for r in refs), "decoder_steps": steps,
                         "median_steps": statistics.median(steps), "read_all": f"{read_all}/{len(refs)}"}
        lengths.append(row)
    result = {"checkpoint": str(args.checkpoint or args.run / "final.pth"), "utterances": len(rows),
              "factor_r2": dict(sorted(factors.items())), "length": lengths}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
