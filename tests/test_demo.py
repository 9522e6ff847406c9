"""The CLI end to end: `prosody-vae train` and `prosody-vae demo` on tiny corpora and a micro model."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import write_tiny_corpus

# a micro model: every size small enough for seconds on a CPU; the decoder gets 12 steps at most
MICRO_TOML = """
max_steps = 2
log_every = 1
val_every = 2
checkpoint_every = 2
threads = 1
[model]
preset = "tiny"
embedding_dim = 16
encoder_conv_channels = 16
encoder_lstm_dim = 16
prenet_dims = [16, 16]
attention_rnn_dim = 16
decoder_rnn_dim = 16
attention_dim = 8
location_filters = 4
location_kernel_size = 7
postnet_channels = 8
latent_dim = 4
ref_conv_channels = [4, 8]
ref_gru_dim = 8
ref_mlp_dim = 8
max_decoder_steps = 12
[data]
n_val = 2
batch_size = 3
[controller]
kind = "dual_ascent"
capacity = 10.0
"""


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prosody_vae", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
def test_cli_train_end_to_end_and_resume(tmp_path):
    corpus = write_tiny_corpus(tmp_path / "corpus", n=8)
    config = tmp_path / "micro.toml"
    config.write_text(MICRO_TOML)
    first = run_cli("train", "--config", str(config), "--data", str(corpus), "--out", str(tmp_path / "run"))
    assert first.returncode == 0, first.stderr
    assert "finished at step 2" in first.stdout
    assert (tmp_path / "run" / "checkpoints" / "step-00000002.pt").is_file()
    again = run_cli("train", "--config", str(config), "--data", str(corpus), "--out", str(tmp_path / "run"))
    assert again.returncode == 2 and "error:" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    more = run_cli("train", "--config", str(config), "--data", str(corpus), "--out", str(tmp_path / "run"),
                   "--resume", "--max-steps", "4")
    assert more.returncode == 0, more.stderr
    assert "finished at step 4" in more.stdout

    # inference commands on that checkpoint
    checkpoint = str(tmp_path / "run" / "checkpoints" / "best.pt")
    wav_a, wav_b = str(corpus / "wavs" / "utt000.wav"), str(corpus / "wavs" / "utt001.wav")
    out = tmp_path / "out"
    said = run_cli("synthesize", "--checkpoint", checkpoint, "--text", "Hello there.", "--reference", wav_a,
                   "--out", str(out / "one.wav"))
    assert said.returncode == 0 and (out / "one.wav").is_file(), said.stderr
    quantised = run_cli("synthesize", "--checkpoint", checkpoint, "--text", "Hello there.", "--reference", wav_a,
                        "--precision", "int8", "--out", str(out / "int8.wav"))
    assert quantised.returncode == 0 and (out / "int8.wav").is_file(), quantised.stderr
    (tmp_path / "lines.txt").write_text("One boat.\nTwo boats?\n\n")
    transferred = run_cli("transfer", "--checkpoint", checkpoint, "--texts", str(tmp_path / "lines.txt"),
                          "--references", wav_a, wav_b, "--out", str(out / "transfer"))
    assert transferred.returncode == 0, transferred.stderr
    assert sorted(p.relative_to(out / "transfer").as_posix() for p in (out / "transfer").rglob("*.wav")) == [
        "utt000/0000.wav", "utt000/0001.wav", "utt001/0000.wav", "utt001/0001.wav"]
    encoded = run_cli("encode", "--checkpoint", checkpoint, "--references", str(corpus / "wavs"), "--out", str(out / "z"))
    assert encoded.returncode == 0, encoded.stderr
    rows = (out / "z" / "z.csv").read_text().splitlines()
    assert len(rows) == 1 + 8 and rows[0].startswith("id,kl_nats,mean_0") and (out / "z" / "utt007.npy").is_file()
    between = run_cli("interpolate", "--checkpoint", checkpoint, "--text", "Hi.", "--reference-a", wav_a,
                      "--reference-b", wav_b, "--steps", "3", "--out", str(out / "interp"))
    assert between.returncode == 0 and len(list((out / "interp").glob("step*.wav"))) == 3, between.stderr
    analyzed = run_cli("analyze", "--runs", str(tmp_path / "run"), "--data", str(corpus), "--out", str(out / "an"))
    assert analyzed.returncode == 0, analyzed.stderr
    report = json.loads((out / "an" / "analysis.json").read_text())
    assert report["points"][0]["capacity"] == 10.0 and (out / "an" / "rate_distortion.png").is_file()
    assert "entropy sum" in report["checkpoints"][str(tmp_path / "run")]["entropy_sum"]
    missing = run_cli("synthesize", "--checkpoint", checkpoint, "--text", "Hi.", "--reference",
                      str(tmp_path / "nope.wav"), "--out", str(out / "x.wav"))
    assert missing.returncode == 2 and "nope.wav: no such audio file" in missing.stderr


def test_cli_train_reports_a_bad_config_in_one_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[model]\npreset = 'tiny'\natention_dim = 3\n")
    result = run_cli("train", "--config", str(config), "--data", str(tmp_path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip() == "prosody-vae train: error: " + f"{config}: unknown key 'model.atention_dim'"


@pytest.mark.slow
def test_cli_demo_end_to_end(tmp_path):
    config = tmp_path / "micro.toml"
    # as the demo recipe: told who speaks, with a pitch head, reading the reference's prosody tracks
    config.write_text(MICRO_TOML.replace("[data]\nn_val = 2", "[data]\nn_val = 4").replace(
        "max_decoder_steps = 12", "max_decoder_steps = 12\nn_speakers = 12\nspeaker_dim = 4\npitch_head = true\n"
                                  "reference_input = \"prosody\""))
    result = run_cli("demo", "--out", str(tmp_path / "demo"), "--n", "16", "--config", str(config))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "demo"
    report = json.loads((out / "report.json").read_text())
    conditions = {row["condition"] for row in report["synthesis"]}
    knobs = {c for c in conditions if c.startswith("knob_")}  # the calibrated pitch and rate knobs it offers
    assert conditions - knobs == {"transfer_slow_low", "transfer_fast_high", "prior_sample", "prior_mean",
                                  "cross_voice_relative", "cross_voice_absolute"}
    assert {c.rsplit("_", 1)[0] for c in knobs} <= {"knob_pitch", "knob_rate"}
    assert (not knobs) or "## Knobs" in (out / "report.md").read_text()
    for row in report["synthesis"]:
        assert (out / row["wav"]).is_file()
        assert 0 < row["seconds"] <= 12 * 4 * 256 / 22050 + 1e-9  # max_decoder_steps * r frames
    assert report["validation"]["step"] == 2
    assert (out / "plots" / "training.png").is_file()
    assert "## Transfer" in (out / "report.md").read_text() and "## Across voices" in (out / "report.md").read_text()
    assert "# prosody_vae demo" in result.stdout

    evaluated = run_cli("evaluate", "--checkpoint", str(out / "run" / "checkpoints" / "best.pt"),
                        "--data", str(out / "corpus"), "--n-items", "3", "--out", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr
    scores = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert len(scores["reconstruction"]) == len(scores["parallel_transfer"]) == 3
    assert len(scores["non_parallel_transfer"]) == 3 * 2  # every text with every other reference
    assert set(scores["transfer_correlation"]) == {"rate", "f0_mean_hz", "f0_range_semitones", "speech_s"}
    centred = scores["transfer_centred"]
    assert set(centred) == {"rate", "offset_st", "range_st", "level_db"}
    # rate and level are measured on any audio; each interval, where there is one, is a range of r
    assert centred["rate"]["n"] == centred["level_db"]["n"] == 6
    assert all(-1 <= c["low"] <= c["high"] <= 1 for c in centred.values() if math.isfinite(c["low"]))
    assert {"f0_contour_r", "pause_f1"} <= set(scores["parallel_contour"]) and all(
        "f0_contour_r" in p and "pause_f1" in p for p in scores["reconstruction"])
    report_md = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "## Contours" in report_md and "Centred per output text" in report_md
    assert scores["prior_sampling"]["n"] == 8 and (tmp_path / "eval" / "reconstruction.png").is_file()
    # 16 utterances in 12 voices: a held-out reference's voice may have no other recording to know it by
    speakers = scores["speakers"]
    assert 0 <= speakers["probe"]["accuracy"] <= 1 and speakers["probe"]["n_speakers"] > 1
    assert "cross_speaker_skipped" in speakers or 0 < len(speakers["cross_speaker_pairs"]) <= 3 * 2
