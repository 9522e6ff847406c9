"""Exact resume: what a checkpoint holds of a training run besides its weights, and which config
changes a resumed run may make.

A training checkpoint (checkpoint.py) holds the model, optimizer, LR schedule and controller
state, the trainer's `Counters` (step, epoch, the position in the epoch, ...), every rank's RNG
states, the speaker list and the config as a dict. The trainer validates inside
`torch.random.fork_rng`, and its DataLoader has its own generator, so neither draws from the
training RNG: N steps in one go and N/2 + resume + N/2 give the same parameters.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..plugin.errors import CheckpointError
from .checkpoint import checkpoint_config, restore_rng
from .config import TrainConfig, config_to_dict
from .distributed import Cluster

# Settings a resumed run may change: they decide how long, where and how verbosely it runs.
# Anything else differing from the checkpoint's config is refused.
RESUMABLE_CHANGES = frozenset({"max_steps", "log_every", "val_every", "checkpoint_every", "keep_last", "device",
                               "bf16", "threads", "max_consecutive_bad_steps", "kl_inactive_warning_steps",
                               "progress_every_seconds", "data.num_workers", "data.cache_dir"})


@dataclass
class Counters:
    """What the trainer counts, saved in every checkpoint so that a resumed run counts on."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # batches stepped in this epoch (the DataLoader prefetches ahead of them)
    skipped_steps: int = 0
    consecutive_bad: int = 0
    best_val_l1: float = math.inf
    val_metrics: dict[str, float] = field(default_factory=dict)  # the last validation's

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint entries, laid out as checkpoints have always had them, so older ones resume."""
        return {"step": self.step, "epoch": self.epoch, "position": self.position,
                "trainer": {"skipped_steps": self.skipped_steps, "consecutive_bad": self.consecutive_bad,
                            "best_val_l1": self.best_val_l1, "val_metrics": self.val_metrics}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        trainer = state["trainer"]
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.skipped_steps, self.consecutive_bad = trainer["skipped_steps"], trainer["consecutive_bad"]
        self.best_val_l1, self.val_metrics = trainer["best_val_l1"], trainer["val_metrics"]


def check_resumable(state: dict[str, Any], path: Path, config: TrainConfig, speakers: list[str]) -> None:
    """Refuse, before anything is loaded, a checkpoint of another config (beyond RESUMABLE_CHANGES)
    or of another speaker list, so that an incompatible checkpoint changes nothing."""
    saved = config_to_dict(checkpoint_config(state, path))
    changed = [key for key in _differences(saved, config_to_dict(config)) if key not in RESUMABLE_CHANGES]
    if changed:
        raise CheckpointError(f"{path} was written by a run with another config ({', '.join(changed)} differ); "
                              "restore those settings, or train into another --out")
    if state.get("speakers") != speakers:
        raise CheckpointError(f"{path} was trained on speakers {state.get('speakers')}, this corpus has {speakers}")


def restore_rank_rng(states: list[dict[str, Any]], saved_world: int, cluster: Cluster, counters: Counters,
                     seed: int) -> None:
    """This rank's RNG states from a checkpoint's list of every rank's."""
    if saved_world == cluster.world:
        restore_rng(states[cluster.rank])
        return
    # another number of ranks: the epoch's batches are dealt out differently, so continue
    # after about the same number of batches, with fresh per-rank noise
    warnings.warn(f"resuming a {saved_world}-process run on {cluster.world} processes: it continues, "
                  "but not bit-exactly", RuntimeWarning, stacklevel=2)
    counters.position = math.ceil(counters.position * saved_world / cluster.world)
    seed_all(seed + cluster.rank + counters.step)


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = []
    for key in sorted(set(a) | set(b)):
        left, right, name = a.get(key), b.get(key), f"{prefix}{key}"
        if isinstance(left, dict) and isinstance(right, dict):
            keys += _differences(left, right, f"{name}.")
        elif left != right:
            keys.append(name)
    return keys
