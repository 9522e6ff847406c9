"""The pitch range head (model/pitch_range.py): the spread statistic, its loss, the contour
scaling in free-running inference, training and export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prosody_vae.inference.export_program import ExportedSynthesizer
from prosody_vae.model.config import TacotronConfig
from prosody_vae.model.pitch_range import (MAX_SCALE, MIN_VOICED_FRAMES, apply_range, pitch_range_loss,
                                           reference_log_spread, voiced_spread)
from prosody_vae.plugin.errors import ConfigError
from prosody_vae.training.losses import TacotronLoss
from test_pitch_head import pitch_batch
from test_tacotron import micro_model

pytestmark = pytest.mark.usefixtures("one_thread")


def contour(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, n) ln F0 around 150 Hz with every 4th frame unvoiced (0 there), and its voicing."""
    g = torch.Generator().manual_seed(seed)
    voiced = (torch.arange(n) % 4 != 3)[None]
    log_f0 = math.log(150.0) + 0.1 * torch.randn(1, n, generator=g)
    return torch.where(voiced, log_f0, 0.0), voiced


def test_the_spread_is_the_sample_std_of_the_voiced_frames_only():
    log_f0, voiced = contour()
    mean, spread, count = voiced_spread(log_f0, voiced)
    values = log_f0[voiced].numpy()
    assert count.item() == voiced.sum().item()
    np.testing.assert_allclose(mean.item(), values.mean(), rtol=1e-6)
    np.testing.assert_allclose(spread.item(), values.std(ddof=1), rtol=1e-5)


@pytest.mark.parametrize("factor", [0.5, 1.0, 2.5])
def test_apply_range_sets_the_spread_and_keeps_the_mean_and_the_unvoiced_frames(factor):
    log_f0, voiced = contour()
    mean, spread, _ = voiced_spread(log_f0, voiced)
    scaled = apply_range(log_f0, voiced, (spread * factor).log())
    new_mean, new_spread, _ = voiced_spread(scaled, voiced)
    torch.testing.assert_close(new_spread, spread * factor, rtol=1e-4, atol=0)
    torch.testing.assert_close(new_mean, mean, rtol=1e-6, atol=0)
    assert torch.equal(scaled[~voiced], log_f0[~voiced])
    # the order of the frames' pitches is kept: the contour is stretched, not reshaped
    assert torch.equal(scaled[voiced].argsort(), log_f0[voiced].argsort())


def test_apply_range_is_bounded_and_leaves_short_contours_alone():
    log_f0, voiced = contour()
    _, spread, _ = voiced_spread(log_f0, voiced)
    _, stretched, _ = voiced_spread(apply_range(log_f0, voiced, (spread * 100).log()), voiced)
    torch.testing.assert_close(stretched, spread * MAX_SCALE, rtol=1e-4, atol=0)
    short = voiced & (torch.arange(voiced.shape[1]) < MIN_VOICED_FRAMES)  # fewer than MIN_VOICED_FRAMES voiced
    assert short.sum() < MIN_VOICED_FRAMES
    assert torch.equal(apply_range(log_f0, short, (spread * 3).log()), log_f0)
    # a reference too unvoiced to measure gives a NaN spread: the contour is left as it is
    assert torch.isnan(reference_log_spread(log_f0, short)).all()
    assert torch.equal(apply_range(log_f0, voiced, reference_log_spread(log_f0, short)), log_f0)


def test_the_loss_is_zero_at_the_target_and_skips_items_with_too_few_voiced_frames():
    log_f0, voiced = contour()
    _, spread, _ = voiced_spread(log_f0, voiced)
    assert pitch_range_loss(spread.log(), log_f0, voiced).item() == pytest.approx(0.0, abs=1e-6)
    assert pitch_range_loss(spread.log() + 0.3, log_f0, voiced).item() == pytest.approx(0.3, rel=1e-5)
    two = torch.cat([log_f0, log_f0]), torch.cat([voiced, voiced & (torch.arange(40) < 4)])
    # the second item has 3 voiced frames: its (wild) prediction is not counted
    assert pitch_range_loss(torch.cat([spread.log(), spread.log() + 5]), *two).item() == pytest.approx(0.0, abs=1e-6)


def test_the_head_needs_a_pitch_head():
    with pytest.raises(ConfigError, match="pitch_range_head needs pitch_head"):
        TacotronConfig.preset("tiny", pitch_range_head=True)


