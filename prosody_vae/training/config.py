"""Typed training configuration: a TOML file mapped strictly onto dataclasses.

    load_config("run.toml") -> TrainConfig
    load_config(recipe_config("demo"))  # a recipe shipped with the package

Each TOML table is a nested dataclass ([model] -> TacotronConfig, [optim] -> OptimConfig, ...);
top-level keys are run settings. The mapping is strict, because a typo in a recipe must not
train for a day with a default: an unknown key, a value of the wrong type and a missing required
field are `ConfigError`s that name the file, the dotted key, the expected type and the value.

Type rules (`config_from_dict`): bool accepts only true/false; int refuses bools and floats;
float accepts ints (3 -> 3.0); tuple[...] accepts an array of the right length; Literal accepts
one of its values with the same type; a nested dataclass needs a table. TOML has no null, so an
Optional field (float | None, ...) is set to None with the string "none" (a str | None field
keeps "none" as a string). A table whose class has `preset(name, **overrides)` (TacotronConfig)
may name a `preset` and override any of its fields.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional

from ..audio.mel import AudioConfig
from ..data.text import TextConfig
from ..model.tacotron import TacotronConfig
from ..plugin.capacity import ControllerConfig, build_controller
from ..plugin.errors import ConfigError
from .losses import LossConfig


@dataclass
class OptimConfig:
    """The model's optimizer and learning-rate schedule (the controller has its own optimizer).

    lr(step) = lr * warmup(step) * max(decay(step), min_lr / lr), with warmup rising linearly over
    warmup_steps and decay one of: none (1); exponential (decay_rate ** ((step - warmup_steps) /
    decay_steps) after warmup); noam (sqrt(warmup_steps / step) after warmup).
    """

    name: Literal["adam", "radam"] = "adam"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    decay: Literal["none", "exponential", "noam"] = "none"
    decay_rate: float = 0.5
    decay_steps: int = 50_000
    min_lr: float = 1e-5
    grad_clip: float = 5.0  # max global L2 norm of the model's gradient; 0 disables clipping

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"OptimConfig.lr must be > 0, got {self.lr}")
        _check(all(0 <= b < 1 for b in self.betas), f"OptimConfig.betas must lie in [0, 1), got {self.betas}")
        _check(self.eps > 0 and self.weight_decay >= 0 and self.grad_clip >= 0,
               "OptimConfig.eps must be > 0, weight_decay and grad_clip >= 0")
        _check(self.warmup_steps >= 0, f"OptimConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(0 < self.decay_rate <= 1 and self.decay_steps >= 1,
               f"OptimConfig needs 0 < decay_rate <= 1 and decay_steps >= 1, got {self.decay_rate}, {self.decay_steps}")
        _check(0 <= self.min_lr <= self.lr, f"OptimConfig.min_lr must be in [0, lr], got {self.min_lr}")
        _check(self.decay != "noam" or self.warmup_steps > 0, "OptimConfig.decay 'noam' needs warmup_steps > 0")


@dataclass
class DataConfig:
    n_val: int = 16  # held-out utterances (a seeded hash of the ids picks them: data.split_train_val)
    batch_size: int = 16
    num_workers: int = 0  # DataLoader worker processes
    bucket_batches: int = 50  # batches per length bucket (data.BucketBatchSampler)
    max_frames: Optional[int] = None  # utterances with more mel frames are skipped (and counted)
    seed: int = 0  # of the split and the batch order
    cache_dir: Optional[str] = None  # log-mel cache (relative: to the working directory); None: DATA/.mel_cache

    def __post_init__(self) -> None:
        _check(self.n_val >= 1, f"DataConfig.n_val must be >= 1 (validation picks the best checkpoint), got {self.n_val}")
        _check(self.batch_size >= 1 and self.bucket_batches >= 1 and self.num_workers >= 0,
               "DataConfig.batch_size and bucket_batches must be >= 1, num_workers >= 0")
        _check(self.max_frames is None or self.max_frames >= 1,
               f"DataConfig.max_frames must be >= 1 or none, got {self.max_frames}")


@dataclass
class TrainConfig:
    """Everything a training run needs; one TOML table per nested config, run settings at the top.
    Each field defaults to its dataclass's default (the model: TacotronConfig's tacotron2 sizes),
    except the controller, which needs a capacity: DualAscent holding C = 10 nats."""

    model: TacotronConfig = field(default_factory=TacotronConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    controller: ControllerConfig = field(default_factory=lambda: ControllerConfig(kind="dual_ascent", capacity=10.0))
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    text: TextConfig = field(default_factory=TextConfig)
    max_steps: int = 100_000
    log_every: int = 50
    val_every: int = 1000
    checkpoint_every: int = 1000
    keep_last: int = 3  # periodic checkpoints kept (best.pt is kept apart)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool | Literal["auto"] = "auto"  # autocast; auto: on for CUDA, off for CPU
    threads: int = 0  # torch intra-op threads; 0: torch's default (all cores, or OMP_NUM_THREADS)
    max_consecutive_bad_steps: int = 20  # non-finite steps in a row before training stops
    # warn once when the controller's beta has been 0 this many good steps in a row: the KL term
    # has had no effect, so the KL is unconstrained (with DualAscent: C is far too high). 0: never.
    kl_inactive_warning_steps: int = 1000
    # when stderr is not a terminal (nohup, CI, a scheduler's log), where no progress bar is drawn:
    # a plain progress line this often. 0: never.
    progress_every_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_steps", "log_every", "val_every", "checkpoint_every", "keep_last",
                     "max_consecutive_bad_steps"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("threads", "kl_inactive_warning_steps", "progress_every_seconds"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _check(self.model.n_mels == self.audio.n_mels,
               f"model.n_mels ({self.model.n_mels}) must equal audio.n_mels ({self.audio.n_mels})")
        _check(math.isclose(self.model.pad_value, self.audio.pad_value),
               f"model.pad_value ({self.model.pad_value}) must equal log(audio.log_floor) ({self.audio.pad_value})")
        try:  # the controller's own argument checks, now rather than after loading the data
            build_controller(self.controller)
        except ConfigError as exc:
            raise ConfigError(f"[controller] {exc}") from None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# ------------------------------------------------------------------------------------------ loader
def load_config(path: str | Path) -> TrainConfig:
    """Read a TOML file into a `TrainConfig`; every problem is a ConfigError naming the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return config_from_dict(TrainConfig, data, str(path))


