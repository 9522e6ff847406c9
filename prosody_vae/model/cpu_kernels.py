"""The decoder loop's fast path on CPUs (speedups.py): per-step matmuls and their gradients.

These compute exactly what the plain decoder computes with `F.linear` and `torch.bmm`; they only
change how. Used when `speedups.fast_path_enabled()`, through `decoder.StepWeights.fast`.

`_RecurrentMatmul` is a per-step matmul with its weight gradient deferred: rather than hundreds
of rank-B updates of a large matrix (bound by memory traffic), each step records (input, output
gradient) on a tape and a GEMM per chunk of 32 steps forms the gradient. `AttentionContext` does
the same for the attention context's gradient with respect to the memory. Both are checked
against autograd in tests/test_cpu_kernels.py.

`PackedMatmul` is the per-step matmul itself. A decoder step multiplies a few rows by a large
weight, and at that shape the default CPU GEMM (MKL) reaches about a third of the machine's
matmul throughput; oneDNN with the weight reordered once into its blocked layout reaches most of
it (at 16 x 2560 x 4096 on a 2-core Zen 4: 5.7 ms -> 1.9 ms; at 1 row: 2.3 ms -> 1.5 ms). The
reorder costs about one pass over the weight, so it is done once per decoding pass and pays off
from the first few steps. Elsewhere (CUDA, other dtypes, torch without oneDNN, or
`torch.backends.mkldnn.flags(enabled=False)`) it is a plain matmul.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


_TAPE_CHUNK = 32  # decoder steps per weight-gradient GEMM


def _onednn_packable(weight: torch.Tensor) -> bool:
    if weight.device.type != "cpu" or not torch.backends.mkldnn.enabled:
        return False
    if not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):  # a private op: check it is there
        return False
    if weight.dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return weight.dtype == torch.float32


def _autocast(weight: torch.Tensor) -> torch.Tensor:
    """The weight in the dtype autocast would run its matmul in; cast once per pass, not per step."""
    if torch.is_autocast_enabled(weight.device.type):
        return weight.to(torch.get_autocast_dtype(weight.device.type))
    return weight


def _contiguous(weight: torch.Tensor) -> torch.Tensor:
    """weight.contiguous(), in row blocks when weight is a transposed matrix: a block's rows stay
    in cache while they are scattered into columns (4096 x 2688 fp32: 36 ms -> 9 ms)."""
    if weight.is_contiguous() or weight.dim() != 2 or weight.stride() != (1, weight.shape[0]):
        return weight.contiguous()
    out = weight.new_empty(weight.shape)
    for start in range(0, weight.shape[1], 256):
        out[:, start : start + 256] = weight[:, start : start + 256]
    return out


class PackedMatmul:
    """x (..., in) -> x @ weight.T (+ bias) for a weight (out, in) that stays fixed while it is
    used; `rows` is the expected number of rows of x (a hint for the layout, any count works).
    Follows autocast like F.linear. Holds no autograd graph: wrap it (as `_TapedMatmul` does) or
    use it under no_grad."""

    def __init__(self, weight: torch.Tensor, rows: int, bias: torch.Tensor | None = None) -> None:
        self.weight = _autocast(weight.detach())
        self.bias = None if bias is None else bias.detach().to(self.weight.dtype)
        self.rows = rows
        self.packed = self._pack()

    def _pack(self) -> torch.Tensor | None:
        # a transposed view is copied only for the reorder, so no second full copy outlives it
        if not _onednn_packable(self.weight):
            return None
        return torch.ops.mkldnn._reorder_linear_weight(_contiguous(self.weight), self.rows)

    # oneDNN's packed tensor has no storage to copy or pickle: copies pack their own
    def __getstate__(self) -> dict:
        return {**self.__dict__, "packed": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.packed = self._pack()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.dtype)
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class _TapedWeight(torch.autograd.Function):
    """Identity on a weight. Its backward runs after every step that used the weight has recorded
    (input, grad_output) on the tape, and `gradient(tape)` forms the weight's gradient from all
    of them at once."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, tape: list, gradient: Callable[[list], torch.Tensor]) -> torch.Tensor:
        ctx.tape, ctx.gradient = tape, gradient
        ctx.set_materialize_grads(False)  # the incoming gradient is unused: skip a weight-sized zero fill
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, _unused: torch.Tensor):
        return ctx.gradient(ctx.tape), None, None


