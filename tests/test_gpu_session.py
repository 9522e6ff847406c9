"""benchmarks/gpu_session.sh, the one command a session with a GPU machine runs, run here on the CPU
with a tiny budget: every stage must run and land in the one JSON with sane values, so the
machine's few minutes are never the first time the script runs."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_session.sh"
N_TEXTS = 2
CORPUS_N = 20
STAGES = ("environment", "cuda_tests", "corpus", "features", "train", "transfer")

sys.path.insert(0, str(REPO / "benchmarks"))
import transfer_check  # noqa: E402


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_references_are_the_extremes_of_rate_plus_pitch_within_one_voice(tmp_path):
    rows = [("a", "en-us", 100, 10, 60), ("b", "en-us", 250, 90, 50), ("c", "en-us", 180, 50, 55),
            ("d", "en+f2", 80, 0, 40), ("e", "en+f2", 400, 100, 300)]  # d and e: another voice, more extreme
    with open(tmp_path / "factors.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "voice", "rate", "pitch", "f0_mean_hz"])
        writer.writerows(rows)
    slow, fast, voice = transfer_check.pick_references(tmp_path, "en-us")
    assert (slow["id"], fast["id"], voice) == ("a", "b", "en-us")
    slow, fast, voice = transfer_check.pick_references(tmp_path, "en-gb")  # not in the corpus: every row
    assert (slow["id"], fast["id"], voice) == ("d", "e", "any")


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> tuple[dict, Path]:
    """The whole script on the CPU: a 20-utterance corpus, 15 s of training, 2 texts."""
    tmp = tmp_path_factory.mktemp("gpu_session")
    env = {**os.environ, "DEVICE": "cpu", "CORPUS_N": str(CORPUS_N), "TRAIN_SECONDS": "15",
           "TRAIN_OVERRIDES": "data.n_val=4", "N_TEXTS": str(N_TEXTS), "MAX_DECODER_STEPS": "25",
           "VOCODER": "griffin-lim", "WORK": str(tmp / "work"), "OUT": str(tmp / "out"), "WHEELS": str(tmp / "none"),
           "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((tmp / "out" / "gpu_session.json").read_text()), tmp / "out"



@pytest.mark.slow
def test_every_stage_lands_in_the_json(session):
    report, _ = session
    assert all(report[stage]["status"] in ("ok", "no_tests") for stage in STAGES), \
        {stage: (report[stage]["status"], report[stage].get("log_tail")) for stage in STAGES}
    assert report["settings"]["DEVICE"] == "cpu" and report["elapsed_seconds"] > 0
    assert report["environment"]["missing_modules"] == []
    assert report["cuda_tests"]["failures"] == 0 and report["cuda_tests"]["errors"] == 0
    assert report["corpus"]["utterances"] == CORPUS_N


@pytest.mark.slow
def test_training_stops_on_its_budget_with_a_checkpoint(session):
    report, out = session
    train = report["train"]
    # the time budget ended it (SIGTERM), and the trainer saved on its way out
    assert train["exit"] == "stopped by signal" and train["rc"] == 0
    assert train["device"] == "cpu" and 'device = "cpu"' in train["config"]
    assert train["steps"] > 0 and train["checkpoint_step"] == train["steps"]
    assert Path(train["checkpoint"]).is_file()
    assert math.isfinite(train["final_val"]["postnet_l1"]) and train["final_val"]["step"] == train["steps"]
    assert train["steps_per_s_overall"] > 0
    from prosody_vae.training.checkpoint import load_model

    model, config = load_model(out / "model.pt")  # the copy that comes back from the device
    assert config.device == "cpu" and config.data.n_val == 4


@pytest.mark.slow
def test_transfer_check_reports_every_text(session):
    transfer = session[0]["transfer"]
    assert transfer["vocoder"] == "griffin-lim" and transfer["pitch_head"]
    assert transfer["references"]["slow"]["score"] < transfer["references"]["fast"]["score"]
    assert [t["text"] for t in transfer["texts"]] == transfer_check.TEXTS[:N_TEXTS]
    for text in transfer["texts"]:
        assert not text["spoken_by_corpus"]
        for name in ("slow", "fast"):
            output = text[name]
            assert 0 < output["frames"] <= 4 * 25
            assert output["voiced_fraction"] is None or 0 <= output["voiced_fraction"] <= 1
        assert isinstance(text["duration_order_like_references"], bool)
        assert isinstance(text["f0_order_like_references"], bool)
    assert set(transfer["summary"]) >= {"durations_order_like_references_on_every_text",
                                        "f0_orders_like_references_on_every_text", "median_track_error_cents",
                                        "median_voiced_fraction"}


@pytest.mark.slow
def test_a_failed_stage_is_recorded_and_the_rest_still_runs(session, tmp_path):
    """CUDA asked for where there is none: training fails at once, the transfer check has no
    checkpoint to run on, and the JSON still says all of it; the script exits 1."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    env = {**os.environ, "DEVICE": "cuda", "CORPUS": session[0]["corpus"]["path"], "RUN_CUDA_TESTS": "0",
           "WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out"), "WHEELS": str(tmp_path / "none"),
           "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "gpu_session.json").read_text())
    assert report["cuda_tests"]["status"] == "skipped" and report["corpus"]["status"] == "given"
    assert report["train"]["status"] == "failed" and report["train"]["checkpoint"] is None
    assert any("torch sees no CUDA device" in line for line in report["train"]["log_tail"])
    assert report["transfer"]["status"] == "skipped"
