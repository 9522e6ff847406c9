"""How much of the voice rides in z, and whether prosody crosses voices: the speaker figures of evaluate.

- `speaker_probe`: a linear classifier (multinomial logistic regression) predicts the speaker
  from posterior means; its cross-validated accuracy against chance (the commonest speaker's
  share). Near chance: z carries no voice a linear read-out can find.
- `cross_speaker_transfer`: each reference (voice A) is spoken in another voice B on a text of
  another utterance. Per pair: resemblyzer similarity of the output to B's and to A's voice (each
  voice's centroid over ENROLMENT_UTTERANCES of its recordings, never the reference itself),
  speaking rate of output and reference, and F0 in semitones relative to each voice's register
  (the geometric mean of pyin's F0 over the same recordings). A model without speakers cannot be
  told B; its pairs show where its voice goes on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection, Iterator, Sequence

import numpy as np
import torch

from ..audio.mel import load_wav
from ..data.ljspeech import Utterance
from .metrics import prosody_summary
from .quality import pearson, speaker_embeddings


@dataclass
class ProbeResult:
    accuracy: float  # held-out (cross-validated) share of utterances whose speaker was predicted
    chance: float  # the commonest speaker's share: what always guessing it scores
    n_utterances: int
    n_speakers: int
    folds: int


def speaker_probe(features: np.ndarray, labels: Sequence[str], folds: int = 5, seed: int = 0,
                  weight_decay: float = 1e-3) -> ProbeResult:
    """Cross-validated accuracy of a linear speaker classifier on `features` (N, D)."""
    names = sorted(set(labels))
    y = torch.tensor([names.index(label) for label in labels])  # (N,)
    x = torch.as_tensor(features, dtype=torch.float64)  # (N, D)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    correct = 0
    for fold in range(folds):
        test = order[fold::folds]
        train = order[torch.arange(len(order)) % folds != fold]
        mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)  # scale set on the training fold
        model = _fit_logistic((x[train] - mean) / std, y[train], len(names), weight_decay)
        correct += int((model((x[test] - mean) / std).argmax(1) == y[test]).sum())
    counts = torch.bincount(y, minlength=len(names))
    return ProbeResult(correct / len(y), float(counts.max()) / len(y), len(y), len(names), folds)


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float) -> torch.nn.Linear:
    """Multinomial logistic regression by L-BFGS on the full batch (the problem is convex)."""
    model = torch.nn.Linear(x.shape[1], n_classes, dtype=x.dtype)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y) + weight_decay * model.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


@torch.no_grad()
def posterior_means(synth, utterances: Sequence[Utterance], batch_size: int = 16) -> np.ndarray:
    """(N, latent_dim) posterior means of the utterances' recordings."""
    means = []
    for start in range(0, len(utterances), batch_size):
        chunk = utterances[start:start + batch_size]
        speakers = [u.speaker or "" for u in chunk] if synth.speakers else None
        means.append(synth.encode([u.wav_path for u in chunk], reference_speaker=speakers).mean.cpu())
    return torch.cat(means).numpy()


@dataclass
class Voice:
    """What a voice sounds like, from a few of its recordings."""

    embedding: np.ndarray  # (256,) unit resemblyzer centroid
    log_f0: float  # ln of its register in Hz


# Recordings a voice is enrolled from. One short utterance's embedding moves with its words, so a
# centroid of a few is noisy: on the demo corpus a voice's own held-out recordings were closer to it
# than to the other voice of a pair in 94.5% of 209 pairs with 4, 98.2% with 16 and 98.9% with 32
# (means over 200 random enrolments, benchmarks/speaker_enrolment.py), where the curve levels off.
ENROLMENT_UTTERANCES = 32


def enrol_voices(utterances: Sequence[Utterance], sample_rate: int,
                 per_speaker: int = ENROLMENT_UTTERANCES) -> dict[str, Voice]:
    """A `Voice` per speaker from its first `per_speaker` utterances (all it has, if fewer)."""
    by_speaker: dict[str, list[Utterance]] = {}
    for u in utterances:
        by_speaker.setdefault(u.speaker or "", []).append(u)
    voices = {}
    for name, own in sorted(by_speaker.items()):
        wavs = [load_wav(u.wav_path, sample_rate) for u in own[:per_speaker]]
        centroid = speaker_embeddings(wavs, sample_rate).mean(0)
        f0 = [prosody_summary(w, sample_rate).f0_mean_hz for w in wavs]
        voices[name] = Voice(centroid / np.linalg.norm(centroid), float(np.nanmean(np.log(f0))))
    return voices


@dataclass
class CrossSpeakerPair:
    reference: str  # utterance id
    reference_speaker: str
    target_speaker: str
    text: str
    similarity_to_target: float  # resemblyzer cosine of the output to the target voice's centroid
    similarity_to_reference: float  # ... and to the reference voice's
    reference_rate: float  # letters per second of speech
    output_rate: float
    reference_f0_st: float  # semitones above the reference voice's register
    output_f0_st: float  # semitones above the target voice's register
    output_f0_re_reference_st: float  # semitones of the output's F0 above the reference's own F0


# A speaking rate needs a few words: the letters per second of "Yes!" are that word's phonetics.
# On the demo corpus's 20 held-out references, the measured rate follows the rate espeak-ng was
# given with r = 0.88 over all of them and 0.95 without the one one-word reference.
MIN_REFERENCE_WORDS = 3


