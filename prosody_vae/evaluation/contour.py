"""Contour metrics: does the output follow the reference's melody and phrasing, not only its averages?

Parallel transfer (the output says the reference's own text)
    F0 contour r   both utterances are aligned by DTW on their spectra (mel cepstra c_1..c_12 and
                   the frame level), and Pearson r is taken between the aligned log-F0 tracks
                   over the pairs voiced on both sides. Each contour is centred on its own mean,
                   so a register difference between the voices does not count; only the shape.
    pause placement  a pause is a gap of at least MIN_PAUSE_S between non-silent intervals (the
                   `speech_duration` split). Each pause's centre is mapped through the alignment
                   onto the other utterance; it is found if a pause lies within
                   PAUSE_TOLERANCE_S of speech there. Recall counts the reference's pauses found in the output,
                   precision the output's found in the reference; F1 is NaN where neither pauses. The alignment
                   for this is on the speech alone (pauses cut out), so it cannot itself pull
                   the pauses onto each other.

Non-parallel transfer (every text spoken with every other reference)
    centred r      a text's own length and wording move its rate, pitch and range whatever the
                   reference, and across texts that swamps the reference's effect. So each
                   quantity is centred per output text (both the outputs' values and their
                   references' values minus their mean over that text's pairs) before Pearson r:
                   what is left is how the output of one text moves with its reference.
    interval       95% percentile bootstrap over references (a reference's pairs move together,
                   so pairs are resampled by reference, not one by one), seeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np
import torch

from ..audio.mel import AudioConfig, MelSpectrogram
from .metrics import F0Config, _check_wav, cepstra_of_log_mel, f0_track

MIN_PAUSE_S = 0.10  # shorter gaps are stop closures and the like, not phrasing
PAUSE_TOLERANCE_S = 0.10
PAUSE_TOP_DB = 40.0  # as speech_duration
N_BOOTSTRAP = 1000


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% interval (NaN where it cannot be estimated), over n pairs or items."""

    value: float
    low: float
    high: float
    n: int

    def format(self, digits: int = 2) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