def test_training_teaches_the_head_through_the_reference_encoder():
    """The loss term appears, its gradient reaches the reference encoder (so z is asked to carry
    the range), and a few steps lower it."""
    torch.manual_seed(0)
    model = micro_model(reduction_factor=2, pitch_head=True, pitch_range_head=True).train()
    batch = pitch_batch()
    batch.log_f0 = torch.where(batch.voiced, batch.log_f0 + 0.2 * torch.randn(batch.log_f0.shape), 0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        out = model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths, log_f0=batch.log_f0,
                    voiced=batch.voiced)
        terms = TacotronLoss()(out, batch, None, step)
        optimizer.zero_grad()
        terms.pitch_range.backward(retain_graph=True)
        if step == 0:
            assert out.log_pitch_spread.shape == (3,)
            encoder_grad = sum(p.grad.abs().sum() for p in model.reference_encoder.parameters() if p.grad is not None)
            assert encoder_grad > 0
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        losses.append(terms.pitch_range.item())
    assert "pitch_range" in terms.as_floats()
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.filterwarnings("ignore:.*max_decoder_steps")
def test_free_running_f0_takes_the_heads_spread_in_eager_and_exported_synthesis():
    model = micro_model(reduction_factor=2, pitch_head=True, pitch_range_head=True,
                        prenet_dropout_at_inference=False).eval()
    batch = pitch_batch()
    with torch.no_grad():
        model.pitch_range_head.net[-1].bias.fill_(math.log(0.05))  # ~0.85 semitones, whatever the input
        model.pitch_range_head.net[-1].weight.zero_()
        model.decoder.projection.weight[-1].zero_()  # the stop logit: never stop, so every item runs 30 steps
        model.decoder.projection.bias[-1] = -100.0
        voicing = slice(model.config.n_mels * 2 + 2, model.config.n_mels * 2 + 4)  # OutputLayout: r = 2 voicing logits
        model.decoder.projection.weight[voicing].zero_()
        model.decoder.projection.bias[voicing] = 10.0  # every frame voiced
    z = torch.randn(3, model.config.latent_dim, generator=torch.Generator().manual_seed(1))
    eager = model.infer(batch.text, batch.text_lengths, z, max_decoder_steps=30)
    exported = ExportedSynthesizer.from_model(model).infer(batch.text, batch.text_lengths, z, max_decoder_steps=30)
    torch.testing.assert_close(exported.log_f0, eager.log_f0, atol=1e-4, rtol=0)
    head, model.pitch_range_head = model.pitch_range_head, None  # the same model's own contour
    raw = model.infer(batch.text, batch.text_lengths, z, max_decoder_steps=30)
    model.pitch_range_head = head
    assert torch.equal(raw.voiced, eager.voiced) and torch.equal(raw.mel_postnet, eager.mel_postnet)
    _, raw_spread, count = voiced_spread(raw.log_f0, raw.voiced)
    _, spread, _ = voiced_spread(eager.log_f0, eager.voiced)
    assert (count >= MIN_VOICED_FRAMES).all()
    expected = (0.05 / raw_spread).clamp(1 / MAX_SCALE, MAX_SCALE) * raw_spread
    torch.testing.assert_close(spread, expected, rtol=1e-3, atol=0)


@pytest.mark.filterwarnings("ignore:.*max_decoder_steps")
@pytest.mark.parametrize("reference_input", ["mel", "prosody"])
def test_reference_range_scales_the_output_contour_to_the_references_spread(reference_input):
    """tts(reference_range=True): each output's voiced ln F0 takes its reference's spread, as
    measured on the reference's own F0 track, with no register known (none is named here)."""
    from prosody_vae.audio.pitch import frame_features
    from prosody_vae.inference.synthesizer import Synthesizer
    from prosody_vae.model.tacotron import ProsodyTacotron
    from test_enrolment import steady_tone
    from test_speakers import micro_config

    torch.manual_seed(0)
    config = micro_config(0, reference_input=reference_input, pitch_head=True, prenet_dropout_at_inference=False)
    synth = Synthesizer(ProsodyTacotron(config.model), config)
    layout_start = config.model.n_mels * config.model.reduction_factor + config.model.reduction_factor
    with torch.no_grad():  # every frame voiced, so every output has a contour to scale
        voicing = slice(layout_start, layout_start + config.model.reduction_factor)
        synth.model.decoder.projection.weight[voicing].zero_()
        synth.model.decoder.projection.bias[voicing] = 10.0
    sr = synth.audio.sample_rate
    references = [steady_tone(150.0, sr, glide=0.1), steady_tone(150.0, sr, glide=0.6)]  # narrow, wide
    ask = lambda reference_range: synth.tts(["Hello there.", "Hello there."], reference=references, seed=0,
                                            reference_range=reference_range, vocode=False, max_decoder_steps=40)
    raw, ranged = ask(False), ask(True)
    assert all(torch.equal(a, b) for a, b in zip(raw.mel, ranged.mel))  # the F0 alone is edited
    spread = lambda f0: voiced_spread(torch.log(f0.clamp(min=1e-3))[None], (f0 > 0)[None])[1]
    for reference, before, after in zip(references, raw.f0, ranged.f0):
        tracks = frame_features(reference, synth.audio)
        wanted = voiced_spread(torch.from_numpy(tracks.log_f0)[None], torch.from_numpy(tracks.voiced)[None])[1]
        assert (before > 0).sum() >= MIN_VOICED_FRAMES
        expected = spread(before) * (wanted / spread(before)).clamp(1 / MAX_SCALE, MAX_SCALE)
        torch.testing.assert_close(spread(after), expected, rtol=1e-3, atol=0)
    assert spread(ranged.f0[1]) > 2 * spread(ranged.f0[0])


def test_reference_range_is_refused_without_a_reference_or_a_pitch_head():
    from prosody_vae.inference.synthesizer import Synthesizer
    from prosody_vae.model.tacotron import ProsodyTacotron
    from test_speakers import micro_config

    for pitch_head, reference, message in ((True, None, "needs a reference"), (False, np.zeros(4000, np.float32) + 0.1,
                                                                               "needs a model with a pitch head")):
        config = micro_config(0, pitch_head=pitch_head)
        synth = Synthesizer(ProsodyTacotron(config.model), config)
        with pytest.raises(ConfigError, match=message) as caught:
            synth.tts("Hello.", reference=reference, reference_range=True, vocode=False, max_decoder_steps=4)
        assert caught.value.field == "reference_range"
