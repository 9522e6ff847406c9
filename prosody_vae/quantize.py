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
- "fp32": the same loop on the model's own weights (the reference for the other two).

In every precision the recurrent state, attention and everything outside those matmuls stay in
float32, so rounding does not accumulate in the LSTM cell state over hundreds of steps.

`ProsodyTacotron`'s decoder keeps its recurrent weights as plain Parameters (recurrent.py
`FusedLSTMCell`), which `quantize_dynamic` does not see. `ReducedPrecisionDecoder` therefore
copies them into `nn.Linear`s (the attention LSTM's static and recurrent weights side by side,
so one matmul per step serves both; the decoder LSTM with its bias), quantises or casts those,
and runs its own copy of `Decoder.infer`'s loop (eval mode only: no dropout on the LSTM
states). `reduce_precision(model, precision)` returns a copy of the model whose `decoder` is this
wrapper, so `model.infer` is unchanged for callers.
The text and reference encoders run once per utterance and stay float32.

tests/test_infer.py checks that the "fp32" loop reproduces `Decoder.infer` (so the two loops
cannot drift apart silently) and bounds the int8 and bf16 deviation.
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal, get_args

import torch
from einops import rearrange
from torch import nn

from .errors import ConfigError
from .recurrent import FusedLSTMCell, PackedMatmul
from .tacotron import Decoder, Generators, ProsodyTacotron, StopTracker

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


class _Bf16Linear(nn.Module):
    """nn.Linear with bf16 weights for float32 activations: the matmul reads half the bytes, from
    a oneDNN-packed copy of the weight where there is one (recurrent.PackedMatmul; 2.4x faster
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


class ReducedPrecisionDecoder(nn.Module):
    """Inference-only stand-in for a `Decoder`, with its per-step matmuls at `precision`.

    `infer` has `Decoder.infer`'s signature and outputs, so a ProsodyTacotron whose `decoder` is
    this module synthesises as before. Teacher-forced `forward` (training) is not supported.
    """

    def __init__(self, decoder: Decoder, precision: Precision = "int8") -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "int8" and decoder.projection.weight.device.type != "cpu":
            raise ConfigError(f"precision 'int8' runs on the CPU only (fbgemm kernels); the model is on "
                              f"{decoder.projection.weight.device}")
        self.precision = precision
        self.n_mels, self.r = decoder.n_mels, decoder.r
        self.attention_rnn_dim, self.decoder_rnn_dim = decoder.attention_rnn_dim, decoder.decoder_rnn_dim
        self.attention = copy.deepcopy(decoder.attention)  # small: stays float32
        prenet = copy.deepcopy(decoder.prenet)
        attention_cell, decoder_cell = decoder.attention_cell, decoder.decoder_cell
        self.layers = _reduce(nn.ModuleDict({
            "prenet": prenet.layers,
            # one matmul over [prenet output ; context ; h]: the static and recurrent parts together
            "attention_gates": _linear(torch.cat([attention_cell.static_weight, attention_cell.recurrent_weight], dim=1),
                                       attention_cell.bias),
            "decoder_recurrent": _linear(decoder_cell.recurrent_weight, decoder_cell.bias),
            "projection": copy.deepcopy(decoder.projection),
        }), precision)
        prenet.layers = self.layers["prenet"]
        self.prenet = prenet  # its forward keeps the model's dropout and per-item generators
        self.eval()

    def train(self, mode: bool = True) -> "ReducedPrecisionDecoder":
        if mode:
            raise ConfigError("ReducedPrecisionDecoder is for inference only; train the float32 model")
        return super().train(False)

    def forward(self, *args, **kwargs):
        raise ConfigError("ReducedPrecisionDecoder is for inference only (no teacher-forced forward)")

    @torch.no_grad()
    def infer(self, memory: torch.Tensor, mask: torch.Tensor, max_steps: int, stop_threshold: float,
              generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`Decoder.infer`: frames (B, S * r, n_mels), alignments (B, S, L), stop_steps (B,), hit_max (B,)."""
        layers = self.layers
        batch, n_tokens, memory_dim = memory.shape
        attend = self.attention.start(memory, mask)
        attention_c = memory.new_zeros(batch, self.attention_rnn_dim)
        decoder_c = memory.new_zeros(batch, self.decoder_rnn_dim)
        attention_h, decoder_h = torch.zeros_like(attention_c), torch.zeros_like(decoder_c)
        context = memory.new_zeros(batch, memory_dim)
        alignment = memory.new_zeros(batch, n_tokens)
        alignment[:, 0] = 1.0  # start on the first token, as Decoder does
        cumulative = alignment
        frame = memory.new_zeros(batch, self.n_mels)  # go frame
        stops = StopTracker(batch, max_steps, stop_threshold, memory.device)
        all_outputs, all_alignments = [], []
        for step in range(max_steps):
            gates = layers["attention_gates"](torch.cat([self.prenet(frame, generator), context, attention_h], dim=1))
            attention_h, attention_c = FusedLSTMCell.step(gates, attention_c)
            alignment = attend(attention_h, alignment, cumulative)
            cumulative = cumulative + alignment
            context = torch.bmm(alignment[:, None], memory)[:, 0]  # (B, D)
            gates = layers["decoder_recurrent"](torch.cat([attention_h, context, decoder_h], dim=1))
            decoder_h, decoder_c = FusedLSTMCell.step(gates, decoder_c)
            out = layers["projection"](torch.cat([decoder_h, context], dim=1))  # (B, r * n_mels + 1)
            all_outputs.append(out)
            all_alignments.append(alignment)
            frame = out[:, -1 - self.n_mels : -1]  # the last of the r frames feeds the next step
            if stops.update(out, step):
                break
        frames = rearrange(torch.stack(all_outputs, dim=1)[..., :-1], "b s (r f) -> b (s r) f", r=self.r)
        return frames, torch.stack(all_alignments, dim=1), stops.stop_steps, ~stops.done


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