# --------------------------------------------------------------------------------- alignment
def _alignment_features(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """(T, 13) per hop of 256 samples: the frame level (mean log-mel) and c_1..c_12."""
    with torch.no_grad():
        log_mel = MelSpectrogram(AudioConfig(sample_rate=sample_rate))(torch.from_numpy(wav)).numpy()  # (T, n_mels)
    return np.hstack([log_mel.mean(axis=1, keepdims=True), cepstra_of_log_mel(log_mel, 12)])


def dtw_path(reference: np.ndarray, output: np.ndarray, sample_rate: int) -> np.ndarray:
    """(L, 2) frame-index pairs (reference, output) of the spectral DTW alignment, hop 256."""
    import librosa

    a, b = _alignment_features(reference, sample_rate), _alignment_features(output, sample_rate)
    _, path = librosa.sequence.dtw(X=a.T, Y=b.T, metric="euclidean")
    return path[::-1]  # librosa returns it end first


def dtw_f0_correlation(reference: np.ndarray, output: np.ndarray, sample_rate: int = 22050) -> float:
    """Pearson r of the DTW-aligned, mean-centred log-F0 contours (NaN below 10 jointly voiced pairs)."""
    reference, output = _check_wav(reference, "reference"), _check_wav(output, "output")
    config = F0Config(sample_rate=sample_rate)
    tracks = f0_track(reference, config), f0_track(output, config)
    path = dtw_path(reference, output, sample_rate)
    path = path[(path[:, 0] < len(tracks[0].f0)) & (path[:, 1] < len(tracks[1].f0))]
    log_f0 = [np.log(track.f0[path[:, side]]) for side, track in enumerate(tracks)]  # (L,) each, NaN unvoiced
    voiced = tracks[0].voiced[path[:, 0]] & tracks[1].voiced[path[:, 1]]
    if voiced.sum() < 10:
        return math.nan
    a, b = (x[voiced] - x[voiced].mean() for x in log_f0)
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else math.nan


# --------------------------------------------------------------------------------- pauses
def _speech_intervals(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    import librosa

    return librosa.effects.split(wav, top_db=PAUSE_TOP_DB, frame_length=1024, hop_length=256) / sample_rate  # (K, 2) s


def pauses(wav: np.ndarray, sample_rate: int = 22050) -> np.ndarray:
    """(K, 2) start and end seconds of the pauses inside the speech of `wav`."""
    intervals = _speech_intervals(_check_wav(wav, "wav"), sample_rate)
    gaps = np.stack([intervals[:-1, 1], intervals[1:, 0]], axis=1) if len(intervals) > 1 else np.zeros((0, 2))
    return gaps[gaps[:, 1] - gaps[:, 0] >= MIN_PAUSE_S]


@dataclass(frozen=True)
class PausePlacement:
    n_reference: int
    n_output: int
    recall: float  # the reference's pauses found in the output; NaN without any
    precision: float  # the output's pauses found in the reference; NaN without any
    f1: float


def _speech_only(wav: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """`wav`'s spectral features on its speech frames alone (T_speech, 13), and where each pause
    falls in them: the number of speech frames before it (K,)."""
    frame_s = 256 / sample_rate
    features = _alignment_features(wav, sample_rate)
    times = np.arange(len(features)) * frame_s
    speech = np.zeros(len(features), dtype=bool)
    for start, end in _speech_intervals(wav, sample_rate):
        speech |= (times >= start) & (times < end)
    before = np.cumsum(speech)  # speech frames up to each frame
    at = [before[min(int(start / frame_s), len(before) - 1)] for start, _ in pauses(wav, sample_rate)]
    return features[speech], np.array(at, dtype=np.int64)


def _found(these: np.ndarray, those: np.ndarray, mapping: np.ndarray, tolerance: float) -> int:
    """How many of `these` pause positions land, through `mapping`, within `tolerance` frames of `those`."""
    mapped = mapping[np.minimum(these, len(mapping) - 1)]
    return int(sum(np.any(np.abs(those - m) <= tolerance) for m in mapped))


def pause_placement(reference: np.ndarray, output: np.ndarray, sample_rate: int = 22050) -> PausePlacement:
    """Whether the output pauses where the reference does, the same text on both sides. The
    utterances are aligned on their speech alone, pauses cut out: an alignment that saw the
    pauses would pull them onto each other wherever they are. A pause is then a point between
    two speech frames, mapped through that alignment (module doc)."""
    import librosa

    reference, output = _check_wav(reference, "reference"), _check_wav(output, "output")
    (a, ours), (b, theirs) = _speech_only(reference, sample_rate), _speech_only(output, sample_rate)
    if len(a) and len(b) and (len(ours) or len(theirs)):
        path = librosa.sequence.dtw(X=a.T, Y=b.T, metric="euclidean")[1]  # (L, 2) speech-frame pairs
        mappings = []
        for source, target, n in ((0, 1, len(a) + 1), (1, 0, len(b) + 1)):
            mapping = np.zeros(n)  # speech frame -> mean aligned speech frame of the other
            np.add.at(mapping, path[:, source], path[:, target])
            counts = np.bincount(path[:, source], minlength=n)
            mapping[:-1] /= counts[:-1]
            mapping[-1] = mapping[-2] + 1  # a pause after the last frame: after the other's last
            mappings.append(mapping)
        tolerance = PAUSE_TOLERANCE_S * sample_rate / 256
        recall = _found(ours, theirs, mappings[0], tolerance) / len(ours) if len(ours) else math.nan
        precision = _found(theirs, ours, mappings[1], tolerance) / len(theirs) if len(theirs) else math.nan
    else:
        recall = precision = math.nan
    if len(ours) and len(theirs):
        f1 = 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)
    else:  # one pauses and the other never does: 0; neither does: nothing to place
        f1 = math.nan if not (len(ours) or len(theirs)) else 0.0
        recall = 0.0 if len(ours) else recall
        precision = 0.0 if len(theirs) else precision
    return PausePlacement(len(ours), len(theirs), recall, precision, f1)


# --------------------------------------------------------------------------------- intervals
def _centred_r(reference: np.ndarray, output: np.ndarray, groups: np.ndarray) -> float:
    a, b = reference.copy(), output.copy()
    for group in np.unique(groups):
        members = groups == group
        a[members] -= a[members].mean()
        b[members] -= b[members].mean()
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else math.nan


def centred_correlation(reference: Sequence[float], output: Sequence[float], texts: Sequence[Hashable],
                        references: Sequence[Hashable], seed: int = 0, n_bootstrap: int = N_BOOTSTRAP) -> Interval:
    """Pearson r of `output` on `reference` values, each centred per output text, with a 95%
    bootstrap interval over references (module doc). Pairs with a NaN on either side are left out."""
    if not len(reference) == len(output) == len(texts) == len(references):
        raise ValueError(f"centred_correlation needs one text and reference per pair: {len(reference)}, "
                         f"{len(output)}, {len(texts)} and {len(references)}")
    reference, output = np.asarray(reference, np.float64), np.asarray(output, np.float64)
    keep = np.isfinite(reference) & np.isfinite(output)
    reference, output = reference[keep], output[keep]
    as_ids = lambda keys: np.unique([str(key) for key, kept in zip(keys, keep) if kept], return_inverse=True)[1]
    texts, clusters = as_ids(texts), as_ids(references)  # (n,) group and cluster index of each kept pair
    if len(reference) < 3 or clusters.max(initial=-1) < 1:
        return Interval(math.nan, math.nan, math.nan, len(reference))
    value = _centred_r(reference, output, texts)
    rng, members = np.random.default_rng(seed), [np.flatnonzero(clusters == c) for c in range(clusters.max() + 1)]
    draws = []
    for _ in range(n_bootstrap):
        picked = np.concatenate([members[c] for c in rng.integers(0, len(members), len(members))])
        # a resampled reference keeps its identity in the centring: repeats are copies of its pairs
        draws.append(_centred_r(reference[picked], output[picked], texts[picked]))
    low, high = np.nanpercentile(draws, [2.5, 97.5]) if np.isfinite(draws).any() else (math.nan, math.nan)
    return Interval(value, float(low), float(high), len(reference))


def mean_interval(values: Sequence[float], seed: int = 0, n_bootstrap: int = N_BOOTSTRAP) -> Interval:
    """The mean of the finite `values` with a 95% percentile bootstrap interval."""
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if len(values) < 2:
        value = float(values.mean()) if len(values) else math.nan
        return Interval(value, math.nan, math.nan, len(values))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_bootstrap, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Interval(float(values.mean()), float(low), float(high), len(values))
