"""How many recordings a voice needs to be enrolled from: the cross-voice pair figure against the
size of the voices' resemblyzer centroids.

    python benchmarks/speaker_enrolment.py --data CORPUS --checkpoint NAME=RUN/checkpoints/step-NNNNN.pt ...

The pairs are those of benchmarks/speakers.py (speaker_leakage.transfer_schedule): each held-out
reference of voice A, on the checkpoint's own split, spoken in `--targets-per-reference` other
voices B on other held-out texts. Each output is embedded once; then, for each enrolment size k,
`--draws` times, every voice's centroid is the mean of k of its training recordings drawn at random,
and a pair is won when the output is closer to B's centroid than to A's. Sources scored:
- "recording": per pair, a training recording of B itself (taken in turn, and never drawn for
  enrolment): what the metric can tell apart on real speech;
- "NAME/transfer": the checkpoint's output with A's recording as reference (relative pitch);
- "NAME/prior_mean": the same texts in B with z = 0 (models with speakers only).
Prints, per k, each source's mean share over the draws and its 5th-95th percentile, as one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from prosody_vae import Synthesizer, load_wav
from prosody_vae.data.ljspeech import read_metadata, split_train_val
from prosody_vae.evaluation.quality import speaker_embeddings
from prosody_vae.evaluation.speaker_leakage import measurable, transfer_schedule


def output_embeddings(synth: Synthesizer, schedule: list, sample_rate: int, seed: int) -> dict[str, np.ndarray]:
    """(P, 256) resemblyzer embeddings of the model's transfer (and, with speakers, z = 0) outputs."""
    transfer, prior_mean = [], []
    for _, ref, targets, texts in schedule:
        told = dict(speaker=targets, reference_speaker=ref.speaker, pitch_mode="relative") if synth.speakers else {}
        spoken = synth.tts(texts, reference=ref.wav_path, seed=seed, **told).wav
        transfer.append(speaker_embeddings(spoken, sample_rate))
        if synth.speakers:
            prior_mean.append(speaker_embeddings(synth.tts(texts, temperature=0.0, speaker=targets).wav, sample_rate))
    return {"transfer": np.concatenate(transfer), **({"prior_mean": np.concatenate(prior_mean)} if prior_mean else {})}


def share_by_enrolment(outputs: dict[str, np.ndarray], pool: dict[str, np.ndarray], targets: list[str],
                       references: list[str], sizes: list[int], draws: int, seed: int) -> dict:
    """Per size k: each source's share of pairs won, mean and 5th-95th percentile over `draws`
    random k-recording enrolments of every voice (`pool`: voice -> (N, 256) embeddings)."""
    rng = np.random.default_rng(seed)
    figures = {}
    for k in sizes:
        shares: dict[str, list[float]] = {name: [] for name in outputs}
        for _ in range(draws):
            centroids = {}
            for voice, embeddings in pool.items():
                mean = embeddings[rng.choice(len(embeddings), k, replace=False)].mean(0)
                centroids[voice] = mean / np.linalg.norm(mean)
            to_target = np.stack([centroids[v] for v in targets])  # (P, 256)
            to_reference = np.stack([centroids[v] for v in references])  # (P, 256)
            for name, e in outputs.items():
                shares[name].append(float(np.mean((e * to_target).sum(1) > (e * to_reference).sum(1))))
        figures[k] = {name: {"mean": float(np.mean(s)), "p5": float(np.percentile(s, 5)),
                             "p95": float(np.percentile(s, 95))} for name, s in shares.items()}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--checkpoint", nargs="+", required=True, help="NAME=PATH ... (all on the same split)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--n-references", type=int, default=20)
    parser.add_argument("--targets-per-reference", type=int, default=11)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    synths = {name: Synthesizer.from_checkpoint(path, vocoder="source-filter") for name, path in checkpoints.items()}
    first = next(iter(synths.values()))
    sr = first.audio.sample_rate
    training, held_out = split_train_val(read_metadata(args.data), first.config.data.n_val, first.config.data.seed)
    by_voice: dict[str, list] = {}
    for u in training:
        by_voice.setdefault(u.speaker or "", []).append(u)
    references = [u for u in held_out if measurable(u)][:args.n_references]
    texts = [u.text for u in references[1:] + references[:1]]
    schedule = list(transfer_schedule(references, texts, by_voice, args.targets_per_reference))
    pairs = [(ref.speaker, target, by_voice[target][i % len(by_voice[target])])  # B's recording, in turn
             for i, ref, targets, _ in schedule for target in targets]
    held_back = {u.id for _, _, u in pairs}
    pool = {voice: speaker_embeddings([load_wav(u.wav_path, sr) for u in own if u.id not in held_back], sr)
            for voice, own in by_voice.items()}
    outputs = {"recording": speaker_embeddings([load_wav(u.wav_path, sr) for _, _, u in pairs], sr)}
    for name, synth in synths.items():
        outputs.update({f"{name}/{k}": v for k, v in output_embeddings(synth, schedule, sr, args.seed).items()})
    figures = share_by_enrolment(outputs, pool, [t for _, t, _ in pairs], [r for r, _, _ in pairs],
                                 args.sizes, args.draws, args.seed)
    result = {"pairs": len(pairs), "draws": args.draws, "checkpoints": checkpoints,
              "smallest_pool": min(len(e) for e in pool.values()), "by_size": figures}
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
