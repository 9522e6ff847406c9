"""Behavioural tests of the trainer (prosody_vae/training/trainer.py), its config loader (config.py) and
checkpoints (checkpoint.py), on a micro model and a tiny synthetic corpus."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import write_tiny_corpus
from prosody_vae.training.checkpoint import FORMAT_VERSION, checkpoint_config, load_checkpoint, load_model
from prosody_vae.training.config import TrainConfig, config_from_dict, config_to_dict, load_config
from prosody_vae.plugin.errors import CheckpointError, ConfigError, DataError, RunLockedError, TrainingError
from prosody_vae.training.losses import TacotronLoss
from prosody_vae.training.run_lock import RunLock
from prosody_vae.model.tacotron import ProsodyTacotron, TacotronConfig
from prosody_vae.training.config import lr_schedule
from prosody_vae.training.distributed import has_unused_parameters
from prosody_vae.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
LEGACY_CHECKPOINT = REPO / "tests" / "fixtures" / "legacy_checkpoint.pt"
N_MELS = 20
MICRO = dict(n_mels=N_MELS, embedding_dim=24, encoder_conv_channels=24, encoder_lstm_dim=24, prenet_dims=[24, 24],
             attention_rnn_dim=32, decoder_rnn_dim=32, attention_dim=16, location_filters=4, location_kernel_size=7,
             postnet_channels=16, latent_dim=4, ref_conv_channels=[4, 8], ref_gru_dim=8, ref_mlp_dim=8,
             text_summary_dim=8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_tiny_corpus(tmp_path_factory.mktemp("train") / "corpus", n=8)


@pytest.fixture(scope="module")
def mel_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("mels"))


pytestmark = pytest.mark.usefixtures("one_thread")


def config_dict(cache_dir: str, model: dict | None = None, **run) -> dict:
    """A TOML-shaped config: micro model, 8-utterance corpus (2 held out), batches of 3."""
    return {"model": {"preset": "tiny", **MICRO, **(model or {})}, "audio": {"n_mels": N_MELS},
            "data": {"n_val": 2, "batch_size": 3, "cache_dir": cache_dir},
            "optim": {"lr": 3e-3},
            "controller": {"kind": "dual_ascent", "capacity": 10.0, "lr": 1e-2},
            "max_steps": 8, "log_every": 1, "val_every": 100, "checkpoint_every": 100, "threads": 1, **run}


def make_config(cache_dir: str, model: dict | None = None, **run) -> TrainConfig:
    return config_from_dict(TrainConfig, config_dict(cache_dir, model, **run), "test")


def records(run: Path, split: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


# ---------------------------------------------------------------------------------------- config
def test_unknown_key_is_an_error_naming_file_and_dotted_key(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("max_steps = 10\n[model]\npreset = 'tiny'\natention_dim = 64\n")
    with pytest.raises(ConfigError, match=r"config\.toml: unknown key 'model\.atention_dim'"):
        load_config(path)


@pytest.mark.parametrize("toml, message", [
    ("[optim]\nlr = 'fast'", r"'optim\.lr' must be float, got 'fast' \(str\)"),
    ("[data]\nbatch_size = 16.0", r"'data\.batch_size' must be int, got 16\.0"),
    ("bf16 = 1", r"'bf16' must be bool \| 'auto', got 1 \(int\)"),  # bool is strict
    ("device = 'tpu'", r"'device' must be 'auto' \| 'cpu' \| 'cuda', got 'tpu'"),
    ("[optim]\nbetas = [0.9]", r"'optim\.betas' must be an array of 2"),
    ("[model]\nprenet_dims = [128, 'x']", r"'model\.prenet_dims\[1\]' must be int"),
    ("model = 3", r"'model' must be a table"),
    ("[model]\npreset = 'huge'", r"\[model\] unknown preset 'huge'"),
    ("[model]\nn_mels = 40", r"model\.n_mels \(40\) must equal audio\.n_mels \(80\)"),
    ("[controller]\nkind = 'dual_ascent'", r"\[controller\] .*needs field\(s\) \['capacity'\]"),
])
def test_wrong_types_and_values_are_errors_naming_the_key(tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: .*" + message):
        load_config(path)


def test_typed_loading_promotes_ints_reads_none_and_applies_preset_overrides(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("bf16 = true\n[model]\npreset = 'tiny'\nlatent_dim = 7\nprenet_dims = [32, 16]\n"
                    "[optim]\nlr = 1\n[audio]\nfmax = 'none'\n[loss]\nguided_attention_fade_steps = 'none'\n")
    config = load_config(path)
    tiny = TacotronConfig.preset("tiny")
    assert config.model.latent_dim == 7 and config.model.prenet_dims == (32, 16)
    assert config.model.attention_rnn_dim == tiny.attention_rnn_dim  # from the preset
    assert config.optim.lr == 1.0 and type(config.optim.lr) is float
    assert config.audio.fmax is None and config.loss.guided_attention_fade_steps is None
    assert config.bf16 is True
    assert config_from_dict(TrainConfig, config_to_dict(config)) == config


@pytest.mark.parametrize("recipe", ["demo", "ljspeech"])
def test_recipes_load(recipe):
    config = load_config(REPO / "recipes" / recipe / "config.toml")
    assert config.model.n_mels == config.audio.n_mels


def test_lr_schedule_warms_up_decays_and_floors():
    config = make_config("unused", optim={"lr": 1e-3, "warmup_steps": 10, "decay": "exponential",
                                          "decay_rate": 0.5, "decay_steps": 100, "min_lr": 1e-4}).optim
    factor = lr_schedule(config)
    assert [factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert factor(110) == pytest.approx(0.5) and factor(210) == pytest.approx(0.25)
    assert factor(10_000) == pytest.approx(0.1)  # min_lr / lr
    noam = lr_schedule(make_config("unused", optim={"warmup_steps": 100, "decay": "noam", "min_lr": 0.0}).optim)
    assert noam(99) == pytest.approx(1.0) and noam(399) == pytest.approx(0.5)


def test_the_train_function_is_not_shadowed_by_its_module():
    import prosody_vae.training.trainer
    from prosody_vae import train as exported

    assert exported is prosody_vae.training.trainer.train and prosody_vae.train is exported


# ----------------------------------------------------------------------------------------- loop
@pytest.mark.slow
def test_trainer_overfits_one_batch_and_writes_logs_and_checkpoints(corpus, mel_cache, tmp_path):
    run = tmp_path / "run"
    # 6 training utterances in one batch: every step sees the same batch
    config = make_config(mel_cache, max_steps=40, log_every=4, val_every=20, checkpoint_every=8, keep_last=2,
                         data={"n_val": 2, "batch_size": 6, "cache_dir": mel_cache}, optim={"lr": 1e-2})
    result = train(config, corpus, run)

    train_logs = records(run, "train")
    assert [r["step"] for r in train_logs] == list(range(4, 41, 4))
    for key in ("mel_l1", "postnet_l1", "stop", "guided_attention", "kl", "kl_term", "total", "beta",
                "capacity", "lr", "grad_norm", "align", "steps_per_s"):
        assert all(math.isfinite(r[key]) for r in train_logs), key
    assert train_logs[-1]["postnet_l1"] <= 0.5 * train_logs[0]["postnet_l1"]
    val_logs = records(run, "val")
    assert [r["step"] for r in val_logs] == [20, 40]
    assert {"postnet_l1", "kl", "beta", "align"} <= set(result.metrics)
    assert result.metrics == {k: v for k, v in val_logs[-1].items() if k not in ("step", "split")}

    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*.pt")) == ["step-00000032.pt", "step-00000040.pt"]
    assert os.readlink(checkpoints / "last.pt") == "step-00000040.pt" and result.checkpoint.name == "step-00000040.pt"
    best_step = min(val_logs, key=lambda r: r["postnet_l1"])["step"]
    assert load_checkpoint(checkpoints / "best.pt")["step"] == best_step
    model, loaded = load_model(checkpoints / "step-00000040.pt")
    assert loaded == config and all(torch.equal(a, b) for a, b in
                                    zip(model.state_dict().values(), result.model.state_dict().values()))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert {"val/alignment", "val/mel"} <= set(events.Tags()["images"])
    assert "val/griffin_lim" in events.Tags()["audio"]
    assert {"train/beta", "train/capacity", "train/lr", "train/grad_norm", "val/align"} <= set(events.Tags()["scalars"])


def test_utterances_longer_than_max_frames_are_skipped_and_counted(corpus, mel_cache, tmp_path):
    import soundfile as sf

    frames = [sf.info(str(wav)).frames // 256 for wav in sorted((corpus / "wavs").glob("*.wav"))]
    limit = sorted(frames)[-2]  # keeps all but the longest utterance
    data = {"n_val": 2, "batch_size": 3, "cache_dir": mel_cache, "max_frames": limit}
    train(make_config(mel_cache, max_steps=1, data=data), corpus, tmp_path / "run")
    [summary] = records(tmp_path / "run", "data")
    assert summary["skipped_longer_than_max_frames"] == 1
    assert summary["train_utterances"] + summary["val_utterances"] == len(frames) - 1
    with pytest.raises(DataError, match="max_frames = 1 frames"):
        train(make_config(mel_cache, max_steps=1, data={**data, "max_frames": 1}), corpus, tmp_path / "run2")


def test_a_run_is_never_overwritten(corpus, mel_cache, tmp_path):
    run = tmp_path / "run"
    train(make_config(mel_cache, max_steps=1), corpus, run)
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(make_config(mel_cache, max_steps=2), corpus, run)


def held_by(pid: int) -> str:
    """The refusal's account of a trainer holding the run folder."""
    return rf"is in use by another trainer \(pid {pid} on host {re.escape(socket.gethostname())}\)"


