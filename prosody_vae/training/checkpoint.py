"""Training checkpoints on disk: atomic writes, a run's checkpoint folder, RNG state, model loading.

A checkpoint is one `torch.save` file of plain containers and tensors, read back with
`weights_only=True` (so opening a checkpoint never runs code from it). What the trainer puts in
it is listed in trainer.py; this module only requires `format_version` and `config`. An optional
"calibration" entry holds the prosody knobs (inference/knobs.py, versioned on its own), added after
training by `prosody-vae calibrate`; a checkpoint without it loads as before.

Writes are atomic (atomic.py): a crash or a full disk leaves the old file or the new one, never
half of one.

A run keeps its checkpoints in RUN/checkpoints/:
    step-00001000.pt ...  periodic and end-of-run states; the newest `keep_last` are kept
    last.pt               a symbolic link to the newest step file
    best.pt               the state with the lowest validation postnet L1 (kept apart from pruning)
Resuming reads the newest step file; an unreadable one (truncated, half-copied) is reported and
the one before it is tried.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write
from ..model.tacotron import ProsodyTacotron
from ..plugin.errors import CheckpointError, ConfigError
from ..version import __version__
from .config import TrainConfig, config_from_dict

FORMAT_VERSION = 1  # bump when the layout of a checkpoint changes
_STEP_FILE = re.compile(r"step-(\d+)\.pt")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically, stamped with the format and package versions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {**state, "format_version": FORMAT_VERSION, "package_version": __version__}
    with atomic_write(path) as f:
        torch.save(state, f)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint onto the CPU. CheckpointError if it is missing, unreadable (truncated,
    corrupt, not a checkpoint) or of another format version. `format_version` alone decides
    compatibility: a checkpoint written by another package version of the same format loads."""
    path = Path(path)
    state = _read(path)
    _check_format(state, path)
    return state


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               strict: bool = True) -> tuple[ProsodyTacotron, TrainConfig]:
    """(ProsodyTacotron in eval mode, TrainConfig) from a training checkpoint.

    The model is built from the checkpoint's own config. Weights that do not fit it (missing,
    unexpected or of another shape: a hand-edited file, or a config whose defaults moved) are a
    CheckpointError listing them, and nothing is loaded. `strict=False` asks for a partial load
    instead: the tensors that fit are loaded, the rest keep their initial values, and a
    RuntimeWarning lists them.
    """
    model, config, _ = load_model_and_state(path, device, strict)
    return model, config


def load_model_and_state(path: str | os.PathLike, device: str | torch.device = "cpu",
                         strict: bool = True) -> tuple[ProsodyTacotron, TrainConfig, dict[str, Any]]:
    """`load_model`, and the whole checkpoint dict beside it (step, speakers, calibration, ...)."""
    path = Path(path)
    state = load_checkpoint(path)
    config = checkpoint_config(state, path)
    model = ProsodyTacotron(config.model)
    weights = state.get("model")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: holds no model weights")
    own = model.state_dict()
    misfits = _weight_misfits(weights, own)
    if misfits and strict:
        raise CheckpointError(f"{path}: model weights do not fit its own config ({misfits}); nothing was "
                              "loaded (load_model(..., strict=False) loads the tensors that fit)")
    if misfits:
        warnings.warn(f"{path}: partial load, left at initial values or ignored: {misfits}", RuntimeWarning,
                      stacklevel=2)
    model.load_state_dict({k: v for k, v in weights.items() if k in own and _fits(v, own[k])}, strict=False)
    return model.to(device).eval(), config, state


def _fits(tensor: Any, target: torch.Tensor) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.shape == target.shape


def _weight_misfits(weights: dict[str, Any], own: dict[str, torch.Tensor]) -> str:
    """'' if `weights` fit the model's state dict `own` exactly, else a short account of what does not."""
    shown = lambda keys: ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    groups = {"missing": sorted(own.keys() - weights.keys()),
              "unexpected": sorted(weights.keys() - own.keys()),
              "of another shape": sorted(k for k in own.keys() & weights.keys() if not _fits(weights[k], own[k]))}
    return "; ".join(f"{len(keys)} {what}: {shown(keys)}" for what, keys in groups.items() if keys)


def checkpoint_config(state: dict[str, Any], path: Path) -> TrainConfig:
    """The checkpoint's TrainConfig, rebuilt with the typed loader (so it is checked again)."""
    try:
        return config_from_dict(TrainConfig, state["config"], f"{path} (stored config)")
    except ConfigError as exc:
        raise CheckpointError(f"{exc} (checkpoint written by prosody_vae {state.get('package_version')}, "
                              f"this is {__version__})") from None


class RunCheckpoints:
    """The checkpoint folder of one run (see the module docstring for its layout)."""

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3):
        self.dir = Path(directory)
        self.keep_last = keep_last

    def step_files(self) -> list[Path]:
        """Step checkpoints, newest first (by the step in the name; no file is opened)."""
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _STEP_FILE.fullmatch(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write step-N.pt, point last.pt at it, and prune all but the newest keep_last step files."""
        path = save_checkpoint(self.dir / f"step-{step:08d}.pt", state)
        link_tmp = self.dir / f".last.pt.{os.getpid()}.tmp"
        link_tmp.unlink(missing_ok=True)
        os.symlink(path.name, link_tmp)
        os.replace(link_tmp, self.dir / "last.pt")
        for old in self.step_files()[self.keep_last:]:
            old.unlink()
        return path

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the hidden temporaries that a killed writer left (kill -9 runs no cleanup). Call
        it only where no other process writes into this run's folder: at a run's start, rank 0."""
        stale = sorted(self.dir.glob(".*.tmp")) if self.dir.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def save_best(self, state: dict[str, Any]) -> Path:
        return save_checkpoint(self.dir / "best.pt", state)

    def load_latest(self) -> tuple[Path, dict[str, Any]] | None:
        """(path, state) of the newest readable step file; None if there is none at all.

        An unreadable file is reported with a warning and the previous one is tried; if none can
        be read, CheckpointError. A readable file of another format version is an error at once:
        older files of the same run would not fit either.
        """
        files = self.step_files()
        failures = []
        for path in files:
            try:
                state = _read(path)
            except CheckpointError as exc:
                warnings.warn(f"{exc}; falling back to the previous checkpoint", RuntimeWarning, stacklevel=2)
                failures.append(path.name)
                continue
            _check_format(state, path)
            return path, state
        if files:
            raise CheckpointError(f"{self.dir}: no checkpoint could be read (tried {', '.join(failures)})")
        return None


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a damaged zip or pickle
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or corrupt; "
                              f"{type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "format_version" not in state or "config" not in state:
        raise CheckpointError(f"{path}: not a prosody_vae training checkpoint")
    return state


def _check_format(state: dict[str, Any], path: Path) -> None:
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {state['format_version']} (prosody_vae {state.get('package_version')}) "
            f"cannot be read by this prosody_vae {__version__} (format {FORMAT_VERSION})")


# ------------------------------------------------------------------------------------- RNG state
def capture_rng() -> dict[str, Any]:
    """Every generator a training step draws from, as plain containers (weights_only-safe)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": keys.tolist(), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["position"], n["has_gauss"], n["cached"]))
    random.setstate(state["python"])
