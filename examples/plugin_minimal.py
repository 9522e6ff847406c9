"""Add controllable prosody to a host TTS model with the plugin alone.

The host here is deliberately small and not ours: a character GRU encoder whose outputs are
stretched uniformly over the mel frames, and a GRU decoder that predicts each frame. The plugin
adds three things: a `VariationalReferenceEncoder` reading the target mel, a `ZConditioner`
feeding z to the host's encoder outputs, and a `DualAscent` controller holding the KL at C.

    python examples/plugin_minimal.py --steps 300 --capacity 5

It makes a small built-in espeak-ng corpus on first use (a few seconds) and prints L1, KL and
beta as it trains. Everything a host needs is in `train_step`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from prosody_vae import (DualAscent, MelCache, TTSDataset, TextProcessor, VariationalReferenceEncoder,
                         ZConditioner, collate_batch, read_metadata)


class UniformHost(nn.Module):
    """A toy host TTS: text (B, L) -> mel (B, T, n_mels), with z (B, Z) joining its memory."""

    def __init__(self, n_symbols: int, latent_dim: int, n_mels: int = 80, dim: int = 128):
        super().__init__()
        self.embed = nn.Embedding(n_symbols, dim)
        self.encoder = nn.GRU(dim, dim // 2, batch_first=True, bidirectional=True)
        self.condition = ZConditioner(dim, latent_dim, mode="concat")  # the plugin's hook
        self.decoder = nn.GRU(self.condition.out_dim, dim, batch_first=True)
        self.project = nn.Linear(dim, n_mels)

    def forward(self, text: torch.Tensor, n_frames: int, z: torch.Tensor) -> torch.Tensor:
        memory, _ = self.encoder(self.embed(text))  # (B, L, dim)
        memory = self.condition(memory, z)  # (B, L, dim + Z)
        # stretch the text evenly over the frames: a stand-in for attention or durations
        stretched = F.interpolate(memory.transpose(1, 2), size=n_frames, mode="nearest").transpose(1, 2)
        frames, _ = self.decoder(stretched)  # (B, T, dim)
        return self.project(frames)  # (B, T, n_mels)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    mask = (torch.arange(target.shape[1])[None, :] < lengths[:, None]).unsqueeze(-1)  # (B, T, 1)
    return ((pred - target).abs() * mask).sum() / (mask.sum() * target.shape[2])


def train_step(host, ref_enc, ctl, optimizer, batch) -> dict[str, float]:
    post = ref_enc(batch.mel, batch.mel_lengths)  # q(z | target mel)
    pred = host(batch.text, batch.mel.shape[1], post.z)
    recon = masked_l1(pred, batch.mel, batch.mel_lengths)
    kl = post.kl.mean()  # nats per utterance
    # recon is a per-element mean, so the KL term is scaled by the elements of one utterance
    loss = recon + ctl.loss(kl) / (batch.mel_lengths.float().mean() * batch.mel.shape[2])
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([*host.parameters(), *ref_enc.parameters()], 1.0)
    optimizer.step()
    ctl.update(kl.detach())  # beta's own step, after the model's
    return {"l1": recon.item(), "kl": kl.item(), "beta": ctl.beta}


def train(corpus: Path, steps: int = 300, capacity: float = 5.0, batch_size: int = 16,
          seed: int = 0, log_every: int = 50) -> list[dict[str, float]]:
    torch.manual_seed(seed)
    processor = TextProcessor()
    utterances = read_metadata(corpus)
    dataset = TTSDataset(utterances, processor, MelCache(corpus / ".mel_cache"))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         collate_fn=collate_batch)
    latent_dim = 8
    host = UniformHost(processor.n_symbols, latent_dim)
    ref_enc = VariationalReferenceEncoder(n_mels=80, latent_dim=latent_dim, conv_channels=(16, 16, 32, 32), gru_dim=64)
    ctl = DualAscent(capacity=capacity, beta_init=0.0, lr=1e-4, momentum=0.9)
    optimizer = torch.optim.Adam([*host.parameters(), *ref_enc.parameters()], lr=2e-3)
    history: list[dict[str, float]] = []
    while len(history) < steps:
        for batch in loader:
            history.append(train_step(host, ref_enc, ctl, optimizer, batch))
            if log_every and len(history) % log_every == 0:
                h = history[-1]
                print(f"step {len(history):4d}  L1 {h['l1']:.3f}  KL {h['kl']:6.2f} nats (C = {capacity})  beta {h['beta']:.3f}")
            if len(history) == steps:
                break
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="an LJSpeech-format folder (default: make a small built-in one)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--capacity", type=float, default=5.0)
    args = parser.parse_args()
    corpus = args.corpus
    if corpus is None:
        from prosody_vae import CorpusConfig, make_corpus

        corpus = Path(tempfile.gettempdir()) / "prosody_vae_example_corpus"
        if not (corpus / "metadata.csv").exists():
            print(f"making a 128-utterance built-in corpus in {corpus} ...")
            make_corpus(corpus, CorpusConfig(n=128, seed=0, measure=False))
    history = train(corpus, steps=args.steps, capacity=args.capacity)
    tail = history[-max(1, len(history) // 5):]
    print(f"last 20% of steps: mean KL {sum(h['kl'] for h in tail) / len(tail):.2f} nats for C = {args.capacity}")


if __name__ == "__main__":
    main()