def measurable(utterance: Utterance) -> bool:
    """Whether a reference is long enough to measure a speaking rate on (MIN_REFERENCE_WORDS)."""
    return len(utterance.text.split()) >= MIN_REFERENCE_WORDS


def transfer_schedule(references: Sequence[Utterance], texts: Sequence[str], voices: Collection[str],
                      targets_per_reference: int = 2) -> Iterator[tuple[int, Utterance, list[str], list[str]]]:
    """(index, reference, target voices, texts) of each reference `cross_speaker_transfer` speaks:
    `targets_per_reference` other voices (at most all of them) in turn through the sorted voices,
    each time on the next of `texts`. `voices` are the names (or a dict keyed by them). References
    of a voice not in `voices`, and those too short to measure a rate on (`measurable`), are left
    out."""
    if targets_per_reference < 1:
        raise ValueError(f"targets_per_reference must be at least 1, got {targets_per_reference}")
    names = sorted(voices)
    per_reference = min(targets_per_reference, len(names) - 1)
    k = 0
    for i, ref in enumerate(r for r in references if (r.speaker or "") in voices and measurable(r)):
        others = [n for n in names if n != (ref.speaker or "")]
        targets = [others[(i * per_reference + j) % len(others)] for j in range(per_reference)]
        yield i, ref, targets, [texts[(k + j) % len(texts)] for j in range(len(targets))]
        k += len(targets)


def cross_speaker_transfer(synth, references: Sequence[Utterance], texts: Sequence[str], voices: dict[str, Voice],
                           targets_per_reference: int = 2, seed: int = 0, pitch_mode: str = "relative"
                           ) -> list[CrossSpeakerPair]:
    """Each reference spoken in other voices on other texts, as `transfer_schedule` pairs them."""
    sr = synth.audio.sample_rate
    pairs = []
    for _, ref, targets, own_texts in transfer_schedule(references, texts, voices, targets_per_reference):
        source = ref.speaker or ""
        conditioned = dict(speaker=targets, reference_speaker=source, pitch_mode=pitch_mode) if synth.speakers else {}
        result = synth.tts(own_texts, reference=ref.wav_path, seed=seed, **conditioned)
        ref_summary = prosody_summary(load_wav(ref.wav_path, sr), sr, text=ref.text)
        embeddings = speaker_embeddings(result.wav, sr)
        for target, text, wav, embedding in zip(targets, own_texts, result.wav, embeddings):
            out = prosody_summary(wav, sr, text=text)
            pairs.append(CrossSpeakerPair(
                ref.id, source, target, text, float(embedding @ voices[target].embedding),
                float(embedding @ voices[source].embedding), ref_summary.rate, out.rate,
                _semitones(ref_summary.f0_mean_hz, voices[source].log_f0),
                _semitones(out.f0_mean_hz, voices[target].log_f0),
                _semitones(out.f0_mean_hz, math.log(ref_summary.f0_mean_hz))))
    return pairs


def cross_speaker_similarity(wavs: Sequence[np.ndarray], sample_rate: int, target: Voice, reference: Voice
                             ) -> tuple[np.ndarray, np.ndarray]:
    """(B,) resemblyzer cosine of each wav to the target voice, and (B,) to the reference voice."""
    embeddings = speaker_embeddings(wavs, sample_rate)  # (B, 256), unit rows
    return embeddings @ target.embedding, embeddings @ reference.embedding


def _semitones(f0_hz: float, log_register: float) -> float:
    return 12 / math.log(2) * (math.log(f0_hz) - log_register) if f0_hz > 0 else math.nan


def summarise_pairs(pairs: Sequence[CrossSpeakerPair]) -> dict:
    """The figures of a cross-speaker transfer: how often the target voice wins, and the prosody
    correlations between outputs and references."""
    return {"pairs": len(pairs),
            **voice_wins([p.similarity_to_target for p in pairs], [p.similarity_to_reference for p in pairs]),
            "rate_r": pearson([p.reference_rate for p in pairs], [p.output_rate for p in pairs]),
            "relative_f0_r": pearson([p.reference_f0_st for p in pairs], [p.output_f0_st for p in pairs]),
            # mean |semitones| between each output's F0 and what relative transfer would give (the
            # target's register plus the reference's offset from its own), and the reference's Hz
            "relative_f0_error_st": float(np.nanmean(np.abs([p.output_f0_st - p.reference_f0_st for p in pairs]))),
            "absolute_f0_error_st": float(np.nanmean(np.abs([p.output_f0_re_reference_st for p in pairs])))}


def voice_wins(to_target: Sequence[float], to_reference: Sequence[float]) -> dict:
    """How often outputs are closer to their target voice than to the reference's, given each
    output's similarity to both, with the share's 95% interval and the mean similarities."""
    target, reference = np.asarray(to_target, dtype=float), np.asarray(to_reference, dtype=float)
    wins = int(np.sum(target > reference))
    return {"target_voice_wins": wins / len(target),
            # with 40 pairs one pair is 2.5 points: the interval says what the share can tell apart
            "target_voice_wins_95ci": wins_interval(wins, len(target)),
            "similarity_to_target": float(target.mean()), "similarity_to_reference": float(reference.mean())}


def wins_interval(wins: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a share of `wins` out of `n` (binomial)."""
    from scipy.stats import binomtest

    interval = binomtest(wins, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(interval.low), float(interval.high)
