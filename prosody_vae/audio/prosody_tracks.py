"""A reference the voice cannot leak through: speaker-relative pitch, voicing and level.

A reference encoder that reads the log-mel sees the voice in it: its register in the harmonics,
its timbre in the formants. However the decoder is conditioned, z can then carry the reference's
voice, and transfer across voices drags the target towards the reference (README, "Speakers").
`TacotronConfig.reference_input = "prosody"` gives the encoder three tracks per log-mel frame
instead, none of which holds the voice's register, timbre or loudness:

    pitch    ln F0 - the reference speaker's register (mean ln F0 of the speaker's voiced
             training frames, `speakers.SpeakerTable`), 0 where unvoiced
    voicing  1 where voiced, 0 where not
    level    frame energy in dB relative to the utterance's loudest frame, / LEVEL_SCALE_DB,
             floored at LEVEL_FLOOR_DB (silence and padding)

    features = reference_features(log_f0, voiced, energy, register)  # (B, T, N_FEATURES)

What survives is prosody: the pitch contour and its level within the speaker's range, where
the voice sounds and pauses (so timing and rate), and the loudness contour.

A reference whose speaker is not named (a user's own recording) has no known register. The
Synthesizer then takes the known register nearest the reference's own mean ln F0
(`nearest_register`): a female reference spoken in a male voice keeps its contour and its
offset from the nearest female register instead of dragging the male voice up an octave, and a
single-voice model's references keep their level within that voice. That guess can misplace a
voice (a man speaking low in his range taken for a high voice), so a speaker can be enrolled
(inference/enrolment.py) and a model trained with `register_dropout` reads an unplaced reference
against its own mean instead. Where no register is given, `reference_features` takes a NaN
register as the item's own mean, which keeps the contour and drops the height within the range.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .pitch import ENERGY_FLOOR_DB, FrameFeatures

N_FEATURES = 3  # pitch, voicing, level
LEVEL_SCALE_DB = 20.0  # level is stored in units of 20 dB, the range of a sentence's loudness
LEVEL_FLOOR_DB = -60.0  # relative to the loudest frame: quieter is silence


def utterance_register(log_f0: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
    """(B,) mean ln F0 over each item's voiced frames of log_f0 (B, T); NaN where none is voiced."""
    voiced = voiced.bool()
    count = voiced.sum(dim=1)
    total = torch.where(voiced, log_f0.float(), 0.0).sum(dim=1)
    return torch.where(count > 0, total / count.clamp(min=1), float("nan"))


def nearest_register(own: torch.Tensor, known: Sequence[float]) -> torch.Tensor:
    """(B,) for each own register (B,) ln Hz the nearest of the `known` ones; NaN where the own
    register is NaN (nothing voiced) or nothing is known."""
    known = torch.tensor([k for k in known if np.isfinite(k)], dtype=own.dtype)
    if not len(known):
        return torch.full_like(own, float("nan"))
    nearest = known[(own[:, None] - known[None]).abs().nan_to_num(0.0).argmin(dim=1)]  # (B,)
    return torch.where(torch.isnan(own), float("nan"), nearest)


def reference_features(log_f0: torch.Tensor, voiced: torch.Tensor, energy: torch.Tensor,
                       register: torch.Tensor) -> torch.Tensor:
    """The encoder's input (B, T, N_FEATURES) from log_f0 (B, T) ln Hz, voiced (B, T) bool,
    energy (B, T) dB (ENERGY_FLOOR_DB at padding, which therefore never sets the loudest frame)
    and register (B,) ln Hz, NaN for an item whose speaker's register is unknown."""
    voiced = voiced.bool()
    register = torch.where(torch.isnan(register), utterance_register(log_f0, voiced), register)
    register = torch.nan_to_num(register, nan=0.0)  # nothing voiced: the pitch track is all zeros anyway
    pitch = torch.where(voiced, log_f0.float() - register[:, None], 0.0)  # (B, T) ln units
    loudest = energy.float().amax(dim=1, keepdim=True)  # (B, 1) dB
    level = (energy.float() - loudest).clamp(min=LEVEL_FLOOR_DB) / LEVEL_SCALE_DB  # (B, T)
    return torch.stack([pitch, voiced.float(), level], dim=-1)  # (B, T, 3)


def batch_tracks(tracks: Sequence[FrameFeatures]) -> tuple[torch.Tensor, ...]:
    """log_f0, voiced, energy (B, T) padded as `data.collate_batch` pads them, and lengths (B,)."""
    lengths = [len(t) for t in tracks]
    width = max(lengths)
    pad = lambda values, fill, dtype: torch.from_numpy(np.stack(  # (B, T)
        [np.pad(np.asarray(v), (0, width - len(v)), constant_values=fill) for v in values]).astype(dtype))
    return (pad([t.log_f0 for t in tracks], 0.0, np.float32), pad([t.voiced for t in tracks], False, np.bool_),
            pad([t.energy for t in tracks], ENERGY_FLOOR_DB, np.float32), torch.tensor(lengths))
