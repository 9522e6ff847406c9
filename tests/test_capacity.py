"""KL controllers: dual ascent holds a toy VAE's KL at C, never traps, survives bad batches,
resumes bit-exactly; the schedules, GECO and free bits have the shapes their papers give."""

from __future__ import annotations

import inspect
import io
import math
import time
from dataclasses import fields

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from prosody_vae.plugin.capacity import (CONTROLLERS, GECO, CapacityAnnealing, ControllerConfig,
                                  DualAscent, FixedBeta, FreeBits, KLAnnealing, build_controller)
from prosody_vae.plugin.errors import CheckpointError, ConfigError

# ---------------------------------------------------------------- the Capacitron claim in miniature

N_FEATURES, LATENT_DIM, N_FACTORS = 64, 16, 12
TOY_STEPS = 800


def train_toy_vae(controller, steps: int = TOY_STEPS, seed: int = 0) -> list[float]:
    """Train a small VAE on x = W u + noise (u ~ N(0, I_12), 64 features; far more than 40 nats
    of information) with L1 reconstruction and the package's loss normalisation: recon_mean + ctl.loss(kl) /
    n_features. Returns the batch-mean KL (nats) of every step."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mixing = torch.randn(N_FEATURES, N_FACTORS, generator=generator) / N_FACTORS**0.5
    encoder = nn.Sequential(nn.Linear(N_FEATURES, 128), nn.Tanh(), nn.Linear(128, 2 * LATENT_DIM))
    decoder = nn.Sequential(nn.Linear(LATENT_DIM, 128), nn.Tanh(), nn.Linear(128, N_FEATURES))
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=3e-3)
    kl_trace = []
    # Matrices this small gain nothing from threads, and on a shared 2-core runner the extra
    # thread made each step 10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            factors = torch.randn(128, N_FACTORS, generator=generator)
            x = factors @ mixing.T + 0.05 * torch.randn(128, N_FEATURES, generator=generator)  # (B, F)
            mean, std_logit = encoder(x).chunk(2, dim=-1)  # (B, D) each
            std = nn.functional.softplus(std_logit) + 1e-4
            z = mean + std * torch.randn(mean.shape, generator=generator)
            kl = (0.5 * (mean**2 + std**2 - 1) - std.log()).sum(dim=-1).mean()
            recon = (decoder(z) - x).abs().mean()
            loss = recon + controller.loss(kl) / N_FEATURES
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            controller.update(kl.detach(), recon=recon.detach())
            kl_trace.append(kl.item())
    finally:
        torch.set_num_threads(threads)
    return kl_trace


def tail_mean(trace: list[float], fraction: float = 0.2) -> float:
    tail = trace[-int(len(trace) * fraction):]
    return sum(tail) / len(tail)


def adam_dual(capacity: float) -> DualAscent:
    return DualAscent(capacity, optimizer=lambda params: torch.optim.Adam(params, lr=1e-2))


@pytest.mark.slow
@pytest.mark.parametrize("make", [lambda c: DualAscent(c, lr=3e-4), adam_dual], ids=["sgd", "adam"])
@pytest.mark.parametrize("capacity", [5.0, 20.0])
def test_dual_ascent_holds_toy_vae_kl_at_capacity(make, capacity):
    start = time.process_time()
    kl_trace = train_toy_vae(make(capacity))
    assert abs(tail_mean(kl_trace) - capacity) < 0.1 * capacity
    assert time.process_time() - start < 30


@pytest.mark.slow
def test_toy_vae_kl_is_far_from_capacity_without_control():
    # The same toy proves the claim above is not free: with no KL weight the latent carries far
    # more than C = 20, and a large fixed weight collapses it far below C = 5.
    assert tail_mean(train_toy_vae(FixedBeta(0.0))) > 2 * 20.0
    assert tail_mean(train_toy_vae(FixedBeta(20.0))) < 0.5 * 5.0


# ------------------------------------------------------------------------------------ no trap

def steps_to_recover(update_and_get_beta, steps_below: int, capacity: float, threshold: float) -> int:
    """Feed KL = C - 15 for steps_below steps, then KL = C + 15; the number of steps after the
    switch until beta exceeds threshold (capped at 5000)."""
    for _ in range(steps_below):
        update_and_get_beta(capacity - 15.0)
    for step in range(1, 5001):
        if update_and_get_beta(capacity + 15.0) > threshold:
            return step
    return 5001


def softplus_dual_ascent(capacity: float, lr: float):
    """Capacitron's parametrisation, beta = softplus(b) with SGD momentum 0.9, for comparison."""
    b = nn.Parameter(torch.tensor(math.log(math.expm1(1.0)), dtype=torch.float64))  # beta = 1
    optimizer = torch.optim.SGD([b], lr=lr, momentum=0.9)

    def update_and_get_beta(kl: float) -> float:
        optimizer.zero_grad()
        (-nn.functional.softplus(b) * (kl - capacity)).backward()
        optimizer.step()
        return float(nn.functional.softplus(b.detach()))

    return update_and_get_beta


