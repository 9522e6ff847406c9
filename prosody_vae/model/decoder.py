"""The attention decoder, with its step written once.

    one step per r frames (r = reduction factor):
        prenet(previous frame) -> attention LSTM -> attention over memory -> context
        [attention LSTM state ; context] -> decoder LSTM -> [state ; context] -> projection
        projection -> r frames [+ r log-F0 + r voicing logits] + stop logit (`OutputLayout`)

`DecoderPass.step` is that recurrence, and everything runs it: teacher-forced training
(`Decoder.forward`), free-running inference (`Decoder.infer`, `run_free`), reduced-precision
inference (quantize.py) and the exported step program (inference/export_program.py). What differs between
them is only the weights a step multiplies by (`StepWeights`): plain `F.linear` on the
parameters, the CPU fast path (cpu_kernels.py, chosen by speedups.py), or int8/bf16 copies. The
state a step carries is one `DecoderState`, built in one place.

Speed without tricks: the loop runs T / r times, so what does not depend on the recurrence is
taken out of it. In training the prenet and its share of the attention LSTM's gates run for all
teacher-forced steps in one matmul before the loop, and the projection for all steps after it;
each LSTM does one matmul per step over [recurrent inputs ; h] for all four gates.

Prenet dropout stays on at inference (Tacotron 2: it is the decoder's source of variation and
stops it from copying its input frame). `prenet_dropout_at_inference=False` makes eval mode
deterministic; otherwise pass `generator` to `infer` for reproducible output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..plugin.errors import ConfigError
from ..plugin.speedups import fast_path_enabled
from .attention import DynamicConvolutionAttention, ForwardAttention, LocationSensitiveAttention
from .config import TacotronConfig
from .cpu_kernels import AttentionContext, PackedMatmul, _RecurrentMatmul
from .layers import Generators, dropout

Matmul = Callable[[torch.Tensor], torch.Tensor]


def decoder_steps(mel_lengths: torch.Tensor, r: int) -> torch.Tensor:
    """Valid decoder steps per item, ceil(mel_lengths / r): the last one holds the last valid frame."""
    return torch.div(mel_lengths + r - 1, r, rounding_mode="floor")


@dataclass(frozen=True)
class OutputLayout:
    """What one decoder step's projection holds, (..., size): r frames, then (with a pitch head)
    r log-F0 values and r voicing logits, then the stop logit. The one place that knows the layout:
    a new per-step output is added here and nowhere else in the loop."""

    n_mels: int
    r: int
    pitch: bool = False
    feedback: bool = False  # the next step also reads the last frame's log-F0 and voicing

    @classmethod
    def of(cls, config: TacotronConfig) -> "OutputLayout":
        return cls(config.n_mels, config.reduction_factor, config.pitch_head, config.pitch_feedback)

    @property
    def size(self) -> int:
        return self.r * self.n_mels + (2 * self.r if self.pitch else 0) + 1

    @property
    def input_size(self) -> int:
        """What a step reads of the step before: a frame (B, n_mels) [+ its log-F0 and voicing]."""
        return self.n_mels + (2 if self.feedback else 0)

    def frames(self, out: torch.Tensor) -> torch.Tensor:
        """(B, S, size) -> (B, S * r, n_mels)."""
        return rearrange(out[..., : self.r * self.n_mels], "b s (r f) -> b (s r) f", r=self.r)

    def log_f0(self, out: torch.Tensor) -> torch.Tensor:
        """(B, S, size) -> (B, S * r): natural log of F0 in Hz, meaningful where voiced."""
        start = self.r * self.n_mels
        return rearrange(out[..., start : start + self.r], "b s r -> b (s r)")

    def voicing_logits(self, out: torch.Tensor) -> torch.Tensor:
        """(B, S, size) -> (B, S * r)."""
        start = self.r * self.n_mels + self.r
        return rearrange(out[..., start : start + self.r], "b s r -> b (s r)")

    def stop_logit(self, out: torch.Tensor) -> torch.Tensor:
        """(..., size) -> (...)."""
        return out[..., -1]

    def next_input(self, out: torch.Tensor) -> torch.Tensor:
        """(B, size) -> (B, input_size): the last of the r frames [with its log-F0 and voicing],
        which the next step reads."""
        frame = out[:, (self.r - 1) * self.n_mels : self.r * self.n_mels]
        if not self.feedback:
            return frame
        log_f0, voicing = self.log_f0(out[:, None])[:, -1:], self.voicing_logits(out[:, None])[:, -1:]
        return pitch_input(frame, log_f0, voicing > 0)

    def bias_init(self) -> torch.Tensor:
        """A starting bias for the projection: log-F0 outputs begin near log(150 Hz), not 0 Hz."""
        bias = torch.zeros(self.size)
        if self.pitch:
            bias[self.r * self.n_mels : self.r * self.n_mels + self.r] = math.log(150.0)
        return bias


def pitch_input(frame: torch.Tensor, log_f0: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
    """[frame ; log-F0 where voiced, else 0 ; voiced] (..., n_mels + 2): what a pitch-feedback step reads."""
    voiced = voiced.to(frame.dtype)
    return torch.cat([frame, log_f0.to(frame.dtype) * voiced, voiced], dim=-1)


class Prenet(nn.Module):
    """Linear + ReLU + dropout layers; dropout also in eval mode when `dropout_at_inference`.
    `noise` (one uniform draw per layer, `layers.dropout_noise`) replaces the draws, for a caller
    that must make them itself (the exported step program)."""

    def __init__(self, in_dim: int, dims: tuple[int, ...], dropout: float, dropout_at_inference: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip((in_dim, *dims), dims))
        self.dropout, self.dropout_at_inference = dropout, dropout_at_inference

    @property
    def noisy(self) -> bool:
        return (self.training or self.dropout_at_inference) and self.dropout > 0.0

    def forward(self, x: torch.Tensor, generator: Generators = None,
                noise: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = dropout(F.relu(layer(x)), self.dropout, self.noisy, generator, None if noise is None else noise[index])
        return x


class SplitLSTMCell(nn.Module):
    """An LSTM cell (gates i, f, g, o) whose input weight is split by what the recurrence depends on:
    `static_weight` reads inputs known before the loop (projected for all steps at once, bias
    included: `static_gates`), `recurrent_weight` reads [recurrent inputs ; h] once per step."""

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
    def cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gates (B, 4H) with everything added, c (B, H) -> new (h, c)."""
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class DecoderState(NamedTuple):
    """What a decoder step carries to the next. H_a, H_d: the LSTMs' sizes, D: memory, L: tokens."""

    attention_h: torch.Tensor  # (B, H_a)
    attention_c: torch.Tensor  # (B, H_a)
    decoder_h: torch.Tensor  # (B, H_d)
    decoder_c: torch.Tensor  # (B, H_d)
    context: torch.Tensor  # (B, D)
    alignment: torch.Tensor  # (B, L)
    cumulative: torch.Tensor  # (B, L), alignments summed so far

    @classmethod
    def initial(cls, config: TacotronConfig, batch: int, n_tokens: int, memory_dim: int,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> "DecoderState":
        """Zeros, with the alignment on the first token (forward attention and DCA need this)."""
        zeros = partial(torch.zeros, device=device, dtype=dtype)
        alignment = zeros(batch, n_tokens)
        alignment[:, 0] = 1.0
        a, d = config.attention_rnn_dim, config.decoder_rnn_dim
        # distinct tensors for alignment and cumulative: an exported program merges aliased inputs
        return cls(zeros(batch, a), zeros(batch, a), zeros(batch, d), zeros(batch, d), zeros(batch, memory_dim),
                   alignment, alignment.clone())


@dataclass
class StepWeights:
    """The four matmuls of a decoder step, each x -> x @ W.T (+ b). Precision and packing are
    properties of these callables, never of the loop that calls them."""

    prenet_gates: Matmul  # (B, P) -> (B, 4 H_a), the attention LSTM's static share, bias included
    attention_recurrent: Matmul  # (B, D + H_a) -> (B, 4 H_a)
    decoder_recurrent: Matmul  # (B, H_a + D + H_d) -> (B, 4 H_d)
    projection: Matmul  # (B, H_d + D) -> (B, OutputLayout.size), bias included

    @classmethod
    def plain(cls, decoder: "Decoder") -> "StepWeights":
        return cls(decoder.attention_cell.static_gates,
                   partial(F.linear, weight=decoder.attention_cell.recurrent_weight),
                   partial(F.linear, weight=decoder.decoder_cell.recurrent_weight),
                   decoder.projection)

    @classmethod
    def fast(cls, decoder: "Decoder", rows: int) -> "StepWeights":
        """Weights packed once per pass for oneDNN, recurrent weight gradients formed once per pass
        (cpu_kernels.py). At inference the prenet gates and projection are packed too."""
        weights = cls.plain(decoder)
        weights.attention_recurrent = _RecurrentMatmul(decoder.attention_cell.recurrent_weight, rows)
        weights.decoder_recurrent = _RecurrentMatmul(decoder.decoder_cell.recurrent_weight, rows)
        if not torch.is_grad_enabled():  # training projects all steps after the loop, in one matmul
            cell, projection = decoder.attention_cell, decoder.projection
            weights.prenet_gates = PackedMatmul(cell.static_weight, rows, cell.bias)
            weights.projection = PackedMatmul(projection.weight, rows, projection.bias)
        return weights

    def attention_gates(self, prenet_share: torch.Tensor, recurrent_input: torch.Tensor) -> torch.Tensor:
        """The attention LSTM's gates (B, 4 H_a): `prenet_share` is what `prenet_gates` made of the
        prenet output, `recurrent_input` is [context ; attention_h]."""
        return prenet_share + self.attention_recurrent(recurrent_input)

    def end_of_pass(self) -> None:
        """Free packed copies once the loop has run: the end of the forward pass is a training step's
        memory peak. Calls after this still work, on the plain matmul."""
        for matmul in (self.attention_recurrent, self.decoder_recurrent):
            if isinstance(matmul, _RecurrentMatmul):
                matmul.end_of_pass()


class DecoderPass:
    """One decoding pass over a batch: the attention's per-utterance work, the step weights and
    the state. `step` advances the state by one decoder step (r frames)."""

    def __init__(self, decoder: "Decoder", memory: torch.Tensor, mask: torch.Tensor, weights: StepWeights,
                 keys: Optional[torch.Tensor] = None, state: Optional[DecoderState] = None) -> None:
        batch, n_tokens, memory_dim = memory.shape
        self.decoder, self.weights = decoder, weights
        self.attend = decoder.attention.start(memory, mask, keys)
        if fast_path_enabled():
            self.context_of = AttentionContext(memory)
        else:
            self.context_of = lambda alignment: torch.bmm(alignment[:, None], memory)[:, 0]  # (B, D)
        self.state = state or DecoderState.initial(decoder.config, batch, n_tokens, memory_dim, memory.device,
                                                   memory.dtype)

    def step(self, attention_input: torch.Tensor) -> torch.Tensor:
        """attention_input: the prenet's share of the attention LSTM's gates as `weights.prenet_gates`
        made it ((B, 4 H_a), bias included, unless the weights fuse it into `attention_gates`).
        Returns the projection's input [decoder_h ; context] (B, H_d + D)."""
        d, w, s = self.decoder, self.weights, self.state
        gates = w.attention_gates(attention_input, torch.cat([s.context, s.attention_h], dim=1))
        attention_h, attention_c = d.attention_cell.cell(gates, s.attention_c)
        attention_h = dropout(attention_h, d.config.attention_rnn_dropout, d.training)
        alignment = self.attend(attention_h, s.alignment, s.cumulative)
        context = self.context_of(alignment)  # (B, D)
        gates = d.decoder_cell.bias + w.decoder_recurrent(torch.cat([attention_h, context, s.decoder_h], dim=1))
        decoder_h, decoder_c = d.decoder_cell.cell(gates, s.decoder_c)
        decoder_h = dropout(decoder_h, d.config.decoder_rnn_dropout, d.training)
        self.state = DecoderState(attention_h, attention_c, decoder_h, decoder_c, context, alignment,
                                  s.cumulative + alignment)
        return torch.cat([decoder_h, context], dim=1)

    def infer_step(self, frame: torch.Tensor, generator: Generators = None,
                   noise: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """Free-running: the previous step's `OutputLayout.next_input` (B, input_size) -> this step's
        output (B, OutputLayout.size)."""
        attention_input = self.weights.prenet_gates(self.decoder.prenet(frame, generator, noise))
        return self.weights.projection(self.step(attention_input))


class StopTracker:
    """Per-item stop bookkeeping of a free-running decoder: an item stops at the first step whose
    stop logit passes the stop probability `threshold`."""

    def __init__(self, batch: int, max_steps: int, threshold: float, device: torch.device):
        self.logit_threshold = math.log(threshold / (1.0 - threshold))
        self.stop_steps = torch.full((batch,), max_steps, dtype=torch.long, device=device)  # (B,)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,)

    def update(self, stop_logit: torch.Tensor, step: int, allowed: Optional[torch.Tensor] = None) -> bool:
        """Record decoder step `step`'s stop logits (B,), for the items `allowed` (B,) bool to stop;
        True once every item has stopped."""
        stopped = (stop_logit > self.logit_threshold) & ~self.done
        if allowed is not None:
            stopped = stopped & allowed
        self.stop_steps = torch.where(stopped, step + 1, self.stop_steps)
        self.done = self.done | stopped
        return bool(self.done.all())


def run_free(step: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], go_frame: torch.Tensor,
             layout: OutputLayout, max_steps: int, stop_threshold: float, text_lengths: torch.Tensor,
             stop_gate_tokens: int = 0):
    """The free-running loop around a step function input (B, layout.input_size) -> (out (B, size),
    alignment (B, L)): each step reads the one before (`layout.next_input`), until every item stopped
    or max_steps ran. An item may stop only once its alignment peak lies on one of its last
    `stop_gate_tokens` tokens (0: at any step), so a short text is spoken before it ends.
    Returns out (B, S, size), alignments (B, S, L), stop_steps (B,), hit_max_steps (B,)."""
    stops = StopTracker(go_frame.shape[0], max_steps, stop_threshold, go_frame.device)
    gate = (text_lengths - stop_gate_tokens).clamp(min=0).to(go_frame.device)  # (B,) first token that allows a stop
    outputs, alignments, frame = [], [], go_frame
    for index in range(max_steps):
        out, alignment = step(frame)
        outputs.append(out)
        alignments.append(alignment)
        frame = layout.next_input(out)
        stop_logit, allowed = layout.stop_logit(out), None
        if stop_gate_tokens and bool((stop_logit > stops.logit_threshold).any()):  # most steps want no stop
            allowed = alignment.argmax(dim=1) >= gate
        if stops.update(stop_logit, index, allowed):
            break
    return torch.stack(outputs, dim=1), torch.stack(alignments, dim=1), stops.stop_steps, ~stops.done


def build_attention(config: TacotronConfig, memory_dim: int) -> nn.Module:
    if config.attention_kind == "dca":
        return DynamicConvolutionAttention(
            config.attention_rnn_dim, config.attention_dim, config.dca_static_filters,
            config.dca_static_kernel_size, config.dca_dynamic_filters, config.dca_dynamic_kernel_size,
            config.dca_filter_mlp_dim, config.dca_prior_length, config.dca_prior_alpha, config.dca_prior_beta)
    kind = ForwardAttention if config.attention_kind == "forward" else LocationSensitiveAttention
    return kind(config.attention_rnn_dim, memory_dim, config.attention_dim, config.location_filters,
                config.location_kernel_size)


class Decoder(nn.Module):
    """Autoregressive attention decoder: memory (B, L, D) -> r frames + a stop logit per step."""

    def __init__(self, config: TacotronConfig, memory_dim: int) -> None:
        super().__init__()
        self.config, self.memory_dim = config, memory_dim
        self.layout = OutputLayout.of(config)
        self.prenet = Prenet(self.layout.input_size, config.prenet_dims, config.prenet_dropout,
                             config.prenet_dropout_at_inference)
        self.attention_cell = SplitLSTMCell(config.prenet_dims[-1], memory_dim, config.attention_rnn_dim)
        self.attention = build_attention(config, memory_dim)
        self.decoder_cell = SplitLSTMCell(0, config.attention_rnn_dim + memory_dim, config.decoder_rnn_dim)
        self.projection = nn.Linear(config.decoder_rnn_dim + memory_dim, self.layout.size)
        if config.pitch_head:
            with torch.no_grad():
                self.projection.bias.copy_(self.layout.bias_init())

    def step_weights(self, rows: int) -> StepWeights:
        """The matmuls a pass over `rows` items runs: plain, or the CPU fast path (speedups.py)."""
        return StepWeights.fast(self, rows) if fast_path_enabled() else StepWeights.plain(self)

    def start(self, memory: torch.Tensor, mask: torch.Tensor) -> DecoderPass:
        return DecoderPass(self, memory, mask, self.step_weights(memory.shape[0]))

    def forward(self, memory: torch.Tensor, mask: torch.Tensor, mel: torch.Tensor,
                pitch: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """Teacher forcing on mel (B, T, n_mels), T = T_r * r: step t reads the last frame of group
        t - 1 (zeros for t = 0) and, with pitch feedback, its (log_f0, voiced) from `pitch`, both
        (B, T). Returns every step's output (B, T_r, OutputLayout.size) and alignments (B, T_r, L)."""
        r = self.config.reduction_factor
        previous = mel[:, r - 1 :: r]  # (B, T_r, n_mels)
        if self.layout.feedback:
            if pitch is None:
                raise ConfigError("this model feeds pitch back (pitch_feedback): give the batch's log_f0 and voiced")
            previous = pitch_input(previous, pitch[0][:, r - 1 :: r, None], pitch[1][:, r - 1 :: r, None])
        inputs = F.pad(previous[:, :-1], (0, 0, 1, 0))  # go frame first
        attention_inputs = self.attention_cell.static_gates(self.prenet(inputs))  # (B, T_r, 4 H_a)
        decoding = self.start(memory, mask)
        features, alignments = [], []
        for attention_input in attention_inputs.unbind(dim=1):
            features.append(decoding.step(attention_input))
            alignments.append(decoding.state.alignment)
        decoding.weights.end_of_pass()
        return self.projection(torch.stack(features, dim=1)), torch.stack(alignments, dim=1)

    @torch.no_grad()
    def infer(self, memory: torch.Tensor, mask: torch.Tensor, max_steps: int, stop_threshold: float,
              generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Free-running decoding until every item has emitted a stop or max_steps ran. Returns every
        step's output (B, S, OutputLayout.size), alignments (B, S, L), stop_steps (B,), hit_max_steps (B,)."""
        decoding = self.start(memory, mask)

        def step(frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return decoding.infer_step(frame, generator), decoding.state.alignment

        go_frame = memory.new_zeros(memory.shape[0], self.layout.input_size)
        return run_free(step, go_frame, self.layout, max_steps, stop_threshold,
                        mask.sum(dim=1), self.config.stop_gate_tokens)
