"""Faults in training: kill -9 at random moments, a full disk under a checkpoint, a NaN in a
batch, and a capacity so high that the KL runs unconstrained. Micro model, tiny corpus."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_tiny_corpus
from prosody_vae.training.checkpoint import RunCheckpoints, load_checkpoint, save_checkpoint
from prosody_vae.data.ljspeech import MelCache
from prosody_vae.plugin.errors import CheckpointError
from prosody_vae.training.runlog import KLInactivityWatch, read_metrics
from prosody_vae.training.trainer import train
from prosody_vae.training.data import build_data
from test_train import config_dict, make_config, records

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_tiny_corpus(tmp_path_factory.mktemp("faults") / "corpus", n=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def to_toml(config: dict) -> str:
    """config_dict's shape (scalars, then one level of tables) as TOML; JSON spells these values alike."""
    scalars = [f"{k} = {json.dumps(v)}" for k, v in config.items() if not isinstance(v, dict)]
    tables = [f"[{k}]\n" + "\n".join(f"{kk} = {json.dumps(vv)}" for kk, vv in v.items())
              for k, v in config.items() if isinstance(v, dict)]
    return "\n".join(scalars + tables) + "\n"


# ------------------------------------------------------------------------------------ kill -9
def assert_nothing_readable_is_damaged(run: Path, cache_dir: Path) -> tuple[Path, int] | None:
    """Every file a later run would read loads; returns (newest checkpoint, its step) or None."""
    checkpoints = RunCheckpoints(run / "checkpoints")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # load_latest warns when it has to skip an unreadable file
        found = checkpoints.load_latest()
    for path in [*checkpoints.step_files(), *(run / "checkpoints").glob("best.pt")]:
        assert load_checkpoint(path)["step"] >= 1, path
    last = run / "checkpoints" / "last.pt"
    if last.is_symlink():
        assert load_checkpoint(last)["step"] >= 1
    for mel in cache_dir.rglob("*.npy"):
        values = np.load(mel, allow_pickle=False)
        assert values.ndim == 2 and values.shape[1] == 20 and np.isfinite(values).all(), mel
    for info in cache_dir.rglob("audio_config.json"):
        json.loads(info.read_text())
    # a killed write leaves its temporary file: hidden, and named so that no reader matches it
    assert all(p.name.startswith(".") for p in [*run.rglob("*.tmp"), *cache_dir.rglob("*.tmp")])
    if (run / "metrics.jsonl").exists():
        steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]
        assert steps == list(range(1, len(steps) + 1)), "no step logged twice or left out"
    return None if found is None else (found[0], found[1]["step"])


@pytest.mark.slow
def test_kill_9_at_random_moments_never_loses_more_than_a_checkpoint(corpus, tmp_path):
    cache_dir, run, max_steps = tmp_path / "mels", tmp_path / "run", 60
    config = config_dict(str(cache_dir), max_steps=max_steps, checkpoint_every=2, keep_last=2)
    (tmp_path / "config.toml").write_text(to_toml(config))
    command = [sys.executable, "-m", "prosody_vae", "train", "--config", str(tmp_path / "config.toml"),
               "--data", str(corpus), "--out", str(run), "--resume"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    rng = random.Random(7)
    log = run / "metrics.jsonl"
    kills = resumes_checked = 0
    newest = None
    while kills < 6:
        before = log.read_bytes() if log.exists() else None
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kills == 0:
            time.sleep(rng.uniform(0.5, 3.0))  # anywhere in start-up: imports, caching log-mels
        else:  # once this run has rewritten the log (it restored its checkpoint), a moment into training
            deadline = time.monotonic() + 30
            while process.poll() is None and time.monotonic() < deadline and \
                    (not log.exists() or log.read_bytes() == before):
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.6))
        if process.poll() is not None:
            break  # it finished before the kill: the final check below covers it
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        kills += 1
        if kills > 1:
            # the relaunch started at the checkpoint that was newest before it (step 0: none yet),
            # and wrote its "data" line at that step
            assert [r["step"] for r in read_metrics(log) if r["split"] == "data"][-1] == (newest[1] if newest else 0)
            resumes_checked += 1
        newest = assert_nothing_readable_is_damaged(run, cache_dir)
    assert kills >= 5 and resumes_checked == kills - 1

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    if newest is not None:
        assert f"resumed from {newest[0]} at step {newest[1]}" in done.stderr
    assert_nothing_readable_is_damaged(run, cache_dir)
    assert not list((run / "checkpoints").glob("*.tmp")), "a finished run cleared the killed runs' temporaries"
    assert [r["step"] for r in records(run, "train")] == list(range(1, max_steps + 1))
    # and the interruptions changed nothing: the same weights as a run that was never killed
    straight = train(make_config(str(cache_dir), max_steps=max_steps, checkpoint_every=2), corpus, tmp_path / "straight")
    killed = load_checkpoint(run / "checkpoints" / f"step-{max_steps:08d}.pt")["model"]
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, killed[name]), name


