"""The package's own error hierarchy.

Every error a user can trigger with bad input is a `ProsodyVAEError`, so a pipeline can catch
one type, and the CLI can print one clear line. Each subclass also derives from the built-in
type a caller would naturally expect (ValueError, OSError), so generic handlers keep working.
Messages name the offending file, line or argument, and an error about one argument also carries
its name as `field` ("texts[1]", "temperature", "controls.pitch"), so a caller such as the HTTP
server can point at it without reading the message.
"""

from __future__ import annotations


class ProsodyVAEError(Exception):
    """Base class of every error raised on purpose by prosody_vae. `field`: the argument at fault,
    where there is one (None: a file, a config, or the whole call)."""

    def __init__(self, *args, field: str | None = None):
        super().__init__(*args)
        self.field = field


class ConfigError(ProsodyVAEError, ValueError):
    """A config file, dataclass field or argument is unknown, of the wrong type or out of range."""


class AudioError(ProsodyVAEError, ValueError):
    """A wav is missing, unreadable, empty, non-finite, or otherwise unusable."""


class TextError(ProsodyVAEError, ValueError):
    """Text is empty after normalisation, too long, or holds a symbol the table cannot encode."""


class DataError(ProsodyVAEError, ValueError):
    """A dataset folder or its metadata is malformed (the message names file and line)."""


class ReferenceInputError(ProsodyVAEError, ValueError):
    """A reference mel cannot be encoded (too short, wrong shape, wrong n_mels)."""


class CheckpointError(ProsodyVAEError, OSError):
    """A checkpoint is missing, truncated, corrupt or was written by an incompatible config."""


class CorpusError(ProsodyVAEError, RuntimeError):
    """The built-in corpus maker cannot synthesise (espeak-ng missing or failing)."""


class TrainingError(ProsodyVAEError, RuntimeError):
    """Training cannot go on (for instance, too many non-finite steps in a row)."""


class RunLockedError(ProsodyVAEError, RuntimeError):
    """Another trainer is writing into the same run folder (the message names its pid and host)."""


class RequestError(ProsodyVAEError, ValueError):
    """A server request is refused: `field` names the part of the request at fault, `status` is the
    HTTP status to answer with (a 4xx)."""

    field: str

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}", field=field)
        self.message, self.status = message, status


class ControlError(ProsodyVAEError, ValueError):
    """A prosody control is unknown, out of its calibrated range, or the model has no calibration."""
