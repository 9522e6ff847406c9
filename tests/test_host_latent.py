"""integrations/latent.py and torchaudio_gate.py, what the Coqui and ESPnet adapters share; need no host."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from prosody_vae.integrations.latent import HostLatent
from prosody_vae.plugin.errors import ConfigError


def latent(**kwargs) -> HostLatent:
    torch.manual_seed(0)
    return HostLatent(n_mels=16, latent_dim=4, conv_channels=(4, 4), gru_dim=8, mlp_dim=8, **kwargs)


def test_the_dual_step_moves_beta_against_the_gap_only_in_training():
    layer = latent(capacity=10.0, beta_init=1.0, beta_lr=0.05)
    layer.dual_step(torch.tensor(14.0))  # KL above C: beta rises by lr * (KL - C)
    assert layer.controller.beta == pytest.approx(1.2)
    layer.eval()
    layer.dual_step(torch.tensor(100.0))  # validation passes leave beta alone
    assert layer.controller.beta == pytest.approx(1.2) and layer.controller.step == 1
    layer.train()
    layer.dual_step(torch.tensor(float("nan")))  # a non-finite KL is skipped, not absorbed
    assert layer.controller.beta == pytest.approx(1.2) and layer.controller.skipped_updates == 1


def test_the_kl_term_is_beta_times_the_gap_per_mel_element():
    layer = latent(capacity=2.0, beta_init=3.0, kl_alpha=0.5)
    posterior = layer.posterior(torch.randn(2, 20, 16), torch.tensor([20, 12]))
    term = layer.kl_term(posterior, torch.tensor(320.0))
    expected = 0.5 * 3.0 * (posterior.kl.mean() - 2.0) / 320.0
    torch.testing.assert_close(term, expected)


def test_drawing_sets_mode_temperature_and_seed_for_the_block_only():
    layer = latent().eval()
    mel, lengths = torch.randn(1, 20, 16), torch.tensor([20])
    mean = layer.posterior(mel, lengths).z
    with layer.drawing("sample", temperature=0.5, seed=7):
        a = layer.posterior(mel, lengths).z
    with layer.drawing("sample", temperature=0.5, seed=7):
        again, prior = layer.posterior(mel, lengths).z, layer.prior(3)
    assert torch.equal(a, again) and not torch.equal(a, mean) and prior.shape == (3, 4)
    assert torch.equal(layer.posterior(mel, lengths).z, mean)  # the block's request ended with it
    assert torch.equal(layer.prior(2), torch.zeros(2, 4))  # outside: the prior's mean
    with pytest.raises(ConfigError, match="prosody mode"):
        with layer.drawing("loud"):
            pass
    with pytest.raises(ConfigError, match="temperature"):
        with layer.drawing("sample", temperature=-1.0):
            pass


def test_the_controller_travels_in_the_state_dict_exactly():
    layer = latent(beta_momentum=0.9)
    for kl in (3.0, 25.0, 14.0):
        layer.dual_step(torch.tensor(kl))
    fresh = latent(beta_momentum=0.9)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.controller.beta == layer.controller.beta and fresh.controller.step == 3
    for module in (layer, fresh):  # the optimizer's velocity came along: the next step agrees
        module.dual_step(torch.tensor(9.0))
    assert fresh.controller.beta == layer.controller.beta


def test_the_torchaudio_placeholder_stands_in_only_where_torchaudio_does_not_load():
    script = """
import importlib, sys
from prosody_vae.integrations.torchaudio_gate import stand_in_for_torchaudio, torchaudio_loads
real = torchaudio_loads()
stand_in_for_torchaudio("the adapter")
stand_in_for_torchaudio("a second adapter")  # idempotent
import torchaudio
if real:
    assert hasattr(torchaudio, "load"), "the real torchaudio was replaced"
else:
    assert not hasattr(torchaudio, "load") and not torchaudio_loads()
    try:
        torchaudio.functional
    except AttributeError as error:
        assert "torchaudio.functional" in str(error) and "the adapter" in str(error), error
    else:
        raise AssertionError("the placeholder answered an attribute")
print("real" if real else "placeholder")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in {"real", "placeholder"}
