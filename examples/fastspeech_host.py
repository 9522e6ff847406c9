"""A second host: a small non-autoregressive, FastSpeech-style model with prosody from the plugin.

The host owns a text encoder (embedding + a self-attention/conv block), a duration predictor, a
length regulator that repeats each symbol's encoding for its frames, and a mel decoder (another
block over frames). It shares no code with the package's Tacotron: from prosody_vae it takes the
plugin (`VariationalReferenceEncoder`, `DualAscent`, `condition_on_z`) and the data helpers.

Where the plugin joins: z from the reference encoder is concatenated to every encoder output and
projected back to the model width, before the duration predictor and the length regulator, so z
can change both how long each symbol lasts (rate) and what the frames hold (pitch, energy).

Durations. The built-in corpus has no alignments, and this example does not train an aligner.
Each utterance's T mel frames are shared out over its L symbols as evenly as whole frames allow:
every symbol gets T // L frames and the first T % L symbols one more. These are not phone
durations; they are a fixed, honest stand-in that keeps the per-utterance speaking rate (T / L),
which is exactly the kind of prosody the latent can carry. With real alignments (Montreal Forced
Aligner, a Tacotron teacher, or monotonic alignment search) only `uniform_durations` changes.

    python examples/fastspeech_host.py --data DIR --steps 300 --capacity 5

DIR is an LJSpeech-format folder; without --data a small built-in espeak-ng corpus is made.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from prosody_vae import (DualAscent, MelCache, TTSDataset, TextProcessor, VariationalReferenceEncoder, collate_batch,
                         condition_on_z, read_metadata)


def uniform_durations(text_lengths: torch.Tensor, mel_lengths: torch.Tensor, n_symbols: int) -> torch.Tensor:
    """(B, L) frames per symbol, summing to each item's frame count; 0 on padding."""
    position = torch.arange(n_symbols)[None]  # (1, L)
    base = (mel_lengths // text_lengths)[:, None]  # (B, 1)
    extra = (position < (mel_lengths % text_lengths)[:, None]).long()
    return torch.where(position < text_lengths[:, None], base + extra, 0)


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    return torch.arange(size, device=lengths.device)[None] < lengths[:, None]  # (B, size)


def sinusoids(length: int, dim: int) -> torch.Tensor:
    """(length, dim) fixed position code, so the blocks know where in the sequence they are."""
    position = torch.arange(length)[:, None].float()
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(0, dim, 2).float() / dim)
    return torch.cat([torch.sin(position * frequencies), torch.cos(position * frequencies)], dim=1)


class FFTBlock(nn.Module):
    """FastSpeech's feed-forward Transformer block: self-attention, then a 1-D conv, each residual."""

    def __init__(self, dim: int, heads: int = 2, kernel_size: int = 5):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.conv = nn.Sequential(nn.Conv1d(dim, 2 * dim, kernel_size, padding=kernel_size // 2), nn.ReLU(),
                                  nn.Conv1d(2 * dim, dim, 1))
        self.norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # x (B, N, dim), mask (B, N)
        x = x + sinusoids(x.shape[1], x.shape[2]).to(x)
        attended, _ = self.attention(x, x, x, key_padding_mask=~mask, need_weights=False)
        x = self.norms[0](x + attended)
        x = self.norms[1](x + rearrange(self.conv(rearrange(x, "b n d -> b d n")), "b d n -> b n d"))
        return x * mask[..., None]  # padding stays 0, so it never leaks into a conv window


class DurationPredictor(nn.Module):
    """Symbol encodings (B, L, dim) -> log(1 + frames) per symbol (B, L)."""

    def __init__(self, dim: int):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(dim, dim, 3, padding=1), nn.Conv1d(dim, dim, 3, padding=1)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])
        self.out = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = norm(F.relu(rearrange(conv(rearrange(x, "b l d -> b d l")), "b d l -> b l d")))
        return self.out(x).squeeze(-1)