# ---------------------------------------------------------------------------------- full disk
def fill_disk_when(monkeypatch, should_fail) -> None:
    """torch.save writes half of the file, then fails as a full disk does, for states that should_fail."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if not should_fail(obj):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_while_checkpointing_stops_clearly_and_keeps_the_previous_checkpoint(corpus, tmp_path,
                                                                                          monkeypatch):
    cache, run = str(tmp_path / "mels"), tmp_path / "run"
    config = make_config(cache, max_steps=4, checkpoint_every=2)
    fill_disk_when(monkeypatch, lambda state: state.get("step") == 4)
    with pytest.raises(CheckpointError, match=r"checkpoints: cannot write the checkpoint of step 4 \(No space left "
                                              r"on device\); the previous one: .*step-00000002\.pt is intact"):
        train(config, corpus, run)
    folder = run / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "step-00000002.pt"]  # no temporary file
    assert load_checkpoint(folder / "last.pt")["step"] == 2

    monkeypatch.undo()  # space freed: the run continues from the intact checkpoint
    resumed = train(config, corpus, run, resume=True)
    assert resumed.resumed_from.name == "step-00000002.pt" and resumed.step == 4


def test_a_full_disk_never_damages_the_file_being_replaced(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"config": {}, "step": 1})
    fill_disk_when(monkeypatch, lambda state: state.get("step") == 2)
    with pytest.raises(OSError) as raised:
        save_checkpoint(path, {"config": {}, "step": 2})
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


# ------------------------------------------------------------------------------- NaN in a batch
def test_a_nan_in_a_batch_is_skipped_and_counted_and_beta_stays_put(corpus, tmp_path, capsys):
    cache, max_steps = tmp_path / "mels", 8
    config = make_config(str(cache), max_steps=max_steps)
    data = build_data(config, corpus)  # fills the cache, and yields the batch order the trainer will see
    utterances = data.loader.dataset.utterances
    poisoned = utterances[0]
    # a cache file that loads but holds a NaN (damaged by something outside our atomic writes)
    path = MelCache(cache, config.audio).path(poisoned)
    mel = np.load(path)
    mel[len(mel) // 2, 3] = np.nan
    np.save(path, mel)
    bad_steps, step, epoch = set(), 0, 0
    while step < max_steps:
        data.sampler.set_epoch(epoch)
        for indices in data.sampler:
            step += 1
            if poisoned.id in {utterances[i].id for i in indices}:
                bad_steps.add(step)
            if step == max_steps:
                break
        epoch += 1
    assert 0 < len(bad_steps) < max_steps

    result = train(config, corpus, tmp_path / "run")
    assert result.step == max_steps and result.skipped_steps == len(bad_steps)
    assert f"non-finite log-mel values in {poisoned.id}" in capsys.readouterr().err
    logged = records(tmp_path / "run", "train")
    beta_before = 1.0  # beta_init
    for record in logged:
        s = record["step"]
        assert record["skipped_steps"] == sum(b <= s for b in bad_steps)
        assert ("kl" in record) == (s not in bad_steps)
        assert np.isfinite(record["beta"])
        if s in bad_steps:
            assert record["beta"] == beta_before, f"beta moved on the skipped step {s}"
        beta_before = record["beta"]
    assert len({r["beta"] for r in logged}) > 2, "beta moves on good steps"
    controller = result.controller.state_dict()
    assert controller["step"] == max_steps - len(bad_steps) and controller["skipped_updates"] == 0
    assert all(torch.isfinite(t).all() for t in result.model.state_dict().values())


# -------------------------------------------------------------------------- unconstrained KL
def test_the_kl_inactivity_watch_warns_once_after_limit_steps_of_zero_beta():
    watch = KLInactivityWatch(limit=3)
    assert [watch.observe(0.0, kl, capacity=50.0) for kl in (1.0, 2.0)] == [None, None]
    assert watch.observe(0.4, 2.5, capacity=50.0) is None  # a positive beta starts the count again
    assert [watch.observe(0.0, kl, capacity=50.0) for kl in (3.0, 4.0)] == [None, None]
    message = watch.observe(0.0, 6.0, capacity=50.0)
    assert "beta has been 0 for the last 3 steps" in message and "the KL went from 3 to 6 nats" in message
    assert "below the capacity C = 50 nats" in message and watch.start_kl == 3.0
    assert [watch.observe(0.0, 7.0, capacity=50.0) for _ in range(4)] == [None] * 4, "once per run"

    above_capacity = KLInactivityWatch(limit=1).observe(0.0, 60.0, capacity=50.0)
    assert "give the KL term a positive weight" in above_capacity and "C =" not in above_capacity
    assert "give the KL term a positive weight" in KLInactivityWatch(limit=1).observe(0.0, 1.0)
    never = KLInactivityWatch(limit=0)
    assert all(never.observe(0.0, 1.0) is None for _ in range(10))


def kl_warning_run(corpus: Path, run: Path, capacity: float, capsys) -> tuple[list[dict], str]:
    config = make_config(str(run.parent / "mels"), max_steps=60, kl_inactive_warning_steps=40,
                         controller={"kind": "dual_ascent", "capacity": capacity, "beta_init": 0.0, "lr": 1e-2})
    train(config, corpus, run)
    return records(run, "warning"), capsys.readouterr().err


@pytest.mark.slow
def test_a_capacity_far_too_high_is_reported_once(corpus, tmp_path, capsys):
    warned, stderr = kl_warning_run(corpus, tmp_path / "run", 1e4, capsys)
    assert [(w["step"], w["kind"]) for w in warned] == [(40, "kl_inactive")]  # once, not every step after
    assert "capacity C = 10000 nats" in warned[0]["message"] and "far too high" in warned[0]["message"]
    assert warned[0]["kl"] > warned[0]["kl_window_start"], "unconstrained, the KL grows"
    assert stderr.count("WARNING step 40: the KL is unconstrained") == 1
    assert all(r["beta"] == 0.0 for r in records(tmp_path / "run", "train"))


@pytest.mark.slow
def test_a_reachable_capacity_is_not_reported(corpus, tmp_path, capsys):
    warned, stderr = kl_warning_run(corpus, tmp_path / "run", 2.0, capsys)
    assert warned == [] and "unconstrained" not in stderr
    betas = [r["beta"] for r in records(tmp_path / "run", "train")]
    # beta sat at 0 while the KL climbed to C (as with C too high), then took over within the window
    assert betas[0] == 0.0 and max(betas) > 0
