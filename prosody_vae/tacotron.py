"""ProsodyTacotron: Tacotron 2 whose encoder memory carries a prosody latent z.

    text ids (B, L) -> embedding -> 3 x [conv, BatchNorm, ReLU, dropout] -> BiLSTM  (B, L, E)
    [memory ; z ; speaker], z and speaker broadcast over L                          (B, L, D)
    decoder, one step per r frames (r = reduction factor):
        prenet(previous frame) -> attention LSTM -> attention over memory -> context
        [attention LSTM state ; context] -> decoder LSTM -> [state ; context] -> r frames + stop logit
    postnet: 5 convs predict a residual that is added to the decoder's frames

z comes from `VariationalReferenceEncoder` (reference.py): in `forward` it encodes the reference
(by default the target mel, as in Capacitron training); `infer` takes z as given, so choosing a
reference, the posterior mean or a prior sample stays the caller's decision.

Masking: text padding is zeroed before every encoder conv and skipped by the packed BiLSTM,
BatchNorm statistics count only valid positions, attention gives padded tokens zero weight, the
postnet sees zeros beyond each mel's length, and output frames beyond it hold `pad_value`. So in
eval mode, what lies in the padding never changes an item's valid outputs.

Prenet dropout stays on at inference (Tacotron 2: it is the decoder's source of variation and
stops it from copying its input frame). `prenet_dropout_at_inference=False` makes eval mode
deterministic; otherwise pass `generator` to `infer` for reproducible output.

Speed. The loop runs T / r times, so everything that does not depend on the recurrence is taken
out of it: the prenet and the prenet's share of the attention LSTM gates run for all teacher-forced
steps in one matmul before the loop, the frame/stop projection for all steps after it; attention
keys and the fused location filter (the location conv and its dense layer are both linear, so one
filter bank whose weight is their product) are computed once per call (see attention.py). Each
LSTM does one matmul per step over [recurrent inputs ; h] for all four gates. The weight gradient
of that matmul is not accumulated step by step (hundreds of rank-B updates of a 10 M-entry matrix,
bound by memory traffic); each step records its (input, output gradient) and a few GEMMs over all
steps form the gradient (`_RecurrentMatmul`; about 15% of a tacotron2 training step on CPU). On
the CPU the per-step matmuls (forward, their backward, and at inference also the prenet's gates and
the projection) read weights packed once per pass into oneDNN's blocked layout (`PackedMatmul`),
about 3x faster at 16 rows than the default GEMM. Step
outputs are collected in lists and stacked once. Dropout keeps a bool mask for the backward pass,
and the "V+T" text summary projects the embedding table instead of every embedded token
(`summarise_text`). The model runs under `torch.autocast` (bf16 on CPU roughly halves a step on
CPUs with bf16 units); recurrent weights are then cast once per pass, not per step.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .attention import (DynamicConvolutionAttention, ForwardAttention,
                        LocationSensitiveAttention)
from .errors import ConfigError, DataError, ReferenceInputError, TextError
from .masked_norm import MaskedBatchNorm1d
from .recurrent import AttentionContext, FusedLSTMCell, PackedMatmul, _RecurrentMatmul
from .reference import CAPACITRON_CHANNELS, Posterior, VariationalReferenceEncoder, condition_on_z
from .text import SYMBOLS

AttentionKind = Literal["location", "forward", "dca"]
PosteriorVariant = Literal["V", "V+T", "V+T+S"]


@dataclass
class TacotronConfig:
    """Every size of a ProsodyTacotron; saved in each checkpoint. Defaults: the `tacotron2` preset."""

    n_symbols: int = len(SYMBOLS)
    n_mels: int = 80
    pad_value: float = math.log(1e-5)  # audio.AudioConfig.pad_value: the log-mel of silence
    reduction_factor: int = 2
    # text encoder
    embedding_dim: int = 512
    encoder_conv_channels: int = 512
    encoder_conv_layers: int = 3
    encoder_kernel_size: int = 5
    encoder_lstm_dim: int = 512  # both directions together
    encoder_dropout: float = 0.5
    # decoder
    prenet_dims: tuple[int, ...] = (256, 256)
    prenet_dropout: float = 0.5
    prenet_dropout_at_inference: bool = True  # Tacotron 2; False makes eval mode deterministic
    attention_kind: AttentionKind = "location"
    attention_rnn_dim: int = 1024
    attention_dim: int = 128
    location_filters: int = 32  # "location" and "forward"
    location_kernel_size: int = 31
    dca_static_filters: int = 8  # "dca" (Battenberg et al. 2020)
    dca_static_kernel_size: int = 21
    dca_dynamic_filters: int = 8
    dca_dynamic_kernel_size: int = 21
    dca_filter_mlp_dim: int = 128
    dca_prior_length: int = 11
    dca_prior_alpha: float = 0.1
    dca_prior_beta: float = 0.9
    decoder_rnn_dim: int = 1024
    attention_rnn_dropout: float = 0.1
    decoder_rnn_dropout: float = 0.1
    max_decoder_steps: int = 1000
    stop_threshold: float = 0.5
    # postnet
    postnet_channels: int = 512
    postnet_layers: int = 5
    postnet_kernel_size: int = 5
    postnet_dropout: float = 0.5
    # speakers (0 = single speaker)
    n_speakers: int = 0
    speaker_dim: int = 0
    # variational reference encoder
    latent_dim: int = 128
    ref_conv_channels: tuple[int, ...] = CAPACITRON_CHANNELS
    ref_gru_dim: int = 128
    ref_mlp_dim: int = 128
    posterior: PosteriorVariant = "V"  # "V+T": also a text summary; "V+T+S": also the speaker
    text_summary_dim: int = 128  # LSTM over the text embeddings, used by "V+T" and "V+T+S"
    text_dropout: float = 0.0

    def __post_init__(self) -> None:
        self.prenet_dims, self.ref_conv_channels = tuple(self.prenet_dims), tuple(self.ref_conv_channels)
        positive = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
                    if f.type == "int" and f.name not in ("n_speakers", "speaker_dim")]
        positive += [("prenet_dims", min(self.prenet_dims, default=0)),
                     ("ref_conv_channels", min(self.ref_conv_channels, default=0))]
        for name, value in positive:
            _require(isinstance(value, int) and value >= 1, f"TacotronConfig.{name} must be >= 1, got {value}")
        for name in ("encoder_dropout", "prenet_dropout", "attention_rnn_dropout", "decoder_rnn_dropout",
                     "postnet_dropout", "text_dropout"):
            value = getattr(self, name)
            _require(0.0 <= value < 1.0, f"TacotronConfig.{name} must be in [0, 1), got {value}")
        for name in ("encoder_kernel_size", "location_kernel_size", "dca_static_kernel_size",
                     "dca_dynamic_kernel_size", "postnet_kernel_size"):
            value = getattr(self, name)
            _require(value % 2 == 1, f"TacotronConfig.{name} must be odd (same padding), got {value}")
        for name, allowed in (("attention_kind", ("location", "forward", "dca")), ("posterior", ("V", "V+T", "V+T+S"))):
            value = getattr(self, name)
            _require(value in allowed, f"TacotronConfig.{name} must be one of {allowed}, got {value!r}")
        _require(self.encoder_lstm_dim % 2 == 0,
                 f"TacotronConfig.encoder_lstm_dim must be even (two directions), got {self.encoder_lstm_dim}")
        _require(0.0 < self.stop_threshold < 1.0,
                 f"TacotronConfig.stop_threshold must be in (0, 1), got {self.stop_threshold}")
        _require(self.n_speakers >= 0 and self.speaker_dim >= 0 and (self.n_speakers > 0) == (self.speaker_dim > 0),
                 f"TacotronConfig.n_speakers and speaker_dim must both be 0 or both >= 1, "
                 f"got {self.n_speakers}, {self.speaker_dim}")
        _require(self.posterior != "V+T+S" or self.n_speakers > 0,
                 "TacotronConfig.posterior 'V+T+S' needs n_speakers >= 1")
        _require(self.text_dropout == 0.0 or self.posterior != "V",
                 "TacotronConfig.text_dropout needs a text summary (posterior 'V+T' or 'V+T+S')")

    @classmethod
    def preset(cls, name: str, **overrides) -> "TacotronConfig":
        """"tacotron2" (published sizes), "small" or "tiny" (CPU), with any field overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> "TacotronConfig":
        """Inverse of `to_dict`; an unknown key is a ConfigError (a typo must not pass silently)."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown TacotronConfig field(s): {sorted(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    "tacotron2": {},
    "small": dict(embedding_dim=256, encoder_conv_channels=256, encoder_lstm_dim=256, prenet_dims=(128, 128),
                  attention_rnn_dim=512, decoder_rnn_dim=512, postnet_channels=256, latent_dim=32,
                  text_summary_dim=64),
    # the DESIGN.md prototype: ~2.3 M parameters, fast enough to train on a 2-core CPU
    "tiny": dict(embedding_dim=128, encoder_conv_channels=128, encoder_lstm_dim=256, prenet_dims=(128, 128),
                 attention_rnn_dim=256, decoder_rnn_dim=256, attention_dim=64, location_filters=16,
                 dca_filter_mlp_dim=64, postnet_channels=128, reduction_factor=4, latent_dim=16,
                 ref_conv_channels=(16, 16, 32, 32, 64, 64), ref_gru_dim=64, ref_mlp_dim=64,
                 text_summary_dim=64),
}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) lengths -> (B, size) bool, True on valid positions."""
    return torch.arange(size, device=lengths.device) < lengths[:, None]


