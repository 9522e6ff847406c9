"""KL controllers: how much information the prosody latent is allowed to carry.

A variational reference encoder is trained on reconstruction + weight * KL. The weight decides
what the latent learns: too small and it copies the whole reference (text and speaker leak in,
samples from the prior sound wrong); too large and it collapses onto the prior (no control).
Each controller sets that weight its own way:

  FixedBeta          a constant beta (beta-VAE, Higgins et al. 2017)
  KLAnnealing        beta ramps up on a schedule (Bowman et al. 2016; cyclical: Fu et al. 2019)
  CapacityAnnealing  gamma * |KL - C_t| with C_t rising linearly (Burgess et al. 2018)
  DualAscent         beta is the Lagrange multiplier of KL <= C (Capacitron, Battenberg et al. 2019)
  GECO               a multiplier on a reconstruction target instead (Rezende & Viola 2018)
  FreeBits           the first lam nats of each latent dimension are free (Kingma et al. 2016)

Units, for every controller here: KL is in nats per utterance, summed over latent dimensions and
averaged over the batch; a capacity C is in the same units. `loss` also takes the per-dimension
KL, shape (B, D), and reduces it that way (FreeBits needs it; the others just sum and average).

All controllers share one protocol, `KLController`. In a training step:

    loss = recon + ctl.loss(kl) * scale   # recon: per-element mean; scale = 1 / (T * n_mels)
    ...model optimiser step...
    ctl.update(kl.detach(), recon=recon.detach())

`loss` treats the controller's weight as a constant, so gradient reaches only the model; `update`
is the one place where a controller changes (schedules advance, multipliers step). `state_dict`
holds everything, so a resumed run continues bit-exactly. This file needs only torch and
errors.py: copy both, with the reference encoder's reference.py, masked_norm.py and speedups.py,
into another TTS code base.
"""

from __future__ import annotations

import copy
import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch

from .errors import CheckpointError, ConfigError

OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]

# Optimizer state entries that hold a velocity in the gradient's direction (SGD momentum, the
# Adam family's first moment); DualAscent trims them when beta sits on a bound.
_VELOCITY_KEYS = ("momentum_buffer", "exp_avg")

# GECO safety rails: lambda changes by at most a factor e per step and stays within these bounds,
# so one bad batch or a long unreachable target cannot send beta = 1 / lambda to 0 or infinity.
_GECO_MAX_LOG_STEP = 1.0
_GECO_LAMBDA_RANGE = (1e-6, 1e6)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _batch_kl(kl: torch.Tensor) -> torch.Tensor:
    """The batch-mean KL (scalar) from a scalar or from per-dimension KL (B, D)."""
    _require(isinstance(kl, torch.Tensor) and kl.dim() in (0, 2),
             "kl must be a 0-dim tensor (batch-mean KL) or kl_per_dim of shape (B, D), got "
             f"{tuple(kl.shape) if isinstance(kl, torch.Tensor) else type(kl).__name__}")
    return kl if kl.dim() == 0 else kl.sum(dim=1).mean()


def _kl_value(kl: float | torch.Tensor) -> float:
    """The batch-mean KL as a Python float, from a number, a scalar or kl_per_dim (B, D)."""
    return float(_batch_kl(kl.detach())) if isinstance(kl, torch.Tensor) else float(kl)


def _smoothed(controller: KLController, value: float, decay: float) -> float:
    """Feed value to the controller's bias-corrected moving average (as in Adam: the first
    estimate is the first value, not (1 - decay) * value) and return the estimate. decay = 0
    returns value unchanged. The state lives in the controller's ema_mean and ema_count."""
    controller.ema_count += 1
    controller.ema_mean = decay * controller.ema_mean + (1.0 - decay) * value
    return controller.ema_mean / (1.0 - decay**controller.ema_count)