def recipe_config(name: str) -> Path:
    """The config.toml of the recipe `name` (a folder of the repository's recipes/, e.g. "demo").

    A wheel carries recipes/ inside the package as prosody_vae/recipes; a source checkout (and
    an editable install) has it beside the package folder.
    """
    package = Path(__file__).resolve().parent.parent  # prosody_vae/
    for folder in (package / "recipes", package.parent / "recipes"):
        if folder.is_dir():
            known = sorted(path.parent.name for path in folder.glob("*/config.toml"))
            if name in known:
                return folder / name / "config.toml"
            raise ConfigError(f"no recipe named {name!r} in {folder} (recipes: {', '.join(known)})")
    raise ConfigError(f"no recipes folder in {package} or {package.parent}: this prosody_vae was "
                      "installed without its recipes")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as plain dicts, lists and scalars; `config_from_dict` rebuilds it exactly."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type, data: Mapping[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from `data`, checking every key and type. `where` names the source
    (a file) in error messages."""
    return _build(cls, data, where, "")


def _build(cls: type, data: Any, where: str, key: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: {_quoted(key)} must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    preset = data.get("preset") if hasattr(cls, "preset") else None
    for name in data:
        if name not in names and not (name == "preset" and preset is not None):
            raise ConfigError(f"{where}: unknown key {_quoted(_join(key, name))}")
    values = {name: _convert(hints[name], value, where, _join(key, name))
              for name, value in data.items() if name in names}
    try:
        if preset is not None:
            if not isinstance(preset, str):
                raise ConfigError(f"{_quoted(_join(key, 'preset'))} must be str, got {preset!r}")
            return cls.preset(preset, **values)
        return cls(**values)
    except (ConfigError, TypeError) as exc:  # TypeError: a required field is missing
        raise ConfigError(f"{where}: {f'[{key}] ' if key else ''}{exc}") from None


def _convert(tp: Any, value: Any, where: str, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, key)
    if origin in (typing.Union, types.UnionType):
        if value == "none" and type(None) in args and str not in args:
            return None
        for option in args:
            try:
                return _convert(option, value, where, key)
            except ConfigError:
                continue
        raise _type_error(tp, value, where, key)
    if tp is type(None):
        if value is None:
            return None
        raise _type_error(tp, value, where, key)
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        raise _type_error(tp, value, where, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _type_error(tp, value, where, key)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _type_error(tp, value, where, key)
        return tuple(_convert(a, v, where, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (bool, int, float, str) and type(value) is tp:
        return value
    raise _type_error(tp, value, where, key)


def _type_error(tp: Any, value: Any, where: str, key: str) -> ConfigError:
    return ConfigError(f"{where}: {_quoted(key)} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join('"none"' if a is type(None) else _type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is tuple:
        return f"an array of {_type_name(args[0])}" if args[-1] is Ellipsis else \
            f"an array of {len(args)} ({', '.join(_type_name(a) for a in args)})"
    return getattr(tp, "__name__", str(tp))


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _quoted(key: str) -> str:
    return f"'{key}'" if key else "the config"


def lr_schedule(optim: OptimConfig) -> Callable[[int], float]:
    """The LR multiplier after `step` optimizer steps (OptimConfig's docstring has the formula)."""

    def factor(step: int) -> float:
        warmup = min(1.0, (step + 1) / optim.warmup_steps) if optim.warmup_steps else 1.0
        if optim.decay == "exponential":
            decay = optim.decay_rate ** (max(0, step - optim.warmup_steps) / optim.decay_steps)
        elif optim.decay == "noam":
            decay = math.sqrt(optim.warmup_steps / max(step + 1, optim.warmup_steps))
        else:
            decay = 1.0
        return warmup * max(decay, optim.min_lr / optim.lr)

    return factor
