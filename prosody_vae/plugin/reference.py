"""Variational reference encoder: a reference mel -> a diagonal Gaussian posterior over prosody z.

With capacity.py, this is the plugin part of prosody_vae: a user copies it into their own TTS
model with the files it imports (masked_norm.py, speedups.py, errors.py), which need only torch
and einops. Capacitron's recipe:

    mel (B, T, n_mels) -> 6 x [Conv2d 3x3 stride 2, BatchNorm, ReLU] -> GRU -> summary (B, gru_dim)
    [summary ; text summary ; speaker] -> MLP -> mean, std (B, latent_dim) -> z = mean + std * eps

Variants: "V" (mel only), "V+T" (text_summary_dim > 0), "V+S" (speaker_dim > 0), "V+T+S" (both).

Padding never leaks: frames beyond an item's length are zeroed before every conv (each layer's
valid length follows from the conv arithmetic), BatchNorm's training statistics skip them, and the
summary is the GRU state at the item's true last frame. So garbage (even NaN) beyond `lengths`
leaves the posterior unchanged. Each layer's BatchNorm is masked_norm.py's; the speed-ups
(speedups.py) fuse it with the ReLU in training and fold the first layer's into its conv.

Short references: every length >= 1 frame works (`min_frames = 1`). A 3x3 stride-2 conv with
padding 1 maps L valid frames to ceil(L / 2) >= 1, so the stack never runs out of frames and no
internal padding or error is needed; a 1-frame reference simply carries little information.

Missing transcript on a V+T model: `text_summary=None` substitutes a learned "no transcript"
vector, and `text_dropout=p` swaps each item's text summary for that vector with probability p
during training, so the model learns to encode a reference whose transcript is unknown.

Export: `MeanEncoder(encoder)` is a tensor-in, tensor-out module for `torch.export` that returns
the posterior (mean, std) without the input checks, which are data-dependent Python branches.
Export with a fixed frame count and a dynamic batch (the GRU is unrolled over time); padding
shorter references up to that count gives the same posterior, since padding never leaks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from .errors import ConfigError, ReferenceInputError
from .masked_norm import MaskedBatchNorm2d, at_least_float32, conv_batchnorm_relu, length_mask
from .speedups import pinned

CAPACITRON_CHANNELS = (32, 32, 64, 64, 128, 128)


class VariationalReferenceEncoder(nn.Module):
    """Reference mel (+ text summary, + speaker) -> `Posterior` over a prosody latent z."""

    def __init__(self, n_mels: int = 80, latent_dim: int = 128, text_summary_dim: int = 0,
                 speaker_dim: int = 0, conv_channels: tuple[int, ...] = CAPACITRON_CHANNELS,
                 gru_dim: int = 128, mlp_dim: int = 128, text_dropout: float = 0.0,
                 std_floor: float = 1e-4) -> None:
        super().__init__()
        if latent_dim < 1 or mlp_dim < 1 or text_summary_dim < 0 or speaker_dim < 0:
            raise ConfigError(f"need latent_dim, mlp_dim >= 1 and text_summary_dim, speaker_dim >= 0, got "
                              f"{latent_dim=}, {mlp_dim=}, {text_summary_dim=}, {speaker_dim=}")
        if not 0.0 <= text_dropout <= 1.0 or (text_dropout > 0 and text_summary_dim == 0):
            raise ConfigError(f"text_dropout must be in [0, 1] and needs text_summary_dim > 0, got "
                              f"{text_dropout=}, {text_summary_dim=}")
        if not std_floor > 0:
            raise ConfigError(f"std_floor must be > 0, got {std_floor}")
        self.reference = ReferenceEncoder(n_mels, conv_channels, gru_dim)
        self.n_mels, self.latent_dim = n_mels, latent_dim
        self.text_summary_dim, self.speaker_dim = text_summary_dim, speaker_dim
        self.text_dropout, self.std_floor = text_dropout, std_floor
        # learned stand-in for an unknown transcript; random init keeps it distinct from a zero summary
        self.no_text = nn.Parameter(0.1 * torch.randn(text_summary_dim)) if text_summary_dim else None
        self.head = nn.Sequential(nn.Linear(gru_dim + text_summary_dim + speaker_dim, mlp_dim), nn.Tanh(),
                                  nn.Linear(mlp_dim, 2 * latent_dim))

    @pinned
    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor,
                text_summary: Optional[torch.Tensor] = None, speaker: Optional[torch.Tensor] = None,
                mode: Literal["mean", "sample"] = "sample", temperature: float = 1.0,
                generator: Optional[torch.Generator] = None) -> Posterior:
        """mel (B, T, n_mels), mel_lengths (B,), text_summary (B, text_summary_dim) or None (a V+T
        model then uses its learned no-transcript vector), speaker (B, speaker_dim), required iff
        speaker_dim > 0. mode "mean": z = mean; "sample": z = mean + temperature * std * eps.
        """
        if mode not in ("mean", "sample"):
            raise ReferenceInputError(f"mode must be 'mean' or 'sample', got {mode!r}")
        _check_temperature(temperature)
        lengths = _check_mel(mel, mel_lengths, self.n_mels)
        self._check_condition("text_summary", text_summary, self.text_summary_dim, mel, optional=True)
        self._check_condition("speaker", speaker, self.speaker_dim, mel, optional=False)
        mean, std = self.posterior_params(mel, lengths, text_summary, speaker)
        if mode == "mean":
            z = mean
        else:
            # draw on the generator's device so a CPU generator reproduces the same z for a GPU model
            noise_device = generator.device if generator is not None else mean.device
            eps = torch.randn(mean.shape, generator=generator, device=noise_device, dtype=mean.dtype)
            z = mean + temperature * std * eps.to(mean.device)
        kl_per_dim = 0.5 * (mean.square() + std.square() - 1.0) - torch.log(std)  # closed form vs N(0, I)
        return Posterior(z=z, mean=mean, std=std, kl=kl_per_dim.sum(dim=1), kl_per_dim=kl_per_dim)

    @pinned
    def posterior_params(self, mel: torch.Tensor, mel_lengths: torch.Tensor,
                         text_summary: Optional[torch.Tensor] = None,
                         speaker: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std), each (B, latent_dim), without input checks (traceable); lengths long on mel's device."""
        features = [self.reference.summarise(mel, mel_lengths)]  # (B, gru_dim)
        if self.no_text is not None:
            no_text = repeat(self.no_text, "d -> b d", b=mel.shape[0])
            if text_summary is None:
                text_summary = no_text
            elif self.training and self.text_dropout > 0:
                dropped = torch.rand(mel.shape[0], 1, device=mel.device) < self.text_dropout  # (B, 1)
                text_summary = torch.where(dropped, no_text, text_summary)
            features.append(text_summary)
        if speaker is not None:
            features.append(speaker)
        # the posterior and its KL stay float32 under autocast: KL in nats needs the precision
        mean, std_raw = at_least_float32(self.head(torch.cat(features, dim=1))).chunk(2, dim=1)
        return mean, F.softplus(std_raw) + self.std_floor

    def sample_prior(self, n: int, temperature: float = 1.0,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(n, latent_dim) draws of temperature * N(0, I) on the module's device and dtype."""
        if not isinstance(n, int) or n < 1:
            raise ReferenceInputError(f"n must be a positive int, got {n!r}")
        _check_temperature(temperature)
        weight = self.head[-1].weight
        noise_device = generator.device if generator is not None else weight.device
        eps = torch.randn(n, self.latent_dim, generator=generator, device=noise_device, dtype=weight.dtype)
        return temperature * eps.to(weight.device)

    @staticmethod
    def _check_condition(name: str, value: Optional[torch.Tensor], dim: int, mel: torch.Tensor,
                         optional: bool) -> None:
        if value is None:
            if dim > 0 and not optional:
                raise ReferenceInputError(f"{name} is required: this encoder was built with {name}_dim={dim}")
            return
        if dim == 0:
            raise ReferenceInputError(f"{name} was given, but this encoder was built with {name}_dim=0")
        if not isinstance(value, torch.Tensor) or value.shape != (mel.shape[0], dim) or not value.is_floating_point():
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ReferenceInputError(f"{name} must be a floating tensor of shape ({mel.shape[0]}, {dim}), got {shape}")
        if value.device != mel.device:
            raise ReferenceInputError(f"{name} is on {value.device} but mel is on {mel.device}")


@dataclass
class Posterior:
    """A diagonal Gaussian q(z | reference) and one draw from it. B = batch, Z = latent_dim.

    z: (B, Z) the draw (equals `mean` in mode "mean"). mean, std: (B, Z), std > 0.
    kl: (B,) KL(q || N(0, I)) in nats, summed over latent dims. kl_per_dim: (B, Z), for free bits.
    """

    z: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    kl: torch.Tensor
    kl_per_dim: torch.Tensor


class ReferenceEncoder(nn.Module):
    """Capacitron's reference encoder: mel (B, T, n_mels) + lengths (B,) -> summary (B, gru_dim)."""

    min_frames = 1  # see the module docstring: the conv arithmetic keeps >= 1 frame for any L >= 1

    def __init__(self, n_mels: int = 80, conv_channels: tuple[int, ...] = CAPACITRON_CHANNELS,
                 gru_dim: int = 128) -> None:
        super().__init__()
        if n_mels < 1 or gru_dim < 1 or not conv_channels or min(conv_channels) < 1:
            raise ConfigError(f"ReferenceEncoder needs n_mels, gru_dim and every conv_channels entry "
                              f">= 1, got n_mels={n_mels}, gru_dim={gru_dim}, conv_channels={conv_channels}")
        self.n_mels = n_mels
        in_channels = (1, *conv_channels[:-1])
        # bias=False: BatchNorm's shift makes a conv bias redundant
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
                                   for c_in, c_out in zip(in_channels, conv_channels))
        self.norms = nn.ModuleList(MaskedBatchNorm2d(c) for c in conv_channels)
        n_freq = n_mels
        for _ in conv_channels:
            n_freq = _conv_out_len(n_freq)
        self.gru = nn.GRU(conv_channels[-1] * n_freq, gru_dim, batch_first=True)
        self.out_dim = gru_dim

    @pinned
    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> torch.Tensor:
        return self.summarise(mel, _check_mel(mel, mel_lengths, self.n_mels))

    def summarise(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> torch.Tensor:
        """`forward` without input checks (traceable); lengths must be long on mel's device."""
        frame_mask = rearrange(length_mask(mel_lengths, mel.shape[1]), "b t -> b 1 t 1")
        x = torch.where(frame_mask, rearrange(mel, "b t f -> b 1 t f"), 0.0)  # (B, 1, T, n_mels)
        lengths = mel_lengths
        for conv, norm in zip(self.convs, self.norms):
            lengths = _conv_out_len(lengths)  # valid frames of this layer's output
            frame_mask = rearrange(length_mask(lengths, _conv_out_len(x.shape[2])), "b t -> b 1 t 1")
            # zero at padding after each layer, so the next conv sees exactly the zero padding a lone item sees
            x = conv_batchnorm_relu(conv, norm, x, frame_mask)  # (B, C, T / 2, F / 2), rounded up
        states, _ = self.gru(rearrange(x, "b c t f -> b t (c f)"))  # (B, T', gru_dim)
        # the GRU is causal, so the state at the true last frame has not seen any padding
        return states[torch.arange(states.shape[0], device=states.device), lengths - 1]


class MeanEncoder(nn.Module):
    """Export-friendly view of a VariationalReferenceEncoder: tensors in, (mean, std) out.

    Skips the input checks, so validate inputs before calling the exported program. With
    `batch = torch.export.Dim("batch")`:
    `torch.export.export(MeanEncoder(encoder.eval()), (mel, lengths), dynamic_shapes=({0: batch}, {0: batch}))`.
    """

    def __init__(self, encoder: VariationalReferenceEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor,
                text_summary: Optional[torch.Tensor] = None,
                speaker: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder.posterior_params(mel, mel_lengths, text_summary, speaker)


def condition_on_z(memory: torch.Tensor, z: torch.Tensor,
                   mode: Literal["concat", "add"] = "concat") -> torch.Tensor:
    """Broadcast z (B, Z) over every step of memory (B, L, D).

    "concat" -> (B, L, D + Z); "add" -> (B, L, D) and needs Z == D (ZConditioner projects first).
    """
    if memory.dim() != 3 or z.dim() != 2 or z.shape[0] != memory.shape[0]:
        raise ReferenceInputError(f"need memory (B, L, D) and z (B, Z) with the same B, got "
                                  f"memory {tuple(memory.shape)} and z {tuple(z.shape)}")
    if mode == "concat":
        return torch.cat([memory, repeat(z, "b z -> b l z", l=memory.shape[1])], dim=2)
    if mode == "add":
        if z.shape[1] != memory.shape[2]:
            raise ReferenceInputError(f"mode 'add' needs z's size {z.shape[1]} to equal memory's {memory.shape[2]}")
        return memory + rearrange(z, "b d -> b 1 d")
    raise ConfigError(f"mode must be 'concat' or 'add', got {mode!r}")


class ZConditioner(nn.Module):
    """Condition a host's encoder outputs (B, L, memory_dim) on z (B, latent_dim).

    "concat" appends z to every step (out_dim = memory_dim + latent_dim); "add" adds a learned
    projection of z (out_dim = memory_dim), which leaves the host's attention sizes unchanged.
    """

    def __init__(self, memory_dim: int, latent_dim: int, mode: Literal["concat", "add"] = "concat") -> None:
        super().__init__()
        if mode not in ("concat", "add"):
            raise ConfigError(f"ZConditioner mode must be 'concat' or 'add', got {mode!r}")
        self.mode = mode
        self.project = nn.Linear(latent_dim, memory_dim) if mode == "add" else None
        self.out_dim = memory_dim + latent_dim if mode == "concat" else memory_dim

    def forward(self, memory: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return condition_on_z(memory, self.project(z) if self.project is not None else z, self.mode)


def _conv_out_len(length: torch.Tensor | int) -> torch.Tensor | int:
    """Valid output length of a 3x3 stride-2 padding-1 conv: floor((L + 2 - 3) / 2) + 1."""
    return (length - 1) // 2 + 1


def _check_mel(mel: torch.Tensor, lengths: torch.Tensor, n_mels: int) -> torch.Tensor:
    """Raise ReferenceInputError for an unusable (mel, lengths); return lengths as long on mel's device."""
    if not isinstance(mel, torch.Tensor):
        raise ReferenceInputError(f"mel must be a tensor, got {type(mel).__name__}")
    if mel.dim() != 3 or mel.shape[2] != n_mels:
        raise ReferenceInputError(f"mel must be (B, T, n_mels={n_mels}), got {tuple(mel.shape)}")
    if not mel.is_floating_point():
        raise ReferenceInputError(f"mel must be a floating tensor, got dtype {mel.dtype}")
    batch, n_frames, _ = mel.shape
    if batch == 0 or n_frames == 0:
        raise ReferenceInputError(f"mel must hold at least one item and one frame, got {tuple(mel.shape)}")
    if not isinstance(lengths, torch.Tensor):
        raise ReferenceInputError(f"mel_lengths must be a tensor, got {type(lengths).__name__}")
    if lengths.shape != (batch,) or lengths.is_floating_point() or lengths.is_complex():
        raise ReferenceInputError(f"mel_lengths must be an integer tensor of shape ({batch},), "
                                  f"got {tuple(lengths.shape)} {lengths.dtype}")
    lengths = lengths.to(device=mel.device, dtype=torch.long)
    out_of_range = (lengths < 1) | (lengths > n_frames)
    if out_of_range.any():
        item = int(out_of_range.nonzero()[0])
        raise ReferenceInputError(
            f"mel_lengths[{item}] = {int(lengths[item])} is outside [1, T={n_frames}]")
    # Only valid frames must be finite: padding may hold anything, it is masked away.
    bad_frames = ~torch.isfinite(mel).all(dim=2) & length_mask(lengths, n_frames)  # (B, T)
    if bad_frames.any():
        item, frame = (int(i) for i in bad_frames.nonzero()[0])
        raise ReferenceInputError(f"mel[{item}] has a non-finite value at frame {frame}")
    return lengths


def _check_temperature(temperature: float) -> None:
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ReferenceInputError(f"temperature must be a finite number >= 0, got {temperature!r}")
