"""Analysis of trained models: the rate-distortion sweep and the entropy-sum diagnostic.

Rate-distortion (Bozkurt et al., "Rate-regularization and generalization in VAEs"): runs trained
at several capacities C each give one point per split, rate = KL (nats per utterance) against
distortion = postnet L1. A growing gap between the train and held-out curves as C rises is the
generalisation cost of a larger rate. Transfer metrics (metrics.py) sit beside them in `extra`.

Entropy sums (Luecke et al. 2022, "The ELBO of variational autoencoders converges to a sum of
entropies"): at a stationary point of the ELBO, with a standard normal prior and a decoder whose
scale is learned, the ELBO equals

    mean_n H[q(z | x_n)] - H[p(z)] - mean_n H[p(x | z)].

We read the decoder as a Laplace density (the L1 loss) with the scale b that maximises the
likelihood: one global b, the mean absolute error over every mel element of the split (the model
has no per-utterance scale, so a global one is what an L1-trained decoder implies). With that b
the decoder's expected log-likelihood equals minus its entropy exactly, and the closed-form KL
gives the identity

    ELBO - entropy sum = -1/2 mean_n sum_d (mu_nd^2 + sigma_nd^2 - 1),

so the gap vanishes when m_d = mean_n(mu_d^2 + sigma_d^2) = 1 for every dimension d, which is
also where kl_d = -1/2 mean_n log sigma_d^2. A Capacitron model trained with beta != 1 optimises
another objective and need not pass; the gap then says how far it is from an ELBO optimum.
The decoder term uses the reconstruction from z = posterior mean (one deterministic pass instead
of a Monte-Carlo expectation over q), which is what `evaluate_split` measures.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from ..data.ljspeech import Batch
from ..model.tacotron import ProsodyTacotron
from ..plugin.errors import ConfigError, DataError
from ..training.checkpoint import load_model
from ..training.data import build_data
from ..training.losses import masked_l1
from ..training.runlog import read_metrics

_LOG_2PI_E = math.log(2.0 * math.pi * math.e)


# ------------------------------------------------------------------------------ model evaluation
@dataclass
class SplitStats:
    """Per-utterance results of one split. N = utterances, D = latent_dim."""

    ids: list[str]
    l1: np.ndarray  # (N,) postnet L1, mean over the utterance's valid (frame, mel bin) elements
    n_elements: np.ndarray  # (N,) valid frames * n_mels
    kl: np.ndarray  # (N,) KL(q || N(0, I)) in nats, summed over dims
    mean: np.ndarray  # (N, D) posterior mean
    std: np.ndarray  # (N, D) posterior std

    @property
    def mean_l1(self) -> float:
        """Element-weighted, as masked_l1 over the whole split would give."""
        return float((self.l1 * self.n_elements).sum() / self.n_elements.sum())

    @property
    def mean_kl(self) -> float:
        return float(self.kl.mean())


@torch.no_grad()
def evaluate_split(model: ProsodyTacotron, batches: Iterable[Batch], seed: int = 0) -> SplitStats:
    """Teacher-forced pass in eval mode with z = posterior mean, as the trainer validates.

    Eval mode may keep prenet dropout on (Tacotron 2 does), so the pass runs under a forked RNG
    seeded with `seed`: the same numbers on every call, and the caller's RNG is left untouched.
    The model's train/eval mode is restored afterwards.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids, l1, n_elements, kl, means, stds = [], [], [], [], [], []
    devices = [device.index] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for batch in batches:
                batch = batch.to(device)
                speakers = batch.speaker_ids if model.config.n_speakers else None
                output = model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths,
                               speaker_ids=speakers, mode="mean")
                for i in range(len(batch.ids)):
                    item = slice(i, i + 1)
                    l1.append(float(masked_l1(output.mel_postnet[item].float(), batch.mel[item],
                                              batch.mel_lengths[item])))
                ids += batch.ids
                n_elements.append(batch.mel_lengths.cpu().numpy() * batch.mel.shape[2])
                posterior = output.posterior
                kl.append(posterior.kl.float().cpu().numpy())
                means.append(posterior.mean.float().cpu().numpy())
                stds.append(posterior.std.float().cpu().numpy())
    finally:
        model.train(was_training)
    if not ids:
        raise DataError("evaluate_split: no batches to evaluate")
    return SplitStats(ids, np.asarray(l1), np.concatenate(n_elements), np.concatenate(kl),
                      np.concatenate(means), np.concatenate(stds))


