"""ProsodyTacotron: Tacotron 2 whose encoder memory carries a prosody latent z.

    text ids (B, L) -> text encoder (layers.py)                                      (B, L, E)
    [memory ; z ; speaker], z and speaker broadcast over L                          (B, L, D)
    attention decoder (decoder.py), one step per r frames -> r frames + stop logit
    postnet (layers.py): 5 convs predict a residual that is added to the decoder's frames

z comes from `VariationalReferenceEncoder` (reference.py): in `forward` it encodes the reference
(by default the target mel, as in Capacitron training); `infer` takes z as given, so choosing a
reference, the posterior mean or a prior sample stays the caller's decision.

Padding never changes an item's valid outputs in eval mode (layers.py says how); attention gives
padded tokens zero weight, and output frames beyond each length hold `pad_value`. The model runs
under `torch.autocast` (bf16 on CPU roughly halves a step on CPUs with bf16 units).

The sizes live in `TacotronConfig` (model/config.py), the input checks in inputs.py.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from ..audio.prosody_tracks import N_FEATURES, reference_features
from ..plugin.errors import DataError, ReferenceInputError
from ..plugin.masked_norm import length_mask
from ..plugin.reference import Posterior, VariationalReferenceEncoder, condition_on_z
from ..plugin.speedups import pinned
from .config import TacotronConfig
from .decoder import Decoder, OutputLayout, decoder_steps
from .inputs import check_mel, check_speaker_ids, check_synthesis_args, check_text
from .layers import Generators, Postnet, TextEncoder, summarise_text
from .pitch_range import PitchRangeHead, apply_range
from .speaker_adversary import SpeakerAdversary


@dataclass
class TacotronOutput:
    """Teacher-forced outputs. T = frames (a multiple of r), T_r = T // r decoder steps, L = tokens."""

    mel_decoder: torch.Tensor  # (B, T, n_mels), pad_value beyond each length
    mel_postnet: torch.Tensor  # (B, T, n_mels), pad_value beyond each length
    stop_logits: torch.Tensor  # (B, T_r)
    alignments: torch.Tensor  # (B, T_r, L), valid rows sum to 1, rows past each item's steps are 0
    posterior: Posterior
    log_f0: Optional[torch.Tensor] = None  # (B, T) the pitch head's log-F0 (ln Hz); None without a pitch head
    voicing_logits: Optional[torch.Tensor] = None  # (B, T)
    # the speaker adversary's logits on detached z and, with frozen weights, on z (B, n_speakers); None without one
    speaker_logits: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    log_pitch_spread: Optional[torch.Tensor] = None  # (B,) the pitch range head's ln spread of ln F0; None without one


@dataclass
class InferenceOutput:
    """Free-running outputs; S = decoder steps run (the longest item's, or max_decoder_steps)."""

    mel_postnet: torch.Tensor  # (B, S * r, n_mels), pad_value beyond each item's mel_lengths
    mel_lengths: torch.Tensor  # (B,) = stop_steps * r
    alignments: torch.Tensor  # (B, S, L), zero beyond each item's stop_steps
    stop_steps: torch.Tensor  # (B,) decoder steps each item ran, its stop step included
    hit_max_steps: torch.Tensor  # (B,) bool: no stop token within max_decoder_steps
    log_f0: Optional[torch.Tensor] = None  # (B, S * r) predicted ln F0 (Hz), 0 where unvoiced; None without a pitch head
    voiced: Optional[torch.Tensor] = None  # (B, S * r) bool, False beyond each item's mel_lengths


