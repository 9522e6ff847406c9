"""Voice and prosody apart: the speaker figures of one or more checkpoints on one multi-speaker corpus.

    python benchmarks/speakers.py --data CORPUS --checkpoint unconditioned=A.pt conditioned=B.pt

Per checkpoint, on the checkpoint's own split of CORPUS (its metadata must name the speakers):
- the linear speaker probe on the posterior means of `--n-probe` training utterances
  (cross-validated accuracy, and chance);
- cross-speaker transfer: each of the first `--n-references` held-out references of at least three
  words (speaker_leakage.measurable) spoken in `--targets-per-reference` other voices (default
  two) on other held-out utterances' texts; how often the output is closer (resemblyzer) to the
  target voice than to the reference's, with its 95% (Wilson) interval; Pearson r of speaking rate
  and of speaker-relative F0 (pyin on the rendered audio, "source-filter" vocoder); and the mean
  semitone distance of the output F0 from relative transfer (target register + the reference's
  offset) and from the reference's Hz. A model with speakers is measured with
  pitch_mode="relative" and "absolute".
Each voice is known (resemblyzer centroid, F0 register) from its first `--enrolled` training
recordings (speaker_leakage.ENROLMENT_UTTERANCES; benchmarks/speaker_enrolment.py says why 32).
With `--baselines`, for the same (reference voice A, target voice B) pairs, how often B wins for
outputs that no reference can have pulled towards A, and for B's own recordings:
- "prior_mean": the same texts spoken in B with z = 0 (no reference at all), so what is left is
  the decoder's own rendering of B;
- "copy_synthesis": a training recording of B (not one of the enrolment ones) through the same
  vocoder from its own log-mel and Praat F0;
- "recording": that recording itself.
With `--voice-id`, a stricter figure for the same three sources: each voice speaks (z = 0) the
texts of the first `--voice-id-texts` held-out references, and how often the output's nearest
enrolled voice, of all of them, is its own (the copy-synthesis and recording rows: as many spare
training recordings per voice).
Prints one JSON object per checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

from pathlib import Path

import numpy as np
import torch

from prosody_vae import Synthesizer, load_wav
from prosody_vae.data.ljspeech import MelCache, read_metadata, split_train_val
from prosody_vae.evaluation.quality import speaker_embeddings
from prosody_vae.evaluation.speaker_leakage import (ENROLMENT_UTTERANCES, cross_speaker_transfer, enrol_voices, measurable,
                                         posterior_means, speaker_probe, summarise_pairs, transfer_schedule,
                                         voice_wins)


def measure(checkpoint: str, data: str, n_probe: int, n_references: int, seed: int, vocoder: str = "source-filter",
            targets_per_reference: int = 2, baselines: bool = False, voice_id_texts: int = 0,
            enrolled: int = ENROLMENT_UTTERANCES) -> dict:
    synth = Synthesizer.from_checkpoint(checkpoint, vocoder=vocoder)
    utterances = read_metadata(data)
    training, held_out = split_train_val(utterances, synth.config.data.n_val, synth.config.data.seed)
    probed = training[:n_probe]
    started = time.perf_counter()
    figures = {"checkpoint": checkpoint, "speakers": len(synth.speakers),
               "probe": asdict(speaker_probe(posterior_means(synth, probed), [u.speaker for u in probed], seed=seed))}
    voices = enrolled_voices(training, synth.audio.sample_rate, enrolled)
    references = [u for u in held_out if measurable(u)][:n_references]
    texts = [u.text for u in references[1:] + references[:1]]
    for pitch in ("relative", "absolute") if synth.speakers else ("relative",):
        pairs = cross_speaker_transfer(synth, references, texts, voices, targets_per_reference, seed, pitch)
        figures[f"cross_speaker_{pitch}"] = summarise_pairs(pairs)
        figures[f"pairs_{pitch}"] = [asdict(p) for p in pairs]
    if baselines and synth.speakers:
        figures["baselines"] = voice_baselines(synth, references, texts, training, voices, data,
                                               targets_per_reference, enrolled)
    if voice_id_texts and synth.speakers:
        figures["voice_id"] = voice_identification(synth, [u.text for u in references[:voice_id_texts]],
                                                   training, voices, data, enrolled)
    figures["seconds"] = time.perf_counter() - started
    return figures


_enrolments: dict = {}


def enrolled_voices(training, sample_rate: int, enrolled: int) -> dict:
    """enrol_voices, once per split: checkpoints of one run share it, and pyin on 12 x 32 recordings takes minutes."""
    key = (tuple(u.id for u in training), sample_rate, enrolled)
    if key not in _enrolments:
        _enrolments[key] = enrol_voices(training, sample_rate, enrolled)
    return _enrolments[key]


def copy_synthesis(synth, cache: MelCache, utterance) -> np.ndarray:
    """A recording through the synthesizer's vocoder from its own cached log-mel and Praat F0."""
    f0 = torch.from_numpy(cache.features(utterance).f0_hz).nan_to_num(0.0).float()
    return synth.vocode(torch.from_numpy(cache.get(utterance)), f0)


