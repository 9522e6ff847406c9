"""The pitch range head: an utterance's F0 spread predicted from z, the speaker and the text.

Why. A Tacotron decoder trained with teacher forcing sees the previous frames' pitch, so it
learns to continue a contour and has no reason to read its spread from z; free-running, the
spread is what its own averaged steps make of it. Measured on the demo recipe's corpus (60
training references, each spoken in one voice on one text; the pitch head's 5-95% F0 range): a
demo-recipe model trained with f0_weight 10 moved its range by 0.25 semitones (std) across
references whose range factors span the corpus, r 0.09 with the factor, while a linear probe
found the range in z at r 0.52. The range was in z; the decoder did not use it. The same recipe
with this head: 2.7 semitones (std), r 0.75 with the factor, the probe 0.84.

So the range is made a quantity of its own. From the utterance summary (the masked mean over
tokens of the decoder's memory [text encoding ; z ; speaker], so z, the voice and the text all
speak) a small MLP predicts the log of the utterance's F0 spread:

    spread = std over voiced frames of ln F0 (ln units; 0.1 ~ 1.7 semitones)
    loss   = |predicted ln spread - ln spread|, over utterances with MIN_VOICED_FRAMES voiced

Its gradient reaches the reference encoder through z, so z must carry the range to lower it. In
free-running inference the pitch head's contour is scaled about its own voiced mean to the
predicted spread (`apply_range`), by a factor bounded to [1 / MAX_SCALE, MAX_SCALE]. The F0 track
then carries the range to a vocoder that voices it (source-filter); the mel is not edited, as
with the pitch knobs (inference/knobs.py). `TacotronConfig.pitch_range_head`; weight
`LossConfig.pitch_range_weight`.
"""

from __future__ import annotations

import torch
from torch import nn

MIN_VOICED_FRAMES = 10  # fewer voiced frames give no spread worth learning from
MAX_SCALE = 4.0  # the most inference stretches or squeezes a contour's spread
_SPREAD_FLOOR = 1e-3  # ln units (0.02 semitones): a flat contour's log spread stays finite


def masked_mean(memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, D) mean of memory (B, L, D) over each item's valid tokens, mask (B, L) bool."""
    count = mask.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
    return torch.where(mask[:, :, None], memory, 0.0).sum(dim=1) / count


def voiced_spread(log_f0: torch.Tensor, voiced: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, std, count) of log_f0 (B, T) over each item's voiced frames (B, T) bool, each (B,).
    Items with fewer than two voiced frames get mean 0 and std 0."""
    voiced = voiced.bool()
    count = voiced.sum(dim=1)
    n = count.clamp(min=1).to(log_f0.dtype)
    values = torch.where(voiced, log_f0, 0.0)
    mean = values.sum(dim=1) / n
    var = torch.where(voiced, (log_f0 - mean[:, None]).square(), 0.0).sum(dim=1) / (count - 1).clamp(min=1)
    return mean, torch.where(count > 1, var, 0.0).sqrt(), count


class PitchRangeHead(nn.Module):
    """Utterance summary (B, D) -> predicted ln spread of ln F0 (B,)."""

    def __init__(self, memory_dim: int, hidden_dim: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(memory_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 1))

    def forward(self, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(masked_mean(memory, mask).float()).squeeze(-1)  # (B,)


def pitch_range_loss(log_spread: torch.Tensor, log_f0: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
    """Mean |predicted - target| ln spread over the items with MIN_VOICED_FRAMES voiced frames;
    log_spread (B,), the batch's target log_f0 and voiced (B, T). 0 (with a graph) when none has."""
    _, spread, count = voiced_spread(log_f0.float(), voiced)
    usable = count >= MIN_VOICED_FRAMES
    error = (log_spread - spread.clamp(min=_SPREAD_FLOOR).log()).abs()
    return torch.where(usable, error, 0.0).sum() / usable.sum().clamp(min=1)


def reference_log_spread(log_f0: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
    """(B,) ln spread of each reference's ln F0 (log_f0, voiced (B, T)), NaN where fewer than
    MIN_VOICED_FRAMES frames are voiced. A spread of ln F0 is a ratio, so it reads the same
    whoever speaks: it needs no register, unlike the reference's height."""
    _, spread, count = voiced_spread(log_f0.float(), voiced)
    return torch.where(count >= MIN_VOICED_FRAMES, spread.clamp(min=_SPREAD_FLOOR).log(), torch.nan)


def apply_range(log_f0: torch.Tensor, voiced: torch.Tensor, log_spread: torch.Tensor) -> torch.Tensor:
    """log_f0 (B, T) with each item's voiced frames scaled about their mean to the spread
    exp(log_spread) (B,); items with under MIN_VOICED_FRAMES voiced frames, or a NaN log_spread,
    are left as they are."""
    mean, spread, count = voiced_spread(log_f0.float(), voiced)
    scale = (log_spread.float().exp() / spread.clamp(min=_SPREAD_FLOOR)).clamp(1.0 / MAX_SCALE, MAX_SCALE)
    scale = torch.where((count >= MIN_VOICED_FRAMES) & ~torch.isnan(scale), scale, 1.0)  # (B,)
    scaled = mean[:, None] + scale[:, None] * (log_f0.float() - mean[:, None])
    return torch.where(voiced.bool(), scaled, log_f0.float()).to(log_f0.dtype)