def decoder_steps(mel_lengths: torch.Tensor, r: int) -> torch.Tensor:
    """Valid decoder steps per item, ceil(mel_lengths / r): the last one holds the last valid frame."""
    return torch.div(mel_lengths + r - 1, r, rounding_mode="floor")


@dataclass
class TacotronOutput:
    """Teacher-forced outputs. T = frames (a multiple of r), T_r = T // r decoder steps, L = tokens."""

    mel_decoder: torch.Tensor  # (B, T, n_mels), pad_value beyond each length
    mel_postnet: torch.Tensor  # (B, T, n_mels), pad_value beyond each length
    stop_logits: torch.Tensor  # (B, T_r)
    alignments: torch.Tensor  # (B, T_r, L), valid rows sum to 1, rows past each item's steps are 0
    posterior: Posterior


@dataclass
class InferenceOutput:
    """Free-running outputs; S = decoder steps run (the longest item's, or max_decoder_steps)."""

    mel_postnet: torch.Tensor  # (B, S * r, n_mels), pad_value beyond each item's mel_lengths
    mel_lengths: torch.Tensor  # (B,) = stop_steps * r
    alignments: torch.Tensor  # (B, S, L), zero beyond each item's stop_steps
    stop_steps: torch.Tensor  # (B,) decoder steps each item ran, its stop step included
    hit_max_steps: torch.Tensor  # (B,) bool: no stop token within max_decoder_steps


