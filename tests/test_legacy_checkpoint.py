"""A checkpoint written by older code still loads and computes what that code computed.

tests/fixtures/legacy_checkpoint.pt was written by the trainer at commit 718b8cc, before the
decoder refactor; legacy_expected.pt holds that code's outputs for fixed inputs (fixtures/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prosody_vae import Synthesizer
from prosody_vae.training.checkpoint import load_model

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def legacy():
    model, config = load_model(FIXTURES / "legacy_checkpoint.pt")
    expected = torch.load(FIXTURES / "legacy_expected.pt", weights_only=True)
    return model, config, expected


def test_old_checkpoint_reproduces_its_teacher_forced_outputs(legacy):
    model, _, expected = legacy
    x = expected["inputs"]
    with torch.no_grad():
        torch.manual_seed(1)
        out = model(x["text"], x["text_lengths"], x["mel"], x["mel_lengths"], mode="mean")
        posterior = model.encode_reference(x["mel"], x["mel_lengths"])
    for name in ("mel_postnet", "stop_logits", "alignments"):
        torch.testing.assert_close(getattr(out, name), expected["forward"][name], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.posterior.mean, expected["forward"]["posterior_mean"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(posterior.mean, expected["encode_mean"], atol=1e-6, rtol=1e-5)


def test_old_checkpoint_reproduces_its_free_running_synthesis(legacy):
    model, _, expected = legacy
    x = expected["inputs"]
    # the stop gate (TacotronConfig.stop_gate_tokens) came later and changes where items may stop
    # on purpose; without it the old numerics must be reproduced
    model.config.stop_gate_tokens = 0
    out = model.infer(x["text"], x["text_lengths"], x["z"], max_decoder_steps=15,
                      generator=torch.Generator().manual_seed(2))
    assert torch.equal(out.stop_steps, expected["infer"]["stop_steps"])
    assert torch.equal(out.mel_lengths, expected["infer"]["mel_lengths"])
    torch.testing.assert_close(out.mel_postnet, expected["infer"]["mel_postnet"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.alignments, expected["infer"]["alignments"], atol=1e-5, rtol=1e-4)


def test_old_checkpoint_synthesises_through_the_public_api(legacy, tmp_path):
    synth = Synthesizer.from_checkpoint(FIXTURES / "legacy_checkpoint.pt")
    out = synth.tts("The fox.", seed=0, max_decoder_steps=10)
    assert out.mel[0].shape[1] == synth.model.config.n_mels and out.mel[0].shape[0] > 0
    assert torch.isfinite(out.mel[0]).all()