class KLController(ABC):
    """Protocol of every controller: `loss`, `update`, `beta`, `step`, `state_dict`.

    Subclasses name their plain (number) state in `_state_fields`; the base saves and restores
    those, and checks that a loaded state has exactly the keys this controller writes.
    """

    _state_fields: tuple[str, ...] = ("step",)

    def __init__(self) -> None:
        self.step = 0  # update() calls so far

    @property
    @abstractmethod
    def beta(self) -> float:
        """The current weight on KL in the model loss (for logging)."""

    def loss(self, kl: torch.Tensor) -> torch.Tensor:
        """KL term of the model loss: beta * KL. kl: scalar, or kl_per_dim (B, D)."""
        return self.beta * _batch_kl(kl)

    def update(self, kl: float | torch.Tensor, recon: float | torch.Tensor | None = None) -> None:
        """Advance one training step; kl and recon are detached values of this step."""
        self.step += 1

    def state_dict(self) -> dict[str, Any]:
        return {"controller": type(self).__name__,
                **{name: getattr(self, name) for name in self._state_fields}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        name = type(self).__name__
        if state.get("controller") != name:
            raise CheckpointError(f"controller state is for {state.get('controller')!r}, not {name!r}")
        expected = set(self.state_dict())
        if set(state) != expected:
            raise CheckpointError(f"{name} state has keys {sorted(state)}, expected {sorted(expected)}")
        for field_name in self._state_fields:
            setattr(self, field_name, state[field_name])


class FixedBeta(KLController):
    """A constant beta. Given latent_dim and n_features (both or neither), the weight used is
    Higgins et al.'s normalised beta_norm = beta * latent_dim / n_features."""

    def __init__(self, beta: float, latent_dim: int | None = None, n_features: int | None = None):
        super().__init__()
        _require(beta >= 0, f"beta must be >= 0, got {beta}")
        _require((latent_dim is None) == (n_features is None),
                 "latent_dim and n_features normalise beta together: give both or neither")
        if latent_dim is not None:
            _require(latent_dim > 0 and n_features > 0,
                     f"latent_dim and n_features must be > 0, got {latent_dim}, {n_features}")
            beta = beta * latent_dim / n_features
        self._beta = float(beta)

    @property
    def beta(self) -> float:
        return self._beta


class KLAnnealing(KLController):
    """beta rises from 0 to beta_max on a schedule of the step count; loss = beta * KL.

    linear:    beta_max * min(1, step / warmup_steps).
    sigmoid:   beta_max * sigmoid(steepness * (step / warmup_steps - 1/2)) (Bowman et al.): an
               S-curve centred on warmup_steps / 2, where beta = beta_max / 2. It starts slightly
               above 0 and approaches beta_max without reaching it; larger steepness is sharper.
    cyclical:  (Fu et al.) total_steps split into n_cycles equal cycles; in each, beta climbs
               linearly from 0 over the first `ratio` of the cycle, then holds beta_max. After
               total_steps beta stays at beta_max. warmup_steps is unused.
    """

    SCHEDULES = ("linear", "sigmoid", "cyclical")

    def __init__(self, beta_max: float, schedule: str = "linear", warmup_steps: int = 10_000,
                 steepness: float = 10.0, total_steps: int | None = None, n_cycles: int = 4,
                 ratio: float = 0.5):
        super().__init__()
        _require(schedule in self.SCHEDULES,
                 f"schedule must be one of {self.SCHEDULES}, got {schedule!r}")
        _require(beta_max >= 0, f"beta_max must be >= 0, got {beta_max}")
        _require(warmup_steps > 0, f"warmup_steps must be > 0, got {warmup_steps}")
        _require(steepness > 0, f"steepness must be > 0, got {steepness}")
        if schedule == "cyclical":
            _require(total_steps is not None and total_steps > 0,
                     f"the cyclical schedule needs total_steps > 0, got {total_steps}")
            _require(n_cycles >= 1, f"n_cycles must be >= 1, got {n_cycles}")
            _require(0 < ratio <= 1, f"ratio must be in (0, 1], got {ratio}")
        self.beta_max, self.schedule, self.warmup_steps = float(beta_max), schedule, warmup_steps
        self.steepness, self.total_steps = steepness, total_steps
        self.n_cycles, self.ratio = n_cycles, ratio

    @property
    def beta(self) -> float:
        if self.schedule == "linear":
            progress = min(1.0, self.step / self.warmup_steps)
        elif self.schedule == "sigmoid":
            centred = self.step / self.warmup_steps - 0.5
            progress = 1.0 / (1.0 + math.exp(-self.steepness * centred))
        elif self.step >= self.total_steps:
            progress = 1.0
        else:
            cycle_length = self.total_steps / self.n_cycles
            progress = min(1.0, (self.step % cycle_length) / (cycle_length * self.ratio))
        return self.beta_max * progress


class CapacityAnnealing(KLController):
    """loss = gamma * |KL - C_t| with C_t = c_max * min(1, step / anneal_steps) (Burgess et al.):
    the KL is pulled onto a capacity that grows linearly from 0 and then stays at c_max.
    `beta` reports gamma, the fixed weight on the deviation."""

    def __init__(self, gamma: float, c_max: float, anneal_steps: int):
        super().__init__()
        _require(gamma >= 0, f"gamma must be >= 0, got {gamma}")
        _require(c_max >= 0, f"c_max must be >= 0, got {c_max}")
        _require(anneal_steps > 0, f"anneal_steps must be > 0, got {anneal_steps}")
        self.gamma, self.c_max, self.anneal_steps = float(gamma), float(c_max), anneal_steps

    @property
    def capacity(self) -> float:
        return self.c_max * min(1.0, self.step / self.anneal_steps)

    @property
    def beta(self) -> float:
        return self.gamma

    def loss(self, kl: torch.Tensor) -> torch.Tensor:
        return self.gamma * (_batch_kl(kl) - self.capacity).abs()


class DualAscent(KLController):
    """Capacitron's constraint KL <= C, solved by gradient descent on the model and ascent on beta.

    The model minimises beta * (KL - C) with beta held constant; beta maximises the same term,
    i.e. its own optimizer descends on -beta * (KL - C) (gradient -(KL - C)): beta grows while
    KL > C and shrinks while KL < C, which holds the KL near C.

    beta is a raw scalar, projected onto [0, beta_max] after every step. The paper's softplus(b)
    has a trap: while KL < C (common early on), b keeps falling, and momentum carries it further,
    to where the gradient sigmoid(b) * (KL - C) vanishes; beta then stays ~0 for about as long as
    it was pushed down, or for good. Here beta enters linearly, so its speed never depends on
    where it sits; and when the projection is active the optimizer's velocity pointing into the
    bound (SGD momentum, Adam's first moment) is dropped, so beta leaves 0 on the very first step
    with KL > C, however long it sat there.

    ema (decay in [0, 1)): drive beta with a bias-corrected moving average of KL - C instead of
    the noisy per-batch value; useful with small batches. A non-finite KL skips the update
    (counted in `skipped_updates`) and leaves beta and the optimizer untouched. `optimizer`
    replaces the default SGD(lr, momentum), e.g. lambda params: torch.optim.Adam(params, lr=1e-3).
    """

    _state_fields = ("step", "skipped_updates", "ema_mean", "ema_count")

    def __init__(self, capacity: float, beta_init: float = 1.0, lr: float = 1e-5,
                 momentum: float = 0.9, beta_max: float | None = 1e4, ema: float | None = None,
                 optimizer: OptimizerFactory | None = None):
        super().__init__()
        self.beta_max = math.inf if beta_max is None else float(beta_max)
        _require(capacity >= 0, f"capacity must be >= 0 nats, got {capacity}")
        _require(0 <= beta_init <= self.beta_max, f"beta_init must be in [0, beta_max], got {beta_init}")
        _require(lr > 0, f"lr must be > 0, got {lr}")
        _require(0 <= momentum < 1, f"momentum must be in [0, 1), got {momentum}")
        _require(ema is None or 0 <= ema < 1, f"ema must be None or in [0, 1), got {ema}")
        self.capacity = float(capacity)
        # float64: at lr 1e-5 one step is below float32 resolution once beta is in the hundreds.
        self._beta = torch.nn.Parameter(torch.tensor(float(beta_init), dtype=torch.float64))
        self.optimizer = (optimizer([self._beta]) if optimizer is not None
                          else torch.optim.SGD([self._beta], lr=lr, momentum=momentum))
        self.ema = ema or 0.0
        self.ema_mean, self.ema_count, self.skipped_updates = 0.0, 0, 0

    @property
    def beta(self) -> float:
        return float(self._beta.detach())

    def loss(self, kl: torch.Tensor) -> torch.Tensor:
        return self.beta * (_batch_kl(kl) - self.capacity)

    def update(self, kl: float | torch.Tensor, recon: float | torch.Tensor | None = None) -> None:
        super().update(kl)
        kl_value = _kl_value(kl)
        if not math.isfinite(kl_value):
            self.skipped_updates += 1
            return
        violation = _smoothed(self, kl_value - self.capacity, self.ema)
        self._beta.grad = torch.tensor(-violation, dtype=torch.float64)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._project()

    def _project(self) -> None:
        with torch.no_grad():
            unprojected = float(self._beta)
            self._beta.clamp_(0.0, self.beta_max)
        if 0.0 < unprojected < self.beta_max:
            return
        # Velocity buffers point along the gradient: a positive entry pushes beta down. At a bound,
        # the part pushing outward would only delay the way back, so it is set to zero.
        at_floor = unprojected <= 0.0
        for key in _VELOCITY_KEYS:
            velocity = self.optimizer.state[self._beta].get(key)
            if velocity is not None and at_floor:
                velocity.clamp_(max=0.0)
            elif velocity is not None:
                velocity.clamp_(min=0.0)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "beta": self._beta.detach().clone(),
                "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self._beta.copy_(state["beta"])
        # The optimizer adopts tensors it is given; copy them so later steps cannot write back
        # into the caller's state dict.
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))


