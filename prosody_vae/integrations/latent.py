"""The part every host adapter shares: our reference encoder and dual ascent as one submodule.

A host model (Coqui's Tacotron2, ESPnet2's Tacotron2) holds a `HostLatent` where its own style
module sat. It gives the host:
- `posterior(mel, lengths)`: q(z | reference), drawn as the current request says (training always
  samples), and `prior(batch)`: z = 0, or with mode "sample" a draw scaled by the temperature;
- `kl_term(posterior, elements_per_utterance)`: kl_alpha * beta * (KL - C) divided by the number
  of mel elements per utterance, because hosts average their L1 over elements while the KL is in
  nats per utterance (plugin/capacity.py); add it to the host's loss;
- `dual_step(kl)`: beta's own ascent step on the batch KL (averaged over ranks under DDP, so every
  rank holds the same beta), skipped for a non-finite KL by the controller;
- `drawing(mode, temperature, seed)`: how inference draws z inside a `with` block;
- the controller's state (beta, its step, its optimizer) as nn.Module extra state, so the host's
  own checkpoints carry it and resume it exactly.
This module imports no host package.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Optional

import torch
from torch import nn

from ..plugin.capacity import ControllerConfig, DualAscent, build_controller
from ..plugin.errors import ConfigError
from ..plugin.reference import CAPACITRON_CHANNELS, Posterior, VariationalReferenceEncoder

Mode = Literal["mean", "sample"]


@dataclass
class DrawRequest:
    """How the next inference pass draws z."""

    mode: Mode = "mean"
    temperature: float = 1.0
    generator: Optional[torch.Generator] = None


class HostLatent(nn.Module):
    def __init__(self, n_mels: int, latent_dim: int = 16, capacity: float = 10.0, beta_init: float = 1.0,
                 beta_lr: float = 0.05, beta_momentum: float = 0.0, kl_alpha: float = 1.0,
                 conv_channels: tuple[int, ...] = CAPACITRON_CHANNELS, gru_dim: int = 128, mlp_dim: int = 128) -> None:
        super().__init__()
        self.latent_dim, self.kl_alpha = latent_dim, kl_alpha
        self.encoder = VariationalReferenceEncoder(n_mels=n_mels, latent_dim=latent_dim,
                                                   conv_channels=tuple(conv_channels), gru_dim=gru_dim, mlp_dim=mlp_dim)
        self.controller_config = ControllerConfig(kind="dual_ascent", capacity=capacity, beta_init=beta_init,
                                                  lr=beta_lr, momentum=beta_momentum)
        self.controller: DualAscent = build_controller(self.controller_config)
        self.request = DrawRequest()

    def posterior(self, mel: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> Posterior:
        """mel (B, T, n_mels) in the host's training feature domain, lengths (B,) or None (all T)."""
        if lengths is None:
            lengths = torch.full((mel.shape[0],), mel.shape[1], dtype=torch.long)
        mode = "sample" if self.training else self.request.mode
        return self.encoder(mel, lengths.to(mel.device), mode=mode, temperature=self.request.temperature,
                            generator=self.request.generator)

    def prior(self, batch: int = 1) -> torch.Tensor:
        """(B, Z): the prior's mean, or in mode "sample" a draw N(0, temperature^2 I)."""
        z = next(self.parameters()).new_zeros(batch, self.latent_dim)
        if self.request.mode == "sample":
            noise = torch.randn(z.shape, generator=self.request.generator, dtype=z.dtype)
            z = self.request.temperature * noise.to(z.device)
        return z

    @contextlib.contextmanager
    def drawing(self, mode: Mode = "mean", temperature: float = 1.0, seed: Optional[int] = None) -> Iterator[None]:
        if mode not in ("mean", "sample"):
            raise ConfigError(f"prosody mode must be 'mean' or 'sample', got {mode!r}", field="mode")
        if not temperature >= 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}", field="temperature")
        generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        self.request = DrawRequest(mode=mode, temperature=float(temperature), generator=generator)
        try:
            yield
        finally:
            self.request = DrawRequest()

    def kl_term(self, posterior: Posterior, elements_per_utterance: torch.Tensor) -> torch.Tensor:
        return self.kl_alpha * self.controller.loss(posterior.kl_per_dim) / elements_per_utterance

    def dual_step(self, kl: torch.Tensor) -> None:
        """One ascent step of beta on the batch's mean KL (nats per utterance); only while training."""
        if not self.training:  # hosts run their loss in eval mode for validation: no step there
            return
        kl = kl.detach().double()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(kl)
            kl = kl / torch.distributed.get_world_size()
        self.controller.update(kl)

    def get_extra_state(self) -> dict[str, Any]:
        state = self.controller.state_dict()
        return {"controller": {**state, "beta": state["beta"].clone()}}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])


__all__ = ["DrawRequest", "HostLatent", "Mode"]