def _matmul_weight_gradient(tape: list) -> torch.Tensor:
    """sum of grad.T @ input over the tape's (input (B, in), grad (B, out)) pairs: (out, in)."""
    # a GEMM per chunk of steps: still large GEMMs, while the concatenated copies stay a fraction
    # of the tape, whose entries are freed as they are consumed (at tacotron2 size the whole tape
    # is ~160 MB; concatenating it at once doubled that at the peak of the backward pass)
    grad_weight = None
    while tape:
        chunk = [tape.pop() for _ in range(min(_TAPE_CHUNK, len(tape)))]
        inputs, grads = (torch.cat(parts) for parts in zip(*chunk))  # (N, in), (N, out)
        del chunk
        if grad_weight is None:
            grad_weight = grads.T @ inputs  # (out, N) @ (N, in)
        else:
            grad_weight.addmm_(grads.T, inputs)
    return grad_weight


def _context_memory_gradient(tape: list) -> torch.Tensor:
    """memory's gradient from the tape's (alignment (B, L), grad_context (B, D)) pairs: (B, L, D)."""
    alignments, grads = (torch.stack(parts, dim=2) for parts in zip(*tape))  # (B, L, S), (B, D, S)
    tape.clear()
    return torch.bmm(alignments, grads.transpose(1, 2).to(alignments.dtype))


class _TapedContext(torch.autograd.Function):
    """alignment (B, L) @ memory (B, L, D) -> context (B, D) whose backward returns only the
    alignment's gradient and records the rest for `_context_memory_gradient`: one bmm over all
    steps instead of a (B, L, D) outer product and accumulation per step."""

    @staticmethod
    def forward(ctx, alignment: torch.Tensor, memory: torch.Tensor, tape: list) -> torch.Tensor:
        ctx.save_for_backward(alignment, memory)
        ctx.tape = tape
        return torch.bmm(alignment[:, None].to(memory.dtype), memory)[:, 0]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        alignment, memory = ctx.saved_tensors
        ctx.tape.append((alignment, grad))
        grad_alignment = torch.bmm(memory.to(grad.dtype), grad[:, :, None])[:, :, 0]  # (B, L)
        return grad_alignment.to(alignment.dtype), None, None


class AttentionContext:
    """alignment (B, L) -> context = sum over tokens of alignment * memory (B, D), for one decoding
    pass over memory (B, L, D), with memory's gradient formed once after the loop."""

    def __init__(self, memory: torch.Tensor) -> None:
        self.taped = torch.is_grad_enabled() and memory.requires_grad
        self.tape: list = []
        self.memory = _TapedWeight.apply(memory, self.tape, _context_memory_gradient) if self.taped else memory

    def __call__(self, alignment: torch.Tensor) -> torch.Tensor:
        if not self.taped:
            return torch.bmm(alignment[:, None], self.memory)[:, 0]
        return _TapedContext.apply(alignment, self.memory, self.tape)


class _TapedMatmul(torch.autograd.Function):
    """x @ weight.T whose backward returns only the input gradient and records the rest on the tape.
    `matmul` is the pass's shared `_RecurrentMatmul`, which holds the packed weights."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, matmul: "_RecurrentMatmul") -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.matmul = matmul
        return matmul.forward_matmul(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        ctx.matmul.tape.append((x, grad))
        return ctx.matmul.backward_matmul(grad), None, None


class _RecurrentMatmul:
    """x @ weight.T for one pass of a recurrent loop over `rows` rows, with the weight gradient
    deferred (see above) and the weight packed for the per-step matmuls (`PackedMatmul`). Under
    autocast the weight is cast once per pass, not once per step. Not twice differentiable
    (create_graph); retain_graph works, as each backward records the tape afresh."""

    def __init__(self, weight: torch.Tensor, rows: int) -> None:
        self.taped = torch.is_grad_enabled() and weight.requires_grad
        weight = _autocast(weight)
        self.rows, self.tape = rows, []
        self.forward_matmul = PackedMatmul(weight, rows)
        self._backward_matmul: PackedMatmul | None = None
        self.weight = _TapedWeight.apply(weight, self.tape, _matmul_weight_gradient) if self.taped else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.taped:
            return self.forward_matmul(x)
        return _TapedMatmul.apply(x.to(self.weight.dtype), self.weight, self)

    def backward_matmul(self, grad: torch.Tensor) -> torch.Tensor:
        """grad (rows, out) -> grad @ weight (rows, in), with weight.T packed on the first call."""
        if self._backward_matmul is None:
            self.end_of_pass()
            self._backward_matmul = PackedMatmul(self.weight.T, self.rows)
        return self._backward_matmul(grad.to(self.weight.dtype))

    def end_of_pass(self) -> None:
        """Free the packed copy of the weight once the loop has run: the end of the forward pass
        is the peak of a training step's memory. Later calls still work, with the plain matmul."""
        self.forward_matmul.packed = None
