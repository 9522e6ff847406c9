"""The decoder's pitch head: per-frame log-F0 and voicing beside the mel, trained, synthesised,
exported and run at reduced precision, with and without feeding the pitch back."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from prosody_vae.inference.export_program import ExportedSynthesizer
from prosody_vae.training.losses import LossConfig, TacotronLoss
from prosody_vae.inference.quantize import reduce_precision
from test_tacotron import make_batch, micro_model


pytestmark = pytest.mark.usefixtures("one_thread")


def pitch_batch(r: int = 2):
    """make_batch plus pitch targets: a rising F0 from 100 to 200 Hz, unvoiced every 5th frame."""
    batch = make_batch([7, 5, 6], [14, 9, 12], r, 40)
    frames = batch.mel.shape[1]
    f0 = torch.linspace(100.0, 200.0, frames).expand(3, frames)
    valid = torch.arange(frames) < batch.mel_lengths[:, None]
    batch.voiced = valid & (torch.arange(frames) % 5 != 4)
    batch.log_f0 = torch.where(batch.voiced, f0.log(), 0.0)
    return batch


@pytest.mark.parametrize("feedback", [False, True])
def test_training_fits_the_pitch_targets(feedback):
    torch.manual_seed(0)
    model = micro_model(reduction_factor=2, pitch_head=True, pitch_feedback=feedback).train()
    batch = pitch_batch()
    loss_fn = TacotronLoss(LossConfig(f0_weight=1.0, voicing_weight=1.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for step in range(60):
        out = model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths, log_f0=batch.log_f0,
                    voiced=batch.voiced)
        terms = loss_fn(out, batch, None, step)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        history.append((terms.f0.detach().item(), terms.voicing.detach().item()))
    assert out.log_f0.shape == out.voicing_logits.shape == batch.mel.shape[:2]
    (f0_start, voicing_start), (f0_end, voicing_end) = history[0], history[-1]
    assert f0_start > 0.1 and f0_end < 0.5 * f0_start  # ln units: 0.1 ~ 170 cents
    assert voicing_end < 0.7 * voicing_start


def test_a_model_without_a_pitch_head_has_no_pitch_terms_and_outputs():
    model = micro_model(reduction_factor=2).eval()
    batch = pitch_batch()
    out = model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths)
    terms = TacotronLoss()(out, batch, None, 0)
    assert out.log_f0 is None and terms.f0 == 0.0 and terms.voicing == 0.0
    with pytest.warns(RuntimeWarning, match="max_decoder_steps"):
        synth = model.infer(batch.text, batch.text_lengths, max_decoder_steps=3)
    assert synth.log_f0 is None and synth.voiced is None


def test_pitch_feedback_needs_the_targets():
    model = micro_model(reduction_factor=2, pitch_head=True, pitch_feedback=True)
    batch = pitch_batch()
    with pytest.raises(Exception, match="pitch_feedback"):
        model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths)


@pytest.mark.parametrize("feedback", [False, True])
def test_free_running_pitch_is_teacher_forced_back_exactly(feedback):
    """Fed its own free-running frames and pitch, the decoder retraces them, pitch included."""
    model = micro_model(reduction_factor=2, pitch_head=True, pitch_feedback=feedback,
                        prenet_dropout_at_inference=False).eval()
    batch = pitch_batch()
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="max_decoder_steps"):
        free = model.infer(batch.text, batch.text_lengths, max_decoder_steps=6)
    assert free.log_f0.shape == free.voiced.shape == free.mel_postnet.shape[:2]
    assert ((free.log_f0 == 0) | free.voiced).all()  # log-F0 is 0 where unvoiced
    assert free.voiced.any() and (free.log_f0[free.voiced].exp() > 50).all()  # starts near 150 Hz
    memory = model._memory(model.embedding(batch.text), batch.text_lengths,
                           torch.arange(7) < batch.text_lengths[:, None], torch.zeros(3, 4), None)
    mask = torch.arange(7) < batch.text_lengths[:, None]
    with torch.no_grad():
        out, _, _, _ = model.decoder.infer(memory, mask, 6, 1 - 1e-6)
        layout = model.decoder.layout
        log_f0, voiced = layout.log_f0(out), layout.voicing_logits(out) > 0
        forced, _ = model.decoder(memory, mask, layout.frames(out), (log_f0, voiced))
    torch.testing.assert_close(forced, out, atol=1e-5, rtol=1e-4)


def test_pitch_head_exports_and_runs_at_reduced_precision():
    model = micro_model(reduction_factor=2, pitch_head=True, pitch_feedback=True, stop_gate_tokens=0).eval()
    batch = pitch_batch()
    kwargs = dict(max_decoder_steps=5, generator=[torch.Generator().manual_seed(i) for i in range(3)])
    with pytest.warns(RuntimeWarning, match="max_decoder_steps"):
        eager = model.infer(batch.text, batch.text_lengths, **kwargs)
    exported = ExportedSynthesizer.from_model(model)
    kwargs["generator"] = [torch.Generator().manual_seed(i) for i in range(3)]
    with pytest.warns(RuntimeWarning, match="max_decoder_steps"):
        again = exported.infer(batch.text, batch.text_lengths, **kwargs)
    torch.testing.assert_close(again.log_f0, eager.log_f0, atol=1e-4, rtol=1e-4)
    assert torch.equal(again.voiced, eager.voiced)
    reduced = reduce_precision(model, "bf16")
    kwargs["generator"] = [torch.Generator().manual_seed(i) for i in range(3)]
    with pytest.warns(RuntimeWarning, match="max_decoder_steps"):
        low = reduced.infer(batch.text, batch.text_lengths, **kwargs)
    voiced = low.voiced & eager.voiced
    assert voiced.float().mean() > 0.5 * eager.voiced.float().mean()
    assert (low.log_f0[voiced] - eager.log_f0[voiced]).abs().max() < math.log(1.05)


def test_auto_vocoder_follows_the_pitch_head():
    """Synthesizer(vocoder="auto") renders a pitch-head model with the source-filter vocoder and
    hands it the predicted F0 (whose faithfulness test_vocoders and test_transfer measure); a model
    without a pitch head gets a mel-only vocoder."""
    from prosody_vae import Synthesizer
    from prosody_vae.training.config import TrainConfig, config_from_dict
    from prosody_vae.model.tacotron import ProsodyTacotron
    from test_train import MICRO, N_MELS

    for pitch_head in (True, False):
        config = config_from_dict(TrainConfig, {"model": {"preset": "tiny", **MICRO, "pitch_head": pitch_head},
                                                "audio": {"n_mels": N_MELS}}, "test")
        synth = Synthesizer(ProsodyTacotron(config.model), config, vocoder="auto")
        assert getattr(synth.vocoder, "uses_pitch", False) == pitch_head
        with pytest.warns(RuntimeWarning, match="max_decoder_steps"):
            out = synth.tts("The fox.", seed=0, max_decoder_steps=5)
        assert len(out.wav[0]) == out.mel[0].shape[0] * 256 and np.isfinite(out.wav[0]).all()
        assert (len(out.f0) == 1) == pitch_head