def projected_dual_ascent(capacity: float, **kwargs):
    controller = DualAscent(capacity, **kwargs)

    def update_and_get_beta(kl: float) -> float:
        controller.update(kl)
        return controller.beta

    return update_and_get_beta


@pytest.mark.parametrize("optimizer, max_steps", [
    (None, 50),  # plain ascent at lr 1e-3 needs 0.5 / (1e-3 * 15) = 34 steps; momentum helps
    (lambda params: torch.optim.Adam(params, lr=1e-2), 100),  # Adam moves ~lr a step: >= 50
], ids=["sgd-momentum", "adam"])
def test_beta_recovery_does_not_depend_on_time_spent_at_zero(optimizer, max_steps):
    recoveries = [steps_to_recover(projected_dual_ascent(20.0, lr=1e-3, optimizer=optimizer),
                                   steps_below, 20.0, threshold=0.5)
                  for steps_below in (200, 3000)]
    assert recoveries[0] == recoveries[1] <= max_steps


def test_projected_beta_rises_on_the_first_step_above_capacity():
    lr = 1e-3
    update = projected_dual_ascent(20.0, lr=lr)
    for _ in range(2000):
        assert update(5.0) >= 0.0
    # Momentum pressing into the floor was dropped, so the first step is at least plain ascent.
    assert update(35.0) >= lr * 15.0 * (1 - 1e-12)


def test_softplus_parametrisation_traps_where_projection_recovers():
    # Why DualAscent projects instead of using softplus: after 2000 steps with KL < C, softplus(b)
    # needs thousands of steps to come back (the longer below, the longer the trap), while the
    # projected beta is back within a few dozen.
    lr = 1e-3
    projected = steps_to_recover(projected_dual_ascent(20.0, lr=lr), 2000, 20.0, threshold=0.5)
    softplus_short = steps_to_recover(softplus_dual_ascent(20.0, lr), 200, 20.0, threshold=0.5)
    softplus_long = steps_to_recover(softplus_dual_ascent(20.0, lr), 2000, 20.0, threshold=0.5)
    assert projected <= 50
    assert softplus_long > 1000 > 20 * projected
    assert softplus_long > 3 * softplus_short


# ------------------------------------------------------------------- bounds and bad batches

@settings(max_examples=40, deadline=None)
@given(kls=st.lists(st.floats(-200, 300), min_size=1, max_size=60),
       lr=st.floats(1e-4, 10.0), momentum=st.floats(0.0, 0.99))
def test_beta_stays_within_zero_and_beta_max(kls, lr, momentum):
    controller = DualAscent(20.0, lr=lr, momentum=momentum, beta_max=50.0)
    for kl in kls:
        controller.update(kl)
        assert 0.0 <= controller.beta <= 50.0


def test_non_finite_kl_is_skipped_and_leaves_state_bit_identical():
    controller, twin = DualAscent(20.0, lr=1e-2), DualAscent(20.0, lr=1e-2)
    for kl in (25.0, 31.0, 12.0):
        controller.update(kl)
        twin.update(kl)
    before = controller.state_dict()
    for bad in (math.nan, math.inf, -math.inf, torch.tensor(math.nan)):
        controller.update(bad)
    after = controller.state_dict()
    assert controller.skipped_updates == 4
    assert torch.equal(after["beta"], before["beta"])
    assert torch.equal(after["optimizer"]["state"][0]["momentum_buffer"],
                       before["optimizer"]["state"][0]["momentum_buffer"])
    assert (after["ema_mean"], after["ema_count"]) == (before["ema_mean"], before["ema_count"])
    controller.update(27.0)
    twin.update(27.0)
    assert controller.beta == twin.beta  # the bad batches left no trace at all