def test_a_run_folder_another_trainer_holds_is_refused_before_anything_is_written(corpus, mel_cache, tmp_path):
    run = tmp_path / "run"
    with RunLock.acquire(run):
        record = (run / ".lock").read_text()
        for resume in (False, True):
            with pytest.raises(RunLockedError, match=held_by(os.getpid())):
                train(make_config(mel_cache, max_steps=1), corpus, run, resume=resume)
        assert [p.name for p in run.iterdir()] == [".lock"] and (run / ".lock").read_text() == record
    assert not run.exists(), "a lock that nothing else used leaves no folder behind"
    assert train(make_config(mel_cache, max_steps=1), corpus, run).step == 1
    assert not (run / ".lock").exists(), "a finished run releases its folder"


def test_resume_continues_exactly(corpus, mel_cache, tmp_path):
    # V+T with text dropout and prenet dropout draw from the RNG every step; 4 steps end mid-epoch
    # (3 batches per epoch), so the sampler position matters too
    config = make_config(mel_cache, model={"posterior": "V+T", "text_dropout": 0.5}, max_steps=8)
    straight = train(config, corpus, tmp_path / "straight")
    train(config, corpus, tmp_path / "halves", max_steps=4)
    resumed = train(config, corpus, tmp_path / "halves", resume=True)

    assert resumed.resumed_from.name == "step-00000004.pt" and resumed.step == straight.step == 8
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    a, b = straight.controller.state_dict(), resumed.controller.state_dict()
    assert a["step"] == b["step"] == 8 and a["beta"] == b["beta"] and a["beta"] != 1.0
    assert [r["step"] for r in records(tmp_path / "halves", "train")] == list(range(1, 9))


