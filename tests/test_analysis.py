"""Behavioural tests of prosody_vae/evaluation/analysis.py: entropy sums, rate-distortion runs, split evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from prosody_vae.evaluation.analysis import (RatePoint, entropy_sum_diagnostic, evaluate_split, plot_rate_distortion,
                                  rate_distortion_table, read_run)
from prosody_vae.data.ljspeech import Sample, collate_batch
from prosody_vae.plugin.errors import ConfigError, DataError
from prosody_vae.training.losses import masked_l1
from prosody_vae.model.tacotron import ProsodyTacotron, TacotronConfig


# ------------------------------------------------------------------------------ entropy sums
def posteriors(second_moment: float, n: int = 200, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """mean, std (n, d) with mean_n(mu_d^2 + sigma_d^2) == second_moment exactly for every d."""
    rng = np.random.default_rng(seed)
    std = np.broadcast_to(rng.uniform(0.2, 0.8, size=d), (n, d)).copy()
    mean = rng.normal(size=(n, d))
    mean *= np.sqrt((second_moment - std[0] ** 2) / (mean ** 2).mean(axis=0))
    return mean, std


def reconstruction(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    return rng.uniform(0.1, 0.6, size=n), rng.integers(50, 400, size=n) * 12


def test_stationary_posteriors_close_the_gap_and_converge():
    mean, std = posteriors(1.0)
    report = entropy_sum_diagnostic(mean, std, *reconstruction())
    np.testing.assert_allclose(report.second_moment, 1.0, atol=1e-12)
    assert abs(report.gap) < 1e-8 and report.relative_gap < 1e-10
    np.testing.assert_allclose(report.kl_per_dim, report.neg_half_log_var, atol=1e-12)
    assert report.violating_dims == [] and report.converged
    assert "converged" in report.summary() and "not converged" not in report.summary()


def test_posteriors_far_from_the_prior_moment_fail():
    mean, std = posteriors(4.0)
    report = entropy_sum_diagnostic(mean, std, *reconstruction())
    assert report.gap == pytest.approx(-0.5 * mean.shape[1] * 3.0, rel=1e-9)
    assert report.violating_dims == list(range(mean.shape[1]))
    assert not report.converged and "not converged" in report.summary()
    assert np.all(report.kl_per_dim > report.neg_half_log_var + 1.0)


@pytest.mark.parametrize("tolerance, converged", [(1e-3, True), (1e-5, False)])
def test_tolerance_bounds_the_relative_gap(tolerance, converged):
    """m_d = 1.05 stays inside dim_tolerance 0.1, so the relative gap alone decides."""
    mean, std = posteriors(1.05)
    report = entropy_sum_diagnostic(mean, std, *reconstruction(), tolerance=tolerance)
    assert report.violating_dims == [] and 1e-5 < report.relative_gap < 1e-3
    assert report.converged is converged


def test_gap_identity_holds_for_any_posteriors():
    rng = np.random.default_rng(3)
    mean, std = rng.normal(0.0, 2.0, size=(50, 5)), rng.uniform(0.05, 3.0, size=(50, 5))
    report = entropy_sum_diagnostic(mean, std, *reconstruction(50))
    expected = -0.5 * (mean ** 2 + std ** 2 - 1.0).sum(axis=1).mean()
    assert report.gap == pytest.approx(expected, abs=1e-9)


def test_terms_match_torch_distributions():
    """Laplace scale, log-likelihood and entropies against an independent oracle: the densities
    of torch.distributions evaluated on explicit per-element errors."""
    rng = np.random.default_rng(5)
    errors = [rng.laplace(0.0, scale, size=size) for scale, size in ((0.2, 120), (0.5, 360), (0.3, 48))]
    l1 = np.array([np.abs(e).mean() for e in errors])
    n_el = np.array([e.size for e in errors])
    mean, std = rng.normal(size=(3, 4)), rng.uniform(0.3, 1.5, size=(3, 4))
    report = entropy_sum_diagnostic(mean, std, l1, n_el)

    b = np.abs(np.concatenate(errors)).mean()
    laplace = torch.distributions.Laplace(0.0, torch.tensor(b, dtype=torch.float64))
    q = torch.distributions.Normal(torch.from_numpy(mean), torch.from_numpy(std))
    prior = torch.distributions.Normal(torch.zeros(4, dtype=torch.float64), 1.0)
    assert report.laplace_scale == pytest.approx(b, rel=1e-12)
    loglik = np.mean([float(laplace.log_prob(torch.from_numpy(e)).sum()) for e in errors])
    assert report.expected_loglik == pytest.approx(loglik, rel=1e-10)
    assert report.entropy_decoder == pytest.approx(float(laplace.entropy()) * n_el.mean(), rel=1e-10)
    assert report.entropy_posterior == pytest.approx(float(q.entropy().sum(dim=1).mean()), rel=1e-10)
    assert report.entropy_prior == pytest.approx(float(prior.entropy().sum()), rel=1e-10)
    kl = float(torch.distributions.kl_divergence(q, prior).sum(dim=1).mean())
    assert report.kl == pytest.approx(kl, rel=1e-10)
    assert report.elbo == pytest.approx(loglik - kl, rel=1e-10)
    # with the optimal scale, the decoder's log-likelihood is exactly minus its entropy
    assert report.expected_loglik == pytest.approx(-report.entropy_decoder, rel=1e-10)


@pytest.mark.parametrize("change", ["shape", "std", "l1"])
def test_bad_inputs_are_config_errors(change):
    mean, std = posteriors(1.0, n=4, d=2)
    l1, n_el = reconstruction(4)
    if change == "shape":
        std = std[:3]
    elif change == "std":
        std[0, 0] = 0.0
    else:
        l1 = np.zeros(4)
    with pytest.raises(ConfigError):
        entropy_sum_diagnostic(mean, std, l1, n_el)


# ------------------------------------------------------------------------------ rate-distortion
RUNS = {"c20": 20.0, "c5": 5.0, "c10": 10.0}  # written out of capacity order


def write_run(root: Path, name: str, capacity: float) -> Path:
    """Train lines every 10 steps to 100, val lines at 50 and 100; values are simple in step and C."""
    run = root / name
    run.mkdir(parents=True)
    lines = [{"step": 0, "split": "data", "n_train": 10}]
    for step in range(10, 101, 10):
        lines.append({"step": step, "split": "train", "kl": capacity + step / 100, "postnet_l1": 1.0 / capacity + step,
                      "beta": 0.5, "capacity": capacity})
        if step % 50 == 0:
            lines.append({"step": step, "split": "val", "kl": capacity + step, "postnet_l1": 2.0 / capacity + step,
                          "align": 0.7, "beta": 0.25, "capacity": capacity})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return run


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    return [write_run(tmp_path, name, capacity) for name, capacity in RUNS.items()]


def test_read_run_takes_last_val_and_late_train_mean(runs):
    point = read_run(runs[0])  # C = 20: train window is steps 90 and 100
    assert point.run == "c20" and point.capacity == 20.0
    assert point.train_kl == pytest.approx(20.0 + 0.95)
    assert point.train_l1 == pytest.approx(1.0 / 20.0 + 95.0)
    assert (point.val_kl, point.val_l1) == pytest.approx((120.0, 2.0 / 20.0 + 100.0))
    assert point.extra == {"align": 0.7, "beta": 0.25}


def test_read_run_skips_a_half_written_last_line_but_not_a_broken_middle_one(runs):
    path = runs[1] / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 110, "split": "tr', encoding="utf-8")
    assert read_run(runs[1]).val_kl == pytest.approx(105.0)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + ["{oops"] + lines[3:]), encoding="utf-8")
    with pytest.raises(DataError, match=r"metrics\.jsonl:4"):
        read_run(runs[1])


def test_read_run_needs_metrics_and_both_splits(tmp_path):
    with pytest.raises(DataError, match="no metrics.jsonl"):
        read_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "kl": 1, "postnet_l1": 1}))
    with pytest.raises(DataError, match="'val'"):
        read_run(tmp_path)


def test_table_rows_are_sorted_by_capacity(runs):
    points = [read_run(run) for run in runs] + [RatePoint("beta-only", None, 1.0, 0.5, 1.2, 0.6)]
    rows = rate_distortion_table(points).strip().splitlines()
    assert rows[0].startswith("| run | C |") and "align" in rows[0]
    names = [row.split("|")[1].strip() for row in rows[2:]]
    assert names == ["c5", "c10", "c20", "beta-only"]
    assert rows[2].split("|")[7].strip() == "+5.2000"  # L1 gap of C = 5: val (2/5 + 100) - train (1/5 + 95)
    assert rows[-1].split("|")[2].strip() == "-"


def test_plot_is_written(runs, tmp_path):
    path = plot_rate_distortion([read_run(run) for run in runs], tmp_path / "plots" / "rd.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ split evaluation
N_MELS = 12
MICRO = dict(n_mels=N_MELS, embedding_dim=16, encoder_conv_channels=16, encoder_lstm_dim=16, prenet_dims=(16, 16),
             attention_rnn_dim=16, decoder_rnn_dim=16, attention_dim=8, location_filters=4, postnet_channels=8,
             latent_dim=3, ref_conv_channels=(4, 8), ref_gru_dim=8, ref_mlp_dim=8, reduction_factor=2)


def micro_batches(r: int) -> list:
    g = torch.Generator().manual_seed(0)
    samples = [Sample(f"u{i}", torch.randint(3, 30, (n_text,), generator=g), torch.randn(n_mel, N_MELS, generator=g))
               for i, (n_text, n_mel) in enumerate([(5, 14), (8, 21), (3, 9)])]
    return [collate_batch(samples[:2], frames_multiple=r), collate_batch(samples[2:], frames_multiple=r)]


def test_evaluate_split_is_deterministic_and_matches_the_batch_pass():
    torch.manual_seed(0)
    model = ProsodyTacotron(TacotronConfig.preset("tiny", **MICRO)).train()
    batches = micro_batches(model.config.reduction_factor)
    stats = evaluate_split(model, batches, seed=7)
    assert model.training  # mode restored
    assert stats.ids == ["u0", "u1", "u2"] and stats.mean.shape == stats.std.shape == (3, 3)
    np.testing.assert_array_equal(stats.n_elements, [14 * N_MELS, 21 * N_MELS, 9 * N_MELS])
    again = evaluate_split(model, batches, seed=7)
    np.testing.assert_array_equal(stats.l1, again.l1)

    model.eval()
    with torch.no_grad():
        torch.manual_seed(7)  # the same dropout noise as evaluate_split's forked RNG
        batch = batches[0]
        out = model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths, mode="mean")
    weights = stats.n_elements[:2]
    pooled = (stats.l1[:2] * weights).sum() / weights.sum()
    assert pooled == pytest.approx(float(masked_l1(out.mel_postnet, batch.mel, batch.mel_lengths)), rel=1e-5)
    np.testing.assert_allclose(stats.kl[:2], out.posterior.kl.numpy(), rtol=1e-6)
    np.testing.assert_allclose(stats.mean[:2], out.posterior.mean.numpy(), rtol=1e-6)
    assert math.isfinite(stats.mean_l1) and stats.mean_kl == pytest.approx(stats.kl.mean())


def test_evaluate_split_with_no_batches_is_a_data_error():
    model = ProsodyTacotron(TacotronConfig.preset("tiny", **MICRO))
    with pytest.raises(DataError):
        evaluate_split(model, [])
