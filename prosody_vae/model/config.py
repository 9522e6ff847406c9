"""TacotronConfig: every size of a ProsodyTacotron, its presets and their checks.

The config is saved in each checkpoint (as a dict) and rebuilt from it, so a field is never
renamed or removed without a migration: old checkpoints must still load.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, get_args

from ..data.text import SYMBOLS
from ..plugin.errors import ConfigError
from ..plugin.reference import CAPACITRON_CHANNELS

AttentionKind = Literal["location", "forward", "dca"]
PosteriorVariant = Literal["V", "V+S", "V+T", "V+T+S"]
ReferenceInput = Literal["mel", "prosody"]


@dataclass
class TacotronConfig:
    """Every size of a ProsodyTacotron; saved in each checkpoint. Defaults: the `tacotron2` preset."""

    n_symbols: int = len(SYMBOLS)
    n_mels: int = 80
    pad_value: float = math.log(1e-5)  # audio.AudioConfig.pad_value: the log-mel of silence
    reduction_factor: int = 2
    # text encoder
    embedding_dim: int = 512
    encoder_conv_channels: int = 512
    encoder_conv_layers: int = 3
    encoder_kernel_size: int = 5
    encoder_lstm_dim: int = 512  # both directions together
    encoder_dropout: float = 0.5
    # decoder
    prenet_dims: tuple[int, ...] = (256, 256)
    prenet_dropout: float = 0.5
    prenet_dropout_at_inference: bool = True  # Tacotron 2; False makes eval mode deterministic
    attention_kind: AttentionKind = "location"
    attention_rnn_dim: int = 1024
    attention_dim: int = 128
    location_filters: int = 32  # "location" and "forward"
    location_kernel_size: int = 31
    dca_static_filters: int = 8  # "dca" (Battenberg et al. 2020)
    dca_static_kernel_size: int = 21
    dca_dynamic_filters: int = 8
    dca_dynamic_kernel_size: int = 21
    dca_filter_mlp_dim: int = 128
    dca_prior_length: int = 11
    dca_prior_alpha: float = 0.1
    dca_prior_beta: float = 0.9
    decoder_rnn_dim: int = 1024
    attention_rnn_dropout: float = 0.1
    decoder_rnn_dropout: float = 0.1
    max_decoder_steps: int = 1000
    stop_threshold: float = 0.5
    # a free-running item may stop only once its attention peak lies on one of the last
    # `stop_gate_tokens` tokens of its text (0: any step may stop); keeps short texts from
    # stopping before they are spoken
    stop_gate_tokens: int = 3
    # pitch head: per frame, a log-F0 (natural log of Hz) and a voicing logit beside the mel
    pitch_head: bool = False
    # the previous frame's log-F0 and voicing also enter the prenet. Off by measurement: on the
    # demo recipe at 300 steps (one voice, 240 utterances) it raised the held-out teacher-forced
    # log-F0 error from 0.074 to 0.113 (128 -> 196 cents) and postnet L1 from 1.71 to 1.78, with
    # about the same F0 transfer (7.9 with, 7.6 without, semitones between references 8.9 apart)
    pitch_feedback: bool = False
    # an utterance's F0 spread predicted from [text ; z ; speaker] and imposed on the pitch head's
    # free-running contour, so the range a reference carries in z is heard (model/pitch_range.py)
    pitch_range_head: bool = False
    # postnet
    postnet_channels: int = 512
    postnet_layers: int = 5
    postnet_kernel_size: int = 5
    postnet_dropout: float = 0.5
    # speakers (0 = single speaker)
    n_speakers: int = 0
    speaker_dim: int = 0
    # a speaker classifier on the posterior mean and a confusion loss that pushes z to make its
    # guess uniform (speaker_adversary.py); its loss weight is loss.speaker_adversary_weight
    speaker_adversary: bool = False
    # variational reference encoder
    latent_dim: int = 128
    ref_conv_channels: tuple[int, ...] = CAPACITRON_CHANNELS
    ref_gru_dim: int = 128
    ref_mlp_dim: int = 128
    # "V+T": also a text summary; "V+S": also the speaker; "V+T+S": both. A posterior that knows
    # the speaker can carry a reference's pitch as an offset from that speaker's register
    posterior: PosteriorVariant = "V"
    # what the reference encoder reads: "mel", the log-mel (voice and all), or "prosody", the
    # speaker-relative pitch, voicing and level tracks of audio/prosody_tracks.py, which hold no
    # register, timbre or loudness of the voice (training needs the cache's pitch features)
    reference_input: ReferenceInput = "mel"
    # "prosody" only: the share of training utterances read relative to their own mean pitch, not
    # their speaker's register (the height within the speaker's range hidden), so the model also
    # learns to carry contour, range, timing and level from a speaker it cannot place. A model
    # trained so reads an unnamed, unenrolled reference the same way (Synthesizer.reference_input:
    # the output at the target voice's usual height) instead of against the nearest known register
    register_dropout: float = 0.0
    text_summary_dim: int = 128  # LSTM over the text embeddings, used by "V+T" and "V+T+S"
    text_dropout: float = 0.0

    def __post_init__(self) -> None:
        self.prenet_dims, self.ref_conv_channels = tuple(self.prenet_dims), tuple(self.ref_conv_channels)
        positive = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
                    if f.type == "int" and f.name not in ("n_speakers", "speaker_dim", "stop_gate_tokens")]
        positive += [("prenet_dims", min(self.prenet_dims, default=0)),
                     ("ref_conv_channels", min(self.ref_conv_channels, default=0))]
        for name, value in positive:
            _require(isinstance(value, int) and value >= 1, f"TacotronConfig.{name} must be >= 1, got {value}")
        for name in ("encoder_dropout", "prenet_dropout", "attention_rnn_dropout", "decoder_rnn_dropout",
                     "postnet_dropout", "text_dropout", "register_dropout"):
            value = getattr(self, name)
            _require(0.0 <= value < 1.0, f"TacotronConfig.{name} must be in [0, 1), got {value}")
        for name in ("encoder_kernel_size", "location_kernel_size", "dca_static_kernel_size",
                     "dca_dynamic_kernel_size", "postnet_kernel_size"):
            value = getattr(self, name)
            _require(value % 2 == 1, f"TacotronConfig.{name} must be odd (same padding), got {value}")
        for name, kind in (("attention_kind", AttentionKind), ("posterior", PosteriorVariant),
                           ("reference_input", ReferenceInput)):
            allowed = get_args(kind)
            value = getattr(self, name)
            _require(value in allowed, f"TacotronConfig.{name} must be one of {allowed}, got {value!r}")
        _require(self.encoder_lstm_dim % 2 == 0,
                 f"TacotronConfig.encoder_lstm_dim must be even (two directions), got {self.encoder_lstm_dim}")
        _require(0.0 < self.stop_threshold < 1.0,
                 f"TacotronConfig.stop_threshold must be in (0, 1), got {self.stop_threshold}")
        _require(self.n_speakers >= 0 and self.speaker_dim >= 0 and (self.n_speakers > 0) == (self.speaker_dim > 0),
                 f"TacotronConfig.n_speakers and speaker_dim must both be 0 or both >= 1, "
                 f"got {self.n_speakers}, {self.speaker_dim}")
        _require(not self.posterior.endswith("+S") or self.n_speakers > 0,
                 f"TacotronConfig.posterior {self.posterior!r} needs n_speakers >= 1")
        _require(not self.speaker_adversary or self.n_speakers > 0,
                 "TacotronConfig.speaker_adversary needs n_speakers >= 1")
        _require(self.stop_gate_tokens >= 0, f"TacotronConfig.stop_gate_tokens must be >= 0, got {self.stop_gate_tokens}")
        _require(self.register_dropout == 0 or self.reference_input == "prosody",
                 "TacotronConfig.register_dropout needs reference_input = \"prosody\" (a log-mel has no register to hide)")
        _require(self.pitch_head or not self.pitch_feedback, "TacotronConfig.pitch_feedback needs pitch_head = true")
        _require(self.pitch_head or not self.pitch_range_head, "TacotronConfig.pitch_range_head needs pitch_head = true")
        _require(self.text_dropout == 0.0 or self.posterior != "V",
                 "TacotronConfig.text_dropout needs a text summary (posterior 'V+T' or 'V+T+S')")

    @classmethod
    def preset(cls, name: str, **overrides) -> "TacotronConfig":
        """"tacotron2" (published sizes), "small" or "tiny" (CPU), with any field overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> "TacotronConfig":
        """Inverse of `to_dict`; an unknown key is a ConfigError (a typo must not pass silently)."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown TacotronConfig field(s): {sorted(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    "tacotron2": {},
    "small": dict(embedding_dim=256, encoder_conv_channels=256, encoder_lstm_dim=256, prenet_dims=(128, 128),
                  attention_rnn_dim=512, decoder_rnn_dim=512, postnet_channels=256, latent_dim=32,
                  text_summary_dim=64),
    # ~2.3 M parameters: trains to a diagonal alignment in minutes on a 2-core CPU
    "tiny": dict(embedding_dim=128, encoder_conv_channels=128, encoder_lstm_dim=256, prenet_dims=(128, 128),
                 attention_rnn_dim=256, decoder_rnn_dim=256, attention_dim=64, location_filters=16,
                 dca_filter_mlp_dim=64, postnet_channels=128, reduction_factor=4, latent_dim=16,
                 ref_conv_channels=(16, 16, 32, 32, 64, 64), ref_gru_dim=64, ref_mlp_dim=64,
                 text_summary_dim=64),
}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