def test_a_checkpoint_of_the_older_trainer_resumes(corpus, mel_cache, tmp_path):
    """The fixture: 3 steps on this corpus by the trainer at 718b8cc (tests/fixtures/README.md)."""
    legacy = load_checkpoint(LEGACY_CHECKPOINT)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(LEGACY_CHECKPOINT, run / "checkpoints" / "step-00000003.pt")
    config = checkpoint_config(legacy, LEGACY_CHECKPOINT)
    config = dataclasses.replace(config, max_steps=5, data=dataclasses.replace(config.data, cache_dir=mel_cache))
    result = train(config, corpus, run, resume=True)

    assert result.resumed_from.name == "step-00000003.pt" and result.step == 5
    assert result.controller.state_dict()["step"] == 5
    state = load_checkpoint(result.checkpoint)
    # 6 training utterances in batches of 3: from (epoch 1, 1 batch in), 2 steps end 1 batch into epoch 2
    assert (legacy["epoch"], legacy["position"], state["epoch"], state["position"]) == (1, 1, 2, 1)
    assert state["trainer"]["best_val_l1"] == min(legacy["trainer"]["best_val_l1"], result.metrics["postnet_l1"])
    assert state["trainer"]["skipped_steps"] == 0


def test_checkpoint_of_another_config_is_refused_before_loading(corpus, mel_cache, tmp_path):
    run = tmp_path / "run"
    train(make_config(mel_cache, max_steps=2), corpus, run)
    before = (run / "checkpoints" / "step-00000002.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"another config \(model\.latent_dim differ\)"):
        train(make_config(mel_cache, model={"latent_dim": 6}, max_steps=4), corpus, run, resume=True)
    # settings that do not change what a step computes may change
    assert train(make_config(mel_cache, max_steps=3, log_every=3), corpus, run, resume=True).step == 3

    state = load_checkpoint(run / "checkpoints" / "step-00000003.pt")
    torch.save({**state, "format_version": FORMAT_VERSION + 1}, run / "checkpoints" / "step-00000009.pt")
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION + 1}"):
        train(make_config(mel_cache, max_steps=10), corpus, run, resume=True)
    assert (run / "checkpoints" / "step-00000002.pt").read_bytes() == before


