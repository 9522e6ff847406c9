"""Global-variance postfilter: gives a predicted log-mel back the contrast over time that real speech has.

    gv = GlobalVariance.from_mels(training_mels)     # each (T, n_mels); done by the trainer
    sharper = gv(predicted_mel)                       # (T, n_mels) -> (T, n_mels)

Why. A decoder trained with an L1 (or L2) loss predicts the conditional median (mean) of the mel,
and where the next frame is uncertain that is a blend of the possibilities: formant transitions
flatten, pauses fill in, and each band's variation over the utterance shrinks. The audio is a
steady buzz that listeners and DNSMOS both mark down. Statistical parametric synthesis met the
same over-smoothing and fixed it by matching each feature's global variance (GV) over the
utterance to the training data's (Toda & Tokuda 2007; the "variance scaling" postfilter of Silén
et al. 2012). This is that postfilter on log-mel bands: each band's deviation from its utterance
mean is scaled so that its standard deviation over time equals the training corpus's mean
per-utterance standard deviation for that band. The band means (loudness and timbre on average)
are kept; only the contrast around them grows.

The gain is never below 1 (an expressive reference's wide variation is not flattened) and at most
`max_gain`; the result is floored at the log-mel's padding value (the log of the amplitude floor),
below which a log-mel cannot go.

Measured on the demo model (1,500 steps, the `prosody-vae demo` recipe), 10 corpus references x 3
unseen sentences through the source-filter vocoder: the corpus GV is 3.2 times the outputs' at
the median band (5th-95th percentile 1.3-5.4); DNSMOS P.835 OVRL of transfer outputs rose from
1.84 to 2.10 (copy-synthesis of the references through the same vocoder: 2.30) and of prior-mean
outputs from 1.83 to 2.18; the outputs' voiced fraction went from 0.97 to 0.93 (references 0.83).
In the demo's own report (the same checkpoint, its two references) transfer outputs went from 1.80
to 2.19, prior samples from 2.00 to 2.52 and the prior mean from 1.65 to 2.01, against 2.63 for
the references' copy-synthesis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from ..plugin.errors import AudioError


@dataclass(frozen=True)
class GlobalVariance:
    """Per-band target contrast std (n_mels,) in log-mel units (natural log of amplitude)."""

    std: torch.Tensor  # (n_mels,)
    floor: float  # the log-mel's padding value: the lowest a log-mel can be
    max_gain: float = 10.0

    @classmethod
    def from_mels(cls, mels: Iterable[np.ndarray | torch.Tensor], floor: float) -> "GlobalVariance":
        """The mean over utterances of each band's standard deviation over its frames (T, n_mels)."""
        stds = [torch.as_tensor(mel, dtype=torch.float64).std(dim=0) for mel in mels if len(mel) > 1]
        if not stds:
            raise AudioError("GlobalVariance.from_mels: no mel with at least two frames")
        return cls(torch.stack(stds).mean(dim=0).float(), float(floor))

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel (T, n_mels) -> (T, n_mels) with each band's std over time raised to the target."""
        if mel.dim() != 2 or mel.shape[1] != self.std.numel():
            raise AudioError(f"GlobalVariance expects a log-mel (T, {self.std.numel()}), got {tuple(mel.shape)}")
        if mel.shape[0] < 2:  # one frame has no variation to scale
            return mel
        mean = mel.mean(dim=0)  # (n_mels,)
        own = mel.std(dim=0).clamp(min=1e-4)  # (n_mels,)
        gain = (self.std.to(mel) / own).clamp(1.0, self.max_gain)
        return (mean + (mel - mean) * gain).clamp(min=self.floor)

    def state_dict(self) -> dict:
        return {"std": self.std.clone(), "floor": self.floor, "max_gain": self.max_gain}

    @classmethod
    def from_state_dict(cls, state: dict) -> "GlobalVariance":
        return cls(torch.as_tensor(state["std"], dtype=torch.float32), float(state["floor"]),
                   float(state.get("max_gain", 10.0)))
