"""The model card `prosody-vae inspect` prints: what a checkpoint is and which knobs it offers.

    card = model_card("run/checkpoints/best.pt")      # or Synthesizer.model_card() (synthesizer.py)
    print(card.format())
    json.dumps(card.to_dict())

Everything comes from the checkpoint: its config (preset, latent size, capacity), its training
bookkeeping (steps, validation figures, speakers) and its knob calibration (inference/knobs.py), which
also holds the KL of each latent dimension measured over the calibration corpus. The vocoder is
the one the Synthesizer uses. This module only describes: the Synthesizer hands it what it read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..model.config import PRESETS, TacotronConfig
from ..training.config import TrainConfig
from .knobs import Calibration


_READS = {"mel": "the log-mel", "prosody": "speaker-relative pitch, voicing and level tracks"}
_PATHS = {"z": "in z", "f0": "on the predicted F0", "mel": "as a gain on the mel", "none": "not available"}


@dataclass
class KnobRange:
    name: str
    unit: str
    minimum: float
    maximum: float
    path: str  # "z", "f0", "mel" or "none" (controls.KnobCalibration)
    r2: float


@dataclass
class ModelCard:
    checkpoint: str
    preset: str  # the closest preset, with the fields that differ from it
    posterior: str  # "V", "V+T" or "V+T+S"
    latent_dim: int
    controller: str
    capacity: Optional[float]  # C in nats, for capacity-holding controllers
    pitch_head: bool
    vocoder: str
    training_steps: Optional[int]
    training_epochs: Optional[int]
    validation: dict[str, float]  # the checkpoint's last validation figures
    kl_per_dim: list[float]  # nats per dimension over the calibration corpus; [] before calibration
    knobs: list[KnobRange]
    calibration: Optional[dict]  # version, corpus and size of the knob calibration; None: not calibrated
    speakers: list[str] = field(default_factory=list)
    reference_input: str = "mel"  # what the reference encoder reads: "mel" or "prosody" (audio/prosody_tracks.py)

    def to_dict(self) -> dict:
        """Plain JSON-able containers."""
        return asdict(self)

    def format(self) -> str:
        capacity = "" if self.capacity is None else f", C = {self.capacity:g} nats"
        lines = [f"model card: {self.checkpoint}",
                 f"  preset        {self.preset}",
                 f"  posterior     {self.posterior}, latent {self.latent_dim}, {self.controller}{capacity}",
                 f"  reference     {_READS[self.reference_input]}",
                 f"  pitch head    {'yes' if self.pitch_head else 'no'}",
                 f"  vocoder       {self.vocoder}",
                 f"  training      {_or_dash(self.training_steps)} steps, {_or_dash(self.training_epochs)} epochs"]
        if self.validation:
            shown = ("postnet_l1", "kl", "align", "f0")
            lines.append("  validation    " + ", ".join(f"{k} {self.validation[k]:.3g}" for k in shown
                                                        if k in self.validation))
        lines.append(f"  speakers      {', '.join(self.speakers) or '(none: no speaker conditioning)'}")
        if self.calibration is None:
            lines.append("  knobs         none: run `prosody-vae calibrate --checkpoint "
                         f"{self.checkpoint} --data TRAINING_DATA`")
            return "\n".join(lines)
        lines.append("  KL per dim    " + " ".join(f"{v:.2f}" for v in self.kl_per_dim)
                     + f"  (nats, over {self.calibration['n_utterances']} utterances)")
        calibration = self.calibration
        lines.append(f"  knobs         calibrated on {calibration['data']} (version {calibration['version']})")
        for knob in self.knobs:
            lines.append(f"    {knob.name:<12}{knob.minimum:>+8.3g} .. {knob.maximum:<+8.3g}{knob.unit:<10}"
                         f"{_PATHS[knob.path]} (fit r2 {knob.r2:.2f})")
        return "\n".join(lines)


def _or_dash(value) -> str:
    return "-" if value is None else str(value)


def card_of(config: TrainConfig, calibration: Optional[Calibration], state: Mapping[str, Any],
            checkpoint: Optional[Path], vocoder: Any, speakers: Sequence[str]) -> ModelCard:
    """The card of a model: its training config, knob calibration, checkpoint bookkeeping (step,
    epoch, trainer; {} for a model in memory) and the vocoder it speaks with."""
    controller = config.controller
    trainer = state.get("trainer") or {}
    return ModelCard(
        checkpoint=str(checkpoint or "(in memory)"), preset=_preset_name(config.model),
        posterior=config.model.posterior, latent_dim=config.model.latent_dim, controller=controller.kind,
        capacity=controller.capacity, pitch_head=config.model.pitch_head, vocoder=_vocoder_name(vocoder),
        training_steps=state.get("step"), training_epochs=state.get("epoch"),
        validation={k: float(v) for k, v in (trainer.get("val_metrics") or {}).items()},
        kl_per_dim=list(calibration.kl_per_dim) if calibration else [],
        knobs=[KnobRange(k.name, k.unit, k.minimum, k.maximum, k.path, k.r2) for k in
               (calibration.knobs.values() if calibration else ())],
        calibration=None if calibration is None else {"version": calibration.version, "data": calibration.data,
                                                      "n_utterances": calibration.n_utterances,
                                                      "refined": calibration.refined},
        speakers=list(speakers), reference_input=config.model.reference_input,
    )


def _preset_name(model: TacotronConfig) -> str:
    """The preset the model config is closest to, and the fields it overrides."""
    own = model.to_dict()
    differing = {name: [k for k, v in TacotronConfig.preset(name).to_dict().items() if own.get(k) != v]
                 for name in PRESETS}
    name = min(differing, key=lambda n: len(differing[n]))
    fields = differing[name]
    return name if not fields else f"{name}, overriding {', '.join(fields)}"


def _vocoder_name(vocoder) -> str:
    if vocoder is None:
        return "griffin-lim (built in)"
    return getattr(vocoder, "name", None) or type(vocoder).__name__