def test_corrupt_last_checkpoint_falls_back_to_the_previous_one(corpus, mel_cache, tmp_path):
    run = tmp_path / "run"
    train(make_config(mel_cache, max_steps=4, checkpoint_every=2), corpus, run)
    newest = run / "checkpoints" / "step-00000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a truncated zip
    with open(run / "metrics.jsonl", "a") as log:
        log.write('{"step": 5, "spl')  # and a log line cut short by the kill
    with pytest.warns(RuntimeWarning, match="step-00000004.pt: cannot read checkpoint"):
        result = train(make_config(mel_cache, max_steps=5, checkpoint_every=2), corpus, run, resume=True)
    assert result.resumed_from.name == "step-00000002.pt" and result.step == 5
    # the log keeps what came up to step 2, then the resumed steps: no step twice, no broken line
    assert [r["step"] for r in records(run, "train")] == [1, 2, 3, 4, 5]

    for path in (run / "checkpoints").glob("step-*.pt"):
        path.write_bytes(b"")
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="no checkpoint could be read"):
        train(make_config(mel_cache, max_steps=8), corpus, run, resume=True)


def test_without_a_terminal_progress_is_a_plain_line_every_few_seconds(corpus, mel_cache, tmp_path, capsys):
    train(make_config(mel_cache, max_steps=4, progress_every_seconds=1e-6), corpus, tmp_path / "run")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    number = r"-?[0-9.]+(?:e[+-][0-9]+)?"
    pattern = rf"step ([0-9]+)/4: postnet_l1 {number}, kl {number}, beta {number}; {number} steps/s, ETA (\w+)"
    matches = [re.fullmatch(pattern, line) for line in lines]
    assert all(matches), lines
    assert [int(m[1]) for m in matches] == [1, 2, 3, 4] and matches[-1][2] == "0s"


def poison_loss(monkeypatch, bad_steps):
    """Make the training loss NaN at the given steps (validation passes stay finite)."""
    original = TacotronLoss.__call__

    def poisoned(self, output, batch, controller, step):
        terms = original(self, output, batch, controller, step)
        if torch.is_grad_enabled() and (bad_steps is all or step in bad_steps):
            terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(TacotronLoss, "__call__", poisoned)


