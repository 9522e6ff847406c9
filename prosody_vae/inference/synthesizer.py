"""Prosody control at inference: `Synthesizer` turns text + a prosody choice into mel and audio.

    synth = Synthesizer.from_checkpoint("runs/demo/checkpoints/best.pt")
    out = synth.tts("Hello there.", reference="slow.wav")           # transfer (posterior mean)
    out = synth.tts(["One.", "Two."], temperature=0.7, seed=3)       # prior samples
    out = synth.tts("Hello.", reference="a.wav", mode="sample", temperature=0.5, seed=1)

Prosody choices: a `reference` (wav path, waveform array, or log-mel (T, n_mels)) encoded to its
posterior, used at its mean (`mode="mean"`) or sampled (`mode="sample"`, at `temperature`); an
explicit `z`; or, with neither, a sample of the prior at `temperature` (0 gives the prior mean).
A reference transcript is optional, also for a "V+T" model (its learned no-transcript vector
stands in).

References are checked before encoding (see `Synthesizer.reference_mel`): a reference longer than
`max_reference_seconds` (30 s by default) is refused, not cut or chunked, because which part holds
the wanted prosody is the user's choice; trim it, or raise the limit (None: no limit).

Randomness is explicit and per item. Every item draws its noise (posterior or prior sample, and
the prenet dropout that Tacotron keeps on at inference) from its own generator, seeded by
(its seed, its text, its sample index); `seed` is one int for all items or one per text, and None
means 0. So the same call always gives the same audio, and a text synthesised in a batch equals
the same text with the same seed synthesised alone. `n_samples=K` speaks each text K times with
sample indices 0..K-1, so K different draws (of the prior, of the posterior with
`mode="sample"`, and of the prenet dropout); sample 0 is what `n_samples=1` gives. The same text
twice in one list with one seed gives the same audio twice: ask for `n_samples` instead.

Strength and knobs. `strength` scales the prosody's offset from the prior mean (0): 0 is the
prior mean, 1 the reference's posterior mean (or the given z), 1.5 exaggerates; sampling noise
is added after it. `controls={"pitch": +2, "pitch_range": 1.5, "rate": 0.8, "energy": -3}`
(semitones, ratios, dB) then move z along the model's calibrated directions (knobs.py; made by
calibrate.py, `prosody-vae calibrate`); `Synthesizer.controls` lists them with their ranges. Each knob takes the
path its calibration chose: in z where the latent carries the quantity (the mel follows, any
vocoder hears it), else, for the pitch knobs of a model with a pitch head, an edit of the
predicted F0 (voiced by a pitch-driven vocoder such as "source-filter"), and for energy a gain
on the predicted mel. `pitch_path = "z"` or `"f0"` forces one path for both pitch knobs.

Precision: `precision="int8"` (CPU) or `"bf16"` runs the decoder's per-step matmuls with int8 or
bfloat16 weights (quantize.py): at batch 1 a decoder step streams ~19 M weights from memory, so
smaller weights make it several times faster. The recurrent state and attention stay float32; the
measured cost in quality (MCD-DTW against fp32) is in benchmarks/README.md.

Postfilter: a checkpoint written by the trainer carries its training mels' global variance, and
`tts` raises each output band's contrast over time to it before vocoding (postfilter.py: an L1
decoder over-smooths, and the flat mel sounds like a steady buzz). `postfilter=False` returns the
decoder's own mel; the result's `mel` is always the one that was vocoded.

Speakers: a model trained with speaker conditioning speaks in any voice of its speaker table
(`Synthesizer.speakers`), named by `speaker=` (one name, or one per text); without one it speaks
in the first voice of the table. `reference_speaker=` names who speaks the reference. A model
whose encoder reads the reference's prosody tracks (`reference_input = "prosody"`,
audio/prosody_tracks.py) takes its pitch relative to that speaker's register (a training voice's,
or an enrolled one's: `enroll`). One utterance of a speaker it cannot place cannot tell their
register from their height within it: such a reference is read against the known register
nearest its own mean pitch, or, by a model trained with `register_dropout`, against its own mean
(the output at the target voice's usual height, with the contour, range, timing and level of the
reference). Either way z holds no register, and
`pitch_mode="relative"` (the default) puts the reference's pitch offset on the target voice's
register. A model that reads the log-mel can carry the reference's register in z, so its
relative output lands nearer the reference's Hz; it takes an unnamed reference to speak in the
target voice.
`pitch_mode="absolute"` moves the predicted F0 by the register difference of `reference_speaker`
and the target voice (a pitch-aware vocoder renders that F0; a mel-only one does not read it).
`reference_range=True` scales the predicted F0 contour, about its own mean, to the reference's
spread of ln F0: a ratio, so it needs no register and holds for a voice nobody enrolled (the
decoder itself barely reads range from z; docs/speakers.md).
`reference_level=True` makes the output as much louder or softer than its voice's usual level as
the reference is spoken against its enrolled speaker's (a gain on the mel, up to MAX_LEVEL_GAIN_DB
either way). The encoder reads only the level contour, relative to each reference's loudest
frame, so that z cannot carry a microphone's gain; an enrolment made with the same microphone
tells a loud voice from a hot input (enrolment.py), and one utterance of an unknown speaker
cannot, so this needs `reference_speaker=` an enrolled name.

Vocoder: `from_checkpoint` picks the best installed one, as the CLI does (`vocoder="auto"`:
a HiFi-GAN from the `hifigan` extra, the pitch-driven "source-filter" for a model with a pitch
head); a Synthesizer built around a model in memory uses Griffin-Lim unless told. Any callable or TorchScript module mapping a log-mel
(B, n_mels, T) to a waveform (B, N) or (B, 1, N) plugs in as `vocoder=`, or a name that
vocoders.load_vocoder knows (`vocoder="hifigan-universal"`); our mels follow the HiFi-GAN
LJSpeech convention (audio/mel.py), so an LJSpeech HiFi-GAN generator works unchanged.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..audio.mel import MelSpectrogram, griffin_lim, load_reference, save_wav
from ..audio.pitch import FrameFeatures, frame_features, speech_level_db
from ..audio.postfilter import GlobalVariance
from ..audio.prosody_tracks import batch_tracks, nearest_register, reference_features, utterance_register
from ..data.speakers import SpeakerTable, UnknownSpeakerError
from ..data.text import TextProcessor
from ..model.pitch_range import apply_range, reference_log_spread
from ..model.tacotron import InferenceOutput, ProsodyTacotron
from ..plugin.errors import ConfigError, ReferenceInputError, TextError
from ..plugin.reference import Posterior
from ..training.checkpoint import load_model_and_state
from ..training.config import TrainConfig
from ..vocoders.registry import best_available_vocoder, load_vocoder, run_vocoder
from .enrolment import Enrolment, enrolment_file, load_enrolments, measure_enrolment, save_enrolments
from .knobs import Calibration, KnobCalibration, control_paths, edit_f0, edit_level
from .model_card import ModelCard, card_of
from .quantize import Precision, reduce_precision

Reference = Union[str, os.PathLike, np.ndarray, torch.Tensor]
Vocoder = Callable[[torch.Tensor], torch.Tensor]
Seed = Union[int, Sequence[int], None]
Speaker = Union[str, Sequence[str], None]
MAX_LEVEL_GAIN_DB = 20.0  # reference_level: past this a reference is mis-enrolled, not spoken louder


@dataclass
class SynthesisResult:
    """One entry per input text. mel (T_i, n_mels), wav (N_i,), alignment (S_i, L_i) decoder steps by
    characters, stop_step: decoder steps run, hit_max_steps: True if no stop token came, z (B, latent)."""

    mel: list[torch.Tensor]
    wav: list[np.ndarray]
    alignment: list[torch.Tensor]
    stop_step: list[int]
    hit_max_steps: list[bool]
    z: torch.Tensor
    f0: list[torch.Tensor] = field(default_factory=list)  # (T_i,) predicted F0 in Hz, 0 where unvoiced; pitch head only


@dataclass
class _Items:
    """A `tts` call's inputs, one entry per output item: each text repeated `n_samples` times
    (text by text), with the per-text arguments following their text."""

    texts: list[str]
    seeds: list[int]
    sample_indices: list[int]  # 0..K-1 within each text's K samples
    reference: object
    reference_text: object
    z: object
    speaker: Speaker
    reference_speaker: Speaker
    reference_tracks: Optional[list[FrameFeatures]] = None  # each reference's, once measured

    @classmethod
    def fan_out(cls, texts: list[str], seeds: list[int], n_samples: int, reference, reference_text, z,
                speaker: Speaker, reference_speaker: Speaker) -> "_Items":
        if not (isinstance(n_samples, (int, np.integer)) and n_samples >= 1):
            raise ReferenceInputError(f"n_samples must be an int >= 1, got {n_samples!r}", field="n_samples")
        if n_samples > 1:
            repeat = lambda items: [item for item in items for _ in range(n_samples)]
            per_text = lambda items: isinstance(items, (list, tuple)) and len(items) == len(texts)
            if isinstance(reference, (list, tuple)) and len(reference) == len(texts) > 1:
                reference = repeat(reference)
                reference_text = repeat(reference_text) if isinstance(reference_text, (list, tuple)) else reference_text
            if z is not None and torch.as_tensor(z).dim() == 2:
                z = torch.as_tensor(z).repeat_interleave(n_samples, dim=0)
            speaker, reference_speaker = (repeat(names) if per_text(names) else names
                                          for names in (speaker, reference_speaker))
            texts, seeds = repeat(texts), repeat(seeds)
        return cls(texts, seeds, list(range(n_samples)) * (len(texts) // n_samples), reference, reference_text, z,
                   speaker, reference_speaker)

    @property
    def n_references(self) -> int:
        return len(self.reference) if isinstance(self.reference, (list, tuple)) else 1


class Synthesizer:
    pitch_path: Literal["auto", "z", "f0"] = "auto"  # where the pitch knobs act (module docstring)

    def __init__(self, model: ProsodyTacotron, config: Optional[TrainConfig] = None,
                 device: str | torch.device = "cpu", precision: Precision = "fp32",
                 vocoder: Optional[Vocoder | str] = None, griffin_lim_iterations: int = 60,
                 max_reference_seconds: Optional[float] = 30.0, postfilter: Optional[GlobalVariance] = None,
                 speaker_table: Optional[SpeakerTable] = None):
        """`config`: the TrainConfig the model was trained with, whose audio and text settings the
        Synthesizer reads (None: the defaults around `model.config`). `precision` of the decoder's
        per-step matmuls: "fp32", "bf16" (bfloat16 weights) or "int8" (int8 weights, CPU only),
        see quantize.py; `model` keeps its float32 decoder. `vocoder`: None (Griffin-Lim), "auto",
        a name or a callable (module docstring). `postfilter`: applied to every output mel
        (from_checkpoint passes the checkpoint's own). `speaker_table` names the ids of a
        multi-speaker model (the checkpoint's; without one they are called "0", "1", ...)."""
        config = TrainConfig(model=model.config) if config is None else config
        if max_reference_seconds is not None and not max_reference_seconds > 0:
            raise ConfigError(f"max_reference_seconds must be > 0 or None, got {max_reference_seconds!r}")
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"device {device!r} is not a torch device ({exc})") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: CUDA is not available here")
        self.precision = precision
        self.model = reduce_precision(model.to(self.device).eval(), precision)
        self.config = config
        self.audio = config.audio
        self.text = TextProcessor(config.text)
        self.mel_spec = MelSpectrogram(self.audio).to(self.device)
        if vocoder == "auto":  # the best installed; the pitch-driven one for a model with a pitch head
            vocoder = best_available_vocoder(pitch=model.config.pitch_head, audio=self.audio)
        if isinstance(vocoder, str):  # a name: "hifigan-universal", "griffin-lim", ... (vocoders/registry.py)
            vocoder = load_vocoder(vocoder, device=self.device, audio=self.audio)
        self.vocoder = vocoder
        self.griffin_lim_iterations = griffin_lim_iterations
        self.max_reference_seconds = max_reference_seconds
        self.postfilter = postfilter
        self.calibration: Optional[Calibration] = None  # knob directions; from_checkpoint reads them
        self.checkpoint: Optional[Path] = None
        self.checkpoint_state: dict = {}  # the checkpoint's bookkeeping (step, speakers, ...), no weights
        self.enrolments: dict[str, Enrolment] = {}  # reference speakers it never heard (enrolment.py)
        self._enrolling = threading.Lock()
        n_speakers = model.config.n_speakers
        # the registers an unnamed reference of a "prosody" model is matched to (a single-speaker
        # model's table holds its one voice)
        self.known_registers = tuple(speaker_table.log_f0_mean or ()) if speaker_table is not None else ()
        # a model may have more speaker ids than its corpus had speakers; only named ones are spoken
        self.speaker_table = (speaker_table if speaker_table is not None and 0 < len(speaker_table) <= n_speakers
                              else SpeakerTable(tuple(str(i) for i in range(n_speakers))))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        precision: Precision = "fp32", vocoder: Optional[Vocoder | str] = "auto",
                        max_reference_seconds: Optional[float] = 30.0, strict: bool = True,
                        postfilter: bool = True) -> "Synthesizer":
        """`vocoder` "auto" (the default) is the best installed one, as the CLI picks it;
        `strict=False` allows a partial load of weights that do not fit (checkpoint.load_model);
        `postfilter=False` leaves the checkpoint's global-variance postfilter off."""
        model, config, state = load_model_and_state(path, strict=strict)
        variance = state.get("mel_variance")  # absent from checkpoints older than the postfilter
        synth = cls(model, config, device, precision, vocoder, max_reference_seconds=max_reference_seconds,
                    postfilter=GlobalVariance.from_state_dict(variance) if postfilter and variance else None,
                    speaker_table=SpeakerTable.from_checkpoint(state, str(path)))
        synth.calibration = Calibration.from_checkpoint(state, path)
        synth.checkpoint = Path(path)
        synth.enrolments = load_enrolments(enrolment_file(path))
        synth.checkpoint_state = {k: v for k, v in state.items() if k in ("step", "epoch", "trainer", "speakers")}
        return synth

    @property
    def controls(self) -> dict[str, KnobCalibration]:
        """The calibrated knobs by name, each with its unit and [minimum, maximum]; {} if none."""
        return dict(self.calibration.knobs) if self.calibration else {}

    def model_card(self) -> ModelCard:
        """This model's `ModelCard` (model_card.py): sizes, capacity, KL per dim, knobs, vocoder, training."""
        return card_of(self.config, self.calibration, self.checkpoint_state, self.checkpoint, self.vocoder,
                       self.speakers)

    # ----------------------------------------------------------------------------- speakers
    @property
    def speakers(self) -> list[str]:
        """The voices this model speaks in, by name; [] for a model without speaker conditioning."""
        return list(self.speaker_table.names)

    def speaker_ids(self, speaker: Speaker, batch: int, argument: str = "speaker") -> Optional[torch.Tensor]:
        """(B,) ids of one name or one per item (SpeakerTable.ids); None for a model without speakers."""
        ids = self.speaker_table.ids(speaker, batch, argument)
        return None if ids is None else torch.tensor(ids, dtype=torch.long, device=self.device)

    def enroll(self, name: str, recordings: Sequence[Reference], save: bool = True) -> Enrolment:
        """Know a reference speaker the model never heard by the register of their `recordings`
        (wav paths or waveforms; 5 or so of a sentence each), so that `reference_speaker=name`
        reads their pitch relative to their own range and `pitch_mode="absolute"` lands at their
        Hz. Enrolling a name again replaces it. `save`: also store every enrolment beside the
        checkpoint this Synthesizer was loaded from (atomically; enrolment.py)."""
        if name in self.speaker_table.names:
            raise ConfigError(f"enroll: {name!r} is a voice this model was trained on; give the new speaker "
                              "another name", field="name")
        if isinstance(recordings, (str, os.PathLike, np.ndarray, torch.Tensor)):
            recordings = [recordings]
        tracks = [self.reference_tracks(recording) for recording in recordings]
        enrolment = measure_enrolment(name, tracks, self.audio.hop_length / self.audio.sample_rate)
        with self._enrolling:  # two enrolments at once must not lose one
            enrolments = {**self.enrolments, name: enrolment}  # a new dict: a serving thread may be reading
            if save and self.checkpoint is not None:
                save_enrolments(enrolment_file(self.checkpoint), enrolments)  # kept only once it is written
            self.enrolments = enrolments
        return enrolment

    def reference_registers(self, reference_speaker: Speaker, batch: int) -> list[float]:
        """(B,) ln Hz register of each item's reference speaker: an enrolled one's, a training
        voice's, NaN where the speaker is not named (or the checkpoint records no register)."""
        if reference_speaker is None:
            return [math.nan] * batch
        return [self._register(name) for name in self._reference_speaker_names(reference_speaker, batch)]

    @staticmethod
    def _reference_speaker_names(reference_speaker: Speaker, batch: int) -> list[str]:
        """(B,) the named reference speaker of each item: one name for all, or one per item."""
        names = [reference_speaker] if isinstance(reference_speaker, str) else list(reference_speaker)
        if len(names) not in (1, batch):
            raise UnknownSpeakerError(f"reference_speaker: got {len(names)} speakers for {batch} references "
                                      f"(give 1 or {batch})", field="reference_speaker")
        return names * (batch // len(names))

    def _refuse_enrolled(self, reference_speaker: Speaker, why: str) -> None:
        names = [reference_speaker] if isinstance(reference_speaker, str) else list(reference_speaker or [])
        enrolled = [name for name in names if name in self.enrolments]
        if enrolled:
            raise ConfigError(f"reference_speaker: {enrolled[0]!r} is enrolled, not trained on: {why}",
                              field="reference_speaker")

    def _register(self, name: str) -> float:
        if name in self.enrolments:
            return self.enrolments[name].log_f0_mean
        if name in self.speaker_table.names:
            return self.speaker_table.register(name, "reference_speaker")
        known = ", ".join(self.speakers) or "none (a single-speaker model)"
        enrolled = ", ".join(self.enrolments) or "none"
        raise UnknownSpeakerError(f"reference_speaker: unknown speaker {name!r}; this model knows {known}, and has "
                                  f"enrolled {enrolled}; enroll a new voice with synth.enroll({name!r}, [wav, ...]) "
                                  "or `prosody-vae enroll`", field="reference_speaker")

    # ----------------------------------------------------------------------------- inputs
    def reference_mel(self, reference: Reference) -> torch.Tensor:
        """A wav path, a waveform (N,) array/tensor, or a log-mel (T, n_mels) -> log-mel (T, n_mels).

        Refused, with a message naming the file (or "reference"): what `audio.load_reference`
        refuses (a file that cannot be read, a wrong shape, NaN or infinite values, a waveform
        too short for one STFT frame, 17 ms at 22.05 kHz, digital silence, anything longer than
        `max_reference_seconds`), and samples so large that the log-mel overflows. Other sample
        rates and stereo files are resampled and mixed down by `load_wav`.
        """
        tensor, source = load_reference(reference, self.audio, self.max_reference_seconds)
        if tensor.dim() == 2:
            return tensor.to(self.device)
        with torch.no_grad():
            mel = self.mel_spec(tensor.to(self.device))
        if not torch.isfinite(mel).all():  # float samples near float32's limit overflow the power spectrum
            raise ReferenceInputError(f"{source}: samples too large for a log-mel (audio should lie in [-1, 1])")
        return mel

    def reference_tracks(self, reference: "Reference | FrameFeatures") -> FrameFeatures:
        """The log-F0, voicing and energy tracks (pitch.py) that a model with reference_input
        "prosody" reads, of a wav path or waveform (checked as in `reference_mel`); tracks given
        as `FrameFeatures` pass through. A log-mel holds no F0 track and is refused."""
        if isinstance(reference, FrameFeatures):
            return reference
        tensor, source = load_reference(reference, self.audio, self.max_reference_seconds)
        if tensor.dim() == 2:
            raise ReferenceInputError(f"{source}: this model reads the reference's pitch (reference_input='prosody'): "
                                      "give a wav path or a waveform, not a log-mel")
        return frame_features(tensor.numpy(), self.audio, source=source)

    def _encode_texts(self, texts: Sequence[str], argument: str = "texts") -> tuple[torch.Tensor, torch.Tensor]:
        """Ids (B, L) padded and lengths (B,); a refused text is a TextError naming `argument`[i]."""
        ids = []
        for i, text in enumerate(texts):
            try:
                ids.append(torch.tensor(self.text.encode(text), dtype=torch.long))
            except TextError as exc:
                where = f"{argument}[{i}]" if len(texts) > 1 else argument
                raise TextError(f"{where}: {exc}", field=where) from None
        padded = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=self.text.pad_id)
        return padded.to(self.device), torch.tensor([len(i) for i in ids], device=self.device)

    @staticmethod
    def _seeds(seed: Seed, batch: int) -> list[int]:
        """One seed per item from `seed`: None (0), an int, or a sequence of `batch` ints."""
        if seed is None or isinstance(seed, (int, np.integer)):
            seeds = [0 if seed is None else seed] * batch
        else:
            seeds = list(seed) if isinstance(seed, Sequence) else [seed]
        if len(seeds) != batch or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds):
            raise ReferenceInputError(f"seed must be an int or {batch} ints (one per text), got {seed!r}",
                                      field="seed")
        return [int(s) for s in seeds]

    def _generators(self, seed: Seed, texts: Sequence[str],
                    sample_indices: Optional[Sequence[int]] = None) -> list[torch.Generator]:
        """One generator per item, from (its seed, its text, its sample index): batching never changes
        an item's noise. Sample 0 keys on (seed, text) alone, as before samples existed."""
        seeds = self._seeds(seed, len(texts))
        indices = sample_indices or [0] * len(texts)
        keys = [f"{s}\x00{text}" + (f"\x00{j}" if j else "") for s, text, j in zip(seeds, texts, indices)]
        return [torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1)
                for key in keys]

    # ----------------------------------------------------------------------------- prosody
    @torch.no_grad()
    def encode(self, reference: Reference | Sequence[Reference], reference_text: str | Sequence[str] | None = None,
               reference_speaker: Speaker = None) -> Posterior:
        """Posterior(s) of one reference or a list; z is the mean. Draw samples with `tts(mode="sample")`.
        `reference_speaker`, who speaks the reference, is read by a "V+S" or "V+T+S" model
        (default: the first voice; `tts` defaults it to its `speaker`) and by a "prosody" model
        (`reference_input`)."""
        references = list(reference) if isinstance(reference, (list, tuple)) else [reference]
        mel, lengths = self.reference_input(references, reference_speaker)
        text = text_lengths = None
        if reference_text is not None:
            transcripts = [reference_text] if isinstance(reference_text, str) else list(reference_text)
            if len(transcripts) != len(references):
                raise ReferenceInputError(f"got {len(transcripts)} reference transcripts for {len(references)} "
                                          "references", field="reference_text")
            text, text_lengths = self._encode_texts(transcripts, "reference_text")
        speaker_ids = None
        if self.model.config.posterior.endswith("+S"):
            self._refuse_enrolled(reference_speaker, f"a {self.model.config.posterior} posterior reads the reference "
                                                     "speaker's embedding, which only a training voice has")
            speaker_ids = self.speaker_ids(reference_speaker, len(references), "reference_speaker")
        return self.model.encode_reference(mel, lengths, text, text_lengths, speaker_ids, mode="mean")

    def reference_input(self, references: Sequence[Reference], reference_speaker: Speaker = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the reference encoder reads, padded, and lengths (B,): log-mels (B, T, n_mels), or
        for a model with reference_input "prosody" the tracks (B, T, N_FEATURES) of
        audio/prosody_tracks.py, each relative to its speaker's register or, where the speaker is
        not named or enrolled, to the known register nearest its own mean pitch (to its own mean
        for a model trained with register_dropout)."""
        if self.model.config.reference_input == "mel":
            mels = [self.reference_mel(r) for r in references]
            lengths = torch.tensor([m.shape[0] for m in mels], device=self.device)
            return torch.nn.utils.rnn.pad_sequence(mels, batch_first=True, padding_value=self.audio.pad_value), lengths
        log_f0, voiced, energy, lengths = batch_tracks([self.reference_tracks(r) for r in references])
        registers = torch.tensor(self.reference_registers(reference_speaker, len(references)))  # (B,) NaN: not named
        if not self.model.config.register_dropout:  # a model that never met a speaker it could not place: guess
            unnamed = nearest_register(utterance_register(log_f0, voiced), self.known_registers)
            registers = torch.where(torch.isnan(registers), unnamed, registers)
        features = reference_features(log_f0, voiced, energy, registers)  # NaN: against the item's own mean
        return features.to(self.device), lengths.to(self.device)

    def prosody(self, texts: Sequence[str], reference=None, reference_text=None, z=None,
                mode: Literal["mean", "sample"] = "mean", temperature: float = 1.0,
                seed: Seed = None, strength: float = 1.0, controls: Optional[Mapping[str, float]] = None,
                sample_indices: Optional[Sequence[int]] = None, reference_speaker: Speaker = None) -> torch.Tensor:
        """The z (B, latent) that `tts` would use for these texts (`sample_indices` (B,): see `tts`)."""
        if mode not in ("mean", "sample"):
            raise ReferenceInputError(f"mode must be 'mean' or 'sample', got {mode!r}", field="mode")
        for name, value in (("temperature", temperature), ("strength", strength)):
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise ReferenceInputError(f"{name} must be a finite number >= 0, got {value!r}", field=name)
        batch, latent = len(texts), self.model.config.latent_dim
        shift = self._control_offset(controls)  # checked before any encoding
        generators = self._generators(seed, texts, sample_indices)
        noise = torch.stack([torch.randn(latent, generator=g) for g in generators]).to(self.device)
        if z is not None:
            z = torch.as_tensor(z, dtype=torch.float32, device=self.device)
            z = z.expand(batch, -1) if z.dim() == 1 else z
            if z.shape != (batch, latent):
                raise ReferenceInputError(f"z must be ({latent},) or ({batch}, {latent}), got {tuple(z.shape)}",
                                          field="z")
            z = strength * z
        elif reference is None:
            z = temperature * noise  # the prior N(0, I) at this temperature
        else:
            references = list(reference) if isinstance(reference, (list, tuple)) else [reference]
            if len(references) not in (1, batch):
                raise ReferenceInputError(f"got {len(references)} references for {batch} texts (give 1 or {batch})",
                                          field="reference")
            posterior = self.encode(references, reference_text, reference_speaker)
            mean, std = strength * posterior.mean.expand(batch, -1), posterior.std.expand(batch, -1)
            z = mean if mode == "mean" else mean + temperature * std * noise
        return z if shift is None else z + shift.to(self.device)

    def control_paths(self, controls: Optional[Mapping[str, float]]) -> dict[str, dict[str, float]]:
        """The requested knobs, checked, by the path each takes (controls.control_paths)."""
        return control_paths(self.calibration, controls, pitch_path=self.pitch_path,
                             pitch_head=self.model.config.pitch_head, checkpoint=self.checkpoint)

    def _control_offset(self, controls: Optional[Mapping[str, float]]) -> Optional[torch.Tensor]:
        """The z shift (latent,) of the knobs that act in z; None when none does."""
        in_z = self.control_paths(controls)["z"]
        return self.calibration.offset(in_z) if in_z else None

    # ----------------------------------------------------------------------------- synthesis
    @torch.no_grad()
    def tts(self, texts: str | Sequence[str], reference=None, reference_text=None, z=None,
            mode: Literal["mean", "sample"] = "mean", temperature: float = 1.0, seed: Seed = None,
            n_samples: int = 1, strength: float = 1.0, controls: Optional[Mapping[str, float]] = None,
            speaker: Speaker = None, reference_speaker: Speaker = None,
            pitch_mode: Literal["relative", "absolute"] = "relative", reference_range: bool = False,
            reference_level: bool = False, vocode: bool = True,
            max_decoder_steps: Optional[int] = None) -> SynthesisResult:
        """Synthesise one text or a batch (see the module docstring for the prosody choices, seeds,
        `n_samples`, `strength`, `controls`, the speakers, `pitch_mode`, `reference_range` and
        `reference_level`). With `n_samples=K` the result holds K items per text, text by text.
        `max_decoder_steps` bounds the free-running decoder (default: the model config's)."""
        texts = _as_texts(texts)
        items = _Items.fan_out(texts, self._seeds(seed, len(texts)), n_samples, reference, reference_text, z,
                               speaker, reference_speaker)
        text, text_lengths = self._encode_texts(items.texts)  # first: a bad text fails before any encoding
        speaker_ids = self.speaker_ids(items.speaker, len(items.texts))
        f0_shift = self._pitch_mode_shift(pitch_mode, speaker_ids, items.reference_speaker, len(items.texts))
        spread = self._reference_spreads(items) if reference_range else None
        gains = self._reference_level_gains(items) if reference_level else None
        z = self.prosody(items.texts, items.reference, items.reference_text, items.z, mode, temperature, items.seeds,
                         strength, controls, items.sample_indices, self._reference_voice(items))
        out = self.model.infer(text, text_lengths, z=z, speaker_ids=speaker_ids,
                               generator=self._generators(items.seeds, items.texts, items.sample_indices),
                               max_decoder_steps=max_decoder_steps)
        mels, f0 = self._outputs(out, f0_shift, spread)
        if gains is not None:
            mels = [edit_level(mel, gain) for mel, gain in zip(mels, gains)]
        mels, f0 = self._edit_outputs(mels, f0, self.control_paths(controls))
        return SynthesisResult(
            mel=mels, wav=[self.vocode(m, f) for m, f in zip(mels, f0 or [None] * len(mels))] if vocode else [],
            alignment=[out.alignments[i, : int(out.stop_steps[i]), : int(text_lengths[i])] for i in range(len(mels))],
            stop_step=out.stop_steps.tolist(), hit_max_steps=out.hit_max_steps.tolist(), z=z, f0=f0)

    def _pitch_mode_shift(self, pitch_mode: str, speaker_ids: Optional[torch.Tensor], reference_speaker: Speaker,
                          batch: int) -> Optional[torch.Tensor]:
        """(B,) ln-F0 shift of pitch_mode "absolute"; None for "relative"."""
        if pitch_mode not in ("relative", "absolute"):
            raise ConfigError(f"pitch_mode must be 'relative' or 'absolute', got {pitch_mode!r}", field="pitch_mode")
        return self.absolute_pitch_shift(speaker_ids, reference_speaker, batch) if pitch_mode == "absolute" else None

    def _reference_voice(self, items: _Items) -> Speaker:
        """Who speaks the reference: as named, else for a "mel" model the output's voice; a
        "prosody" model instead matches an unnamed reference to the nearest known register."""
        speaker = items.speaker
        if (items.reference_speaker is None and self.model.config.reference_input == "mel"
                and (isinstance(speaker, str) or (speaker and len(speaker) == items.n_references))):
            return speaker
        return items.reference_speaker

    def check_reference_range(self, reference) -> None:
        """Refuse `reference_range=True` without a reference or a pitch head (a ConfigError)."""
        if not self.model.config.pitch_head:
            raise ConfigError("reference_range=True sets the output's F0 range, which needs a model with a pitch "
                              "head (pitch_head = true)", field="reference_range")
        if reference is None:
            raise ConfigError("reference_range=True needs a reference", field="reference_range")

    def _reference_spreads(self, items: _Items) -> torch.Tensor:
        """(B,) ln spread of each item's reference's ln F0, for `reference_range=True`."""
        self.check_reference_range(items.reference)
        tracks = self._reference_track_list(items)
        log_f0, voiced, _, _ = batch_tracks(tracks)
        spread = reference_log_spread(log_f0, voiced).to(self.device)  # NaN: too little voiced to tell
        return spread.expand(len(items.texts)) if len(tracks) == 1 else spread

    def _reference_track_list(self, items: _Items) -> list[FrameFeatures]:
        """Each reference's tracks, measured once per call (reference_range and reference_level
        both read them). A "prosody" model's items then carry them, so that its encoder does not
        track them again."""
        if items.reference_tracks is None:
            many = isinstance(items.reference, (list, tuple))
            references = items.reference if many else [items.reference]
            items.reference_tracks = [self.reference_tracks(r) for r in references]
            if self.model.config.reference_input == "prosody":
                items.reference = items.reference_tracks if many else items.reference_tracks[0]
        return items.reference_tracks

    def check_reference_level(self, reference, reference_speaker: Speaker) -> None:
        """Refuse `reference_level=True` without a reference or without enrolled reference speakers
        whose level the enrolment recorded (a ConfigError)."""
        if reference is None:
            raise ConfigError("reference_level=True needs a reference", field="reference_level")
        names = [reference_speaker] if isinstance(reference_speaker, str) else list(reference_speaker or [])
        for name in names or [None]:
            enrolment = self.enrolments.get(name)
            if enrolment is None:
                raise ConfigError(
                    "reference_level=True reads how much louder or softer than usual the reference is spoken, which "
                    "needs reference_speaker= an enrolled speaker (synth.enroll / `prosody-vae enroll`, with the "
                    f"reference's microphone); got {name!r}. One recording cannot tell a loud voice from a hot "
                    "microphone", field="reference_level")
            if not math.isfinite(enrolment.level_db):
                raise ConfigError(f"reference_level=True: {name!r} was enrolled before enrolments recorded a level; "
                                  "enroll them again", field="reference_level")

    def _reference_level_gains(self, items: _Items) -> list[float]:
        """(B,) dB to add to each item's mel, for `reference_level=True`: its reference's speech
        level less its speaker's enrolled one, bounded by MAX_LEVEL_GAIN_DB."""
        self.check_reference_level(items.reference, items.reference_speaker)
        levels = [speech_level_db(track.energy) for track in self._reference_track_list(items)]
        batch = len(items.texts)
        speakers = self._reference_speaker_names(items.reference_speaker, batch)
        levels = levels * (batch // len(levels))
        return [float(np.clip(level - self.enrolments[name].level_db, -MAX_LEVEL_GAIN_DB, MAX_LEVEL_GAIN_DB))
                for level, name in zip(levels, speakers)]

    @staticmethod
    def _outputs(out: InferenceOutput, f0_shift: Optional[torch.Tensor], spread: Optional[torch.Tensor] = None
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each item's postnet mel (T_i, n_mels) and, with a pitch head, its F0 (T_i,) in Hz (0 unvoiced),
        its voiced frames scaled to the ln spread `spread` (B,) where one is given."""
        lengths = out.mel_lengths.tolist()
        mels = [out.mel_postnet[i, :n].float() for i, n in enumerate(lengths)]
        if out.log_f0 is None:
            return mels, []
        log_f0 = out.log_f0 if f0_shift is None else out.log_f0 + f0_shift[:, None]  # (B, T)
        f0 = []
        for i, n in enumerate(lengths):
            track, voiced = log_f0[i, :n], out.voiced[i, :n]
            if spread is not None:
                track = apply_range(track[None], voiced[None], spread[i : i + 1])[0]
            f0.append(torch.where(voiced, track.exp(), 0.0).float())
        return mels, f0

    def _edit_outputs(self, mels: list[torch.Tensor], f0: list[torch.Tensor], paths: dict[str, dict[str, float]]
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The knobs that act on the outputs (energy on the mel, the pitch knobs on the F0), then
        the postfilter (last: its floor also bounds a quieter mel)."""
        if "energy" in paths["mel"]:
            mels = [edit_level(mel, paths["mel"]["energy"]) for mel in mels]
        if self.postfilter is not None:
            mels = [self.postfilter(mel) for mel in mels]
        if paths["f0"]:
            pitch, pitch_range = paths["f0"].get("pitch", 0.0), paths["f0"].get("pitch_range", 1.0)
            f0 = [edit_f0(track, pitch, pitch_range) for track in f0]
        return mels, f0

    def absolute_pitch_shift(self, speaker_ids: Optional[torch.Tensor], reference_speaker: Speaker,
                             batch: int) -> torch.Tensor:
        """(B,) ln-F0 to add to each item: the reference speaker's register minus the target's."""
        if speaker_ids is None or not self.model.config.pitch_head:
            raise ConfigError("pitch_mode='absolute' needs a model with speakers and a pitch head; this one has "
                              f"n_speakers={self.model.config.n_speakers}, pitch_head={self.model.config.pitch_head}",
                              field="pitch_mode")
        if reference_speaker is None:
            raise ConfigError("pitch_mode='absolute' needs reference_speaker= (who speaks the reference)",
                              field="reference_speaker")
        target = [self.speaker_table.register(self.speakers[i]) for i in speaker_ids.tolist()]
        shift = np.subtract(self.reference_registers(reference_speaker, batch), target)  # (B,) ln Hz
        if not np.isfinite(shift).all():
            raise ConfigError("pitch_mode='absolute' needs the registers of the target voice and of the reference "
                              "speaker; this checkpoint records none for some of them (a checkpoint from before "
                              "registers, or a voice without voiced training frames)", field="pitch_mode")
        return torch.as_tensor(shift, dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor, f0: Optional[torch.Tensor] = None) -> np.ndarray:
        """log-mel (T, n_mels) -> waveform (N,) float32, by the vocoder hook or Griffin-Lim. A
        pitch-aware vocoder (`uses_pitch`, e.g. "source-filter") also reads the F0 track (T,) in Hz."""
        if self.vocoder is None:
            return griffin_lim(mel, n_iter=self.griffin_lim_iterations, mel_spec=self.mel_spec).cpu().numpy()
        return run_vocoder(self.vocoder, mel, f0).float().cpu().numpy()

    def interpolate(self, reference_a: Reference, reference_b: Reference, text: str, steps: int = 5,
                    seed: Optional[int] = None) -> SynthesisResult:
        """`text` spoken `steps` times, z moving linearly from reference_a's posterior mean to b's."""
        if steps < 2:
            raise ReferenceInputError(f"steps must be >= 2, got {steps}", field="steps")
        ends = self.encode([reference_a, reference_b]).mean  # (2, latent)
        weights = torch.linspace(0, 1, steps, device=self.device)[:, None]
        return self.tts([text] * steps, z=(1 - weights) * ends[0] + weights * ends[1], seed=seed)

    # ----------------------------------------------------------------------------- latent dims
    def rank_dimensions(self, references: Sequence[Reference]) -> list[tuple[int, float]]:
        """Latent dimensions by their mean KL over `references`, most informative first: the dims
        worth scaling or shifting. A dim with KL near 0 is unused (collapsed onto the prior)."""
        kl = self.encode(list(references)).kl_per_dim.mean(dim=0)  # (latent,)
        return sorted(((d, float(v)) for d, v in enumerate(kl)), key=lambda item: -item[1])

    @staticmethod
    def edit_latent(z: torch.Tensor, dim: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        """A copy of z (..., latent) with one dimension scaled then shifted."""
        if not 0 <= dim < z.shape[-1]:
            raise ReferenceInputError(f"dim must be in [0, {z.shape[-1]}), got {dim}", field="dim")
        z = z.clone()
        z[..., dim] = z[..., dim] * scale + shift
        return z


def _as_texts(texts: str | Sequence[str]) -> list[str]:
    if not isinstance(texts, (str, list, tuple)):
        raise TextError(f"texts must be a str or a list of str, got {type(texts).__name__}", field="texts")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise TextError("texts: no text to synthesise", field="texts")
    return texts


def model_card(checkpoint: str | os.PathLike, vocoder: Optional[Vocoder | str] = "auto") -> ModelCard:
    """The card of a checkpoint, with the vocoder `Synthesizer.from_checkpoint(vocoder=...)` loads."""
    return Synthesizer.from_checkpoint(checkpoint, vocoder=vocoder).model_card()


def save_result(result: SynthesisResult, paths: Sequence[str | os.PathLike], sample_rate: int) -> list[Path]:
    return [save_wav(path, wav, sample_rate) for path, wav in zip(paths, result.wav)]