class GECO(KLController):
    """Constrain reconstruction instead of KL (Rezende & Viola): recon <= recon_target.

    GECO minimises KL + lambda * (recon - target), raising lambda multiplicatively while the
    moving average C_ma of recon - target is positive: lambda <- lambda * exp(speed * C_ma).
    Dividing that objective by lambda > 0 gives recon + KL / lambda with the same minimiser, so
    here beta = 1 / lambda fits the shared model loss recon + beta * KL * scale. recon and
    recon_target are in the units of the model's reconstruction loss (a per-element mean).
    alpha is the decay of C_ma (bias-corrected, so the first C_ma is the first constraint).
    """

    _state_fields = ("step", "skipped_updates", "lambda_", "ema_mean", "ema_count")

    def __init__(self, recon_target: float, alpha: float = 0.99, speed: float = 1e-2,
                 lambda_init: float = 1.0):
        super().__init__()
        _require(0 <= alpha < 1, f"alpha must be in [0, 1), got {alpha}")
        _require(speed > 0, f"speed must be > 0, got {speed}")
        low, high = _GECO_LAMBDA_RANGE
        _require(low <= lambda_init <= high, f"lambda_init must be in [{low}, {high}], got {lambda_init}")
        self.target, self.alpha, self.speed = float(recon_target), alpha, speed
        self.lambda_ = float(lambda_init)
        self.ema_mean, self.ema_count, self.skipped_updates = 0.0, 0, 0

    @property
    def beta(self) -> float:
        return 1.0 / self.lambda_

    def update(self, kl: float | torch.Tensor, recon: float | torch.Tensor | None = None) -> None:
        if recon is None:
            raise ConfigError("GECO.update needs recon=, the detached reconstruction loss of the step")
        super().update(kl)
        recon_value = float(recon)  # a number or a one-element tensor
        if not math.isfinite(recon_value):
            self.skipped_updates += 1
            return
        log_step = self.speed * _smoothed(self, recon_value - self.target, self.alpha)
        log_step = max(-_GECO_MAX_LOG_STEP, min(_GECO_MAX_LOG_STEP, log_step))
        low, high = _GECO_LAMBDA_RANGE
        self.lambda_ = max(low, min(high, self.lambda_ * math.exp(log_step)))


