"""Reduced-precision inference: the decoder loop with int8 or bf16 weights.

Free-running synthesis runs the decoder once per r frames, and at batch 1 each step is a handful
of matrix-vector products over ~19 M weights (tacotron2 preset): the two LSTM gate matmuls over
[recurrent inputs ; h] (the attention LSTM's also over the prenet output), the prenet and the
frame/stop projection. A CPU streams those weights from memory every step, so a step's time is
their size divided by the memory bandwidth; the arithmetic is cheap. Smaller weights are faster:

- "int8": per-output-channel symmetric int8 weights, activations quantised per call
  (`torch.ao.quantization.quantize_dynamic`, fbgemm). 4x less weight traffic, and 19 MB fits a
  typical server L3 cache. The quality cost is measured by benchmarks/bench_infer.py (MCD-DTW
  against fp32 on a trained checkpoint) and bounded in tests/test_infer.py.
- "bf16": bfloat16 weights, 2x less traffic; inputs are cast to bf16 per matmul and outputs back.
- "fp32": the model's own decoder (the reference for the other two).

In every precision the recurrent state, attention and everything outside those matmuls stay in
float32, so rounding does not accumulate in the LSTM cell state over hundreds of steps.

`ReducedPrecisionDecoder` is a `Decoder` whose `step_weights` are int8 or bf16 copies of the
per-step matmuls (the attention LSTM's static and recurrent weights side by side with its bias, so
one matmul per step serves both; the decoder LSTM's recurrent weight, its bias added in float32;
the projection) and whose prenet layers are reduced too. It runs the decoder's own step and loop (decoder.py), so there is no second copy of the
recurrence to drift. `reduce_precision(model, precision)` returns a copy of the model whose
`decoder` is this subclass, so `model.infer` is unchanged for callers. The text and reference
encoders run once per utterance and stay float32.

tests/test_infer.py checks that the "fp32" variant reproduces the model's decoder and bounds the
int8 and bf16 deviation.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from ..model.cpu_kernels import PackedMatmul
from ..model.decoder import Decoder, Matmul, StepWeights
from ..model.tacotron import ProsodyTacotron
from ..plugin.errors import ConfigError

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


class _Bf16Linear(nn.Module):
    """nn.Linear with bf16 weights for float32 activations: the matmul reads half the bytes, from
    a oneDNN-packed copy of the weight where there is one (cpu_kernels.PackedMatmul; 2.4x faster
    at one row), made on first use and again after the module moves."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        self.bias = (None if linear.bias is None
                     else nn.Parameter(linear.bias.detach().to(torch.bfloat16), requires_grad=False))
        self._packed: PackedMatmul | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None or self._packed.weight.data_ptr() != self.weight.data_ptr():
            self._packed = PackedMatmul(self.weight, rows=x.shape[0], bias=self.bias)
        return self._packed(x).float()


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device)
    linear.weight.data.copy_(weight.detach())
    if bias is not None:
        linear.bias.data.copy_(bias.detach())
    return linear


def _reduce(module: nn.Module, precision: Precision) -> nn.Module:
    """Every nn.Linear inside `module` quantised to int8, cast to bf16, or left as it is."""
    if precision == "int8":
        with warnings.catch_warnings():
            # torch.ao.quantization warns that it is deprecated in favour of torchao; torch 2.13
            # still ships it and its fbgemm kernels, and torchao would be a heavy extra dependency
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*")
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            return quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    if precision == "bf16":
        if isinstance(module, nn.Linear):
            return _Bf16Linear(module)
        for name, child in module.named_children():
            setattr(module, name, _reduce(child, precision))
    return module


class ReducedPrecisionDecoder(Decoder):
    """Inference-only `Decoder` with its per-step matmuls at `precision` (eval mode, no teacher forcing)."""

    def __init__(self, decoder: Decoder, precision: Precision = "int8") -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        device = decoder.projection.weight.device
        if precision == "int8" and device.type != "cpu":
            raise ConfigError(f"precision 'int8' runs on the CPU only (fbgemm kernels); the model is on {device}")
        super().__init__(decoder.config, decoder.memory_dim)
        self.load_state_dict(decoder.state_dict())
        self.to(device)
        self.precision = precision
        attention_cell = self.attention_cell
        self.reduced = _reduce(nn.ModuleDict({
            "prenet": self.prenet.layers,
            # one matmul over [prenet output ; context ; h]: the static and recurrent parts together,
            # since at one row a matmul's cost is its weight read plus a fixed overhead per call
            "attention_gates": _linear(torch.cat([attention_cell.static_weight, attention_cell.recurrent_weight], dim=1),
                                       attention_cell.bias),
            "decoder_recurrent": _linear(self.decoder_cell.recurrent_weight, None),
            "projection": copy.deepcopy(self.projection),
        }), precision)
        self.prenet.layers = self.reduced["prenet"]  # the prenet keeps its dropout and per-item generators
        self.eval()

    def step_weights(self, rows: int) -> StepWeights:
        r = self.reduced
        return _FusedAttentionWeights(_identity, None, r["decoder_recurrent"], r["projection"], r["attention_gates"])

    def train(self, mode: bool = True) -> "ReducedPrecisionDecoder":
        if mode:
            raise ConfigError("ReducedPrecisionDecoder is for inference only; train the float32 model")
        return super().train(False)

    def forward(self, *args, **kwargs):
        raise ConfigError("ReducedPrecisionDecoder is for inference only (no teacher-forced forward)")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class _FusedAttentionWeights(StepWeights):
    """Step weights whose attention LSTM reads [prenet output ; context ; h] in one matmul: the
    step's `prenet_gates` passes the prenet output through, and `attention_gates` does the rest."""

    fused_attention: Matmul = None  # (B, P + D + H_a) -> (B, 4 H_a), bias included

    def attention_gates(self, prenet_share: torch.Tensor, recurrent_input: torch.Tensor) -> torch.Tensor:
        return self.fused_attention(torch.cat([prenet_share, recurrent_input], dim=1))


def reduce_precision(model: ProsodyTacotron, precision: Precision) -> ProsodyTacotron:
    """A copy of `model` in eval mode whose decoder runs its per-step matmuls at `precision`
    ("fp32" returns the model itself). For `infer` only: the decoder is a snapshot of the
    model's, the encoders and postnet are shared with `model`."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return model
    reduced = copy.copy(model)  # shares every submodule but the decoder (nn.Module keeps them in dicts)
    reduced._modules = dict(model._modules)
    reduced.decoder = ReducedPrecisionDecoder(model.decoder.eval(), precision)
    return reduced.eval()
