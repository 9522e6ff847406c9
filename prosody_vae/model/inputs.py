"""Input checks of the model's entry points: a clear error before any tensor work.

Shared by `ProsodyTacotron` (forward, infer, encode_reference) and the exported synthesiser, so
both refuse the same inputs with the same words.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..plugin.errors import ConfigError, DataError, ReferenceInputError, TextError
from ..plugin.masked_norm import length_mask
from .config import TacotronConfig


def check_text(text: torch.Tensor, lengths: torch.Tensor, n_symbols: int) -> torch.Tensor:
    """Raise TextError for unusable ids (B, L) or lengths (B,); return the lengths as long."""
    if not isinstance(text, torch.Tensor) or text.dim() != 2 or text.is_floating_point() or text.shape[0] == 0:
        raise TextError(f"text must be integer ids of shape (B, L), got "
                        f"{tuple(text.shape) if isinstance(text, torch.Tensor) else type(text).__name__}")
    lengths = check_lengths(lengths, text.shape[0], text.shape[1], "text_lengths", TextError)
    valid = length_mask(lengths, text.shape[1])
    if ((text < 0) | (text >= n_symbols))[valid].any():
        raise TextError(f"text holds symbol ids outside [0, n_symbols={n_symbols})")
    return lengths


def check_mel(mel: torch.Tensor, lengths: torch.Tensor, batch: int, n_mels: int) -> torch.Tensor:
    """Raise DataError unless mel is (B, T, n_mels) with lengths (B,) in [1, T]; return the lengths."""
    if not isinstance(mel, torch.Tensor) or mel.dim() != 3 or mel.shape[0] != batch or mel.shape[2] != n_mels:
        raise DataError(f"mel must be (B={batch}, T, n_mels={n_mels}), got "
                        f"{tuple(mel.shape) if isinstance(mel, torch.Tensor) else type(mel).__name__}")
    return check_lengths(lengths, batch, mel.shape[1], "mel_lengths", DataError)


def check_lengths(lengths: torch.Tensor, batch: int, size: int, name: str, error: type[Exception]) -> torch.Tensor:
    if not isinstance(lengths, torch.Tensor) or lengths.shape != (batch,) or lengths.is_floating_point():
        raise error(f"{name} must be an integer tensor of shape ({batch},)")
    if ((lengths < 1) | (lengths > size)).any():
        raise error(f"{name} must lie in [1, {size}], got {lengths.tolist()}")
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
    step limit (the config's when None)."""
    if z is not None and (not isinstance(z, torch.Tensor) or z.shape != (batch, config.latent_dim)):
        raise ReferenceInputError(f"z must be a tensor of shape ({batch}, {config.latent_dim}), got "
                                  f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    max_steps = config.max_decoder_steps if max_decoder_steps is None else max_decoder_steps
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ConfigError(f"max_decoder_steps must be a positive int, got {max_steps!r}")
    return max_steps
