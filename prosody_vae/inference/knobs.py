"""Prosody knobs a person understands: pitch (semitones), pitch range and rate (ratios), energy (dB).

    synth = Synthesizer.from_checkpoint("run/checkpoints/best.pt")       # calibrated by calibrate.py
    synth.tts("Hello.", reference="a.wav", controls={"pitch": +2, "rate": 0.8})

This module is what a calibrated model carries: the knobs, their calibration record, the checks
of a request and the exact F0 and mel edits. calibrate.py fits the directions in z. Each knob
takes one path: "z" (a direction in the latent, so the mel follows and any vocoder hears it),
"f0" (the pitch knobs of a model with a pitch head edit its predicted F0, `edit_f0`), "mel"
(energy as a gain on the predicted mel, `edit_level`) or "none" (not offered).

A knob's range is the spread of its quantity over the calibration corpus (5th to 95th
percentile, relative to the median); requests outside it are refused, as are unknown names and a
knob on a model that was never calibrated (the message gives the `prosody-vae calibrate`
command). The calibration is a plain dict in the checkpoint, under "calibration", with its
`version` (`Calibration.from_checkpoint` reads it back).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence

import torch

from ..plugin.errors import CheckpointError, ControlError

CALIBRATION_VERSION = 1
PITCH_KNOBS = ("pitch", "pitch_range")


@dataclass(frozen=True)
class Knob:
    """How a knob's value maps onto the fitted target: `log` knobs are ratios (target is ln)."""

    name: str
    unit: str
    statistic: str  # stats.UtteranceStats field
    log: bool

    @property
    def neutral(self) -> float:
        return 1.0 if self.log else 0.0

    def to_target(self, value: float) -> float:
        return math.log(value) if self.log else value

    def from_target(self, shift: float) -> float:
        return math.exp(shift) if self.log else shift


KNOBS: dict[str, Knob] = {k.name: k for k in (
    Knob("pitch", "semitones", "f0_mean_st", log=False),
    Knob("pitch_range", "ratio", "f0_range_st", log=True),
    Knob("rate", "ratio", "speaking_rate", log=True),
    Knob("energy", "dB", "energy_db", log=False),
)}


@dataclass
class KnobCalibration:
    name: str
    unit: str
    direction: list[float]  # (latent,) z shift per unit of the fitted target (ln for ratios)
    minimum: float  # allowed values, in the knob's unit
    maximum: float
    r2: float  # of the ridge fit on the posterior means, held-out folds
    realised_gain: float  # target change per unit along the fitted direction, before rescaling (1: not refined)
    path: str  # "z": moves z; "f0": edits the predicted F0 (pitch knobs); "mel": the mel's level (energy); "none"

    def check(self, value: float) -> None:
        """A ControlError unless `value` is a finite number in the calibrated range."""
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ControlError(f"control {self.name!r} must be a finite number, got {value!r}")
        if not self.minimum <= value <= self.maximum:
            raise ControlError(f"control {self.name!r} = {value:g} is outside its calibrated range "
                               f"[{self.minimum:.3g}, {self.maximum:.3g}] {self.unit}")


@dataclass
class Calibration:
    """Knob directions of one model, fitted on one corpus (module docstring)."""

    knobs: dict[str, KnobCalibration]
    data: str  # the corpus folder
    n_utterances: int
    kl_per_dim: list[float]  # mean KL (nats) of each latent dimension over the corpus
    refined: bool
    version: int = CALIBRATION_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping, where: str = "calibration") -> "Calibration":
        version = data.get("version") if isinstance(data, Mapping) else None
        if version != CALIBRATION_VERSION:
            raise CheckpointError(f"{where}: calibration version {version!r}, this prosody_vae reads version "
                                  f"{CALIBRATION_VERSION}; run `prosody-vae calibrate` again")
        try:
            knobs = {name: KnobCalibration(**knob) for name, knob in data["knobs"].items()}
            return cls(**{**data, "knobs": knobs})
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{where}: malformed calibration ({exc})") from None

    @classmethod
    def from_checkpoint(cls, state: Mapping[str, Any], path: str | os.PathLike) -> "Calibration | None":
        """The calibration stored in a checkpoint's dict, or None if it was never calibrated (every
        checkpoint written before knobs existed)."""
        stored = state.get("calibration")
        return None if stored is None else cls.from_dict(stored, f"{path} (calibration)")

    def offset(self, controls: Mapping[str, float]) -> torch.Tensor:
        """The z shift (latent,) for `controls` {name: value}; every name and value is checked."""
        shift = torch.zeros(len(self.kl_per_dim))
        for name, value in controls.items():
            knob = self.knob(name)
            knob.check(value)
            shift += KNOBS[name].to_target(float(value)) * torch.tensor(knob.direction)
        return shift

    def knob(self, name: str) -> KnobCalibration:
        _check_name(name)
        if name not in self.knobs:
            raise ControlError(f"control {name!r} is not calibrated on this model (calibrated: "
                               f"{', '.join(self.knobs) or 'none'})")
        return self.knobs[name]


