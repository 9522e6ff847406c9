"""An adversarial speaker classifier on the posterior mean, behind a gradient reversal.

    logits = SpeakerAdversary(latent_dim, hidden_dim, n_speakers)(posterior.mean)   # (B, n_speakers)
    loss = cross_entropy(logits, speaker_ids)                                       # losses.py adds it

The classifier learns to tell the speaker from z; the reversal flips the gradient that reaches the
reference encoder, which therefore learns to make z useless for that, as in Daft-Exprt (Zaidi et
al. 2021). With a speaker-conditioned decoder the voice is given anyway, so what the encoder is
pushed to drop is the voice and register that would otherwise ride in z beside the prosody.
"""

from __future__ import annotations

import torch
from torch import nn


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


class SpeakerAdversary(nn.Module):
    def __init__(self, latent_dim: int, hidden_dim: int, n_speakers: int) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, n_speakers))

    def forward(self, z_mean: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, n_speakers) logits; the gradient into z_mean is reversed."""
        return self.classifier(_ReverseGradient.apply(z_mean))
