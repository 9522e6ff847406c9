"""What a training run writes for people to read: metrics.jsonl, TensorBoard, progress on stderr.

metrics.jsonl holds one JSON object per line, {"step", "split": "train" | "val" | "data" |
"warning", ...}, easy to read back in tests and reports; a "warning" line has "kind" and
"message". A resumed run drops the lines (and TensorBoard events) written after its checkpoint,
so the log never shows steps that the model no longer has.

Progress goes to stderr: a tqdm bar at a terminal, plain lines elsewhere (`ProgressDisplay`).
`KLInactivityWatch` decides when an unconstrained KL is worth a warning.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from ..atomic import write_atomically
from ..plugin.errors import DataError


class RunLog:
    """metrics.jsonl and TensorBoard (rank 0 only). `resumed_at`: drop what came after that step."""

    def __init__(self, out_dir: Path, resumed_at: Optional[int]):
        from torch.utils.tensorboard import SummaryWriter

        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "metrics.jsonl"
        if resumed_at is not None and self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if _logged_step(line) <= resumed_at]
            write_atomically(self.path, "".join(line + "\n" for line in kept))
        self.file = open(self.path, "a", encoding="utf-8")
        self.tensorboard = SummaryWriter(str(out_dir / "tensorboard"),
                                         purge_step=None if resumed_at is None else resumed_at + 1)
        self._warned_no_matplotlib = False

    def scalars(self, split: str, step: int, values: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        self.file.flush()
        for name, value in values.items():
            self.tensorboard.add_scalar(f"{split}/{name}", value, step)

    def warning(self, step: int, kind: str, message: str, values: dict[str, float]) -> None:
        """A one-off problem worth a person's attention, as a metrics.jsonl line and TensorBoard text."""
        record = {"step": step, "split": "warning", "kind": kind, "message": message, **values}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.tensorboard.add_text(f"warning/{kind}", message, step)

    def media(self, step: int, alignment: torch.Tensor, target: torch.Tensor, predicted: torch.Tensor,
              wav: torch.Tensor, sample_rate: int) -> None:
        """alignment (T_r, L), target and predicted log-mels (T, n_mels), wav (N,) of one item."""
        self.tensorboard.add_audio("val/griffin_lim", wav[None], step, sample_rate=sample_rate)
        try:
            from matplotlib.figure import Figure  # not pyplot: no global backend or figure state
        except ImportError:
            if not self._warned_no_matplotlib:
                warnings.warn("matplotlib is not installed: no alignment or mel images in TensorBoard "
                              "(pip install 'prosody_vae[plots]')", RuntimeWarning, stacklevel=2)
                self._warned_no_matplotlib = True
            return
        figure = Figure(figsize=(6, 4))
        axis = figure.subplots()
        axis.imshow(alignment.T.numpy(), origin="lower", aspect="auto", interpolation="none")
        axis.set(xlabel="decoder step", ylabel="text position", title=f"step {step}")
        self.tensorboard.add_figure("val/alignment", figure, step)
        figure = Figure(figsize=(8, 5))
        axes = figure.subplots(2, 1, sharex=True)
        for axis, mel, title in zip(axes, (target, predicted), ("target", "postnet (teacher-forced)")):
            axis.imshow(mel.T.numpy(), origin="lower", aspect="auto", interpolation="none")
            axis.set(ylabel="mel bin", title=title)
        axes[1].set_xlabel("frame")
        self.tensorboard.add_figure("val/mel", figure, step)

    def close(self) -> None:
        self.file.close()
        self.tensorboard.close()


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a line a killed run left half-written."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class MetricWindow:
    """Means of the logged quantities over the good steps since the last log line."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.steps, self.good, self.started = 0, 0, time.perf_counter()

    def add(self, values: Optional[dict[str, float]]) -> None:
        self.steps += 1
        if values is not None:
            self.good += 1
            for name, value in values.items():
                self.sums[name] += value

    def means(self) -> dict[str, float]:
        seconds = time.perf_counter() - self.started
        means = {name: total / self.good for name, total in self.sums.items()}
        return {**means, "steps_per_s": self.steps / seconds}


class ProgressDisplay:
    """Training progress on stderr. At a terminal, a tqdm bar. Elsewhere (nohup, CI, a scheduler's
    log file) a bar draws nothing until it closes, so instead one plain line every `every_seconds`:

        step 120/2000: postnet_l1 0.512, kl 3.21, beta 0.0123; 1.85 steps/s, ETA 16m56s

    with the means over the good steps since the previous line. `enabled`: rank 0 only."""

    def __init__(self, start: int, total: int, every_seconds: float, enabled: bool):
        at_terminal = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, disable=not at_terminal)
        self.total = total
        self.every_seconds = every_seconds if enabled and not at_terminal else 0.0
        self.window, self.printed_at = MetricWindow(), time.monotonic()

    def update(self, step: int, values: Optional[dict[str, float]], beta: float) -> None:
        """After each step: `values` are the step's logged values (None: it was skipped)."""
        self.bar.update()
        if not self.every_seconds:
            return
        self.window.add(values)
        if time.monotonic() - self.printed_at < self.every_seconds:
            return
        means = self.window.means()
        rate = means["steps_per_s"]
        losses = [f"{name} {means[name]:.3g}" for name in ("postnet_l1", "kl") if name in means]
        print(f"step {step}/{self.total}: {', '.join(losses or ['no good step'])}, beta {beta:.3g}; "
              f"{rate:.3g} steps/s, ETA {_duration((self.total - step) / rate)}", file=sys.stderr, flush=True)
        self.window, self.printed_at = MetricWindow(), time.monotonic()

    def show(self, values: dict[str, float]) -> None:
        """The latest logged means, beside the bar."""
        self.bar.set_postfix({k: f"{values[k]:.3g}" for k in ("postnet_l1", "kl", "beta", "align") if k in values})

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    """1h02m, 16m56s or 42s."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class KLInactivityWatch:
    """Notices, once per run, that the KL is unconstrained: beta exactly 0 for `limit` good steps
    in a row (0: never). Then the KL term has exerted no force for that long and nothing bounds
    the latent, which drifts towards a plain autoencoder code (the KL keeps growing as far as
    reconstruction profits: "exploding"). With DualAscent beta rests at 0 only while KL < C, so
    C has not been reached in that many steps: C is far too high for the model and data."""

    def __init__(self, limit: int):
        self.limit = limit
        self.steps = 0  # good steps in a row with beta == 0
        self.start_kl = 0.0  # the KL at the first of them
        self.warned = False

    def observe(self, beta: float, kl: float, capacity: Optional[float] = None) -> Optional[str]:
        """After each good step (`capacity`: the controller's C, if it has one); returns the
        warning the first time the stretch reaches `limit` steps, else None."""
        if beta > 0 or not self.limit:
            self.steps = 0
            return None
        if self.steps == 0:
            self.start_kl = kl
        self.steps += 1
        if self.steps < self.limit or self.warned:
            return None
        self.warned = True
        cause = (f"it is still below the capacity C = {capacity:g} nats that the controller waits for, so C is "
                 "far too high for this model and data: set controller.capacity below the KL the run settles at"
                 if capacity is not None and kl < capacity else "give the KL term a positive weight in [controller]")
        return (f"the KL is unconstrained: beta has been 0 for the last {self.limit} steps, so the KL term had no "
                f"effect and the KL went from {self.start_kl:.4g} to {kl:.4g} nats per utterance; "
                f"{cause} (a free latent copies the reference and prior samples stop sounding like speech)")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file. A half-written last line (a run killed mid-write) is
    dropped; a bad line anywhere else is a DataError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no metrics.jsonl (is this a training run folder?)")
    lines = path.read_text(encoding="utf-8").rstrip().splitlines()
    records = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if line_no == len(lines):
                break
            raise DataError(f"{path}:{line_no}: not a JSON line: {line[:80]!r}") from None
    return records