# ------------------------------------------------------------------------------ entropy sums
@dataclass
class EntropySumReport:
    """All terms in nats per utterance (means over utterances) unless said otherwise.

    converged: relative_gap <= tolerance and every |m_d - 1| <= dim_tolerance. The decoder
    terms (thousands of mel elements per utterance) dominate |ELBO|, so the relative gap stays
    small even for a poor latent; the per-dimension check is the sharper of the two.
    """

    laplace_scale: float  # b, the optimal global Laplace scale
    expected_loglik: float  # mean_n E[log p(x_n | z)]
    kl: float  # mean_n KL(q(z | x_n) || p(z))
    elbo: float
    entropy_posterior: float  # mean_n H[q(z | x_n)]
    entropy_prior: float  # H[p(z)]
    entropy_decoder: float  # mean_n H[p(x | z)]
    entropy_sum: float
    gap: float  # elbo - entropy_sum
    relative_gap: float  # |gap| / |elbo|
    second_moment: np.ndarray  # (D,) m_d = mean_n(mu_d^2 + sigma_d^2); 1 at a stationary point
    kl_per_dim: np.ndarray  # (D,) mean_n KL_nd
    neg_half_log_var: np.ndarray  # (D,) -1/2 mean_n log sigma_d^2; equals kl_per_dim at a stationary point
    violating_dims: list[int]  # d with |m_d - 1| > dim_tolerance
    tolerance: float
    dim_tolerance: float
    converged: bool

    def summary(self) -> str:
        verdict = "converged" if self.converged else "not converged"
        return (f"ELBO {self.elbo:.2f} vs entropy sum {self.entropy_sum:.2f} nats/utt: gap {self.gap:.3g} "
                f"(relative {self.relative_gap:.2%}, tolerance {self.tolerance:.0%}); "
                f"{len(self.violating_dims)} of {len(self.second_moment)} dims with |m_d - 1| > "
                f"{self.dim_tolerance:g}: {verdict}")