def _check_name(name: str) -> None:
    if name not in KNOBS:
        raise ControlError(f"unknown control {name!r}; the knobs are {', '.join(KNOBS)}")


def requested_changes(controls: Optional[Mapping[str, float]]) -> dict[str, float]:
    """The controls that ask for a change: a neutral value (0 st, ratio 1, 0 dB) is the same as
    leaving the knob out, also on a model without calibration. Names are checked here."""
    if controls is None:
        return {}
    if not isinstance(controls, Mapping):
        raise ControlError(f"controls must be a mapping of knob name to value, got {type(controls).__name__}")
    for name in controls:
        _check_name(name)
    return {name: value for name, value in controls.items() if value != KNOBS[name].neutral}


def edit_f0(f0: torch.Tensor, pitch: float = 0.0, pitch_range: float = 1.0) -> torch.Tensor:
    """The pitch knobs applied to an F0 track (T,) in Hz, 0 where unvoiced: every voiced frame
    moved by `pitch` semitones, and its distance from the track's mean (in log F0) times `pitch_range`."""
    voiced = f0 > 0
    if not voiced.any():
        return f0
    log_f0 = f0.clamp_min(1e-3).log()
    centre = log_f0[voiced].mean()
    edited = centre + pitch_range * (log_f0 - centre) + pitch * math.log(2.0) / 12.0
    return torch.where(voiced, edited.exp(), f0)


def edit_level(mel: torch.Tensor, energy_db: float) -> torch.Tensor:
    """A log-mel (T, n_mels) of natural-log magnitudes made `energy_db` louder (20 log10 of magnitude)."""
    return mel + energy_db * math.log(10.0) / 20.0


def control_paths(calibration: Optional[Calibration], controls: Optional[Mapping[str, float]], *,
                  pitch_path: str = "auto", pitch_head: bool = True,
                  checkpoint: str | os.PathLike | None = None) -> dict[str, dict[str, float]]:
    """The controls that ask for a change, checked, by the path they take: {"z"|"f0"|"mel": {name: value}}.
    `pitch_path` "z" or "f0" overrides the calibration's path for the pitch knobs ("auto" keeps it)."""
    moved = requested_changes(controls)
    if moved and calibration is None:
        raise uncalibrated_error(list(moved), checkpoint)
    paths: dict[str, dict[str, float]] = {"z": {}, "f0": {}, "mel": {}}
    for name, value in moved.items():
        knob = calibration.knob(name)
        knob.check(value)
        path = pitch_path if pitch_path != "auto" and name in PITCH_KNOBS else knob.path
        if path == "none":
            raise ControlError(f"control {name!r} is not available on this model: its latent does not encode "
                               f"it (held-out r2 {knob.r2:.2f}, realised gain {knob.realised_gain:.2f})")
        paths[path][name] = value
    if paths["f0"] and not pitch_head:
        raise ControlError(f"control(s) {', '.join(paths['f0'])} on the F0 path need a model with a pitch head")
    return paths


def calibrate_command(checkpoint: str | os.PathLike | None) -> str:
    """The shell command that calibrates `checkpoint` (on its training data)."""
    return f"prosody-vae calibrate --checkpoint {checkpoint or 'CHECKPOINT'} --data TRAINING_DATA"


def uncalibrated_error(names: Sequence[str], checkpoint: str | os.PathLike | None) -> ControlError:
    return ControlError(f"control(s) {', '.join(map(repr, names))}: this model has no knob calibration; "
                        f"make one with `{calibrate_command(checkpoint)}`")


# ------------------------------------------------------------------------------------------ fit