def voice_baselines(synth, references, texts, training, voices, data: str, targets_per_reference: int,
                    enrolled: int) -> dict:
    """Target-voice wins, over the pairs `cross_speaker_transfer` forms, of z = 0 outputs, of
    copy-synthesised recordings of the target voice, and of those recordings."""
    cache = MelCache(Path(data) / ".mel_cache", synth.audio)
    sr = synth.audio.sample_rate
    spare = {n: [u for u in training if u.speaker == n][enrolled:] for n in voices}  # never enrolment ones
    scores = {"prior_mean": [], "copy_synthesis": [], "recording": []}
    for i, ref, targets, own_texts in transfer_schedule(references, texts, voices, targets_per_reference):
        wavs = {"prior_mean": synth.tts(own_texts, temperature=0.0, speaker=targets).wav}
        recordings = [spare[t][i % len(spare[t])] for t in targets]
        wavs["copy_synthesis"] = [copy_synthesis(synth, cache, u) for u in recordings]
        wavs["recording"] = [load_wav(u.wav_path, sr) for u in recordings]
        for name, outputs in wavs.items():
            for embedding, target in zip(speaker_embeddings(outputs, sr), targets):
                scores[name].append((float(embedding @ voices[target].embedding),
                                     float(embedding @ voices[ref.speaker].embedding)))
    return {name: voice_wins(*zip(*pairs)) for name, pairs in scores.items()}


def voice_identification(synth, texts, training, voices, data: str, enrolled: int) -> dict:
    """How often each voice's z = 0 outputs of `texts`, its copy-synthesised spare recordings and
    those recordings are nearest (resemblyzer) their own voice among all enrolled ones."""
    cache = MelCache(Path(data) / ".mel_cache", synth.audio)
    sr, names = synth.audio.sample_rate, sorted(voices)
    centroids = np.stack([voices[n].embedding for n in names])  # (V, D)
    hits = {"prior_mean": [], "copy_synthesis": [], "recording": []}
    for name in names:
        spare = [u for u in training if u.speaker == name][enrolled:enrolled + len(texts)]
        wavs = {"prior_mean": synth.tts(list(texts), temperature=0.0, speaker=name).wav,
                "copy_synthesis": [copy_synthesis(synth, cache, u) for u in spare],
                "recording": [load_wav(u.wav_path, sr) for u in spare]}
        for source, outputs in wavs.items():
            nearest = (speaker_embeddings(outputs, sr) @ centroids.T).argmax(axis=1)
            hits[source] += [names[int(i)] == name for i in nearest]
    return {"voices": len(names), "chance": 1 / len(names),
            **{f"{source}_accuracy": float(np.mean(h)) for source, h in hits.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--checkpoint", nargs="+", required=True, help="NAME=PATH ...")
    parser.add_argument("--n-probe", type=int, default=360)
    parser.add_argument("--n-references", type=int, default=20)
    parser.add_argument("--targets-per-reference", type=int, default=2,
                        help="voices each reference is spoken in (11 on the demo corpus: every other voice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vocoder", default="source-filter")
    parser.add_argument("--baselines", action="store_true", help="also the z = 0, copy-synthesis and recording wins")
    parser.add_argument("--voice-id", action="store_true", help="also each voice's nearest-voice accuracy")
    parser.add_argument("--voice-id-texts", type=int, default=4)
    parser.add_argument("--enrolled", type=int, default=ENROLMENT_UTTERANCES,
                        help="training recordings each voice's centroid and register are taken from")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for item in args.checkpoint:
        name, path = item.split("=", 1)
        results[name] = measure(path, args.data, args.n_probe, args.n_references, args.seed, args.vocoder,
                                args.targets_per_reference, args.baselines, args.voice_id_texts if args.voice_id else 0,
                                args.enrolled)
        print(json.dumps({name: {k: v for k, v in results[name].items() if not k.startswith("pairs")}}), flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
