"""Attention mechanisms for the Tacotron decoder, each a small module with one `start` method.

`start(memory, mask, keys=None)` does the per-utterance work once (the key projection, which
`keys` may supply precomputed) and returns the step function, so the decoder loop does only the
work that depends on the recurrence:

    step(query (B, Q), previous (B, L), cumulative (B, L)) -> alignment (B, L)

- `LocationSensitiveAttention`: Chorowski et al. 2015, as in Tacotron 2.
- `ForwardAttention`: Zhang et al. 2018, monotonic: stay or advance one token per step.
- `DynamicConvolutionAttention`: Battenberg et al. 2020, location-only energies and a causal
  beta-binomial prior; robust on long utterances.

Each step is written twice over the same parameters: first in plain PyTorch (convolutions,
linear layers, tanh), then, at the end of this file, as the fast path (speedups.py). The fast
path forms energies as (B, L, A), tokens before attention channels: the location convolutions of
a (B, L) alignment become matmuls of its sliding windows (B, L, K) with one fused filter bank
(the conv and its dense layer are both linear), and `_TanhEnergies` keeps only the (B, L, K)
window features for the backward pass and recomputes tanh there. Training keeps every decoder
step's activations, and the (B, L, A) tanh output would be the largest of them (~100 MB over 200
steps at tacotron2 size); this is 1.2x faster than activation checkpointing, which saves the same.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..plugin.speedups import fast_path_enabled

AttentionStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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
        self.location_conv = nn.Conv1d(2, n_filters, kernel_size, padding=kernel_size // 2, bias=False)
        self.location_dense = nn.Linear(n_filters, attention_dim, bias=False)
        self.score = nn.Linear(attention_dim, 1, bias=False)

    def start(self, memory: torch.Tensor, mask: torch.Tensor, keys: Optional[torch.Tensor] = None) -> AttentionStep:
        keys = self.keys(memory) if keys is None else keys  # (B, L, A)
        if fast_path_enabled():
            return self._fast_start(keys, mask)

        def step(query: torch.Tensor, previous: torch.Tensor, cumulative: torch.Tensor) -> torch.Tensor:
            location = self.location_conv(torch.stack([previous, cumulative], dim=1))  # (B, F, L)
            location = self.location_dense(rearrange(location, "b f l -> b l f"))  # (B, L, A)
            hidden = torch.tanh(self.query(query)[:, None] + keys + location)
            return _masked_softmax(self.score(hidden)[..., 0], mask)

        return step

    def _fast_start(self, keys: torch.Tensor, mask: torch.Tensor) -> AttentionStep:
        location_filter = _fused_filter(self.location_dense.weight, self.location_conv.weight)  # (2 * K, A)
        kernel_size = self.location_conv.kernel_size[0]
        score = self.score.weight[0]  # (A,)

        def step(query: torch.Tensor, previous: torch.Tensor, cumulative: torch.Tensor) -> torch.Tensor:
            windows = _windows(torch.stack([previous, cumulative], dim=1), kernel_size, kernel_size // 2)
            windows = rearrange(windows, "b c l k -> b l (c k)")  # (B, L, 2 * K)
            query = rearrange(self.query(query), "b a -> b 1 a")
            return _masked_softmax(_TanhEnergies.apply(windows, location_filter, score, query, keys), mask)

        return step


class ForwardAttention(LocationSensitiveAttention):
    """Zhang et al. 2018: the alignment may only stay on a token or advance by one per step;
    alpha_t ~ (alpha_{t-1} + shift(alpha_{t-1})) * location-sensitive probabilities."""

    def start(self, memory: torch.Tensor, mask: torch.Tensor, keys: Optional[torch.Tensor] = None) -> AttentionStep:
        probabilities = super().start(memory, mask, keys)

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
        self.static_conv = nn.Conv1d(1, static_filters, static_kernel_size, padding=static_kernel_size // 2,
                                     bias=False)
        self.static_dense = nn.Linear(static_filters, attention_dim, bias=False)
        self.filter_mlp = nn.Sequential(nn.Linear(query_dim, filter_mlp_dim), nn.Tanh(),
                                        nn.Linear(filter_mlp_dim, dynamic_filters * dynamic_kernel_size, bias=False))
        self.dynamic_dense = nn.Linear(dynamic_filters, attention_dim)  # its bias is the energies' bias
        self.score = nn.Linear(attention_dim, 1, bias=False)
        self.dynamic_shape = (dynamic_filters, dynamic_kernel_size)
        # a causal filter: prior[j] = sum_k pmf[k] * previous[j - k] (conv1d correlates, hence the flip)
        prior = beta_binomial_pmf(prior_length, prior_alpha, prior_beta).flip(0)
        self.register_buffer("prior_filter", prior.reshape(1, 1, -1), persistent=False)

    def start(self, memory: torch.Tensor, mask: torch.Tensor, keys: Optional[torch.Tensor] = None) -> AttentionStep:
        """DCA reads no memory content: `memory` and `keys` are unused."""
        if fast_path_enabled():
            return self._fast_start(mask)
        n_dynamic, dynamic_size = self.dynamic_shape
        prior_size = self.prior_filter.shape[2]

        def step(query: torch.Tensor, previous: torch.Tensor, cumulative: torch.Tensor) -> torch.Tensor:
            batch = previous.shape[0]
            static = self.static_dense(rearrange(self.static_conv(previous[:, None]), "b f l -> b l f"))
            # each item's own dynamic filters: one grouped convolution over the batch
            filters = rearrange(self.filter_mlp(query), "b (n k) -> (b n) 1 k", n=n_dynamic)
            dynamic = F.conv1d(rearrange(previous, "b l -> 1 b l"), filters, padding=dynamic_size // 2, groups=batch)
            dynamic = self.dynamic_dense(rearrange(dynamic, "1 (b n) l -> b l n", b=batch))  # (B, L, A)
            energies = self.score(torch.tanh(static + dynamic))[..., 0]  # (B, L)
            prior = F.conv1d(F.pad(previous[:, None], (prior_size - 1, 0)), self.prior_filter)[:, 0]  # (B, L)
            return _masked_softmax(energies + torch.log(prior.clamp_min(1e-6)), mask)

        return step

    def _fast_start(self, mask: torch.Tensor) -> AttentionStep:
        static_size, (n_dynamic, dynamic_size) = self.static_conv.kernel_size[0], self.dynamic_shape
        prior_size = self.prior_filter.shape[2]
        # static filters and the dynamic features' dense layer in one weight: [windows ; dynamic] @ it
        location_weight = torch.cat([_fused_filter(self.static_dense.weight, self.static_conv.weight),
                                     self.dynamic_dense.weight.T])  # (K_s + n_dynamic, A)
        score = self.score.weight[0]  # (A,)

        def step(query: torch.Tensor, previous: torch.Tensor, cumulative: torch.Tensor) -> torch.Tensor:
            filters = rearrange(self.filter_mlp(query), "b (n k) -> b k n", n=n_dynamic)  # item b's own filters
            dynamic = _windows(previous, dynamic_size, dynamic_size // 2) @ filters  # (B, L, n_dynamic)
            features = torch.cat([_windows(previous, static_size, static_size // 2), dynamic], dim=2)
            energies = _TanhEnergies.apply(features, location_weight, score, self.dynamic_dense.bias, None)  # (B, L)
            prior = _windows(previous, prior_size, prior_size - 1) @ self.prior_filter[0, 0]  # causal, (B, L)
            return _masked_softmax(energies + torch.log(prior.clamp_min(1e-6)), mask)

        return step


# ------------------------------------------------------------------------------------- fast path
def _fused_filter(dense_weight: torch.Tensor, conv_weight: torch.Tensor) -> torch.Tensor:
    """dense (A, F) after conv (F, C, K) is one filter bank; returned as a matmul weight (C * K, A)."""
    return torch.einsum("af,fck->cka", dense_weight, conv_weight).flatten(0, 1)


def _windows(x: torch.Tensor, size: int, left: int) -> torch.Tensor:
    """(..., L) -> (..., L, size): window j holds x[j - left : j - left + size], zero-padded.
    `_windows(x, K, K // 2) @ w` is conv1d(x, w, padding=K // 2) for odd K; left = K - 1 is causal."""
    return F.pad(x, (left, size - 1 - left)).unfold(-1, size, 1)


class _TanhEnergies(torch.autograd.Function):
    """energies = tanh(keys + offset + features @ weight) @ score, (B, L), keeping for the backward
    pass only its inputs: features (B, L, K), weight (K, A), score (A,), offset (B, 1, A) or (A,)
    (the query's projection or a bias), keys (B, L, A) shared by every step or None. The tanh is
    recomputed in the backward pass, in the dtype the forward pass ran in (autocast)."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, weight: torch.Tensor, score: torch.Tensor, offset: torch.Tensor,
                keys: torch.Tensor | None) -> torch.Tensor:
        hidden = _tanh_hidden(features, weight, offset, keys)
        ctx.save_for_backward(features, weight, score, offset, keys)
        return hidden @ score.to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        features, weight, score, offset, keys = ctx.saved_tensors
        hidden = _tanh_hidden(features, weight, offset, keys)  # (B, L, A)
        grad = grad.to(hidden.dtype)
        grad_score = torch.einsum("bla,bl->a", hidden, grad)
        grad_pre = hidden.square_().neg_().add_(1.0).mul_(grad[..., None] * score.to(hidden.dtype))  # (B, L, A)
        grad_offset = grad_pre.sum(dim=1, keepdim=True) if offset.dim() == 3 else grad_pre.sum(dim=(0, 1))
        return (grad_pre @ weight.T.to(grad_pre.dtype), torch.einsum("blk,bla->ka", features, grad_pre).to(weight.dtype),
                grad_score.to(score.dtype), grad_offset.to(offset.dtype), None if keys is None else grad_pre.to(keys.dtype))


def _tanh_hidden(features: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor,
                 keys: torch.Tensor | None) -> torch.Tensor:
    dtype = features.dtype  # under autocast, the location features' (weights are float32 parameters)
    pre = features @ weight.to(dtype) + offset.to(dtype)  # (B, L, A)
    return torch.tanh(pre if keys is None else pre.add_(keys.to(dtype)))