def regulate_length(memory: torch.Tensor, durations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat symbol i of memory (B, L, dim) durations[:, i] times: (frames (B, T, dim), lengths (B,))."""
    ends = durations.cumsum(dim=1)  # (B, L): the frame after each symbol's last
    lengths = ends[:, -1]
    frames = torch.arange(int(lengths.max()), device=memory.device).expand(len(memory), -1).contiguous()  # (B, T)
    symbol = torch.searchsorted(ends, frames, right=True).clamp(max=memory.shape[1] - 1)  # (B, T)
    expanded = torch.gather(memory, 1, symbol[..., None].expand(-1, -1, memory.shape[2]))
    return expanded * length_mask(lengths, frames.shape[1])[..., None], lengths


class FastSpeechHost(nn.Module):
    """text (B, L) + z (B, latent_dim) -> (mel (B, T, n_mels), log-duration prediction (B, L))."""

    def __init__(self, n_symbols: int, latent_dim: int, n_mels: int = 80, dim: int = 64):
        super().__init__()
        self.embed = nn.Embedding(n_symbols, dim, padding_idx=0)
        self.encoder = FFTBlock(dim)
        self.join_z = nn.Linear(dim + latent_dim, dim)  # back to the model width after concatenating z
        self.durations = DurationPredictor(dim)
        self.decoder = FFTBlock(dim)
        self.project = nn.Linear(dim, n_mels)

    def encode(self, text: torch.Tensor, text_lengths: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        mask = length_mask(text_lengths, text.shape[1])
        memory = self.encoder(self.embed(text), mask)  # (B, L, dim)
        return self.join_z(condition_on_z(memory, z)) * mask[..., None]  # (B, L, dim): z reaches every symbol

    def decode(self, memory: torch.Tensor, durations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames, lengths = regulate_length(memory, durations)
        return self.project(self.decoder(frames, length_mask(lengths, frames.shape[1]))), lengths

    def forward(self, text: torch.Tensor, text_lengths: torch.Tensor, z: torch.Tensor,
                durations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced: the target durations (B, L) place the frames."""
        memory = self.encode(text, text_lengths, z)
        mel, _ = self.decode(memory, durations)
        return mel, self.durations(memory)

    @torch.no_grad()
    def synthesize(self, text: torch.Tensor, text_lengths: torch.Tensor,
                   z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Free-running: predicted durations (at least one frame per symbol). (mel, mel_lengths)."""
        memory = self.encode(text, text_lengths, z)
        frames = torch.expm1(self.durations(memory)).round().clamp(min=1).long()
        return self.decode(memory, torch.where(length_mask(text_lengths, text.shape[1]), frames, 0))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values (B, N, ...) over the positions where mask (B, N) is True."""
    mask = mask.reshape(*mask.shape, *([1] * (values.dim() - 2)))
    return torch.where(mask, values, 0.0).sum() / (mask.sum() * values[0, 0].numel())


def train_step(host: FastSpeechHost, ref_enc: VariationalReferenceEncoder, controller: DualAscent,
               optimizer: torch.optim.Optimizer, batch) -> dict[str, float]:
    durations = uniform_durations(batch.text_lengths, batch.mel_lengths, batch.text.shape[1])  # (B, L)
    posterior = ref_enc(batch.mel, batch.mel_lengths)  # q(z | target mel)
    mel, log_durations = host(batch.text, batch.text_lengths, posterior.z, durations)
    # the durations sum to mel_lengths, so mel has the batch's padded length
    recon = masked_mean((mel - batch.mel).abs(), length_mask(batch.mel_lengths, mel.shape[1]))  # per-element L1
    duration_loss = masked_mean((log_durations - torch.log1p(durations.float())).square(),
                                length_mask(batch.text_lengths, batch.text.shape[1]))
    kl = posterior.kl.mean()  # nats per utterance
    # recon is a per-element mean: the KL term is scaled by one utterance's element count
    kl_term = controller.loss(kl) / (batch.mel_lengths.float().mean() * batch.mel.shape[2])
    optimizer.zero_grad()
    (recon + duration_loss + kl_term).backward()
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], 1.0)
    optimizer.step()
    controller.update(kl.detach())  # beta's own optimizer steps after the model's; beta is no model parameter
    return {"l1": recon.item(), "duration": duration_loss.item(), "kl": kl.item(), "beta": controller.beta}


def train(corpus: Path, steps: int = 300, capacity: float = 5.0, batch_size: int = 16, latent_dim: int = 8,
          controller_lr: float = 0.3, seed: int = 0, log_every: int = 50) -> list[dict[str, float]]:
    """Train host + reference encoder on an LJSpeech-format corpus; one dict of losses per step."""
    torch.manual_seed(seed)
    processor = TextProcessor()
    dataset = TTSDataset(read_metadata(corpus), processor, MelCache(corpus / ".mel_cache"))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         collate_fn=collate_batch, generator=torch.Generator().manual_seed(seed))
    host = FastSpeechHost(processor.n_symbols, latent_dim)
    ref_enc = VariationalReferenceEncoder(n_mels=80, latent_dim=latent_dim, conv_channels=(16, 16, 32, 32),
                                          gru_dim=64, mlp_dim=64)
    # beta starts at 0 and rises only once the KL passes C. The KL term is divided by ~T * n_mels
    # (thousands), so beta must reach the hundreds to bind within a few hundred steps: hence a
    # step far above Capacitron's 1e-5, and no momentum, which would make beta overshoot
    controller = DualAscent(capacity=capacity, beta_init=0.0, lr=controller_lr, momentum=0.0)
    optimizer = torch.optim.Adam([*host.parameters(), *ref_enc.parameters()], lr=1e-3)
    history: list[dict[str, float]] = []
    while len(history) < steps:
        for batch in loader:
            history.append(train_step(host, ref_enc, controller, optimizer, batch))
            if log_every and len(history) % log_every == 0:
                h = history[-1]
                print(f"step {len(history):4d}  L1 {h['l1']:.3f}  duration {h['duration']:.3f}  "
                      f"KL {h['kl']:6.2f} nats (C = {capacity})  beta {h['beta']:.1f}")
            if len(history) == steps:
                break
    return history


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="an LJSpeech-format folder (default: make a small built-in one)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--capacity", type=float, default=5.0, help="C in nats per utterance")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    corpus = args.data
    if corpus is None:
        from prosody_vae import CorpusConfig, make_corpus

        corpus = Path(tempfile.gettempdir()) / "prosody_vae_example_corpus"
        if not (corpus / "metadata.csv").exists():
            print(f"making a 128-utterance built-in corpus in {corpus} ...")
            make_corpus(corpus, CorpusConfig(n=128, seed=0, measure=False))
    history = train(corpus, steps=args.steps, capacity=args.capacity, batch_size=args.batch_size)
    tail = history[-max(1, len(history) // 5):]
    print(f"last 20% of steps: mean KL {sum(h['kl'] for h in tail) / len(tail):.2f} nats for C = {args.capacity}")


if __name__ == "__main__":
    main()
