"""Where a training process stands among its peers (torchrun + DDP), and how it is asked to stop.

`Cluster` reads torchrun's environment (WORLD_SIZE, LOCAL_RANK), opens the process group (nccl on
CUDA, gloo on CPU) and offers the few collectives the trainer needs. Without torchrun it is a
cluster of one and every collective is a no-op. `StopSignals` turns SIGINT/SIGTERM into a flag the
trainer checks between steps, so a stop always ends with a checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist

from ..model.config import TacotronConfig
from ..plugin.errors import ConfigError
from .config import TrainConfig


@dataclass
class Cluster:
    """This process's place among the training processes (a cluster of one without torchrun)."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool  # this trainer opened the process group, so it closes it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def single(cls) -> "Cluster":
        """A cluster of one process on the CPU (analysis and evaluation outside training)."""
        return cls(0, 1, torch.device("cpu"), owns_group=False)

    @classmethod
    def start(cls, config: TrainConfig) -> "Cluster":
        if config.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device = 'cuda', but torch sees no CUDA device")
        cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        owns_group = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
        if owns_group:
            dist.init_process_group("nccl" if cuda else "gloo")
        if dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), device, owns_group)
        return cls(0, 1, device, owns_group)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(values)
        return values

    def gather(self, value: Any) -> list[Any]:
        if self.world == 1:
            return [value]
        gathered = [None] * self.world
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


class StopSignals:
    """SIGINT and SIGTERM set `received`; the trainer finishes its step, saves and returns.
    A second SIGINT interrupts at once. Handlers can only be installed from the main thread."""

    def __enter__(self) -> "StopSignals":
        self.received: Optional[str] = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def has_unused_parameters(config: TacotronConfig) -> bool:
    """Whether a teacher-forced step can leave a parameter without gradient, which DDP must be
    told (find_unused_parameters). A text-conditioned posterior owns a learned no-transcript
    vector that training reaches only when text dropout fires."""
    return config.posterior in ("V+T", "V+T+S")
