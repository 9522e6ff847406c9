"""Uploaded references: decoded and checked once, kept by id so later requests can name them.

An id is the hash of the decoded samples, so the same recording uploaded twice gets the same id.
The store keeps the `capacity` most recently used references (an unknown or evicted id is a 404
naming the field, and the client uploads again).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from typing import Optional

import numpy as np

from ..audio.mel import AudioConfig, check_not_silent, load_wav
from ..plugin.errors import AudioError, RequestError


def decode_upload(data: bytes, audio: AudioConfig, max_seconds: Optional[float], field: str = "reference"
                  ) -> np.ndarray:
    """Any soundfile-readable bytes -> mono float32 (N,) at the model's rate; RequestError naming
    `field` for bytes that are not audio, audio that is silent, too short or over `max_seconds`."""
    if not data:
        raise RequestError(field, "the upload is empty")
    # soundfile reads from a path most reliably (format sniffing, header-only duration check)
    handle, path = tempfile.mkstemp(prefix="prosody-vae-upload-")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        wav = load_wav(path, audio.sample_rate, max_seconds)
        check_not_silent(wav, field)
    except AudioError as exc:
        message = str(exc).replace(f"{path}: ", "").replace(path, field)
        raise RequestError(field, message, 415 if "cannot read" in message else 422) from None
    finally:
        os.unlink(path)
    if len(wav) < audio.min_samples:
        raise RequestError(field, f"{len(wav)} samples is too short: one mel frame needs {audio.min_samples}")
    return wav


class ReferenceStore:
    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, wav: np.ndarray) -> str:
        reference_id = hashlib.sha256(wav.tobytes()).hexdigest()[:16]
        with self._lock:
            self._items[reference_id] = wav
            self._items.move_to_end(reference_id)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return reference_id

    def get(self, reference_id: str, field: str = "reference_id") -> np.ndarray:
        with self._lock:
            wav = self._items.get(reference_id)
            if wav is None:
                raise RequestError(field, f"no reference with id {reference_id!r} (upload it with POST "
                                          "/v1/encode; the server keeps the most recent ones)", 404)
            self._items.move_to_end(reference_id)
            return wav

    def __len__(self) -> int:
        return len(self._items)