def entropy_sum_diagnostic(mean: np.ndarray, std: np.ndarray, l1_per_utt: np.ndarray,
                           n_elements_per_utt: np.ndarray, tolerance: float = 0.05,
                           dim_tolerance: float = 0.1) -> EntropySumReport:
    """ELBO against the three-entropy sum (module docstring). mean, std (N, D); l1_per_utt (N,)
    mean absolute error per element; n_elements_per_utt (N,) elements behind each l1."""
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    l1, n_el = np.asarray(l1_per_utt, dtype=np.float64), np.asarray(n_elements_per_utt, dtype=np.float64)
    n = mean.shape[0] if mean.ndim == 2 else -1
    if n < 1 or std.shape != mean.shape or l1.shape != (n,) or n_el.shape != (n,):
        raise ConfigError(f"entropy_sum_diagnostic: mean {mean.shape} and std {std.shape} must be the same (N, D), "
                          f"l1_per_utt {l1.shape} and n_elements_per_utt {n_el.shape} (N,), N >= 1")
    if not (np.all(std > 0) and np.all(n_el > 0) and np.all(l1 >= 0)):
        raise ConfigError("entropy_sum_diagnostic: std and n_elements_per_utt must be > 0, l1_per_utt >= 0")
    if not (tolerance >= 0 and dim_tolerance >= 0):
        raise ConfigError(f"tolerance {tolerance} and dim_tolerance {dim_tolerance} must be >= 0")
    b = float((l1 * n_el).sum() / n_el.sum())  # Laplace MLE scale: mean |error| over all elements
    if b <= 0:
        raise ConfigError("entropy_sum_diagnostic: every L1 is 0, so the Laplace scale is 0 (log-likelihood +inf)")
    loglik = -n_el * (math.log(2.0 * b) + l1 / b)  # (N,)
    var = std ** 2
    kl_nd = 0.5 * (mean ** 2 + var - 1.0 - np.log(var))  # (N, D)
    elbo = float(loglik.mean() - kl_nd.sum(axis=1).mean())
    entropy_posterior = float(0.5 * (_LOG_2PI_E + np.log(var)).sum(axis=1).mean())
    entropy_prior = 0.5 * mean.shape[1] * _LOG_2PI_E
    entropy_decoder = float((n_el * (1.0 + math.log(2.0 * b))).mean())
    entropy_sum = entropy_posterior - entropy_prior - entropy_decoder
    gap = elbo - entropy_sum
    second_moment = (mean ** 2 + var).mean(axis=0)  # (D,)
    relative_gap = abs(gap) / abs(elbo) if elbo else math.inf
    violating = [int(d) for d in np.flatnonzero(np.abs(second_moment - 1.0) > dim_tolerance)]
    return EntropySumReport(
        laplace_scale=b, expected_loglik=float(loglik.mean()), kl=float(kl_nd.sum(axis=1).mean()), elbo=elbo,
        entropy_posterior=entropy_posterior, entropy_prior=entropy_prior, entropy_decoder=entropy_decoder,
        entropy_sum=entropy_sum, gap=gap, relative_gap=relative_gap, second_moment=second_moment,
        kl_per_dim=kl_nd.mean(axis=0), neg_half_log_var=-0.5 * np.log(var).mean(axis=0),
        violating_dims=violating, tolerance=tolerance, dim_tolerance=dim_tolerance,
        converged=relative_gap <= tolerance and not violating)


# ------------------------------------------------------------------------------ rate-distortion
@dataclass
class RatePoint:
    """One run: rate (KL, nats/utt) and distortion (postnet L1) on each split. `extra` holds the
    last val record's alignment score and beta; callers add transfer metrics to it."""

    run: str
    capacity: Optional[float]  # None for a controller without a capacity (FixedBeta, annealing)
    train_kl: float
    train_l1: float
    val_kl: float
    val_l1: float
    extra: dict[str, float] = field(default_factory=dict)


