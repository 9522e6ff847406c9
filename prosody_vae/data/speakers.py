"""The speaker table: which speaker id is which voice, and each voice's own pitch.

    table = SpeakerTable.from_utterances(train_utterances, features_of)   # at training time
    state["speaker_table"] = table.to_dict()                               # in every checkpoint
    table = SpeakerTable.from_checkpoint(state)                            # at inference
    table.index("en-us+f3")  # -> 3, or UnknownSpeakerError listing the known names

Speaker ids are positions in `names` (sorted, so the same corpus always gives the same ids).
`log_f0_mean` is each speaker's mean natural-log F0 over the voiced frames of its training
utterances: a transfer that keeps pitch relative to the speaker needs it to tell a speaker's
register from a reference's offset within it.

Checkpoints written before the table existed hold only a list of names under "speakers" (or
nothing); `from_checkpoint` reads those too, without pitch statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..plugin.errors import CheckpointError, ProsodyVAEError

TABLE_VERSION = 1


class UnknownSpeakerError(ProsodyVAEError, ValueError):
    """A speaker name the model was not trained on, or a speaker for a model without speakers."""


@dataclass(frozen=True)
class SpeakerTable:
    names: tuple[str, ...] = ()
    # per speaker: mean ln F0 (Hz) over voiced training frames; NaN where the speaker had none
    log_f0_mean: Optional[tuple[float, ...]] = None
    version: int = field(default=TABLE_VERSION)

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise CheckpointError(f"speaker table: duplicate names in {list(self.names)}")
        if self.log_f0_mean is not None and len(self.log_f0_mean) != len(self.names):
            raise CheckpointError(f"speaker table: {len(self.log_f0_mean)} F0 means for {len(self.names)} speakers")

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str, argument: str = "speaker") -> int:
        """The id of speaker `name`; UnknownSpeakerError (listing the known names) if there is none."""
        if name not in self.names:
            known = ", ".join(repr(n) for n in self.names) if any(self.names) else "none (a single-speaker model)"
            raise UnknownSpeakerError(f"{argument}: unknown speaker {name!r}; this model knows {known}", field=argument)
        return self.names.index(name)

    def ids(self, speaker: "str | Sequence[str] | None", batch: int, argument: str = "speaker") -> Optional[list[int]]:
        """(B,) ids of one name or one per item; None for a model without speakers (an empty
        table). No name means the table's first voice. UnknownSpeakerError lists the known names."""
        if not self.names:
            if speaker is not None:
                raise UnknownSpeakerError(f"{argument}={speaker!r}: this model was trained without speaker "
                                          f"conditioning; it speaks in one voice (leave {argument} out)", field=argument)
            return None
        names = [self.names[0] if speaker is None else speaker] if isinstance(speaker, (str, type(None))) \
            else list(speaker)
        if len(names) not in (1, batch):
            raise UnknownSpeakerError(f"{argument}: got {len(names)} speakers for {batch} texts (give 1 or {batch})",
                                      field=argument)
        return [self.index(name, argument) for name in names] * (batch // len(names))

    def register(self, name: str, argument: str = "speaker") -> float:
        """The speaker's mean ln F0 (Hz) over its voiced training frames; NaN where none is recorded
        (a checkpoint from before registers, or a voice without voiced frames)."""
        index = self.index(name, argument)
        return math.nan if self.log_f0_mean is None else self.log_f0_mean[index]

    def f0_mean_hz(self, name: str) -> float:
        """The speaker's mean F0 in Hz (geometric mean over voiced frames); NaN if not recorded."""
        return math.exp(self.register(name))

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_utterances(cls, names: Sequence[str], speaker_of: Sequence[str],
                        log_f0_of: Optional[Callable[[int], tuple[np.ndarray, np.ndarray]]] = None) -> "SpeakerTable":
        """The table of `names` (the ids' order); with `log_f0_of(i)` -> (log_f0 (T,), voiced (T,))
        for utterance i, whose speaker is `speaker_of[i]`, also each speaker's mean log-F0."""
        if log_f0_of is None:
            return cls(tuple(names))
        sums, counts = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0)
        for i, speaker in enumerate(speaker_of):
            log_f0, voiced = log_f0_of(i)
            sums[speaker] += float(np.sum(log_f0[voiced], dtype=np.float64))
            counts[speaker] += int(voiced.sum())
        return cls(tuple(names), tuple(sums[n] / counts[n] if counts[n] else math.nan for n in names))

    # ----------------------------------------------------------------------------- checkpoints
    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "names": list(self.names),
                "log_f0_mean": None if self.log_f0_mean is None else list(self.log_f0_mean)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "checkpoint") -> "SpeakerTable":
        try:
            version = int(values["version"])
            if version > TABLE_VERSION:
                raise CheckpointError(f"{source}: speaker table version {version} is newer than this "
                                      f"prosody_vae reads ({TABLE_VERSION})")
            names = tuple(str(n) for n in values["names"])
            f0 = values.get("log_f0_mean")
            return cls(names, None if f0 is None else tuple(float(v) for v in f0), version)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: malformed speaker table ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], source: str = "checkpoint") -> "SpeakerTable":
        """The table a checkpoint holds; a checkpoint from before the table gives its name list
        (or nothing) without pitch statistics."""
        if "speaker_table" in state:
            return cls.from_dict(state["speaker_table"], source)
        return cls(tuple(str(n) for n in state.get("speakers") or ()))