class FreeBits(KLController):
    """Free bits (Kingma et al.): no pressure on the first lam nats of each latent dimension.

    With kl_per_dim (B, D): loss = sum_d max(lam, mean_b KL_bd) if per_dim, else
    max(lam * D, KL). With a scalar KL the per-dimension split is unknown, so the total budget
    max(lam * latent_dim, KL) applies, which needs latent_dim. Below its floor a term has zero
    gradient: the encoder is free to use those nats. `beta` is 1.
    """

    def __init__(self, lam: float, per_dim: bool = True, latent_dim: int | None = None):
        super().__init__()
        _require(lam >= 0, f"lam must be >= 0 nats, got {lam}")
        _require(latent_dim is None or latent_dim > 0, f"latent_dim must be > 0, got {latent_dim}")
        self.lam, self.per_dim, self.latent_dim = float(lam), per_dim, latent_dim

    @property
    def beta(self) -> float:
        return 1.0

    def loss(self, kl: torch.Tensor) -> torch.Tensor:
        if isinstance(kl, torch.Tensor) and kl.dim() == 2:
            kl_dims = kl.mean(dim=0)  # (D,)
            if self.per_dim:
                return kl_dims.clamp(min=self.lam).sum()
            return kl_dims.sum().clamp(min=self.lam * kl.shape[1])
        kl = _batch_kl(kl)  # a scalar: the split over dimensions is unknown
        _require(self.latent_dim is not None,
                 "FreeBits with a scalar KL needs latent_dim (or pass kl_per_dim of shape (B, D))")
        return kl.clamp(min=self.lam * self.latent_dim)