def test_geco_skips_non_finite_reconstruction():
    controller = GECO(recon_target=0.3)
    controller.update(10.0, recon=0.5)
    lambda_before = controller.lambda_
    controller.update(10.0, recon=math.nan)
    assert controller.lambda_ == lambda_before and controller.skipped_updates == 1


# ------------------------------------------------------------------------------ exact resume

RESUMABLE = {
    "fixed_normalised": lambda: build_controller(
        ControllerConfig("fixed", beta=4.0, latent_dim=16, n_features=80)),
    "anneal_linear": lambda: KLAnnealing(2.0, "linear", warmup_steps=60),
    "anneal_sigmoid": lambda: KLAnnealing(2.0, "sigmoid", warmup_steps=60),
    "anneal_cyclical": lambda: build_controller(
        ControllerConfig("kl_annealing", beta_max=2.0, schedule="cyclical", total_steps=90, n_cycles=3)),
    "capacity_annealing": lambda: CapacityAnnealing(gamma=5.0, c_max=30.0, anneal_steps=60),
    "dual_ascent": lambda: build_controller(ControllerConfig(capacity=20.0, lr=1e-2)),
    "dual_ascent_ema": lambda: DualAscent(20.0, lr=1e-2, ema=0.9),
    "dual_ascent_adam": lambda: DualAscent(20.0, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2)),
    "geco": lambda: build_controller(ControllerConfig("geco", recon_target=0.3, speed=0.5)),
    "free_bits": lambda: FreeBits(0.5, latent_dim=16),
}


def run_and_record(controller, inputs) -> list[tuple[float, ...]]:
    """After each update: beta, the loss of that step's KL, C_t / target (if any), step."""
    record = []
    for kl, recon in inputs:
        controller.update(torch.tensor(kl), recon=torch.tensor(recon))
        loss = float(controller.loss(torch.tensor(kl, dtype=torch.float64)))
        record.append((controller.beta, loss, getattr(controller, "capacity", None),
                       getattr(controller, "target", None), controller.step))
    return record


@pytest.mark.parametrize("name", RESUMABLE)
def test_state_dict_resume_is_bit_exact(name):
    generator = torch.Generator().manual_seed(1)
    inputs = list(zip((torch.randn(90, generator=generator) * 8 + 20).tolist(),
                      (torch.rand(90, generator=generator) * 0.4 + 0.1).tolist()))
    original = RESUMABLE[name]()
    run_and_record(original, inputs[:40])
    state = original.state_dict()
    continued = run_and_record(original, inputs[40:])  # must not write into `state`
    resumed = RESUMABLE[name]()
    resumed.load_state_dict(state)
    assert run_and_record(resumed, inputs[40:]) == continued
    buffer = io.BytesIO()  # the trainer's path: through torch.save / torch.load(weights_only=True)
    torch.save(state, buffer)
    buffer.seek(0)
    from_disk = RESUMABLE[name]()
    from_disk.load_state_dict(torch.load(buffer, weights_only=True))
    assert run_and_record(from_disk, inputs[40:]) == continued


def test_loading_a_foreign_or_incomplete_state_fails_clearly():
    state = DualAscent(20.0).state_dict()
    with pytest.raises(CheckpointError, match="DualAscent"):
        GECO(recon_target=0.3).load_state_dict(state)
    del state["optimizer"]
    with pytest.raises(CheckpointError, match="optimizer"):
        DualAscent(20.0).load_state_dict(state)


# ------------------------------------------------------------------------------------ schedules

def betas_over_steps(controller, steps: int) -> list[float]:
    """beta at step 0, 1, ..., steps - 1."""
    betas = []
    for _ in range(steps):
        betas.append(controller.beta)
        controller.update(0.0)
    return betas


