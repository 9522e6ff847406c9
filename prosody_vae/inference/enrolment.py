"""Enrolment: a reference speaker the model never heard, known by the register of a few recordings.

    synth.enroll("me", ["me_1.wav", "me_2.wav", "me_3.wav", "me_4.wav", "me_5.wav"])
    synth.tts("New text.", reference="me_6.wav", reference_speaker="me")             # relative pitch
    synth.tts("New text.", reference="me_6.wav", reference_speaker="me", speaker="en-us+m1",
              pitch_mode="absolute")                                                 # at my Hz

A model that reads speaker-relative pitch (reference_input "prosody") must know who speaks a
reference to tell the speaker's register from the utterance's offset within it. One utterance
of an unknown speaker cannot say which is which, so without a name the Synthesizer guesses the
nearest known register (audio/prosody_tracks.py), and a man speaking low in his range may then
be heard as a high one. An enrolment removes the guess: the speaker's register is the mean ln F0
over the voiced frames of all their recordings, the statistic the speaker table holds for each
training voice (data/speakers.py), measured with the same pitch tracker. It also records the
speaker's usual level (the mean speech level of the recordings, audio/pitch.py), against which
`reference_level=True` reads how much louder or softer a reference is spoken. Made on the same
microphone and gain as the references, the two cancel the recording chain's gain; one utterance
of an unknown speaker cannot tell a loud voice from a hot microphone.

Enrolments are kept beside the checkpoint, in `<checkpoint>.enrolled.json`, never inside it: the
checkpoint stays the artefact training wrote, and a shared read-only checkpoint can still be
enrolled against by copying it. The file is rewritten whole and atomically on each enrolment.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import write_atomically
from ..audio.pitch import FrameFeatures, speech_level_db
from ..plugin.errors import CheckpointError, ConfigError

ENROLMENT_VERSION = 2  # 2: level_db
# below this a register is a few syllables' guess: 2 s of voiced speech is about one sentence
MIN_VOICED_SECONDS = 2.0


@dataclass(frozen=True)
class Enrolment:
    name: str
    log_f0_mean: float  # ln Hz, mean over the voiced frames of every recording
    n_recordings: int
    voiced_seconds: float
    level_db: float = math.nan  # dB full scale, mean of the recordings' speech levels; NaN: enrolled before levels

    @property
    def f0_mean_hz(self) -> float:
        return math.exp(self.log_f0_mean)


def enrolment_file(checkpoint: str | os.PathLike) -> Path:
    """Where the enrolments of `checkpoint` live: beside it, never inside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".enrolled.json")


def measure_enrolment(name: str, recordings: Sequence[FrameFeatures], frame_seconds: float) -> Enrolment:
    """The register of `name` from the pitch tracks of its recordings (pooled voiced frames, as
    the speaker table pools a training voice's)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"enroll: name must be a non-empty string, got {name!r}", field="name")
    if not recordings:
        raise ConfigError(f"enroll {name!r}: give at least one recording", field="recordings")
    voiced = np.concatenate([track.log_f0[track.voiced] for track in recordings]).astype(np.float64)
    voiced_seconds = len(voiced) * frame_seconds
    if voiced_seconds < MIN_VOICED_SECONDS:
        raise ConfigError(f"enroll {name!r}: {len(recordings)} recording(s) hold {voiced_seconds:.2f} s of voiced "
                          f"speech; a register needs at least {MIN_VOICED_SECONDS:g} s (give more or longer "
                          "recordings)", field="recordings")
    level_db = float(np.mean([speech_level_db(track.energy) for track in recordings]))
    return Enrolment(name, float(voiced.mean()), len(recordings), round(voiced_seconds, 3), round(level_db, 3))


def load_enrolments(path: str | os.PathLike) -> dict[str, Enrolment]:
    """The enrolments stored at `path` by name; {} if there is no file."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if int(stored["version"]) > ENROLMENT_VERSION:
            raise CheckpointError(f"{path}: enrolment version {stored['version']} is newer than this prosody_vae "
                                  f"reads ({ENROLMENT_VERSION})")
        entries = [Enrolment(str(e["name"]), float(e["log_f0_mean"]), int(e["n_recordings"]),
                             float(e["voiced_seconds"]), float(e.get("level_db", math.nan)))
                   for e in stored["speakers"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: malformed enrolment file ({type(exc).__name__}: {exc})") from None
    return {e.name: e for e in entries}


def save_enrolments(path: str | os.PathLike, enrolments: dict[str, Enrolment]) -> Path:
    """Write every enrolment to `path`, atomically (a crash leaves the old file or the new one)."""
    data = {"version": ENROLMENT_VERSION, "speakers": [asdict(e) for e in sorted(enrolments.values(),
                                                                                  key=lambda e: e.name)]}
    try:
        write_atomically(path, json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write the enrolments ({exc.strerror or exc}); enroll with "
                              "save=False, or copy the checkpoint somewhere writable") from None
    return Path(path)
