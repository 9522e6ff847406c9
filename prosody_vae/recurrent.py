"""Recurrent building blocks for the Tacotron decoder loop, shaped for speed on CPUs.

`FusedLSTMCell` splits an LSTM's gate projection by what depends on the recurrence: inputs known
before the loop are projected for all steps in one matmul (`static_gates`), and each step adds
one matmul over [recurrent inputs ; h]. `_RecurrentMatmul` is that per-step matmul with its weight
gradient deferred: rather than hundreds of rank-B updates of a large matrix (bound by memory
traffic), each step records (input, output gradient) on a tape and a GEMM per chunk of 32 steps forms
the gradient. It is checked against autograd with `gradcheck` in tests/test_tacotron.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


_TAPE_CHUNK = 32  # decoder steps per weight-gradient GEMM


class _TapedWeight(torch.autograd.Function):
    """Identity on a weight. Its backward runs after every `_TapedMatmul` that used the weight has
    recorded (input, grad_output), and forms the weight gradient from all of them in a few large GEMMs."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, tape: list) -> torch.Tensor:
        ctx.tape = tape
        ctx.set_materialize_grads(False)  # the incoming gradient is unused: skip a weight-sized zero fill
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, _unused: torch.Tensor):
        # a GEMM per chunk of steps: still large GEMMs, while the concatenated copies stay a fraction
        # of the tape, whose entries are freed as they are consumed (at tacotron2 size the whole tape
        # is ~160 MB; concatenating it at once doubled that at the peak of the backward pass)
        tape, grad_weight = ctx.tape, None
        while tape:
            chunk = [tape.pop() for _ in range(min(_TAPE_CHUNK, len(tape)))]
            inputs, grads = (torch.cat(parts) for parts in zip(*chunk))  # (N, in), (N, out)
            del chunk
            if grad_weight is None:
                grad_weight = grads.T @ inputs  # (out, N) @ (N, in)
            else:
                grad_weight.addmm_(grads.T, inputs)
        return grad_weight, None


class _TapedMatmul(torch.autograd.Function):
    """x @ weight.T whose backward returns only the input gradient and records the rest on the tape."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, tape: list) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.tape = tape
        return x @ weight.T

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        ctx.tape.append((x, grad))
        return grad @ weight, None, None


class _RecurrentMatmul:
    """x @ weight.T for one pass of a recurrent loop, with the weight gradient deferred (see above).
    Under autocast the weight is cast once per pass, not once per step. Not twice differentiable
    (create_graph); retain_graph works, as each backward records the tape afresh."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.taped = torch.is_grad_enabled() and weight.requires_grad
        if torch.is_autocast_enabled(weight.device.type):
            weight = weight.to(torch.get_autocast_dtype(weight.device.type))
        self.tape: list = []
        self.weight = _TapedWeight.apply(weight, self.tape) if self.taped else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.dtype)
        return _TapedMatmul.apply(x, self.weight, self.tape) if self.taped else x @ self.weight.T


class FusedLSTMCell(nn.Module):
    """LSTM cell (gates i, f, g, o) split by what depends on the recurrence.

    `static_gates(x)` projects inputs known before the loop (for all steps in one matmul, bias
    included); each step then adds one matmul over [recurrent inputs ; h] (`step`).
    """

    def __init__(self, static_dim: int, recurrent_dim: int, hidden_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(hidden_dim)  # torch.nn.LSTM's initialisation
        self.static_weight = (nn.Parameter(torch.empty(4 * hidden_dim, static_dim).uniform_(-bound, bound))
                              if static_dim else None)
        self.recurrent_weight = nn.Parameter(
            torch.empty(4 * hidden_dim, recurrent_dim + hidden_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(4 * hidden_dim).uniform_(-bound, bound))

    def static_gates(self, x: torch.Tensor) -> torch.Tensor:  # (..., static_dim) -> (..., 4H)
        return F.linear(x, self.static_weight, self.bias)

    @staticmethod
    def step(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gates (B, 4H) with everything added, c (B, H) -> new (h, c)."""
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
