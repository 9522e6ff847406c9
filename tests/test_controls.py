"""Prosody knobs, strength, per-item seeds and n_samples, the model card (micro models, untrained).

What the knobs do on a trained model is measured by benchmarks/knob_sweep.py; here: the fit's
algebra, the checkpoint round trip, the API's guarantees and its errors.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from prosody_vae.training.checkpoint import save_checkpoint
from prosody_vae.cli import main
from prosody_vae.training.config import config_to_dict
from prosody_vae.inference.calibrate import calibrate_checkpoint, calibrate_with_best, fit_directions
from prosody_vae.inference.knobs import KNOBS, Calibration, KnobCalibration, edit_f0, edit_level
from prosody_vae.plugin.errors import CheckpointError, ControlError, ReferenceInputError
from prosody_vae.inference.synthesizer import Synthesizer
from conftest import write_tiny_corpus
from test_infer import TEXTS, make_synth, reference_wav

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*max_decoder_steps:RuntimeWarning")]


def hand_calibration(latent: int = 4, path: str = "z") -> Calibration:
    rng = np.random.default_rng(0)
    knobs = {name: KnobCalibration(name, knob.unit, rng.normal(size=latent).tolist(),
                                   0.5 if knob.log else -6.0, 2.0 if knob.log else 6.0, 0.9, 1.0, path)
             for name, knob in KNOBS.items()}
    return Calibration(knobs, data="corpus", n_utterances=100, kl_per_dim=[0.5] * latent, refined=False)


@pytest.fixture(scope="module")
def synth() -> Synthesizer:
    synth = make_synth()
    synth.calibration = hand_calibration()
    return synth


def test_fitted_directions_move_each_target_alone_in_the_linear_model():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(400, 6)) * np.array([2.0, 1.0, 1.0, 0.5, 0.3, 0.1])  # (N, latent)
    true = rng.normal(size=(4, 6))
    targets = z @ true.T + 0.01 * rng.normal(size=(400, 4))  # (N, 4)
    directions, r2 = fit_directions(z, targets)
    assert (r2 > 0.99).all()
    np.testing.assert_allclose(true @ directions, np.eye(4), atol=0.08)  # the ridge shrinks the smallest dims a little
    targets[:, 1] = rng.normal(size=400)  # a target the latent does not carry
    assert fit_directions(z, targets)[1][1] < 0.1


def test_zero_controls_equal_no_controls(synth):
    neutral = {"pitch": 0.0, "pitch_range": 1.0, "rate": 1.0, "energy": 0.0}
    plain = synth.tts(TEXTS[:2], temperature=1.0, seed=4, vocode=False)
    zeroed = synth.tts(TEXTS[:2], temperature=1.0, seed=4, vocode=False, controls=neutral)
    assert torch.equal(plain.z, zeroed.z) and all(torch.equal(a, b) for a, b in zip(plain.mel, zeroed.mel))
    # on a model without calibration too: a neutral knob is no knob
    make_synth().tts(TEXTS[0], vocode=False, controls=neutral)


def test_controls_move_z_along_the_calibrated_directions(synth):
    base = synth.prosody(TEXTS[:1], reference=reference_wav())
    moved = synth.prosody(TEXTS[:1], reference=reference_wav(), controls={"pitch": 2.0, "rate": 0.8})
    knobs = synth.calibration.knobs
    expected = 2.0 * torch.tensor(knobs["pitch"].direction) + np.log(0.8) * torch.tensor(knobs["rate"].direction)
    torch.testing.assert_close(moved - base, expected[None].float())


def test_bad_controls_name_the_control(synth):
    with pytest.raises(ControlError, match="'tempo'"):
        synth.tts(TEXTS[0], controls={"tempo": 1.2})
    with pytest.raises(ControlError, match="'pitch' = 9 is outside its calibrated range"):
        synth.tts(TEXTS[0], controls={"pitch": 9.0})
    with pytest.raises(ControlError, match="'rate' must be a finite number"):
        synth.tts(TEXTS[0], controls={"rate": float("nan")})


def test_a_knob_on_an_uncalibrated_model_says_how_to_calibrate():
    with pytest.raises(ControlError, match=r"'pitch'.*prosody-vae calibrate --checkpoint .* --data"):
        make_synth().tts(TEXTS[0], controls={"pitch": 2.0})


def test_f0_path_edits_the_predicted_f0_and_leaves_the_mel():
    synth = make_synth(pitch_head=True)
    synth.calibration = hand_calibration()
    plain = synth.tts(TEXTS[:1], seed=2, vocode=False)
    synth.pitch_path = "f0"
    shifted = synth.tts(TEXTS[:1], seed=2, vocode=False, controls={"pitch": 2.0})
    assert torch.equal(plain.mel[0], shifted.mel[0])
    voiced = plain.f0[0] > 0
    assert voiced.any()
    torch.testing.assert_close(shifted.f0[0][voiced], plain.f0[0][voiced] * 2 ** (2 / 12))


def test_edit_f0_and_edit_level():
    f0 = torch.tensor([0.0, 100.0, 200.0, 0.0])
    torch.testing.assert_close(edit_f0(f0, pitch=12.0), torch.tensor([0.0, 200.0, 400.0, 0.0]))
    widened = edit_f0(f0, pitch_range=2.0)  # log-mean is sqrt(2) * 100: an octave each way becomes two
    torch.testing.assert_close(widened[1:3], torch.tensor([100 * 2 ** 0.5 / 2, 100 * 2 ** 0.5 * 2]))
    mel = torch.zeros(3, 5)
    torch.testing.assert_close(edit_level(mel, 20.0).exp(), torch.full((3, 5), 10.0))


def test_strength_scales_the_offset_from_the_prior_mean(synth):
    wav = reference_wav()
    mean = synth.prosody(TEXTS[:1], reference=wav)
    assert torch.equal(synth.prosody(TEXTS[:1], reference=wav, strength=0.0), torch.zeros_like(mean))
    torch.testing.assert_close(synth.prosody(TEXTS[:1], reference=wav, strength=1.5), 1.5 * mean)
    with pytest.raises(ReferenceInputError, match="strength"):
        synth.tts(TEXTS[0], strength=-1.0)


def test_per_item_seeds_keep_batch_equal_to_single(synth):
    seeds = [3, 8, 3, 5]
    batch = synth.tts(TEXTS, temperature=1.0, seed=seeds, vocode=False)
    for i, (text, seed) in enumerate(zip(TEXTS, seeds)):
        single = synth.tts(text, temperature=1.0, seed=seed, vocode=False)
        torch.testing.assert_close(batch.z[i], single.z[0])
        torch.testing.assert_close(batch.mel[i], single.mel[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ReferenceInputError, match="seed must be an int or 4 ints"):
        synth.tts(TEXTS, seed=[1, 2])


def test_n_samples_gives_different_draws_and_sample_zero_is_the_single_call(synth):
    out = synth.tts(TEXTS[:2], temperature=1.0, seed=[1, 2], n_samples=3, vocode=False)
    assert len(out.mel) == 6
    assert len({tuple(z.tolist()) for z in out.z}) == 6
    for i, (text, seed) in enumerate(zip(TEXTS[:2], [1, 2])):
        torch.testing.assert_close(out.z[3 * i], synth.tts(text, temperature=1.0, seed=seed, vocode=False).z[0])
        alone = synth.tts(text, temperature=1.0, seed=seed, n_samples=3, vocode=False)  # batch == single
        torch.testing.assert_close(out.z[3 * i: 3 * i + 3], alone.z)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("knobs")
    synth = make_synth()
    path = save_checkpoint(root / "micro.pt", {"config": config_to_dict(synth.config),
                                               "model": synth.model.state_dict(), "step": 7})
    return path, write_tiny_corpus(root / "corpus", n=12)


def test_calibration_round_trips_through_a_checkpoint(checkpoint, tmp_path):
    path, corpus = checkpoint
    assert Synthesizer.from_checkpoint(path).calibration is None  # written before knobs: still loads
    out = tmp_path / "calibrated.pt"
    calibration = calibrate_checkpoint(path, corpus, out=out, cache_dir=tmp_path / "cache")
    loaded = Synthesizer.from_checkpoint(out)
    assert loaded.calibration == calibration and calibration.n_utterances == 12
    assert set(loaded.controls) == set(KNOBS) and not calibration.refined  # no pitch head: fit only
    assert torch.equal(loaded.model.state_dict()["embedding.weight"],
                       Synthesizer.from_checkpoint(path).model.state_dict()["embedding.weight"])
    stored = torch.load(out, weights_only=True)["calibration"]
    with pytest.raises(CheckpointError, match="calibration version 99"):
        Calibration.from_dict({**stored, "version": 99})


def test_cli_calibrate_inspect_and_synthesize(checkpoint, tmp_path, capsys):
    path, corpus = checkpoint
    assert main(["synthesize", "--checkpoint", str(path), "--text", "Hello.", "--pitch", "2",
                 "--out", str(tmp_path / "a.wav")]) == 2
    assert "prosody-vae calibrate --checkpoint" in capsys.readouterr().err
    out = tmp_path / "c.pt"
    assert main(["calibrate", "--checkpoint", str(path), "--data", str(corpus), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    assert main(["inspect", "--checkpoint", str(out), "--json", "--vocoder", "griffin-lim"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["speakers"] == [] and card["training_steps"] == 7 and card["latent_dim"] == 4
    assert [k["name"] for k in card["knobs"]] == list(KNOBS) and len(card["kl_per_dim"]) == 4
    assert main(["inspect", "--checkpoint", str(out), "--vocoder", "griffin-lim"]) == 0
    assert "pitch_range" in capsys.readouterr().out
    assert main(["synthesize", "--checkpoint", str(out), "--text", "Hello.", "--vocoder", "griffin-lim",
                 "--n-samples", "2", "--strength", "0.5", "--max-reference-seconds", "30",
                 "--out", str(tmp_path / "s.wav")]) == 0
    assert (tmp_path / "s_00.wav").exists() and (tmp_path / "s_01.wav").exists()


@pytest.mark.parametrize("best_step", [7, 5])
def test_a_runs_best_checkpoint_is_calibrated_with_it(checkpoint, tmp_path, best_step, capsys):
    """The README serves and loads best.pt: after the demo's calibration `inspect` lists its knobs,
    fitted to its own weights (the step checkpoint's own when it is that same step)."""
    path, corpus = checkpoint
    run = tmp_path / "checkpoints"
    run.mkdir()
    step_file = run / "step-00000007.pt"
    shutil.copy(path, step_file)
    state = torch.load(path, weights_only=True)
    if best_step != 7:  # an earlier validation was the best: other weights
        g = torch.Generator().manual_seed(1)
        weights = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                   for k, v in state["model"].items()}
        state = {**state, "model": weights, "step": best_step}
    save_checkpoint(run / "best.pt", state)
    calibration = calibrate_with_best(step_file, corpus, cache_dir=tmp_path / "cache")
    assert main(["inspect", "--checkpoint", str(run / "best.pt"), "--json", "--vocoder", "griffin-lim"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert [k["name"] for k in card["knobs"]] == list(KNOBS) and card["training_steps"] == best_step
    best = Synthesizer.from_checkpoint(run / "best.pt", vocoder="griffin-lim").calibration
    assert (best == calibration) == (best_step == 7)