def read_run(run_dir: str | os.PathLike, extra_keys: tuple[str, ...] = ("align", "beta")) -> RatePoint:
    """Val numbers from the last 'val' record; train numbers are the means of the 'train' records
    from the last 10% of steps (step >= 0.9 * last train step), which smooths the batch noise
    of a single log line. Capacity is the last logged "capacity", if any."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    records = read_metrics(path)
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    if not train or not val:
        raise DataError(f"{path}: needs both 'train' and 'val' records, found {len(train)} and {len(val)}")
    try:
        last_step = train[-1]["step"]
        window = [r for r in train if r["step"] >= 0.9 * last_step]
        train_kl = float(np.mean([r["kl"] for r in window]))
        train_l1 = float(np.mean([r["postnet_l1"] for r in window]))
        val_kl, val_l1 = float(val[-1]["kl"]), float(val[-1]["postnet_l1"])
    except KeyError as exc:
        raise DataError(f"{path}: a train or val record lacks {exc}") from None
    capacities = [r["capacity"] for r in records if "capacity" in r]
    extra = {key: float(val[-1][key]) for key in extra_keys if key in val[-1]}
    return RatePoint(run_dir.name, float(capacities[-1]) if capacities else None,
                     train_kl, train_l1, val_kl, val_l1, extra)


def _by_capacity(points: Iterable[RatePoint]) -> list[RatePoint]:
    return sorted(points, key=lambda p: (p.capacity is None, p.capacity or 0.0, p.run))


def rate_distortion_table(points: Iterable[RatePoint]) -> str:
    """Markdown, one row per run sorted by capacity; 'L1 gap' = val L1 - train L1."""
    points = _by_capacity(points)
    extra_keys = sorted({key for p in points for key in p.extra})
    header = ["run", "C", "train KL", "train L1", "val KL", "val L1", "L1 gap", *extra_keys]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in points:
        cells = [p.run, "-" if p.capacity is None else f"{p.capacity:g}", f"{p.train_kl:.2f}", f"{p.train_l1:.4f}",
                 f"{p.val_kl:.2f}", f"{p.val_l1:.4f}", f"{p.val_l1 - p.train_l1:+.4f}",
                 *(f"{p.extra[k]:.4g}" if k in p.extra else "-" for k in extra_keys)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def plot_rate_distortion(points: Iterable[RatePoint], path: str | os.PathLike) -> Path:
    """Rate (KL) on x, distortion (L1) on y, one curve per split, each point labelled with its C."""
    from matplotlib.figure import Figure  # not pyplot: no global backend or figure state

    points = _by_capacity(points)
    if not points:
        raise ConfigError("plot_rate_distortion: no runs to plot")
    figure = Figure(figsize=(6, 4.5))
    axis = figure.subplots()
    for split, marker in (("train", "o"), ("val", "s")):
        rates = [getattr(p, f"{split}_kl") for p in points]
        distortions = [getattr(p, f"{split}_l1") for p in points]
        axis.plot(rates, distortions, marker=marker, label=split)
        for p, x, y in zip(points, rates, distortions):
            label = p.run if p.capacity is None else f"C={p.capacity:g}"
            axis.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axis.set(xlabel="rate: KL (nats / utterance)", ylabel="distortion: postnet L1", title="rate-distortion")
    axis.legend()
    axis.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def analyze_runs(runs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 data_dir: Optional[str | os.PathLike] = None, max_train_batches: int = 20) -> str:
    """Rate-distortion table and plot for several runs (from their metrics.jsonl); with `data_dir`,
    also each run's best checkpoint re-evaluated on its own train/validation split and the
    entropy-sum diagnostic on the validation split. Writes analysis.md, analysis.json and
    rate_distortion.png into out_dir and returns the markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    points = [read_run(run) for run in runs]
    plot = plot_rate_distortion(points, out_dir / "rate_distortion.png")
    lines = ["# Rate-distortion analysis", "", rate_distortion_table(points), "", f"![rate-distortion]({plot.name})"]
    details: dict[str, dict] = {}
    if data_dir is not None:
        lines += ["", "## Re-evaluated checkpoints (posterior mean, teacher-forced)", "",
                  "| run | train KL | train L1 | val KL | val L1 | entropy-sum check |", "|---|---|---|---|---|---|"]
        for run in runs:
            model, config = load_model(Path(run) / "checkpoints" / "best.pt")
            data = build_data(config, Path(data_dir))
            train = evaluate_split(model, itertools.islice(data.loader, max_train_batches))
            val = evaluate_split(model, data.val_batches)
            report = entropy_sum_diagnostic(val.mean, val.std, val.l1, val.n_elements)
            details[str(run)] = {"train_kl": train.mean_kl, "train_l1": train.mean_l1, "val_kl": val.mean_kl,
                                 "val_l1": val.mean_l1, "entropy_sum": report.summary(),
                                 "converged": report.converged}
            lines.append(f"| {Path(run).name} | {train.mean_kl:.2f} | {train.mean_l1:.4f} | {val.mean_kl:.2f} | "
                         f"{val.mean_l1:.4f} | {report.summary()} |")
    markdown = "\n".join(lines) + "\n"
    (out_dir / "analysis.md").write_text(markdown, encoding="utf-8")
    (out_dir / "analysis.json").write_text(json.dumps(
        {"points": [dataclasses.asdict(p) for p in points], "checkpoints": details}, indent=1, default=str),
        encoding="utf-8")
    return markdown