def test_capacity_annealing_ramps_linearly_then_holds():
    controller = CapacityAnnealing(gamma=1.0, c_max=40.0, anneal_steps=100)
    capacities = []
    for _ in range(301):
        capacities.append(controller.capacity)
        controller.update(0.0)
    assert capacities[0] == 0.0
    assert capacities[25] == pytest.approx(10.0) and capacities[50] == pytest.approx(20.0)
    assert capacities[100] == capacities[300] == 40.0
    assert all(b >= a for a, b in zip(capacities, capacities[1:]))


def test_capacity_annealing_pulls_kl_onto_the_moving_capacity():
    controller = CapacityAnnealing(gamma=2.0, c_max=10.0, anneal_steps=100)
    # The step, 2 * 0.23 = 0.46 nats, outpaces C_t (0.1 nats a step) and never lands exactly on
    # C_t, where |KL - C_t| has no gradient.
    kl = nn.Parameter(torch.tensor(0.77))
    optimizer = torch.optim.SGD([kl], lr=0.23)
    gaps = []
    for _ in range(200):
        optimizer.zero_grad()
        controller.loss(kl).backward()
        gap = kl.item() - controller.capacity
        assert kl.grad.item() == pytest.approx(math.copysign(2.0, gap))  # always towards C_t
        optimizer.step()
        controller.update(kl.detach())
        gaps.append(abs(kl.item() - controller.capacity))
    assert max(gaps) <= 0.46 + 0.1 + 1e-6  # one step, plus C_t's own move meanwhile
    assert abs(kl.item() - 10.0) <= 0.46 + 1e-6


def test_linear_annealing_endpoints():
    betas = betas_over_steps(KLAnnealing(3.0, "linear", warmup_steps=100), 201)
    assert betas[0] == 0.0 and betas[50] == pytest.approx(1.5)
    assert betas[100] == betas[200] == 3.0
    assert all(b >= a for a, b in zip(betas, betas[1:]))


def test_sigmoid_annealing_is_an_s_curve_centred_on_half_warmup():
    betas = betas_over_steps(KLAnnealing(3.0, "sigmoid", warmup_steps=100, steepness=10.0), 101)
    assert betas[50] == pytest.approx(1.5)
    assert betas[0] < 0.01 * 3.0 and betas[100] > 0.99 * 3.0
    increments = [b - a for a, b in zip(betas, betas[1:])]
    assert all(d > 0 for d in increments)
    assert max(increments) == pytest.approx(increments[49], rel=0.05)  # steepest in the middle


def test_cyclical_annealing_ramps_plateaus_and_restarts_each_cycle():
    controller = KLAnnealing(2.0, "cyclical", total_steps=400, n_cycles=4, ratio=0.5)
    betas = betas_over_steps(controller, 450)
    for cycle_start in (0, 100, 200, 300):
        cycle = betas[cycle_start:cycle_start + 100]
        assert cycle[0] == 0.0 and cycle[25] == pytest.approx(1.0)
        assert all(b > a for a, b in zip(cycle[:50], cycle[1:50]))  # ramps over ratio * cycle
        assert set(cycle[50:]) == {2.0}  # then holds beta_max
    assert betas[:100] == pytest.approx(betas[300:400])  # periodic
    assert set(betas[400:]) == {2.0}  # after total_steps it stays at beta_max


def test_fixed_beta_normalisation():
    assert FixedBeta(4.0, latent_dim=16, n_features=80).beta == pytest.approx(0.8)
    with pytest.raises(ConfigError, match="n_features"):
        FixedBeta(4.0, latent_dim=16)


# ------------------------------------------------------------------------------ GECO, free bits

def test_geco_multiplier_rises_above_target_and_falls_below():
    controller = GECO(recon_target=0.3, alpha=0.9, speed=0.5)
    lambdas = []
    for recon in [0.5] * 30 + [0.1] * 100:
        controller.update(0.0, recon=recon)
        lambdas.append(controller.lambda_)
    assert all(b > a for a, b in zip(lambdas[:30], lambdas[1:30]))
    assert controller.beta == pytest.approx(1.0 / controller.lambda_)
    assert lambdas[-1] < lambdas[29] and lambdas[-1] < lambdas[-2]


