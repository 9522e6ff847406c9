"""Calibration: the knobs of knobs.py fitted to one model, on its training corpus.

    calibration = calibrate_checkpoint("run/checkpoints/best.pt", "corpus/")   # stored in the checkpoint

Each knob is a direction in z. Calibration fits them in two steps, then chooses each knob's path.

1. Fit. The training corpus is encoded to its posterior means Z (N, latent) and described by the
   per-utterance statistics of stats.py, as targets Y (N, 4): F0 mean in semitones, ln of the F0
   range (semitones), ln of the speaking rate, energy in dB. A ridge regression Y ~ Z W^T + b gives
   W (4, latent). The directions D (latent, 4) solve W D = I with the smallest move in the units of
   the data's own spread: minimise dz^T S^-1 dz subject to W dz = e_k, S the covariance of Z, so
   D = S W^T (W S W^T)^-1. In the linear model each knob then changes its own quantity by exactly
   one unit and the other three by zero, along the direction the corpus itself varies most for
   that change, so the decoder is driven where it was trained.
2. Refine. A regression on posterior means is attenuated (noisy, partly collapsed latents), and
   the decoder need not respond linearly, so the model is run: `n_refine_references` training
   posterior means, on `REFINE_TEXTS`, each moved along each direction to both ends of the
   knob's range (below) and halfway to them. The
   realised change of each quantity is measured on the model's own output (the pitch head's F0,
   the mel's frame energy for span and level; see `output_prosody`), and each direction is
   divided by its realised gain (the slope between the moves halfway to either end of the
   range), so one unit of a knob gives one unit of output on average. Far from the data the
   decoder stops following (on the demo model, rate x1.4 came out unchanged): a range end where
   the realised change misses the halfway slope by more than `MAX_END_ERROR` is pulled in to
   halfway.

3. Choose a path. A knob whose fit explains little (held-out r2 < `MIN_R2`: the latent does not
   carry the quantity, so the direction is mostly noise) or whose direction barely moves the
   output (realised gain < `MIN_GAIN`) is not offered in z. Energy then scales the predicted
   mel's level (`edit_level`: every vocoder hears it); the pitch knobs of a model with a pitch
   head edit its predicted F0 (`edit_f0`: exact, but only a pitch-driven vocoder such as
   "source-filter" voices it, and the mel does not follow), or are marked unavailable. On the
   demo model pitch range and energy are such knobs (benchmarks/README.md).

A knob's range is the spread of its quantity over the calibration corpus (5th to 95th
percentile, relative to the median).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from ..data.ljspeech import MelCache, read_metadata
from ..data.speakers import SpeakerTable
from ..data.stats import SPEECH_TOP_DB, count_syllables, semitones, utterance_stats
from ..plugin.errors import ControlError
from ..training.checkpoint import load_checkpoint, load_model_and_state, save_checkpoint
from .knobs import KNOBS, Calibration, KnobCalibration
from .synthesizer import Synthesizer

RIDGE = 1e-2  # relative to the mean latent variance: only steadies near-collapsed dims
# a direction below either bound does not carry its quantity: the knob falls back to an exact
# path (the predicted F0 for the pitch knobs, a mel gain for energy) or is marked unavailable
MIN_R2, MIN_GAIN = 0.3, 0.3
MAX_END_ERROR = 0.3  # a range end where the realised change is off the halfway slope by more is halved

REFINE_TEXTS = ("The farmer carried a heavy basket across the river.", "Did you find the little map?",
                "Later that evening, my neighbor painted the old boat by the lake.",
                "We still need bread, honey and lemons for the journey.")


def statistic_targets(rows) -> np.ndarray:
    """(N, 4) fitted targets of `stats.UtteranceStats` rows (or dicts), knob order; NaN where undefined."""
    get = lambda row, name: row[name] if isinstance(row, Mapping) else getattr(row, name)
    values = np.array([[get(row, knob.statistic) for knob in KNOBS.values()] for row in rows], dtype=np.float64)
    logs = np.array([knob.log for knob in KNOBS.values()])
    with np.errstate(divide="ignore", invalid="ignore"):
        values[:, logs] = np.log(np.where(values[:, logs] > 0, values[:, logs], np.nan))
    return values


def fit_directions(means: np.ndarray, targets: np.ndarray, folds: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(directions (latent, 4), held-out r2 (4,)) from posterior means (N, latent) and targets (N, 4).
    Rows with a NaN target are dropped (an utterance with no voiced frame has no F0)."""
    keep = np.isfinite(targets).all(axis=1)
    z, y = means[keep], targets[keep]
    if len(z) < 2 * z.shape[1]:
        raise ControlError(f"calibration needs at least {2 * z.shape[1]} utterances with voiced frames, "
                           f"got {len(z)}")
    weights = _ridge(z, y)  # (4, latent)
    covariance = np.cov(z, rowvar=False)  # (latent, latent)
    directions = covariance @ weights.T @ np.linalg.inv(weights @ covariance @ weights.T)  # (latent, 4)
    order = np.random.default_rng(0).permutation(len(z))
    residual = np.zeros_like(y)
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        w = _ridge(z[train], y[train])
        residual[fold] = y[fold] - (y[train].mean(0) + (z[fold] - z[train].mean(0)) @ w.T)
    r2 = 1.0 - residual.var(axis=0) / y.var(axis=0)
    return directions, r2


