"""torchaudio for host toolkits that import it on a path our adapters never run.

Coqui TTS and ESPnet2 import torchaudio at the top of modules on their Tacotron2 import chains
(a speaker encoder, a speech-enhancement layer) that TTS training and inference do not use. The
registry's torchaudio wheels are CUDA builds that fail to load against CPU torch, so where it
does not load, a placeholder module stands in: every attribute raises AttributeError naming the
cause (an AttributeError, so hasattr() probes in the hosts still answer False).
"""

from __future__ import annotations

import sys
import types

_MARK = "__prosody_vae_placeholder__"


def torchaudio_loads() -> bool:
    """Whether the real torchaudio imports here (the placeholder does not count)."""
    try:
        import torchaudio
    except Exception:  # missing, or a CUDA build that fails to load against this torch
        return False
    return not getattr(torchaudio, _MARK, False)


def stand_in_for_torchaudio(adapter: str) -> bool:
    """Install the placeholder unless the real torchaudio loads; `adapter` names who needs it.
    Returns whether the real one loads (so callers need not try the import a second time)."""
    if torchaudio_loads():
        return True
    if getattr(sys.modules.get("torchaudio"), _MARK, False):  # another adapter put it in
        return False
    placeholder = types.ModuleType("torchaudio")
    setattr(placeholder, _MARK, True)

    def unavailable(name: str):
        raise AttributeError(f"torchaudio.{name}: torchaudio does not load with this torch; {adapter} runs "
                             "its host's TTS path without it")

    placeholder.__getattr__ = unavailable
    sys.modules["torchaudio"] = placeholder
    return False
