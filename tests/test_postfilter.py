"""Global-variance postfilter: the statistic, the scaling, and its trip from trainer to Synthesizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_tiny_corpus
from prosody_vae.training.checkpoint import load_checkpoint, save_checkpoint
from prosody_vae.plugin.errors import AudioError
from prosody_vae.inference.synthesizer import Synthesizer
from prosody_vae.audio.postfilter import GlobalVariance
from test_train import make_config
from prosody_vae.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")
FLOOR = -11.5


def test_target_is_the_mean_per_utterance_band_std():
    rng = np.random.default_rng(0)
    mels = [rng.normal(size=(n, 3)) * [1.0, 2.0, 3.0] for n in (50, 80, 120)]
    gv = GlobalVariance.from_mels(mels, FLOOR)
    expected = np.mean([m.std(axis=0, ddof=1) for m in mels], axis=0)
    np.testing.assert_allclose(gv.std.numpy(), expected, rtol=1e-5)


def test_a_flat_mel_gets_the_target_contrast_and_keeps_its_band_means():
    gv = GlobalVariance(torch.tensor([1.0, 2.0]), FLOOR)
    t = torch.linspace(0, 6, 100)[:, None]
    smooth = torch.cat([0.2 * torch.sin(t) - 3.0, 0.5 * torch.cos(t) - 5.0], dim=1)  # (T, 2) low contrast
    out = gv(smooth)
    torch.testing.assert_close(out.std(dim=0), gv.std, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.mean(dim=0), smooth.mean(dim=0), rtol=1e-4, atol=1e-4)
    assert torch.corrcoef(torch.stack([out[:, 0], smooth[:, 0]]))[0, 1] > 0.999  # the same shape, larger


def test_contrast_is_never_lowered_and_never_goes_below_the_floor():
    gv = GlobalVariance(torch.tensor([0.5, 4.0]), FLOOR, max_gain=10.0)
    mel = torch.stack([3.0 * torch.randn(60, generator=torch.Generator().manual_seed(1)) - 4.0,
                       torch.full((60,), FLOOR + 0.5)], dim=1)
    mel[::2, 1] = FLOOR + 0.2  # band 1: tiny contrast next to the floor, so scaling it would cross the floor
    out = gv(mel)
    torch.testing.assert_close(out[:, 0], mel[:, 0])  # above target already: untouched
    assert out.min() >= FLOOR
    assert out[:, 1].std() > mel[:, 1].std()


def test_bad_shapes_are_refused_and_one_frame_passes():
    gv = GlobalVariance(torch.ones(4), FLOOR)
    with pytest.raises(AudioError, match=r"\(T, 4\)"):
        gv(torch.zeros(10, 3))
    one = torch.zeros(1, 4)
    assert torch.equal(gv(one), one)
    with pytest.raises(AudioError, match="two frames"):
        GlobalVariance.from_mels([np.zeros((1, 4))], FLOOR)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("postfilter")
    corpus = write_tiny_corpus(root / "corpus", n=8)
    config = make_config(str(root / "mels"), max_steps=2)
    return train(config, corpus, root / "run").checkpoint


def test_the_trainer_stores_the_training_mels_variance_and_the_synthesizer_applies_it(checkpoint):
    state = load_checkpoint(checkpoint)
    gv = GlobalVariance.from_state_dict(state["mel_variance"])
    assert gv.std.shape == (20,) and (gv.std >= 0).all() and gv.std.max() > 0.5  # top bands: silent in this corpus
    on = Synthesizer.from_checkpoint(checkpoint)
    off = Synthesizer.from_checkpoint(checkpoint, postfilter=False)
    assert off.postfilter is None and torch.equal(on.postfilter.std, gv.std)
    raw = off.tts("The quick fox.", vocode=False).mel[0]
    filtered = on.tts("The quick fox.", vocode=False).mel[0]
    torch.testing.assert_close(filtered, gv(raw))
    assert not torch.equal(filtered, raw)


def test_a_checkpoint_without_the_statistic_synthesises_unfiltered(checkpoint, tmp_path):
    state = load_checkpoint(checkpoint)
    del state["mel_variance"]
    old = save_checkpoint(tmp_path / "old.pt", state)
    synth = Synthesizer.from_checkpoint(old)
    assert synth.postfilter is None
    assert synth.tts("The quick fox.", vocode=False).mel[0].shape[1] == 20