# ------------------------------------------------------------------------------------ building blocks
Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def dropout(x: torch.Tensor, p: float, active: bool, generator: Generators = None) -> torch.Tensor:
    """Inverted dropout. A uniform draw compared with p is ~2.5x faster than F.dropout's Bernoulli
    sampler on CPU; noise is drawn on the generator's device, so a CPU generator reproduces a GPU run.
    `generator` may be one generator per batch item (x's first dim): each item's noise then depends
    on its own generator alone, so an item synthesised in a batch equals the item synthesised alone."""
    if not active or p == 0.0:
        return x
    if isinstance(generator, (list, tuple)):
        noise = torch.stack([torch.rand(x.shape[1:], generator=g, device=g.device) for g in generator])
    else:
        device = generator.device if generator is not None else x.device
        noise = torch.rand(x.shape, generator=generator, device=device)
    # a bool mask and `where`: autograd keeps 1 byte per element for the backward, not a float mask
    return torch.where((noise >= p).to(x.device), x * (1.0 / (1.0 - p)), 0.0)


class Prenet(nn.Module):
    """Linear + ReLU + dropout layers; dropout also in eval mode when `dropout_at_inference`."""

    def __init__(self, in_dim: int, dims: tuple[int, ...], dropout: float, dropout_at_inference: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip((in_dim, *dims), dims))
        self.dropout, self.dropout_at_inference = dropout, dropout_at_inference

    def forward(self, x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        active = self.training or self.dropout_at_inference
        for layer in self.layers:
            x = dropout(F.relu(layer(x)), self.dropout, active, generator)
        return x


class TextEncoder(nn.Module):
    """Embedded text (B, L, E) -> memory (B, L, encoder_lstm_dim), zero at padding."""

    def __init__(self, config: TacotronConfig) -> None:
        super().__init__()
        channels = (config.embedding_dim, *[config.encoder_conv_channels] * config.encoder_conv_layers)
        self.convs = nn.ModuleList(nn.Conv1d(c_in, c_out, config.encoder_kernel_size,
                                             padding=config.encoder_kernel_size // 2, bias=False)
                                   for c_in, c_out in zip(channels, channels[1:]))
        self.norms = nn.ModuleList(MaskedBatchNorm1d(c) for c in channels[1:])
        self.lstm = nn.LSTM(channels[-1], config.encoder_lstm_dim // 2, batch_first=True, bidirectional=True)
        self.dropout = config.encoder_dropout

    def forward(self, embedded: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.where(mask[:, None], rearrange(embedded, "b l e -> b e l"), 0.0)
        for conv, norm in zip(self.convs, self.norms):
            x = dropout(F.relu(norm(conv(x), mask)), self.dropout, self.training)  # zero at padding
        packed = pack_padded_sequence(rearrange(x, "b c l -> b l c"), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        memory, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.shape[2])
        return memory


class Postnet(nn.Module):
    """Conv stack predicting a residual for the decoder's mel: (B, T, n_mels) -> (B, T, n_mels)."""

    def __init__(self, config: TacotronConfig) -> None:
        super().__init__()
        channels = (config.n_mels, *[config.postnet_channels] * (config.postnet_layers - 1), config.n_mels)
        self.convs = nn.ModuleList(nn.Conv1d(c_in, c_out, config.postnet_kernel_size,
                                             padding=config.postnet_kernel_size // 2, bias=False)
                                   for c_in, c_out in zip(channels, channels[1:]))
        self.norms = nn.ModuleList(MaskedBatchNorm1d(c) for c in channels[1:])
        self.dropout = config.postnet_dropout

    def forward(self, mel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # where, not multiply: frames past a length may be non-finite, and 0 * nan is nan
        x = torch.where(mask[:, None], rearrange(mel, "b t f -> b f t"), 0.0)
        last = len(self.convs) - 1  # the last layer is linear
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = norm.normalise_tanh_dropout(conv(x), mask, self.dropout, tanh=index < last)  # (B, C, T)
        return rearrange(x, "b f t -> b t f")


def build_attention(config: TacotronConfig, memory_dim: int) -> nn.Module:
    if config.attention_kind == "dca":
        return DynamicConvolutionAttention(
            config.attention_rnn_dim, config.attention_dim, config.dca_static_filters,
            config.dca_static_kernel_size, config.dca_dynamic_filters, config.dca_dynamic_kernel_size,
            config.dca_filter_mlp_dim, config.dca_prior_length, config.dca_prior_alpha, config.dca_prior_beta)
    kind = ForwardAttention if config.attention_kind == "forward" else LocationSensitiveAttention
    return kind(config.attention_rnn_dim, memory_dim, config.attention_dim, config.location_filters,
                config.location_kernel_size)


# ------------------------------------------------------------------------------------------- decoder
class _DecoderPass:
    """The recurrent state of one decoding pass over a batch; `step` advances it by r frames."""

    def __init__(self, decoder: "Decoder", memory: torch.Tensor, mask: torch.Tensor) -> None:
        batch, n_tokens, memory_dim = memory.shape
        self.decoder = decoder
        self.attend = decoder.attention.start(memory, mask)
        self.context_of = AttentionContext(memory)
        self.attention_matmul = _RecurrentMatmul(decoder.attention_cell.recurrent_weight, rows=batch)
        self.decoder_matmul = _RecurrentMatmul(decoder.decoder_cell.recurrent_weight, rows=batch)
        zeros = memory.new_zeros
        self.attention_h = self.attention_c = zeros(batch, decoder.attention_rnn_dim)
        self.decoder_h = self.decoder_c = zeros(batch, decoder.decoder_rnn_dim)
        self.context = zeros(batch, memory_dim)
        self.alignment = zeros(batch, n_tokens)
        self.alignment[:, 0] = 1.0  # start on the first token (forward attention and DCA need this)
        self.cumulative = self.alignment

    def end_of_pass(self) -> None:
        self.attention_matmul.end_of_pass()
        self.decoder_matmul.end_of_pass()

    def step(self, attention_gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """attention_gates (B, 4 * attention_rnn_dim): the prenet's share, bias included.
        Returns decoder_h (B, decoder_rnn_dim), context (B, D), alignment (B, L)."""
        d = self.decoder
        gates = attention_gates + self.attention_matmul(torch.cat([self.context, self.attention_h], dim=1))
        attention_h, self.attention_c = FusedLSTMCell.step(gates, self.attention_c)
        self.attention_h = dropout(attention_h, d.attention_rnn_dropout, d.training)
        self.alignment = self.attend(self.attention_h, self.alignment, self.cumulative)
        self.cumulative = self.cumulative + self.alignment
        self.context = self.context_of(self.alignment)  # (B, D)
        gates = d.decoder_cell.bias + self.decoder_matmul(
            torch.cat([self.attention_h, self.context, self.decoder_h], dim=1))
        decoder_h, self.decoder_c = FusedLSTMCell.step(gates, self.decoder_c)
        self.decoder_h = dropout(decoder_h, d.decoder_rnn_dropout, d.training)
        return self.decoder_h, self.context, self.alignment


class StopTracker:
    """Per-item stop bookkeeping of a free-running decoder: an item stops at the first step whose
    stop logit (the last output of the projection) passes the stop probability `threshold`."""

    def __init__(self, batch: int, max_steps: int, threshold: float, device: torch.device):
        self.logit_threshold = math.log(threshold / (1.0 - threshold))
        self.stop_steps = torch.full((batch,), max_steps, dtype=torch.long, device=device)  # (B,)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,)

    def update(self, out: torch.Tensor, step: int) -> bool:
        """Record decoder step `step`'s output (B, r * n_mels + 1); True once every item stopped."""
        stopped = (out[:, -1] > self.logit_threshold) & ~self.done
        self.stop_steps = torch.where(stopped, step + 1, self.stop_steps)
        self.done = self.done | stopped
        return bool(self.done.all())


class Decoder(nn.Module):
    """Autoregressive attention decoder: memory (B, L, D) -> r frames + a stop logit per step."""

    def __init__(self, config: TacotronConfig, memory_dim: int) -> None:
        super().__init__()
        self.n_mels, self.r = config.n_mels, config.reduction_factor
        self.attention_rnn_dim, self.decoder_rnn_dim = config.attention_rnn_dim, config.decoder_rnn_dim
        self.attention_rnn_dropout, self.decoder_rnn_dropout = config.attention_rnn_dropout, config.decoder_rnn_dropout
        self.prenet = Prenet(config.n_mels, config.prenet_dims, config.prenet_dropout,
                             config.prenet_dropout_at_inference)
        self.attention_cell = FusedLSTMCell(config.prenet_dims[-1], memory_dim, config.attention_rnn_dim)
        self.attention = build_attention(config, memory_dim)
        self.decoder_cell = FusedLSTMCell(0, config.attention_rnn_dim + memory_dim, config.decoder_rnn_dim)
        # one matmul for the r frames and the stop logit (the last output)
        self.projection = nn.Linear(config.decoder_rnn_dim + memory_dim, self.r * self.n_mels + 1)

    def forward(self, memory: torch.Tensor, mask: torch.Tensor,
                mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher forcing on mel (B, T, n_mels), T = T_r * r. Step t reads the last frame of group
        t - 1 (zeros for t = 0). Returns frames (B, T, n_mels), stop logits (B, T_r), alignments (B, T_r, L)."""
        previous = mel[:, self.r - 1 :: self.r]  # (B, T_r, n_mels)
        inputs = F.pad(previous[:, :-1], (0, 0, 1, 0))  # go frame first
        attention_gates = self.attention_cell.static_gates(self.prenet(inputs))  # (B, T_r, 4H)
        decoding = _DecoderPass(self, memory, mask)
        steps = [decoding.step(gates) for gates in attention_gates.unbind(dim=1)]
        decoding.end_of_pass()
        hidden, contexts, alignments = (torch.stack(outputs, dim=1) for outputs in zip(*steps))
        frames, stop_logits = self._project(torch.cat([hidden, contexts], dim=2))
        return frames, stop_logits, alignments

    def _project(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, H + D) -> frames (B, S * r, n_mels), stop logits (B, S)."""
        out = self.projection(features)
        return rearrange(out[..., :-1], "b s (r f) -> b (s r) f", r=self.r), out[..., -1]

    @torch.no_grad()
    def infer(self, memory: torch.Tensor, mask: torch.Tensor, max_steps: int, stop_threshold: float,
              generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Free-running decoding until every item has emitted a stop or max_steps ran.
        Returns frames (B, S * r, n_mels), alignments (B, S, L), stop_steps (B,), hit_max_steps (B,)."""
        batch = memory.shape[0]
        decoding = _DecoderPass(self, memory, mask)
        # per step, as the recurrent matmuls: packed weights (see recurrent.PackedMatmul)
        prenet_gates = PackedMatmul(self.attention_cell.static_weight, batch, self.attention_cell.bias)
        project = PackedMatmul(self.projection.weight, batch, self.projection.bias)
        frame = memory.new_zeros(batch, self.n_mels)  # go frame
        stops = StopTracker(batch, max_steps, stop_threshold, memory.device)
        all_features, all_alignments = [], []
        for step in range(max_steps):
            decoder_h, context, alignment = decoding.step(prenet_gates(self.prenet(frame, generator)))
            features = torch.cat([decoder_h, context], dim=1)
            out = project(features)
            all_features.append(features)
            all_alignments.append(alignment)
            frame = out[:, -1 - self.n_mels : -1]  # the last of the r frames feeds the next step
            if stops.update(out, step):
                break
        # re-projecting all steps at once is cheaper than keeping r frames of every step apart
        frames, _ = self._project(torch.stack(all_features, dim=1))
        return frames, torch.stack(all_alignments, dim=1), stops.stop_steps, ~stops.done


def summarise_text(lstm: nn.LSTM, embedding: nn.Embedding, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """State of a one-layer, one-way, batch-first `lstm` reading `embedding(text)`, at each item's
    last valid token (B,) (the LSTM is causal, so padding never reaches it): (B, L) -> (B, H).

    Same result as `lstm(embedding(text))[0]` gathered there, for less work: the LSTM first projects
    its inputs, and a projection of embedded symbols is a projection of the embedding table, indexed.
    So the table (n_symbols rows, not B * L) is projected once and the fused LSTM kernel reads one-hot
    symbols with the projected table as its input weight; the backward pass then never forms the
    gradient of B * L embedded vectors. At 512-d embeddings that is ~3x less work on CPU.
    """
    weight = embedding.weight
    if embedding.padding_idx is not None:  # as in nn.Embedding, the padding row gets no gradient
        is_padding = torch.arange(weight.shape[0], device=weight.device)[:, None] == embedding.padding_idx
        weight = torch.where(is_padding, weight.detach(), weight)
    table = weight @ lstm.weight_ih_l0.T  # (n_symbols, 4H)
    one_hot = F.one_hot(text, embedding.num_embeddings).to(table.dtype)  # (B, L, n_symbols)
    zeros = one_hot.new_zeros(1, text.shape[0], lstm.hidden_size)
    weights = [table.T, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
    states, _, _ = torch.lstm(one_hot, (zeros, zeros), weights, True, 1, 0.0, lstm.training, False, True)
    return states[torch.arange(states.shape[0], device=states.device), lengths - 1]  # (B, H)


# --------------------------------------------------------------------------------------------- model
class ProsodyTacotron(nn.Module):
    """Tacotron 2 + variational reference encoder (+ optional speaker embedding)."""

    def __init__(self, config: TacotronConfig) -> None:
        super().__init__()
        self.config = config
        uses_text = config.posterior in ("V+T", "V+T+S")
        uses_speaker = config.posterior == "V+T+S"
        self.embedding = nn.Embedding(config.n_symbols, config.embedding_dim, padding_idx=0)
        self.encoder = TextEncoder(config)
        self.text_summary = (nn.LSTM(config.embedding_dim, config.text_summary_dim, batch_first=True)
                             if uses_text else None)
        self.speaker_embedding = (nn.Embedding(config.n_speakers, config.speaker_dim)
                                  if config.n_speakers else None)
        self.reference_encoder = VariationalReferenceEncoder(
            n_mels=config.n_mels, latent_dim=config.latent_dim,
            text_summary_dim=config.text_summary_dim if uses_text else 0,
            speaker_dim=config.speaker_dim if uses_speaker else 0, conv_channels=config.ref_conv_channels,
            gru_dim=config.ref_gru_dim, mlp_dim=config.ref_mlp_dim, text_dropout=config.text_dropout)
        memory_dim = config.encoder_lstm_dim + config.latent_dim + config.speaker_dim
        self.decoder = Decoder(config, memory_dim)
        self.postnet = Postnet(config)

    def forward(self, text: torch.Tensor, text_lengths: torch.Tensor, mel: torch.Tensor,
                mel_lengths: torch.Tensor, speaker_ids: Optional[torch.Tensor] = None,
                reference_mel: Optional[torch.Tensor] = None, reference_lengths: Optional[torch.Tensor] = None,
                mode: Literal["sample", "mean"] = "sample",
                generator: Optional[torch.Generator] = None) -> TacotronOutput:
        """Teacher-forced pass. text (B, L), mel (B, T, n_mels) with T a multiple of r
        (`data.collate_batch(frames_multiple=r)`), lengths (B,). The reference defaults to mel;
        a given reference is taken to speak `text` (its text summary is that of `text`).
        mode and generator choose how z is drawn from the posterior."""
        text_lengths = self._check_text(text, text_lengths)
        mel_lengths = _check_mel(mel, mel_lengths, text.shape[0], self.config.n_mels)
        if mel.shape[1] % self.config.reduction_factor:
            raise DataError(f"mel has {mel.shape[1]} frames, not a multiple of reduction_factor "
                            f"{self.config.reduction_factor}; collate with frames_multiple=r")
        if (reference_mel is None) != (reference_lengths is None):
            raise ReferenceInputError("give reference_mel and reference_lengths together, or neither")
        speaker = self._speaker(speaker_ids, text.shape[0])
        embedded = self.embedding(text)  # (B, L, E)
        if reference_mel is None:
            reference_mel, reference_lengths = mel, mel_lengths
        posterior = self.reference_encoder(
            reference_mel, reference_lengths, self._summarise_text(text, text_lengths),
            speaker if self.config.posterior == "V+T+S" else None, mode=mode, generator=generator)
        text_mask = length_mask(text_lengths, text.shape[1])
        memory = self._memory(embedded, text_lengths, text_mask, posterior.z, speaker)
        frames, stop_logits, alignments = self.decoder(memory, text_mask, mel)
        mel_decoder, mel_postnet = self._finish(frames, length_mask(mel_lengths, mel.shape[1]))
        n_steps = decoder_steps(mel_lengths, self.config.reduction_factor)
        return TacotronOutput(mel_decoder, mel_postnet, stop_logits, _zero_beyond(alignments, n_steps), posterior)

    def infer(self, text: torch.Tensor, text_lengths: torch.Tensor, z: Optional[torch.Tensor] = None,
              speaker_ids: Optional[torch.Tensor] = None, max_decoder_steps: Optional[int] = None,
              generator: Generators = None) -> InferenceOutput:
        """Free-running synthesis; call `eval()` first. z (B, latent_dim); None means z = 0, the
        prior mean. Each item stops on its own; items that reach max_decoder_steps are flagged in
        `hit_max_steps` and reported with a warning."""
        text_lengths = self._check_text(text, text_lengths)
        batch = text.shape[0]
        max_steps = check_synthesis_args(self.config, batch, z, max_decoder_steps)
        if z is None:
            z = self.embedding.weight.new_zeros(batch, self.config.latent_dim)
        speaker = self._speaker(speaker_ids, batch)
        text_mask = length_mask(text_lengths, text.shape[1])
        with torch.no_grad():
            memory = self._memory(self.embedding(text), text_lengths, text_mask, z, speaker)
            frames, alignments, stop_steps, hit_max = self.decoder.infer(
                memory, text_mask, max_steps, self.config.stop_threshold, generator)
            mel_lengths = stop_steps * self.config.reduction_factor
            _, mel_postnet = self._finish(frames, length_mask(mel_lengths, frames.shape[1]))
        if hit_max.any():
            warnings.warn(f"{int(hit_max.sum())} of {batch} items reached max_decoder_steps={max_steps} "
                          f"without a stop token; their mel is cut at {max_steps * self.config.reduction_factor} "
                          "frames (see InferenceOutput.hit_max_steps)", RuntimeWarning, stacklevel=2)
        return InferenceOutput(mel_postnet, mel_lengths, _zero_beyond(alignments, stop_steps), stop_steps, hit_max)

    def encode_reference(self, mel: torch.Tensor, mel_lengths: torch.Tensor, text: Optional[torch.Tensor] = None,
                         text_lengths: Optional[torch.Tensor] = None, speaker_ids: Optional[torch.Tensor] = None,
                         mode: Literal["sample", "mean"] = "mean", temperature: float = 1.0,
                         generator: Optional[torch.Generator] = None) -> Posterior:
        """Posterior of a reference mel (B, T, n_mels). `text` is the reference's own transcript: a
        "V+T" model summarises it, or uses its learned missing-transcript vector when it is None;
        a "V" model does not read it. "V+T+S" needs speaker_ids."""
        summary = None
        if text is not None and self.text_summary is not None:
            text_lengths = self._check_text(text, text_lengths)
            summary = self._summarise_text(text, text_lengths)
        speaker = self._speaker(speaker_ids, mel.shape[0]) if self.config.posterior == "V+T+S" else None
        return self.reference_encoder(mel, mel_lengths, summary, speaker, mode=mode,
                                      temperature=temperature, generator=generator)

    # -------------------------------------------------------------------------------- internals
    def _memory(self, embedded: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor, z: torch.Tensor,
                speaker: Optional[torch.Tensor]) -> torch.Tensor:
        memory = condition_on_z(self.encoder(embedded, lengths, mask), z)  # (B, L, E + Z)
        return memory if speaker is None else condition_on_z(memory, speaker)  # (B, L, E + Z + S)

    def _summarise_text(self, text: torch.Tensor, lengths: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, L) ids -> (B, text_summary_dim), or None for a "V" model (see `summarise_text`)."""
        if self.text_summary is None:
            return None
        return summarise_text(self.text_summary, self.embedding, text, lengths)

    def _finish(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the postnet residual; frames beyond each length become pad_value. Both (B, T, n_mels)."""
        mel_postnet = frames + self.postnet(frames, frame_mask)
        valid = frame_mask[:, :, None]
        pad = self.config.pad_value
        return frames.where(valid, pad), mel_postnet.where(valid, pad)

    def _speaker(self, speaker_ids: Optional[torch.Tensor], batch: int) -> Optional[torch.Tensor]:
        check_speaker_ids(speaker_ids, batch, self.config.n_speakers)
        return None if self.speaker_embedding is None else self.speaker_embedding(speaker_ids)

    def _check_text(self, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return check_text(text, lengths, self.config.n_symbols)


def check_text(text: torch.Tensor, lengths: torch.Tensor, n_symbols: int) -> torch.Tensor:
    """Raise TextError for unusable ids (B, L) or lengths (B,); return the lengths as long."""
    if not isinstance(text, torch.Tensor) or text.dim() != 2 or text.is_floating_point() or text.shape[0] == 0:
        raise TextError(f"text must be integer ids of shape (B, L), got "
                        f"{tuple(text.shape) if isinstance(text, torch.Tensor) else type(text).__name__}")
    lengths = _check_lengths(lengths, text.shape[0], text.shape[1], "text_lengths", TextError)
    valid = length_mask(lengths, text.shape[1])
    if ((text < 0) | (text >= n_symbols))[valid].any():
        raise TextError(f"text holds symbol ids outside [0, n_symbols={n_symbols})")
    return lengths


def check_speaker_ids(speaker_ids: Optional[torch.Tensor], batch: int, n_speakers: int) -> None:
    """Raise DataError unless speaker_ids is None for a single-speaker model, else (B,) ids in range."""
    if n_speakers == 0:
        if speaker_ids is not None:
            raise DataError("speaker_ids were given, but this model has n_speakers=0")
        return
    if (not isinstance(speaker_ids, torch.Tensor) or speaker_ids.shape != (batch,)
            or speaker_ids.is_floating_point()):
        raise DataError(f"this model has n_speakers={n_speakers}: speaker_ids must be an integer tensor "
                        f"of shape ({batch},)")
    if ((speaker_ids < 0) | (speaker_ids >= n_speakers)).any():
        raise DataError(f"speaker_ids must lie in [0, {n_speakers}), got {speaker_ids.tolist()}")


def check_synthesis_args(config: TacotronConfig, batch: int, z: Optional[torch.Tensor],
                         max_decoder_steps: Optional[int]) -> int:
    """Raise for a z that is not (B, latent_dim) or None, or a bad max_decoder_steps; return the
    step limit (the config's when None). Shared by `ProsodyTacotron.infer` and the exported synthesiser."""
    if z is not None and (not isinstance(z, torch.Tensor) or z.shape != (batch, config.latent_dim)):
        raise ReferenceInputError(f"z must be a tensor of shape ({batch}, {config.latent_dim}), got "
                                  f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    max_steps = config.max_decoder_steps if max_decoder_steps is None else max_decoder_steps
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ConfigError(f"max_decoder_steps must be a positive int, got {max_steps!r}")
    return max_steps


def _zero_beyond(alignments: torch.Tensor, n_steps: torch.Tensor) -> torch.Tensor:
    """Alignments (B, S, L) with the rows past each item's n_steps (B,) set to zero."""
    return alignments.where(length_mask(n_steps, alignments.shape[1])[:, :, None], 0.0)


def _check_lengths(lengths: torch.Tensor, batch: int, size: int, name: str, error: type[Exception]) -> torch.Tensor:
    if (not isinstance(lengths, torch.Tensor) or lengths.shape != (batch,) or lengths.is_floating_point()):
        raise error(f"{name} must be an integer tensor of shape ({batch},)")
    if ((lengths < 1) | (lengths > size)).any():
        raise error(f"{name} must lie in [1, {size}], got {lengths.tolist()}")
    return lengths


def _check_mel(mel: torch.Tensor, lengths: torch.Tensor, batch: int, n_mels: int) -> torch.Tensor:
    if not isinstance(mel, torch.Tensor) or mel.dim() != 3 or mel.shape[0] != batch or mel.shape[2] != n_mels:
        raise DataError(f"mel must be (B={batch}, T, n_mels={n_mels}), got "
                        f"{tuple(mel.shape) if isinstance(mel, torch.Tensor) else type(mel).__name__}")
    return _check_lengths(lengths, batch, mel.shape[1], "mel_lengths", DataError)
