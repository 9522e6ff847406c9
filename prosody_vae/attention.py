"""Attention mechanisms for the Tacotron decoder, each a small module with one `start` method.

`start(memory, mask)` does the per-utterance precomputation once (keys, fused location filters)
and returns the step function, so the decoder loop does only the work that depends on the
recurrence: step(query (B, Q), previous (B, L), cumulative (B, L)) -> alignment (B, L).

- `LocationSensitiveAttention`: Chorowski et al. 2015, as in Tacotron 2.
- `ForwardAttention`: Zhang et al. 2018, monotonic: stay or advance one token per step.
- `DynamicConvolutionAttention`: Battenberg et al. 2020, location-only energies and a causal
  beta-binomial prior; robust on long utterances.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# Each attention's `start(memory, mask)` does the per-call precomputation and returns the step
# function: step(query (B, Q), previous (B, L), cumulative (B, L)) -> alignment (B, L).
AttentionStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _fused_filter(dense_weight: torch.Tensor, conv_weight: torch.Tensor) -> torch.Tensor:
    """dense (A, F) after conv (F, C, K) is one conv with weight (A, C, K)."""
    return torch.einsum("af,fck->ack", dense_weight, conv_weight)


def _masked_softmax(energies: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return energies.masked_fill(~mask, -math.inf).softmax(dim=1)


class LocationSensitiveAttention(nn.Module):
    """Chorowski et al. 2015 as in Tacotron 2: content (query, keys) + location (previous and
    cumulative alignment) -> additive energies -> softmax over valid tokens."""

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int, n_filters: int,
                 kernel_size: int) -> None:
        super().__init__()
        self.query = nn.Linear(query_dim, attention_dim, bias=False)
        self.keys = nn.Linear(memory_dim, attention_dim, bias=False)
        self.location_conv = nn.Conv1d(2, n_filters, kernel_size, bias=False)
        self.location_dense = nn.Linear(n_filters, attention_dim, bias=False)
        self.score = nn.Linear(attention_dim, 1, bias=False)

    def start(self, memory: torch.Tensor, mask: torch.Tensor) -> AttentionStep:
        keys = rearrange(self.keys(memory), "b l a -> b a l")  # channels first, like the conv output
        location_filter = _fused_filter(self.location_dense.weight, self.location_conv.weight)  # (A, 2, K)
        padding = location_filter.shape[2] // 2
        score = self.score.weight[0]  # (A,)

        def step(query: torch.Tensor, previous: torch.Tensor, cumulative: torch.Tensor) -> torch.Tensor:
            location = F.conv1d(torch.stack([previous, cumulative], dim=1), location_filter, padding=padding)
            hidden = torch.tanh(keys + location + self.query(query)[:, :, None])  # (B, A, L)
            return _masked_softmax(score @ hidden, mask)  # (A,) @ (B, A, L) -> (B, L)

        return step


class ForwardAttention(LocationSensitiveAttention):
    """Zhang et al. 2018: the alignment may only stay on a token or advance by one per step;
    alpha_t ~ (alpha_{t-1} + shift(alpha_{t-1})) * location-sensitive probabilities."""

    def start(self, memory: torch.Tensor, mask: torch.Tensor) -> AttentionStep:
        probabilities = super().start(memory, mask)

        def step(query: torch.Tensor, previous: torch.Tensor, cumulative: torch.Tensor) -> torch.Tensor:
            reachable = previous + F.pad(previous[:, :-1], (1, 0))
            # the floor lets an alignment that lost its way recover instead of underflowing to zero
            alpha = reachable.clamp_min(1e-6) * probabilities(query, previous, cumulative)
            return alpha / alpha.sum(dim=1, keepdim=True)

        return step


def beta_binomial_pmf(length: int, alpha: float, beta: float) -> torch.Tensor:
    """P(k), k = 0 .. length - 1, of BetaBinomial(n = length - 1, alpha, beta): DCA's prior on how
    many tokens the alignment moves in one step."""
    n = length - 1

    def log_beta(a: float, b: float) -> float:
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)

    return torch.tensor([math.comb(n, k) * math.exp(log_beta(k + alpha, n - k + beta) - log_beta(alpha, beta))
                         for k in range(length)])


class DynamicConvolutionAttention(nn.Module):
    """Battenberg et al. 2020: purely location-based energies from static filters, filters
    predicted from the query, and a causal beta-binomial prior that favours moving forward."""

    def __init__(self, query_dim: int, attention_dim: int, static_filters: int, static_kernel_size: int,
                 dynamic_filters: int, dynamic_kernel_size: int, filter_mlp_dim: int, prior_length: int,
                 prior_alpha: float, prior_beta: float) -> None:
        super().__init__()
        self.static_conv = nn.Conv1d(1, static_filters, static_kernel_size, bias=False)
        self.static_dense = nn.Linear(static_filters, attention_dim, bias=False)
        self.filter_mlp = nn.Sequential(nn.Linear(query_dim, filter_mlp_dim), nn.Tanh(),
                                        nn.Linear(filter_mlp_dim, dynamic_filters * dynamic_kernel_size, bias=False))
        self.dynamic_dense = nn.Linear(dynamic_filters, attention_dim)  # its bias is the energies' bias
        self.score = nn.Linear(attention_dim, 1, bias=False)
        self.dynamic_shape = (dynamic_filters, dynamic_kernel_size)
        # flipped: conv1d correlates, and prior[j] should be sum_k pmf[k] * previous[j - k]
        prior = beta_binomial_pmf(prior_length, prior_alpha, prior_beta).flip(0)
        self.register_buffer("prior_filter", prior.reshape(1, 1, -1), persistent=False)

    def start(self, memory: torch.Tensor, mask: torch.Tensor) -> AttentionStep:
        batch, n_tokens = mask.shape
        static_filter = _fused_filter(self.static_dense.weight, self.static_conv.weight)  # (A, 1, K)
        n_dynamic, dynamic_size = self.dynamic_shape
        prior_padding = self.prior_filter.shape[2] - 1
        score = self.score.weight[0]  # (A,)

        def step(query: torch.Tensor, previous: torch.Tensor, cumulative: torch.Tensor) -> torch.Tensor:
            static = F.conv1d(previous[:, None], static_filter, padding=static_filter.shape[2] // 2)  # (B, A, L)
            filters = self.filter_mlp(query).reshape(batch * n_dynamic, 1, dynamic_size)
            # one group per item: item b's alignment is filtered by item b's own filters
            dynamic = F.conv1d(previous[None], filters, padding=dynamic_size // 2, groups=batch)
            dynamic = dynamic.reshape(batch, n_dynamic, n_tokens)
            hidden = torch.tanh(static + self.dynamic_dense.weight @ dynamic + self.dynamic_dense.bias[:, None])
            prior = F.conv1d(F.pad(previous[:, None], (prior_padding, 0)), self.prior_filter)[:, 0]  # (B, L)
            return _masked_softmax(score @ hidden + torch.log(prior.clamp_min(1e-6)), mask)

        return step