def test_nan_loss_skips_the_step_and_is_counted(corpus, mel_cache, tmp_path, monkeypatch):
    poison_loss(monkeypatch, bad_steps={1, 3})
    result = train(make_config(mel_cache, max_steps=6), corpus, tmp_path / "run")
    assert result.step == 6 and result.skipped_steps == 2
    assert result.controller.state_dict()["step"] == 4  # no controller update on a skipped step
    state = load_checkpoint(result.checkpoint)
    adam_steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {4} and state["scheduler"]["last_epoch"] == 4
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert [r["skipped_steps"] for r in records(tmp_path / "run", "train")] == [0, 1, 1, 2, 2, 2]


def test_too_many_bad_steps_in_a_row_stop_training(corpus, mel_cache, tmp_path, monkeypatch):
    poison_loss(monkeypatch, bad_steps=all)
    with pytest.raises(TrainingError, match=r"3 non-finite steps in a row .* at step 3: .*'total'"):
        train(make_config(mel_cache, max_steps=10, max_consecutive_bad_steps=3), corpus, tmp_path / "run")


def test_bf16_autocast_trains_on_cpu(corpus, mel_cache, tmp_path):
    result = train(make_config(mel_cache, max_steps=2, bf16=True), corpus, tmp_path / "run")
    assert result.skipped_steps == 0 and math.isfinite(result.metrics["postnet_l1"])
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # autocast, not a cast


@pytest.mark.parametrize("posterior, text_dropout", [("V", 0.0), ("V+T", 0.0), ("V+T", 0.5)])
@pytest.mark.parametrize("attention", ["location", "forward", "dca"])
def test_ddp_unused_parameter_rule_matches_a_real_step(posterior, text_dropout, attention):
    """DDP hangs or fails if it is not told about parameters a step leaves without gradient."""
    config = TacotronConfig.preset("tiny", **{**MICRO, "dca_filter_mlp_dim": 8, "posterior": posterior,
                                                "text_dropout": text_dropout, "attention_kind": attention})
    torch.manual_seed(0)
    model = ProsodyTacotron(config)
    text = torch.randint(3, 40, (2, 5))
    mel = torch.randn(2, 16, N_MELS)
    out = model(text, torch.tensor([5, 3]), mel, torch.tensor([16, 11]))
    (out.mel_postnet.sum() + out.stop_logits.sum() + out.posterior.kl.sum()).backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert not unused or has_unused_parameters(config)  # DDP is told whenever it must be
    assert has_unused_parameters(config) == (posterior != "V")  # and "V" models skip its per-step search


# ---------------------------------------------------------------------------------- subprocesses
DRIVER = """
import json, os, sys
import torch
from prosody_vae.training.config import TrainConfig, config_from_dict
from prosody_vae.training.trainer import train

config_path, data, out, dump = sys.argv[1:5]
config = config_from_dict(TrainConfig, json.load(open(config_path)), config_path)
result = train(config, data, out, resume="--resume" in sys.argv)
rank = os.environ.get("RANK", "0")
parameters = {name: p.detach() for name, p in result.model.named_parameters()}
torch.save({"parameters": parameters, "beta": result.controller.beta, "step": result.step},
           f"{dump}/rank{rank}.pt")
print(json.dumps({"step": result.step, "stopped_by_signal": result.stopped_by_signal}), flush=True)
"""


def write_driver(tmp_path: Path, config: dict) -> tuple[Path, Path]:
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path / "driver.py", tmp_path / "config.json"