def _ridge(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """W (4, latent) of y - mean ~ (z - mean) W^T, the penalty scaled to the data."""
    zc, yc = z - z.mean(0), y - y.mean(0)
    gram = zc.T @ zc
    penalty = RIDGE * np.trace(gram) / len(gram)
    return np.linalg.solve(gram + penalty * np.eye(len(gram)), zc.T @ yc).T


# ------------------------------------------------------------------------------------------ refine
def output_prosody(mel: torch.Tensor, f0: Optional[torch.Tensor], text: str, frame_seconds: float) -> np.ndarray:
    """(4,) fitted targets of one synthesised item, as stats.py defines them but from the model's
    own outputs: log-mel (T, n_mels) for the speech span and level, predicted F0 (T,) Hz (0 unvoiced)."""

    level = 10.0 * torch.log10((2.0 * mel.double()).exp().sum(dim=1)).numpy()  # (T,) dB of the mel's power
    loud = level >= level.max() - SPEECH_TOP_DB
    first, last = np.flatnonzero(loud)[[0, -1]]
    rate = count_syllables(text) / ((last + 1 - first) * frame_seconds)
    energy = 10.0 * np.log10(np.mean(10.0 ** (level[loud] / 10.0)))
    f0_mean = f0_range = math.nan
    if f0 is not None and (f0 > 0).any():
        voiced = semitones(f0[f0 > 0].double().numpy())
        low, high = np.percentile(voiced, [5, 95])
        f0_mean, f0_range = float(voiced.mean()), float(high - low)
    return prosody_targets(f0_mean, f0_range, rate, energy)


def prosody_targets(f0_mean_st: float, f0_range_st: float, speaking_rate: float, energy_db: float) -> np.ndarray:
    """(4,) fitted targets, knob order, of one utterance's statistics (NaN where undefined)."""
    values = dict(f0_mean_st=f0_mean_st, f0_range_st=f0_range_st, speaking_rate=speaking_rate, energy_db=energy_db)
    return statistic_targets([values])[0]


def realised_changes(synth: Synthesizer, anchors: torch.Tensor, directions: np.ndarray, offsets: np.ndarray,
                     texts: Sequence[str] = REFINE_TEXTS, seed: int = 0) -> np.ndarray:
    """(4, S) mean realised change of each knob's own target when anchors (M, latent) move by
    offsets[k] (4, S) along direction k, on every text, against the anchors unmoved."""
    frame_seconds = synth.audio.hop_length / synth.audio.sample_rate
    items = list(texts) * len(anchors)

    def measure(z: torch.Tensor) -> np.ndarray:  # (M * texts, 4)
        out = synth.tts(items, z=z.repeat_interleave(len(texts), dim=0), seed=seed, vocode=False)
        return np.array([output_prosody(m, f, t, frame_seconds)
                         for m, f, t in zip(out.mel, out.f0 or [None] * len(items), items)])

    base = measure(anchors)
    changes = np.full(offsets.shape, math.nan)
    for k in range(len(KNOBS)):
        direction = torch.as_tensor(directions[:, k], dtype=torch.float32)
        for s, offset in enumerate(offsets[k]):
            change = measure(anchors + float(offset) * direction)[:, k] - base[:, k]
            if np.isfinite(change).any():
                changes[k, s] = float(np.nanmean(change))
    return changes


# ------------------------------------------------------------------------------------------ calibrate
def calibrate(synth: Synthesizer, data_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
              refine: bool = True, n_refine_references: int = 8) -> Calibration:
    """Fit the knobs of `synth`'s model on an LJSpeech-format corpus (its training data)."""

    data_dir = Path(data_dir)
    utterances = read_metadata(data_dir)
    cache = MelCache(Path(cache_dir) if cache_dir else data_dir / ".mel_cache", synth.audio)
    rows, means, kls = [], [], []
    batch = 16
    for start in range(0, len(utterances), batch):
        chunk = utterances[start: start + batch]
        rows += [utterance_stats(u, cache.features(u), synth.audio) for u in chunk]
        if synth.model.config.reference_input == "prosody":  # its tracks, relative to each known speaker's register
            named = synth.speakers and all(u.speaker in synth.speakers for u in chunk)
            posterior = synth.encode([cache.features(u) for u in chunk],
                                     reference_speaker=[u.speaker for u in chunk] if named else None)
        else:
            posterior = synth.encode([torch.from_numpy(cache.get(u)) for u in chunk])
        means.append(posterior.mean.cpu().numpy())
        kls.append(posterior.kl_per_dim.cpu().numpy())
    means_np = np.concatenate(means).astype(np.float64)  # (N, latent)
    targets = statistic_targets(rows)  # (N, 4)
    directions, r2 = fit_directions(means_np, targets)
    low, median, high = np.nanpercentile(targets, [5, 50, 95], axis=0)  # (4,) each
    limits = np.stack([low - median, high - median], axis=1)  # (4, 2) the range, in target units
    gains = np.ones(len(KNOBS))
    refined = refine and synth.model.config.pitch_head
    if refined:  # the pitch knobs need the predicted F0 to be measured without a vocoder
        spread = np.random.default_rng(0).choice(len(means_np), n_refine_references, replace=False)
        anchors = torch.as_tensor(means_np[spread], dtype=torch.float32)
        halfway = realised_changes(synth, anchors, directions, limits / 2)  # (4, 2)
        gains = (halfway[:, 1] - halfway[:, 0]) / (limits[:, 1] - limits[:, 0]) * 2
        scale = np.where(gains >= MIN_GAIN, gains, 1.0)
        ends = realised_changes(synth, anchors, directions / scale, limits)  # at the knob's own range ends
        with np.errstate(invalid="ignore"):
            followed = np.abs(ends / limits - 1) <= MAX_END_ERROR
        limits = np.where(followed, limits, limits / 2)
    knobs = {}
    for k, (name, knob) in enumerate(KNOBS.items()):
        usable = r2[k] >= MIN_R2 and (gains[k] >= MIN_GAIN if refined else True)
        fallback = "mel" if name == "energy" else "f0" if synth.model.config.pitch_head else "none"
        if not usable:  # the exact paths reach the corpus's whole range
            limits[k] = (low[k] - median[k], high[k] - median[k])
        knobs[name] = KnobCalibration(
            name=name, unit=knob.unit, direction=(directions[:, k] / (gains[k] if usable else 1.0)).tolist(),
            minimum=knob.from_target(float(limits[k, 0])), maximum=knob.from_target(float(limits[k, 1])),
            r2=float(r2[k]), realised_gain=float(gains[k]), path="z" if usable else fallback)
    return Calibration(knobs=knobs, data=str(data_dir), n_utterances=len(means_np),
                       kl_per_dim=np.concatenate(kls).mean(axis=0).tolist(), refined=bool(refined))


def calibrate_checkpoint(checkpoint: str | os.PathLike, data_dir: str | os.PathLike,
                         out: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                         refine: bool = True) -> Calibration:
    """Calibrate a checkpoint's knobs on `data_dir` and store them in `out` (default: in place,
    written atomically; everything else in the file is kept)."""

    model, config, state = load_model_and_state(checkpoint)
    # the speaker table names the corpus's voices, so a "prosody" model reads each utterance
    # relative to its own speaker's register
    synth = Synthesizer(model, config, speaker_table=SpeakerTable.from_checkpoint(state, str(checkpoint)))
    calibration = calibrate(synth, data_dir, cache_dir=cache_dir, refine=refine)
    # in place means into the file itself: writing over a link (a run's last.pt) would replace the link
    save_checkpoint(out or Path(checkpoint).resolve(), {**state, "calibration": calibration.to_dict()})
    return calibration


def calibrate_with_best(checkpoint: str | os.PathLike, data_dir: str | os.PathLike,
                        cache_dir: str | os.PathLike | None = None) -> Calibration:
    """Calibrate a run's step `checkpoint` in place, and the run's `best.pt` beside it, which is the
    file people serve and load: knobs fitted to one set of weights do not fit another, so best.pt
    takes these only when it holds the same step (the same weights), and is fitted on its own
    otherwise."""
    calibration = calibrate_checkpoint(checkpoint, data_dir, cache_dir=cache_dir)
    best = Path(checkpoint).parent / "best.pt"
    if best.is_file() and best.resolve() != Path(checkpoint).resolve():
        state = load_checkpoint(best)
        if state.get("step") == load_checkpoint(checkpoint).get("step"):
            save_checkpoint(best, {**state, "calibration": calibration.to_dict()})
        else:
            calibrate_checkpoint(best, data_dir, cache_dir=cache_dir)
    return calibration
