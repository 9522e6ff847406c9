"""Trainer: ProsodyTacotron and its KL controller, on one device or many (torchrun + DDP).

    result = train(load_config("recipes/demo/config.toml"), "corpus/", "runs/demo")

One step:
    forward under bf16 autocast (when on) -> TacotronLoss (KL term normalised as in losses.py)
    backward -> clip the model's gradient (beta lives in the controller, not in the model)
    all-reduce [KL, reconstruction, bad flag, stop flag], so every rank decides alike
    model optimizer and LR schedule step, then controller.update(KL averaged over ranks)
A batch whose log-mels hold a NaN or an infinity in a valid frame (a damaged cache file, a
broken wav) is not run at all, and a non-finite loss or gradient norm skips both updates: either
way the step is counted in `skipped_steps`, beta is left as it was, and the utterance ids are
reported. `max_consecutive_bad_steps` in a row stop training with a TrainingError that says what
went wrong. A checkpoint that cannot be written (a full disk) ends the run with a CheckpointError;
the write is atomic (checkpoint.py), so the previous checkpoint is still there to resume from.

An unconstrained KL (beta at 0 for `kl_inactive_warning_steps` good steps in a row: runlog.py's
KLInactivityWatch says why that matters) is reported once per run, to stderr, to metrics.jsonl as
{"split": "warning", "kind": "kl_inactive", "message", "kl", "kl_window_start"} and to
TensorBoard as text.

Distributed: `torchrun --nproc_per_node N -m ...` sets WORLD_SIZE; the trainer then joins a
process group (nccl on CUDA, gloo on CPU) and wraps the model in DistributedDataParallel. Each
rank reads its own shard of every epoch (BucketBatchSampler(num_replicas, rank)) and draws its own
dropout noise; rank 0 alone validates, logs and writes checkpoints.

Exact resume: N steps in one go and N/2 + resume + N/2 give the same parameters (training/state.py
says what a checkpoint holds for that).

A run folder RUN holds checkpoints/ (see checkpoint.py), tensorboard/ and metrics.jsonl (see
runlog.py), and RUN/.lock while a trainer runs in it: one run, one writer (run_lock.py). The data
come from training/data.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

from ..audio.mel import griffin_lim
from ..data.ljspeech import Batch
from ..model.tacotron import ProsodyTacotron, decoder_steps
from ..plugin.capacity import KLController, build_controller
from ..plugin.errors import CheckpointError, ConfigError, TrainingError
from ..plugin.masked_norm import length_mask
from ..plugin.speedups import fast_path_enabled
from .checkpoint import RunCheckpoints, capture_rng
from .config import TrainConfig, config_to_dict, lr_schedule
from .cpu_memory import keep_freed_memory
from .data import build_data
from .distributed import Cluster, StopSignals, has_unused_parameters
from .losses import TacotronLoss, alignment_diagonal_score
from .run_lock import lock_on_rank_0
from .runlog import KLInactivityWatch, MetricWindow, ProgressDisplay, RunLog
from .state import Counters, check_resumable, restore_rank_rng, seed_all

GRIFFIN_LIM_ITERATIONS = 32  # enough to hear prosody in TensorBoard, cheap next to a validation pass


@dataclass
class TrainResult:
    step: int  # steps taken by the run so far (skipped ones included)
    metrics: dict[str, float]  # the last validation's
    checkpoint: Optional[Path]  # the newest step checkpoint (None on ranks other than 0)
    resumed_from: Optional[Path]  # the checkpoint this call started from, if any
    stopped_by_signal: bool
    skipped_steps: int  # non-finite steps skipped over the whole run
    model: ProsodyTacotron  # trained, on the training device, in train mode
    controller: KLController


def train(config: TrainConfig, data_dir: str | os.PathLike, out_dir: str | os.PathLike, resume: bool = False,
          max_steps: Optional[int] = None) -> TrainResult:
    """Train into `out_dir`. `resume` continues from its newest readable checkpoint (a fresh start
    if it has none); without it, a folder that already holds a run is refused. A folder another
    trainer is running in is refused either way (RunLockedError). `max_steps` overrides
    config.max_steps (the run's total, not a number of extra steps)."""
    if max_steps is not None:
        config = dataclasses.replace(config, max_steps=max_steps)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    cluster = Cluster.start(config)
    try:
        with lock_on_rank_0(out_dir, cluster), StopSignals() as signals:
            if not resume:
                _refuse_existing_run(out_dir)
            return _Trainer(config, data_dir, out_dir, cluster, signals).run(resume)
    finally:
        cluster.close()
        torch.set_num_threads(threads)


def non_finite_items(batch: Batch) -> list[str]:
    """Ids of the items whose valid log-mel frames hold a NaN or an infinity (padding is ignored)."""
    valid = length_mask(batch.mel_lengths, batch.mel.shape[1])  # (B, T)
    broken = (~torch.isfinite(batch.mel).all(dim=2) & valid).any(dim=1)  # (B,)
    return [batch.ids[i] for i in broken.nonzero().flatten().tolist()]


# --------------------------------------------------------------------------------------- set-up
def _refuse_existing_run(out_dir: Path) -> None:
    checkpoints = out_dir / "checkpoints"
    if (checkpoints.is_dir() and any(checkpoints.glob("*.pt"))) or (out_dir / "metrics.jsonl").exists():
        raise ConfigError(f"{out_dir} already holds a training run; continue it with --resume, or give "
                          "another --out (a run is never overwritten)")


def _use_bf16(setting: bool | str, device: torch.device) -> bool:
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if setting == "auto":
        return cuda_bf16
    if setting and device.type == "cuda" and not cuda_bf16:
        raise ConfigError(f"bf16 = true, but {torch.cuda.get_device_name(device)} has no bf16 support")
    return bool(setting)


# -------------------------------------------------------------------------------------- trainer
class _Trainer:
    def __init__(self, config: TrainConfig, data_dir: Path, out_dir: Path, cluster: Cluster,
                 signals: StopSignals):
        self.config, self.out_dir, self.cluster, self.signals = config, out_dir, cluster, signals
        self.device = cluster.device
        self.bf16 = _use_bf16(config.bf16, self.device)
        self.data = build_data(config, data_dir, cluster)
        seed_all(config.seed)  # identical initial weights on every rank
        self.model = ProsodyTacotron(config.model).to(self.device)
        # (n_speakers,) each speaker's register, which a "prosody" reference is taken relative to
        registers = self.data.speaker_table.log_f0_mean
        self.speaker_registers = torch.tensor([math.nan] * len(self.data.speaker_table) if registers is None
                                              else registers, dtype=torch.float32, device=self.device)
        self.controller = build_controller(config.controller)
        if self.device.type == "cpu" and fast_path_enabled():
            keep_freed_memory()  # see cpu_memory.py: a tenth of a CPU step went to page faults
        o = config.optim
        # Adam's fused kernel makes one pass over each tensor instead of a dozen (on CPU: 54 -> 15 ms
        # per step for tacotron2); RAdam has none
        optimizer_class = partial(torch.optim.Adam, fused=True) if o.name == "adam" else torch.optim.RAdam
        self.optimizer = optimizer_class(self.model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps,
                                         weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_schedule(o))
        self.max_grad_norm = o.grad_clip if o.grad_clip > 0 else math.inf
        # what a step calls: under torchrun the DDP wrapper, whose backward pass all-reduces gradients
        self.step_model = self.model
        if cluster.world > 1:
            self.step_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=has_unused_parameters(config.model))
        seed_all(config.seed + cluster.rank)  # each rank draws its own dropout noise
        self.loss_fn = TacotronLoss(config.loss)
        self.checkpoints = RunCheckpoints(out_dir / "checkpoints", config.keep_last)
        self.counters = Counters()
        self.kl_watch = KLInactivityWatch(config.kl_inactive_warning_steps)
        self.validated_at = self.saved_at = -1
        self.last_checkpoint: Optional[Path] = None
        self.log: Optional[RunLog] = None

    def say(self, message: str) -> None:
        if self.cluster.is_main:
            tqdm.write(message, file=sys.stderr)

    # ------------------------------------------------------------------------------------ loop
    def run(self, resume: bool) -> TrainResult:
        c, n = self.config, self.counters
        restored = self._restore() if resume else None
        start = n.step
        if self.cluster.is_main:
            self.checkpoints.remove_stale_temporaries()
            # a --resume that found no checkpoint drops whatever log lines a crashed first attempt left
            self.log = RunLog(self.out_dir, resumed_at=start if restored else (-1 if resume else None))
            self.log.scalars("data", start, self.data.summary)
        self.say(f"training on {self.cluster.world} x {self.device} (bf16 {'on' if self.bf16 else 'off'}): "
                 + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.data.summary.items())
                 + (f"; resumed from {restored} at step {start}" if restored else ""))
        progress = ProgressDisplay(start, c.max_steps, c.progress_every_seconds, enabled=self.cluster.is_main)
        window, stop = MetricWindow(), False
        try:
            while n.step < c.max_steps and not stop:
                self.data.sampler.load_state_dict({"epoch": n.epoch, "consumed": n.position})
                for batch in self.data.loader:
                    values, stop = self._train_step(batch)
                    n.step += 1
                    n.position += 1
                    window.add(values)
                    progress.update(n.step, values, self.controller.beta)
                    if n.step % c.log_every == 0:
                        self._log_train(window, progress)
                        window = MetricWindow()
                    self._validate_and_save(force=False)
                    if stop or n.step >= c.max_steps:
                        break
                else:
                    n.epoch, n.position = n.epoch + 1, 0
            if n.step > start:
                self._validate_and_save(force=True)
        finally:
            progress.close()
            if self.log is not None:
                self.log.close()
        if stop:
            self.say(f"stopped by {self.signals.received or 'a signal on another rank'} at step {n.step}; "
                     f"resume with --resume from {self.last_checkpoint}")
        if n.skipped_steps:
            self.say(f"skipped {n.skipped_steps} non-finite step(s)")
        return TrainResult(n.step, dict(n.val_metrics), self.last_checkpoint, restored, stop, n.skipped_steps,
                           self.model, self.controller)

    def _train_step(self, batch: Batch) -> tuple[Optional[dict[str, float]], bool]:
        """One step; returns (the step's logged values, or None if it was skipped; stop requested)."""
        step = self.counters.step
        batch = batch.to(self.device)
        broken = non_finite_items(batch)
        # agreed before the forward pass: under DDP every rank must skip it, or the gradient
        # all-reduce of the ranks that did run would wait forever
        flags = torch.tensor([float(bool(broken)), float(self.signals.received is not None)], device=self.device)
        broken_ranks, stop_ranks = self.cluster.sum(flags).tolist()
        stop = stop_ranks > 0
        if broken_ranks > 0:
            where = f"in {', '.join(broken)}" if broken else "on another rank"
            if broken:
                tqdm.write(f"step {step + 1}: skipped, non-finite log-mel values {where}", file=sys.stderr)
            self._count_bad_step(f"non-finite log-mel values {where} ({int(broken_ranks)} of "
                                 f"{self.cluster.world} rank(s)); check those cache files and wavs")
            return None, stop
        # freeing the last step's gradients before the forward pass keeps them out of its peak memory
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            output = self.step_model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths,
                                     **self._conditioning(batch))
        terms = self.loss_fn(output, batch, self.controller, step)
        terms.total.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm))
        local = torch.stack([terms.kl.detach().float(), (terms.mel_l1 + terms.postnet_l1).detach().float(),
                             (~torch.isfinite(terms.total.detach())).float()])
        kl_sum, recon_sum, bad_ranks = self.cluster.sum(local).tolist()
        if bad_ranks > 0 or not math.isfinite(grad_norm):
            values = terms.as_floats()
            bad_terms = [name for name, value in values.items() if not math.isfinite(value)]
            self._count_bad_step(
                f"non-finite loss on {int(bad_ranks)} of {self.cluster.world} rank(s), gradient norm {grad_norm}; "
                f"this rank's non-finite terms: {bad_terms or 'none'} "
                f"({', '.join(f'{k}={v:.4g}' for k, v in values.items())})")
            return None, stop
        self.counters.consecutive_bad = 0
        self.optimizer.step()
        self.scheduler.step()
        # the same averaged KL on every rank keeps beta identical across ranks
        kl = kl_sum / self.cluster.world
        self.controller.update(kl, recon=recon_sum / self.cluster.world)
        self._watch_kl(kl)
        if not self.cluster.is_main:
            return {}, stop
        align = alignment_diagonal_score(output.alignments.detach().float(), batch.text_lengths,
                                         decoder_steps(batch.mel_lengths, self.config.model.reduction_factor))
        return {**terms.as_floats(), "grad_norm": grad_norm, "align": float(align)}, stop

    def _count_bad_step(self, reason: str) -> None:
        n = self.counters
        n.skipped_steps += 1
        n.consecutive_bad += 1
        if n.consecutive_bad < self.config.max_consecutive_bad_steps:
            return
        raise TrainingError(
            f"{n.consecutive_bad} non-finite steps in a row (max_consecutive_bad_steps), the last at step "
            f"{n.step + 1}: {reason}. Lower optim.lr, check the corpus for silent or corrupt audio, or set "
            f"bf16 = false. The last good state is in {self.checkpoints.dir}.")

    def _watch_kl(self, kl: float) -> None:
        message = self.kl_watch.observe(self.controller.beta, kl, self._controller_values().get("capacity"))
        if message is None:
            return
        step = self.counters.step + 1
        self.say(f"WARNING step {step}: {message}")
        if self.log is not None:
            self.log.warning(step, "kl_inactive", message, {"kl": kl, "kl_window_start": self.kl_watch.start_kl})

    def _conditioning(self, batch: Batch, training: bool = True) -> dict[str, Optional[torch.Tensor]]:
        """What the model reads from the batch beside text and mel: speakers, fed-back pitch, and
        a "prosody" reference's tracks and speaker registers (in training, with register_dropout
        of them unknown: NaN, each utterance then read against its own mean pitch)."""
        model = self.config.model
        prosody = model.reference_input == "prosody"
        pitch = model.pitch_feedback or prosody
        register = self.speaker_registers[batch.speaker_ids] if prosody else None  # (B,) ln Hz
        if register is not None and training and model.register_dropout:
            hidden = torch.rand(register.shape, device=register.device) < model.register_dropout  # the run's RNG
            register = torch.where(hidden, torch.full_like(register, math.nan), register)
        return {"speaker_ids": batch.speaker_ids if model.n_speakers else None,
                "log_f0": batch.log_f0 if pitch else None, "voiced": batch.voiced if pitch else None,
                "energy": batch.energy if prosody else None, "reference_register": register}

    def _log_train(self, window: MetricWindow, progress: ProgressDisplay) -> None:
        if not self.cluster.is_main:
            return
        values = {**window.means(), "lr": self.scheduler.get_last_lr()[0],
                  "skipped_steps": self.counters.skipped_steps, **self._controller_values()}
        self.log.scalars("train", self.counters.step, values)
        progress.show(values)

    def _controller_values(self) -> dict[str, float]:
        values = {"beta": self.controller.beta}
        for name in ("capacity", "target"):  # C of DualAscent / CapacityAnnealing, GECO's target
            if isinstance(getattr(self.controller, name, None), (int, float)):
                values[name] = float(getattr(self.controller, name))
        return values

    # ------------------------------------------------------------------------------ validation
    def _validate_and_save(self, force: bool) -> None:
        """Validate every val_every steps, save every checkpoint_every, both at the end (force).
        Collective: every rank takes part in gathering RNG states."""
        c, step = self.config, self.counters.step
        validate = (force or step % c.val_every == 0) and self.validated_at != step
        # a step file already written at this step is written again if validation has just updated the state
        periodic = (force or step % c.checkpoint_every == 0) and (self.saved_at != step or validate)
        improved = False
        if validate and self.cluster.is_main:
            improved = self._validate()
        if validate:
            self.validated_at = step
        if periodic or validate:
            rng = self.cluster.gather(capture_rng())
            if self.cluster.is_main and (periodic or improved):
                state = self._state(rng)
                try:
                    if periodic:
                        self.last_checkpoint = self.checkpoints.save(state, step)
                    if improved:
                        self.checkpoints.save_best(state)
                except OSError as exc:  # a full disk, a quota, a vanished mount
                    # the writes are atomic: every checkpoint already on disk is still whole
                    previous = f"{self.last_checkpoint} is intact" if self.last_checkpoint else "none was written before"
                    raise CheckpointError(
                        f"{self.checkpoints.dir}: cannot write the checkpoint of step {step} "
                        f"({exc.strerror or exc}); the previous one: {previous}. Free space and continue "
                        "with --resume") from exc
        if periodic:
            self.saved_at = step

    @torch.no_grad()
    def _validate(self) -> bool:
        """Teacher-forced pass over the held-out set with z = posterior mean; logs and returns
        whether postnet L1 improved on the best so far. Never moves the training RNG."""
        model, r, n = self.model, self.config.model.reduction_factor, self.counters
        sums, count, example = defaultdict(float), 0, None
        model.eval()
        devices = [self.device.index] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed)  # prenet dropout stays on in eval: the same noise each time
            for batch in self.data.val_batches:
                batch = batch.to(self.device)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    output = model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths, mode="mean",
                                   **self._conditioning(batch, training=False))
                terms = self.loss_fn(output, batch, self.controller, n.step)
                align = alignment_diagonal_score(output.alignments.float(), batch.text_lengths,
                                                 decoder_steps(batch.mel_lengths, r))
                size = len(batch.ids)
                for name, value in {**terms.as_floats(), "align": float(align)}.items():
                    sums[name] += value * size
                count += size
                if example is None:
                    example = (batch, output)
        model.train()
        metrics = {**{name: total / count for name, total in sums.items()}, **self._controller_values()}
        n.val_metrics = metrics
        self.log.scalars("val", n.step, metrics)
        self._log_example(*example)
        improved = metrics["postnet_l1"] < n.best_val_l1
        n.best_val_l1 = min(n.best_val_l1, metrics["postnet_l1"])
        return improved

    def _log_example(self, batch: Batch, output) -> None:
        frames = int(batch.mel_lengths[0])
        steps = int(decoder_steps(batch.mel_lengths[:1], self.config.model.reduction_factor))
        predicted = output.mel_postnet[0, :frames].float().cpu()
        wav = griffin_lim(predicted, self.config.audio, n_iter=GRIFFIN_LIM_ITERATIONS)
        self.log.media(self.counters.step, output.alignments[0, :steps, : int(batch.text_lengths[0])].float().cpu(),
                       batch.mel[0, :frames].float().cpu(), predicted, wav, self.config.audio.sample_rate)

    # ----------------------------------------------------------------------------- checkpoints
    def _state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "config": config_to_dict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "controller": self.controller.state_dict(),
            **self.counters.state_dict(),
            "world_size": self.cluster.world,
            "rng": rng,
            "speakers": self.data.speakers,
            "mel_variance": self.data.mel_variance.state_dict() if self.data.mel_variance else None,
            "speaker_table": self.data.speaker_table.to_dict(),
        }

    def _restore(self) -> Optional[Path]:
        """Load the newest readable checkpoint; None if the run has none. The checkpoint's config
        and speakers are compared with this run's before anything is loaded, so an incompatible
        checkpoint changes nothing; a failure while loading ends the run (CheckpointError)."""
        found = self.checkpoints.load_latest()
        if found is None:
            self.say(f"no checkpoint in {self.checkpoints.dir}: starting a new run")
            return None
        path, state = found
        check_resumable(state, path, self.config, self.data.speakers)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.controller.load_state_dict(state["controller"])
            self.counters.load_state_dict(state)
            restore_rank_rng(state["rng"], state["world_size"], self.cluster, self.counters, self.config.seed)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: cannot restore the training state ({type(exc).__name__}: {exc})") from None
        self.validated_at = self.saved_at = self.counters.step
        self.last_checkpoint = path
        return path
