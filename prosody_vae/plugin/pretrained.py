"""An encoder trained in one pipeline, loaded into another: the Hugging Face folder convention.

    save_pretrained(encoder, "my_encoder", controller=controller, controller_config=controller_config)
    encoder, controller = from_pretrained("my_encoder")        # offline, from a path

(the controller is optional; given, it comes with the ControllerConfig that built it)

The folder holds `config.json` (the encoder's constructor arguments, the controller's
ControllerConfig and plain state, and a format version) and `model.safetensors` (the encoder's
weights and buffers, BatchNorm running statistics included, and the controller's tensors such as
DualAscent's beta). Nothing is pickled, so loading a folder cannot run code. Each file is
written to a temporary name and renamed into place, and config.json records the sha256 of the
weights it goes with, so a save interrupted between the two files is refused on load instead of
pairing new weights with an old config.

The controller's optimizer state (DualAscent's momentum) is not part of the format: a loaded
controller starts its beta where the saved one stopped, with fresh momentum. Exact resume of a
training run is the trainer checkpoint's job, not this one's.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Optional

import torch

from .capacity import ControllerConfig, KLController, build_controller
from .errors import CheckpointError
from .reference import VariationalReferenceEncoder

FORMAT = "prosody_vae.reference_encoder"
FORMAT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
_CONTROLLER_PREFIX = "controller."


def encoder_arguments(encoder: VariationalReferenceEncoder) -> dict[str, Any]:
    """The constructor arguments that rebuild `encoder`'s architecture."""
    reference = encoder.reference
    return {"n_mels": encoder.n_mels, "latent_dim": encoder.latent_dim,
            "text_summary_dim": encoder.text_summary_dim, "speaker_dim": encoder.speaker_dim,
            "conv_channels": [conv.out_channels for conv in reference.convs], "gru_dim": reference.out_dim,
            "mlp_dim": encoder.head[0].out_features, "text_dropout": encoder.text_dropout,
            "std_floor": encoder.std_floor}


def save_pretrained(encoder: VariationalReferenceEncoder, folder: str | os.PathLike,
                    controller: Optional[KLController] = None,
                    controller_config: Optional[ControllerConfig] = None) -> Path:
    """Writes `folder`/config.json and `folder`/model.safetensors; returns the folder.
    A controller needs the ControllerConfig that built it (its kind and arguments)."""
    from safetensors.torch import save

    if (controller is None) != (controller_config is None):
        raise CheckpointError("save_pretrained takes controller and controller_config together (the config "
                              "rebuilds the controller, the controller carries its state)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().cpu().contiguous() for name, value in encoder.state_dict().items()}
    config: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                              "encoder": encoder_arguments(encoder), "controller": None}
    if controller is not None:
        plain = {}
        for key, value in controller.state_dict().items():
            if isinstance(value, torch.Tensor):
                tensors[_CONTROLLER_PREFIX + key] = value.detach().cpu().contiguous()
            elif key != "optimizer":  # see the module docstring
                plain[key] = value
        config["controller"] = {"config": asdict(controller_config), "state": plain}
    weights = save(tensors, metadata={"format": FORMAT})
    config["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    _write_atomically(folder / WEIGHTS_NAME, weights)
    _write_atomically(folder / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    return folder


def from_pretrained(folder: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[VariationalReferenceEncoder, Optional[KLController]]:
    """The encoder (in eval mode) and the controller (None if none was saved) from a folder that
    `save_pretrained` wrote."""
    from safetensors.torch import load

    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (a pretrained encoder folder holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: not JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{config_path}: field 'format' is {config.get('format') if isinstance(config, dict) else None!r}, "
                              f"expected {FORMAT!r}")
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{config_path}: field 'format_version' is {config.get('format_version')!r}; "
                              f"this version of prosody_vae reads {FORMAT_VERSION}")
    try:
        arguments = dict(config["encoder"])
        arguments["conv_channels"] = tuple(arguments["conv_channels"])
        encoder = VariationalReferenceEncoder(**arguments)
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{config_path}: field 'encoder' does not describe an encoder ({exc})") from None
    weights = weights_path.read_bytes()
    if hashlib.sha256(weights).hexdigest() != config.get("weights_sha256"):
        raise CheckpointError(f"{weights_path}: not the weights {config_path} was saved with (field "
                              f"'weights_sha256'; an interrupted save_pretrained, or files from two saves)")
    try:
        tensors = load(weights)
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    controller_tensors = {key.removeprefix(_CONTROLLER_PREFIX): tensors.pop(key)
                          for key in [k for k in tensors if k.startswith(_CONTROLLER_PREFIX)]}
    try:
        encoder.load_state_dict(tensors)
    except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
        raise CheckpointError(f"{weights_path}: weights do not fit {config_path}'s encoder ({exc})") from None
    encoder.to(map_location).eval()  # safetensors' in-memory load gives CPU tensors
    return encoder, _controller(config.get("controller"), controller_tensors, config_path)


def _controller(saved: Optional[dict], tensors: dict[str, torch.Tensor], config_path: Path) -> Optional[KLController]:
    if saved is None:
        return None
    known = {f.name for f in fields(ControllerConfig)}
    given = saved.get("config", {})
    if not isinstance(given, dict) or set(given) - known:
        raise CheckpointError(f"{config_path}: field 'controller.config' has unknown keys "
                              f"{sorted(set(given) - known) if isinstance(given, dict) else given!r}")
    controller = build_controller(ControllerConfig(**given))
    state = {**saved.get("state", {}), **tensors}
    expected = controller.state_dict()
    if "optimizer" in expected:
        state["optimizer"] = expected["optimizer"]  # fresh: the format keeps no optimizer state
    controller.load_state_dict(state)
    return controller


def _write_atomically(path: Path, data: bytes) -> None:
    """The package's atomic.py in small, written again on purpose: a user copies plugin/ alone,
    so it imports nothing of the package outside it."""
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(partial, 0o666 & ~umask)  # what a plain open() would give, not mkstemp's 0o600
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