@pytest.mark.slow
def test_two_process_gloo_ddp_keeps_ranks_identical(corpus, mel_cache, tmp_path):
    # V+T without text dropout: the no-transcript vector gets no gradient (find_unused_parameters)
    config = config_dict(mel_cache, model={"posterior": "V+T"}, max_steps=4, checkpoint_every=2,
                         data={"n_val": 2, "batch_size": 2, "cache_dir": mel_cache})
    driver, config_path = write_driver(tmp_path, config)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           str(driver), str(config_path), str(corpus), str(tmp_path / "run"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == 4
    assert ranks[0]["beta"] == ranks[1]["beta"] != 1.0
    # parameters, not BatchNorm statistics: DDP sends rank 0's at the start of each forward, so
    # after the last step each rank holds its own (the checkpoint has rank 0's)
    for name, tensor in ranks[0]["parameters"].items():
        assert torch.equal(tensor, ranks[1]["parameters"][name]), name
    # rank 0 alone logs; each rank stepped on its own shard (6 utterances, 2 ranks, batches of 2)
    assert [r["step"] for r in records(tmp_path / "run", "train")] == [1, 2, 3, 4]
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000004.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank dropout noise
    assert (state["epoch"], state["position"]) == (1, 2)  # 2 batches per rank and epoch: epoch 1 done


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_resumes(corpus, mel_cache, tmp_path):
    config = config_dict(mel_cache, max_steps=100_000)
    driver, config_path = write_driver(tmp_path, config)
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, str(driver), str(config_path), str(corpus), str(run), str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    log = run / "metrics.jsonl"
    while not (log.exists() and '"split": "train"' in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-3000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["stopped_by_signal"] and 1 <= report["step"] < 100_000
    assert "stopped by SIGTERM" in stderr
    stopped_at = report["step"]
    assert (run / "checkpoints" / f"step-{stopped_at:08d}.pt").exists()

    resumed = train(make_config(mel_cache, max_steps=stopped_at + 2), corpus, run, resume=True)
    assert resumed.resumed_from.name == f"step-{stopped_at:08d}.pt" and resumed.step == stopped_at + 2
    saved = torch.load(tmp_path / "rank0.pt")
    assert saved["step"] == stopped_at


@pytest.mark.slow
def test_one_trainer_per_run_folder_and_kill_9_leaves_no_stale_lock(corpus, mel_cache, tmp_path):
    # a DataLoader worker outlives its killed parent by a few seconds: it must not hold the lock
    data = {"n_val": 2, "batch_size": 3, "cache_dir": mel_cache, "num_workers": 1}
    driver, config_path = write_driver(tmp_path, config_dict(mel_cache, max_steps=100_000, checkpoint_every=2,
                                                             data=data))
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, str(driver), str(config_path), str(corpus), str(run), str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        log = run / "metrics.jsonl"
        while not (log.exists() and '"step": 3, "split": "train"' in log.read_text()):  # a checkpoint is written
            assert time.monotonic() < deadline and process.poll() is None, "the first trainer did not get going"
            time.sleep(0.1)
        with pytest.raises(RunLockedError, match=held_by(process.pid)):
            train(make_config(mel_cache, max_steps=100_000, checkpoint_every=2), corpus, run, resume=True)
    finally:
        process.kill()  # SIGKILL: no handler runs, the lock file stays where it is
        process.wait()
    assert (run / ".lock").exists()
    newest = max(int(path.stem.removeprefix("step-")) for path in (run / "checkpoints").glob("step-*.pt"))
    resumed = train(make_config(mel_cache, max_steps=newest + 1, checkpoint_every=2), corpus, run, resume=True)
    assert resumed.resumed_from.name == f"step-{newest:08d}.pt" and resumed.step == newest + 1


@pytest.mark.slow
def test_under_torchrun_a_held_run_folder_stops_every_rank_before_any_write(corpus, mel_cache, tmp_path):
    driver, config_path = write_driver(tmp_path, config_dict(mel_cache, max_steps=2))
    run = tmp_path / "run"
    with RunLock.acquire(run):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                               str(driver), str(config_path), str(corpus), str(run), str(tmp_path)],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode != 0
        refusal = rf"prosody_vae.plugin.errors.RunLockedError: {re.escape(str(run))} {held_by(os.getpid())}"
        for rank in (0, 1):  # rank 1 stops on rank 0's refusal, instead of waiting for it
            assert re.search(rf"\[rank{rank}\]: {refusal}", done.stderr), done.stderr[-3000:]
        assert [p.name for p in run.iterdir()] == [".lock"]