def test_geco_step_is_bounded_and_needs_recon():
    controller = GECO(recon_target=0.3, speed=1.0)
    controller.update(0.0, recon=1e9)
    assert controller.lambda_ == pytest.approx(math.e)  # one huge batch moves lambda by e at most
    with pytest.raises(ConfigError, match="recon"):
        controller.update(0.0)


def test_free_bits_gives_no_gradient_below_the_floor():
    per_dim_means = torch.tensor([0.1, 0.5, 2.0])  # nats, per latent dim
    kl_per_dim = (per_dim_means.repeat(4, 1) + torch.tensor([[0.05], [-0.05], [0.02], [-0.02]]))
    kl_per_dim.requires_grad_(True)  # (B=4, D=3)
    loss = FreeBits(1.0).loss(kl_per_dim)
    assert loss.item() == pytest.approx(1.0 + 1.0 + 2.0)
    loss.backward()
    assert torch.equal(kl_per_dim.grad[:, :2], torch.zeros(4, 2))
    assert torch.allclose(kl_per_dim.grad[:, 2], torch.full((4,), 0.25))


def test_free_bits_total_budget():
    kl = torch.tensor(2.6, requires_grad=True)
    loss = FreeBits(1.0, per_dim=False, latent_dim=3).loss(kl)
    loss.backward()
    assert loss.item() == 3.0 and float(kl.grad) == 0.0
    with pytest.raises(ConfigError, match="latent_dim"):
        FreeBits(1.0).loss(torch.tensor(2.0))


# ------------------------------------------------------------------------------------------ EMA

def test_ema_first_step_is_unsmoothed_then_damps_noise():
    plain = DualAscent(20.0, lr=1e-2, momentum=0.0)
    smoothed = DualAscent(20.0, lr=1e-2, momentum=0.0, ema=0.9)
    plain.update(26.0)
    smoothed.update(26.0)
    assert plain.beta == smoothed.beta  # bias correction: no (1 - decay) shrinkage at the start
    generator = torch.Generator().manual_seed(0)
    noisy_kls = (21.0 + 10.0 * torch.randn(300, generator=generator)).tolist()  # true KL - C = +1
    steps = {"plain": [], "smoothed": []}
    for kl in noisy_kls:
        for name, controller in (("plain", plain), ("smoothed", smoothed)):
            before = controller.beta
            controller.update(kl)
            steps[name].append(controller.beta - before)
    spread = {name: torch.tensor(s[50:]).std().item() for name, s in steps.items()}
    assert spread["smoothed"] < 0.4 * spread["plain"]
    assert smoothed.beta > 1.0  # it still climbs on the true (positive) violation


# ------------------------------------------------------------------------------- loss and config

def test_dual_ascent_loss_treats_beta_as_constant():
    controller = DualAscent(20.0, beta_init=2.0)
    kl = torch.tensor(25.0, requires_grad=True)
    loss = controller.loss(kl)
    loss.backward()
    assert loss.item() == 10.0 and float(kl.grad) == 2.0
    assert not controller.loss(torch.tensor(25.0)).requires_grad  # no path to beta
    kl_per_dim = torch.full((4, 5), 5.0)  # (B, D): 25 nats per utterance
    assert float(controller.loss(kl_per_dim)) == 10.0
    with pytest.raises(ConfigError, match="kl must be"):
        controller.loss(torch.ones(4))


def test_every_config_field_belongs_to_some_controller():
    taken = {name for cls in CONTROLLERS.values() for name in inspect.signature(cls).parameters}
    assert {f.name for f in fields(ControllerConfig)} - {"kind"} <= taken


@pytest.mark.parametrize("config, message", [
    (ControllerConfig("dual_ascnet", capacity=5.0), "unknown"),
    (ControllerConfig("dual_ascent", capacity=5.0, gamma=2.0), "gamma"),
    (ControllerConfig("dual_ascent"), "capacity"),
    (ControllerConfig("kl_annealing", beta_max=1.0, schedule="cosine"), "schedule"),
    (ControllerConfig("dual_ascent", capacity=5.0, lr=-1.0), "lr"),
])
def test_bad_config_names_the_problem(config, message):
    with pytest.raises(ConfigError, match=message):
        build_controller(config)