class ProsodyTacotron(nn.Module):
    """Tacotron 2 + variational reference encoder (+ optional speaker embedding)."""

    def __init__(self, config: TacotronConfig) -> None:
        super().__init__()
        self.config = config
        uses_text = config.posterior in ("V+T", "V+T+S")
        uses_speaker = config.posterior.endswith("+S")
        self.embedding = nn.Embedding(config.n_symbols, config.embedding_dim, padding_idx=0)
        self.encoder = TextEncoder(config)
        self.text_summary = (nn.LSTM(config.embedding_dim, config.text_summary_dim, batch_first=True)
                             if uses_text else None)
        self.speaker_embedding = (nn.Embedding(config.n_speakers, config.speaker_dim)
                                  if config.n_speakers else None)
        self.reference_encoder = VariationalReferenceEncoder(
            n_mels=N_FEATURES if config.reference_input == "prosody" else config.n_mels, latent_dim=config.latent_dim,
            text_summary_dim=config.text_summary_dim if uses_text else 0,
            speaker_dim=config.speaker_dim if uses_speaker else 0, conv_channels=config.ref_conv_channels,
            gru_dim=config.ref_gru_dim, mlp_dim=config.ref_mlp_dim, text_dropout=config.text_dropout)
        self.speaker_adversary = (SpeakerAdversary(config.latent_dim, config.ref_mlp_dim, config.n_speakers)
                                  if config.speaker_adversary else None)
        memory_dim = config.encoder_lstm_dim + config.latent_dim + config.speaker_dim
        self.decoder = Decoder(config, memory_dim)
        self.postnet = Postnet(config)
        self.pitch_range_head = PitchRangeHead(memory_dim) if config.pitch_range_head else None

    @pinned
    def forward(self, text: torch.Tensor, text_lengths: torch.Tensor, mel: torch.Tensor,
                mel_lengths: torch.Tensor, speaker_ids: Optional[torch.Tensor] = None,
                reference_mel: Optional[torch.Tensor] = None, reference_lengths: Optional[torch.Tensor] = None,
                mode: Literal["sample", "mean"] = "sample", generator: Optional[torch.Generator] = None,
                log_f0: Optional[torch.Tensor] = None, voiced: Optional[torch.Tensor] = None,
                energy: Optional[torch.Tensor] = None,
                reference_register: Optional[torch.Tensor] = None) -> TacotronOutput:
        """Teacher-forced pass. text (B, L), mel (B, T, n_mels) with T a multiple of r
        (`data.collate_batch(frames_multiple=r)`), lengths (B,). The reference defaults to mel;
        a given reference is taken to speak `text` (its text summary is that of `text`).
        mode and generator choose how z is drawn from the posterior. log_f0 and voiced (B, T), the
        batch's pitch, are read by a model with `pitch_feedback`. A model with reference_input
        "prosody" reads log_f0, voiced, energy (B, T) and reference_register (B,), each speaker's
        mean ln F0 (NaN: unknown), as its reference; a given reference_mel is then its
        (B, T, N_FEATURES) `prosody_reference.reference_features`."""
        text_lengths = self._check_text(text, text_lengths)
        mel_lengths = check_mel(mel, mel_lengths, text.shape[0], self.config.n_mels)
        if mel.shape[1] % self.config.reduction_factor:
            raise DataError(f"mel has {mel.shape[1]} frames, not a multiple of reduction_factor "
                            f"{self.config.reduction_factor}; collate with frames_multiple=r")
        if (reference_mel is None) != (reference_lengths is None):
            raise ReferenceInputError("give reference_mel and reference_lengths together, or neither")
        speaker = self._speaker(speaker_ids, text.shape[0])
        embedded = self.embedding(text)  # (B, L, E)
        if reference_mel is None:
            reference_mel, reference_lengths = mel, mel_lengths
            if self.config.reference_input == "prosody":
                if log_f0 is None or voiced is None or energy is None or reference_register is None:
                    raise ReferenceInputError("a model with reference_input='prosody' reads the batch's log_f0, "
                                              "voiced, energy and reference_register; give all four")
                reference_mel = reference_features(log_f0, voiced, energy, reference_register)  # (B, T, 3)
        posterior = self.reference_encoder(
            reference_mel, reference_lengths, self._summarise_text(text, text_lengths),
            speaker if self.config.posterior.endswith("+S") else None, mode=mode, generator=generator)
        text_mask = length_mask(text_lengths, text.shape[1])
        memory = self._memory(embedded, text_lengths, text_mask, posterior.z, speaker)
        out, alignments = self.decoder(memory, text_mask, mel, None if log_f0 is None else (log_f0, voiced))
        layout = self.decoder.layout
        mel_decoder, mel_postnet = self.add_postnet(layout.frames(out), length_mask(mel_lengths, mel.shape[1]))
        n_steps = decoder_steps(mel_lengths, self.config.reduction_factor)
        pitch = (layout.log_f0(out), layout.voicing_logits(out)) if layout.pitch else (None, None)
        speaker_logits = None if self.speaker_adversary is None else self.speaker_adversary(posterior.mean)
        spread = None if self.pitch_range_head is None else self.pitch_range_head(memory, text_mask)
        return TacotronOutput(mel_decoder, mel_postnet, layout.stop_logit(out), _zero_beyond(alignments, n_steps),
                              posterior, *pitch, speaker_logits, spread)

    @pinned
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
            out, alignments, stop_steps, hit_max = self.decoder.infer(
                memory, text_mask, max_steps, self.config.stop_threshold, generator)
            frames = self.decoder.layout.frames(out)
            _, mel_postnet = self.add_postnet(frames, length_mask(stop_steps * self.config.reduction_factor,
                                                                  frames.shape[1]))
            spread = None if self.pitch_range_head is None else self.pitch_range_head(memory, text_mask)
        # the warning points past `pinned`'s wrapper, at infer's caller
        return inference_output(self.config, out, mel_postnet, alignments, stop_steps, hit_max, max_steps,
                                stacklevel=4, log_pitch_spread=spread)

    @pinned
    def encode_reference(self, mel: torch.Tensor, mel_lengths: torch.Tensor, text: Optional[torch.Tensor] = None,
                         text_lengths: Optional[torch.Tensor] = None, speaker_ids: Optional[torch.Tensor] = None,
                         mode: Literal["sample", "mean"] = "mean", temperature: float = 1.0,
                         generator: Optional[torch.Generator] = None) -> Posterior:
        """Posterior of a reference mel (B, T, n_mels), or for reference_input "prosody" of its
        `prosody_reference.reference_features` (B, T, N_FEATURES). `text` is the reference's own transcript: a
        "V+T" model summarises it, or uses its learned missing-transcript vector when it is None;
        a "V" model does not read it. "V+S" and "V+T+S" need speaker_ids."""
        summary = None
        if text is not None and self.text_summary is not None:
            text_lengths = self._check_text(text, text_lengths)
            summary = self._summarise_text(text, text_lengths)
        speaker = self._speaker(speaker_ids, mel.shape[0]) if self.config.posterior.endswith("+S") else None
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

    def add_postnet(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def inference_output(config: TacotronConfig, out: torch.Tensor, mel_postnet: torch.Tensor, alignments: torch.Tensor,
                     stop_steps: torch.Tensor, hit_max: torch.Tensor, max_steps: int,
                     stacklevel: int = 3, log_pitch_spread: Optional[torch.Tensor] = None) -> InferenceOutput:
    """Free-running results as an InferenceOutput, from every step's output `out` (B, S, size) and the
    postnet's mel; a warning for items that never stopped (`stacklevel` points it at the caller of
    the caller's synthesis method). A pitch range head's log_pitch_spread (B,) sets the spread of
    each item's F0 contour (model/pitch_range.py)."""
    if hit_max.any():
        warnings.warn(f"{int(hit_max.sum())} of {len(hit_max)} items reached max_decoder_steps={max_steps} "
                      f"without a stop token; their mel is cut at {max_steps * config.reduction_factor} "
                      "frames (see InferenceOutput.hit_max_steps)", RuntimeWarning, stacklevel=stacklevel)
    mel_lengths = stop_steps * config.reduction_factor
    log_f0 = voiced = None
    layout = OutputLayout.of(config)
    if layout.pitch:
        voiced = (layout.voicing_logits(out) > 0) & length_mask(mel_lengths, mel_postnet.shape[1])
        log_f0 = layout.log_f0(out)
        if log_pitch_spread is not None:
            log_f0 = apply_range(log_f0, voiced, log_pitch_spread)
        log_f0 = torch.where(voiced, log_f0, 0.0)
    return InferenceOutput(mel_postnet, mel_lengths, _zero_beyond(alignments, stop_steps), stop_steps, hit_max,
                           log_f0, voiced)


def _zero_beyond(alignments: torch.Tensor, n_steps: torch.Tensor) -> torch.Tensor:
    """Alignments (B, S, L) with the rows past each item's n_steps (B,) set to zero."""
    return alignments.where(length_mask(n_steps, alignments.shape[1])[:, :, None], 0.0)