CONTROLLERS: dict[str, type[KLController]] = {
    "fixed": FixedBeta,
    "kl_annealing": KLAnnealing,
    "capacity_annealing": CapacityAnnealing,
    "dual_ascent": DualAscent,
    "geco": GECO,
    "free_bits": FreeBits,
}


@dataclass
class ControllerConfig:
    """Which controller to build and its arguments, named as in its constructor. None means the
    controller's default; a field the chosen kind does not take is an error, so a typo in a
    recipe cannot pass silently. DualAscent's `optimizer` factory is code, not config: the
    default SGD is what a config rebuilds."""

    kind: str = "dual_ascent"
    capacity: float | None = None       # DualAscent
    beta_init: float | None = None
    lr: float | None = None
    momentum: float | None = None
    ema: float | None = None
    beta_max: float | None = None       # DualAscent bound; KLAnnealing end value
    beta: float | None = None           # FixedBeta
    latent_dim: int | None = None       # FixedBeta, FreeBits
    n_features: int | None = None
    schedule: str | None = None         # KLAnnealing
    warmup_steps: int | None = None
    steepness: float | None = None
    total_steps: int | None = None
    n_cycles: int | None = None
    ratio: float | None = None
    gamma: float | None = None          # CapacityAnnealing
    c_max: float | None = None
    anneal_steps: int | None = None
    recon_target: float | None = None   # GECO
    alpha: float | None = None
    speed: float | None = None
    lambda_init: float | None = None
    lam: float | None = None            # FreeBits
    per_dim: bool | None = None


def build_controller(config: ControllerConfig) -> KLController:
    """The controller that `config` describes (the trainer rebuilds one from a checkpoint)."""
    controller_class = CONTROLLERS.get(config.kind)
    _require(controller_class is not None,
             f"ControllerConfig.kind {config.kind!r} is unknown; choose one of {sorted(CONTROLLERS)}")
    parameters = inspect.signature(controller_class).parameters
    given = {f.name: getattr(config, f.name) for f in fields(config)
             if f.name != "kind" and getattr(config, f.name) is not None}
    foreign = sorted(set(given) - set(parameters))
    _require(not foreign, f"ControllerConfig field(s) {foreign} do not apply to kind {config.kind!r}")
    missing = [name for name, p in parameters.items() if p.default is p.empty and name not in given]
    _require(not missing, f"ControllerConfig kind {config.kind!r} needs field(s) {missing}")
    return controller_class(**given)
