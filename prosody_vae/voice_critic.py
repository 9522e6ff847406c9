"""A speaker classifier on log-mels, and the voice-consistency loss it sets the decoder (a trial).

    on_recordings, on_outputs = VoiceCritic(n_mels, hidden_dim, n_speakers)(mel, mel_postnet, mel_lengths)
    loss = cross_entropy(on_recordings, ids) + weight * cross_entropy(on_outputs, ids)   # losses.py

The critic learns to tell the voices apart from the recordings' log-mels; the decoder is trained,
through a frozen copy of it, to make its output name the speaker it was told: the
speaker-consistency loss of YourTTS (Casanova et al. 2022) with a critic trained alongside
instead of a pretrained speaker encoder.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .masked_norm import length_mask


class _Classifier(nn.Module):
    """(B, T, n_mels) log-mels and their (B, T) valid mask -> (B, n_speakers) logits."""

    def __init__(self, n_mels: int, hidden_dim: int, n_speakers: int, kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.frames = nn.Sequential(
            nn.Conv1d(n_mels, hidden_dim, kernel_size, padding=pad), nn.ReLU(),
            nn.Conv1d(hidden_dim, hidden_dim, kernel_size, padding=pad), nn.ReLU(),
            nn.Conv1d(hidden_dim, hidden_dim, kernel_size, padding=pad), nn.ReLU())
        self.classify = nn.Linear(hidden_dim, n_speakers)

    def forward(self, mel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        mel = torch.where(valid[:, :, None], mel, 0.0)  # padding holds pad_value (or anything)
        hidden = self.frames(mel.transpose(1, 2))  # (B, H, T)
        mask = valid[:, None, :].to(hidden.dtype)  # (B, 1, T)
        pooled = (hidden * mask).sum(dim=2) / mask.sum(dim=2).clamp(min=1.0)  # (B, H)
        return self.classify(pooled)


class VoiceCritic(nn.Module):
    def __init__(self, n_mels: int, hidden_dim: int, n_speakers: int, kernel_size: int = 5) -> None:
        super().__init__()
        self.classifier = _Classifier(n_mels, hidden_dim, n_speakers, kernel_size)

    def forward(self, recorded: torch.Tensor, generated: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """recorded, generated (B, T, n_mels), lengths (B,) -> the critic's logits on the
        recordings (B, n_speakers), and its logits with frozen weights on the generated mels
        (B, n_speakers), whose gradient reaches only what made them."""
        valid = length_mask(lengths, recorded.shape[1])  # (B, T)
        frozen = {name: p.detach() for name, p in self.classifier.named_parameters()}
        return (self.classifier(recorded.detach(), valid),
                functional_call(self.classifier, frozen, (generated, valid)))
