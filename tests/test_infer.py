"""Synthesizer: prosody choices, explicit randomness, batching, vocoder hook (micro model, untrained)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from prosody_vae.training.checkpoint import save_checkpoint
from prosody_vae.training.config import TrainConfig, config_from_dict, config_to_dict
from prosody_vae.vocoders.registry import available_vocoders, best_available_vocoder
from prosody_vae.plugin.errors import ConfigError, ReferenceInputError
from prosody_vae.inference.synthesizer import Synthesizer
from prosody_vae.evaluation.metrics import cepstra_of_log_mel, mcd_from_cepstra
from prosody_vae.inference.quantize import ReducedPrecisionDecoder
from prosody_vae.model.decoder import Decoder
from prosody_vae.model.tacotron import ProsodyTacotron

MICRO = dict(n_mels=20, embedding_dim=16, encoder_conv_channels=16, encoder_lstm_dim=16, prenet_dims=[16, 16],
             attention_rnn_dim=16, decoder_rnn_dim=16, attention_dim=8, location_filters=4, location_kernel_size=7,
             postnet_channels=8, latent_dim=4, ref_conv_channels=[4, 8], ref_gru_dim=8, ref_mlp_dim=8,
             text_summary_dim=8, max_decoder_steps=8)
TEXTS = ["The boat arrived.", "Did you see it?", "Bread, milk and honey!", "Hello."]


def make_synth(posterior: str = "V", vocoder=None, precision: str = "fp32", **model) -> Synthesizer:
    config = config_from_dict(TrainConfig, {"model": {"preset": "tiny", **MICRO, "posterior": posterior, **model},
                                            "audio": {"n_mels": 20}}, "test")
    torch.manual_seed(0)
    return Synthesizer(ProsodyTacotron(config.model), config, precision=precision, vocoder=vocoder)


@pytest.fixture(autouse=True)
def quiet_max_steps():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*max_decoder_steps.*")  # an untrained model never stops
        yield


@pytest.fixture(scope="module")
def synth() -> Synthesizer:
    return make_synth()


def reference_wav(f0: float = 140.0, seconds: float = 0.6) -> np.ndarray:
    t = np.arange(int(seconds * 22050)) / 22050
    return (sum(0.2 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 8))).astype(np.float32)


def test_seed_makes_synthesis_reproducible(synth):
    a = synth.tts(TEXTS[:2], temperature=1.0, seed=5, vocode=False)
    b = synth.tts(TEXTS[:2], temperature=1.0, seed=5, vocode=False)
    c = synth.tts(TEXTS[:2], temperature=1.0, seed=6, vocode=False)
    assert torch.equal(a.z, b.z) and all(torch.equal(x, y) for x, y in zip(a.mel, b.mel))
    assert not torch.equal(a.z, c.z)


def test_temperature_zero_is_the_prior_mean(synth):
    cold = synth.tts(TEXTS[:2], temperature=0.0, seed=3, vocode=False)
    assert torch.equal(cold.z, torch.zeros_like(cold.z))
    explicit = synth.tts(TEXTS[:2], z=torch.zeros(4), seed=3, vocode=False)
    assert all(torch.equal(x, y) for x, y in zip(cold.mel, explicit.mel))


def test_max_decoder_steps_bounds_the_decoder_and_flags_unstopped_items():
    synth = make_synth()
    with torch.no_grad():
        synth.model.decoder.projection.bias[-1] = -100.0  # the stop logit: this model never stops
    full = synth.tts(TEXTS[:2], seed=3, vocode=False)  # runs to the config's maximum
    short = synth.tts(TEXTS[:2], seed=3, vocode=False, max_decoder_steps=2)
    r = synth.config.model.reduction_factor
    assert all(s > 2 for s in full.stop_step)
    assert short.stop_step == [2, 2] and short.hit_max_steps == [True, True]
    assert all(m.shape[0] == 2 * r for m in short.mel)


def test_mode_mean_is_deterministic_and_sample_is_not(synth):
    wav = reference_wav()
    means = [synth.prosody(TEXTS[:1], reference=wav, mode="mean", seed=s) for s in (0, 1)]
    assert torch.equal(means[0], means[1])
    samples = [synth.prosody(TEXTS[:1], reference=wav, mode="sample", seed=s) for s in (0, 1)]
    assert not torch.equal(samples[0], samples[1])
    cold = synth.prosody(TEXTS[:1], reference=wav, mode="sample", temperature=0.0, seed=0)
    torch.testing.assert_close(cold, means[0])


def test_a_batch_equals_single_calls(synth):
    wav = reference_wav()
    batch = synth.tts(TEXTS, reference=wav, mode="sample", temperature=0.7, seed=11, vocode=False)
    for i, text in enumerate(TEXTS):
        single = synth.tts(text, reference=wav, mode="sample", temperature=0.7, seed=11, vocode=False)
        torch.testing.assert_close(batch.z[i], single.z[0])
        assert batch.stop_step[i] == single.stop_step[0]
        torch.testing.assert_close(batch.mel[i], single.mel[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batch.alignment[i], single.alignment[0], atol=1e-4, rtol=1e-4)


def test_reference_as_path_waveform_or_mel_gives_the_same_posterior(synth, tmp_path):
    wav = reference_wav(200.0)
    sf.write(tmp_path / "ref.wav", wav, 22050, subtype="FLOAT")
    from_path = synth.encode(tmp_path / "ref.wav").mean
    from_wav = synth.encode(wav).mean
    from_mel = synth.encode(synth.reference_mel(wav)).mean
    torch.testing.assert_close(from_path, from_wav)
    torch.testing.assert_close(from_mel, from_wav)
    with pytest.raises(ReferenceInputError, match="reference must be"):
        synth.encode(np.zeros((3, 3, 3)))


def test_missing_transcript_works_on_a_v_plus_t_model():
    synth = make_synth("V+T")
    wav = reference_wav()
    without = synth.tts(TEXTS[0], reference=wav, vocode=False)
    with_text = synth.tts(TEXTS[0], reference=wav, reference_text="a reference transcript", vocode=False)
    assert without.mel[0].shape[1] == 20 and torch.isfinite(without.mel[0]).all()
    assert not torch.equal(without.z, with_text.z), "the transcript, when given, is used"


def test_vocoder_hook_is_called_with_hifigan_layout():
    calls = []

    def vocoder(mel: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(mel.shape))
        return torch.zeros(mel.shape[0], 1, mel.shape[2] * 256)

    synth = make_synth(vocoder=vocoder)
    out = synth.tts(TEXTS[:2], seed=0)
    assert [c[:2] for c in calls] == [(1, 20), (1, 20)]
    assert [len(w) for w in out.wav] == [m.shape[0] * 256 for m in out.mel]


def test_griffin_lim_is_the_default_vocoder(synth):
    out = synth.tts(TEXTS[0], seed=0)
    assert out.wav[0].shape == (out.mel[0].shape[0] * 256,) and np.isfinite(out.wav[0]).all()


def test_interpolation_runs_between_the_two_posterior_means(synth):
    a, b = reference_wav(110.0, 0.8), reference_wav(260.0, 0.4)
    out = synth.interpolate(a, b, TEXTS[0], steps=4, seed=0)
    ends = synth.encode([a, b]).mean
    torch.testing.assert_close(out.z[0], ends[0])
    torch.testing.assert_close(out.z[-1], ends[1])
    torch.testing.assert_close(out.z[1], ends[0] + (ends[1] - ends[0]) / 3)


def test_rank_dimensions_and_edit_latent(synth):
    ranking = synth.rank_dimensions([reference_wav(f) for f in (100.0, 180.0, 260.0)])
    assert sorted(d for d, _ in ranking) == [0, 1, 2, 3]
    assert [kl for _, kl in ranking] == sorted((kl for _, kl in ranking), reverse=True)
    z = torch.zeros(2, 4)
    edited = Synthesizer.edit_latent(z, 2, scale=3.0, shift=1.5)
    assert edited[:, 2].tolist() == [1.5, 1.5] and edited[:, [0, 1, 3]].abs().sum() == 0
    with pytest.raises(ReferenceInputError, match="dim"):
        Synthesizer.edit_latent(z, 4)


def test_bad_prosody_arguments(synth):
    with pytest.raises(ReferenceInputError, match="mode"):
        synth.tts(TEXTS[0], mode="median")
    with pytest.raises(ReferenceInputError, match="temperature"):
        synth.tts(TEXTS[0], temperature=-1.0)
    with pytest.raises(ReferenceInputError, match="2 references for 3 texts"):
        synth.tts(TEXTS[:3], reference=[reference_wav(), reference_wav()])


# ------------------------------------------------------------------------------ reduced precision
PER_STEP_LAYERS = ["prenet.0", "prenet.1", "attention_gates", "decoder_recurrent", "projection"]


@pytest.mark.parametrize("attention_kind", ["location", "forward", "dca"])
def test_fp32_reduced_precision_loop_reproduces_the_model_decoder(attention_kind):
    """ReducedPrecisionDecoder runs the decoder's own loop on its copied weights: at fp32 it must
    agree with the model's decoder, prenet dropout (per-item generators) included."""
    synth = make_synth(attention_kind=attention_kind)
    synth.model.decoder = ReducedPrecisionDecoder(synth.model.decoder, "fp32")
    reference = make_synth(attention_kind=attention_kind)
    assert isinstance(reference.model.decoder, Decoder)
    ours, theirs = (s.tts(TEXTS[:3], temperature=0.8, seed=2, vocode=False) for s in (synth, reference))
    assert ours.stop_step == theirs.stop_step
    for a, b in zip(ours.mel + ours.alignment, theirs.mel + theirs.alignment):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("precision, max_relative_error", [("bf16", 0.01), ("int8", 0.03)])
def test_each_reduced_matmul_is_close_to_its_float32_layer(precision, max_relative_error):
    """bf16 rounds weights to 8 significant bits (~0.4%), int8 to 255 levels per output channel
    with 7-bit activations (~1.5%); a wrong scale, a lost bias or a transposed weight is far off."""
    decoder = make_synth().model.decoder
    exact = dict(ReducedPrecisionDecoder(decoder, "fp32").reduced.named_modules())
    reduced = dict(ReducedPrecisionDecoder(decoder, precision).reduced.named_modules())
    for name in PER_STEP_LAYERS:
        x = torch.randn(8, exact[name].in_features, generator=torch.Generator().manual_seed(0))
        expected = exact[name](x)
        assert (reduced[name](x) - expected).norm() / expected.norm() < max_relative_error, name


@pytest.mark.parametrize("precision, max_l1, max_mcd_db", [("bf16", 0.005, 0.02), ("int8", 0.02, 0.1)])
def test_reduced_precision_synthesis_is_close_to_fp32(precision, max_l1, max_mcd_db):
    """Mean |log-mel difference| (nats) and MCD-DTW (dB) against fp32, about 4x the measured
    deviation of this micro model (bf16 0.0005 / 0.003 dB, int8 0.005 / 0.02 dB)."""
    fp32, reduced = make_synth(), make_synth(precision=precision)
    a, b = (s.tts(TEXTS, seed=4, vocode=False) for s in (fp32, reduced))
    for mel_fp32, mel_reduced in zip(a.mel, b.mel):
        assert mel_fp32.shape == mel_reduced.shape
        assert not torch.equal(mel_fp32, mel_reduced), "the reduced weights were not used"
        assert (mel_fp32 - mel_reduced).abs().mean() < max_l1
        assert mcd_from_cepstra(cepstra_of_log_mel(mel_fp32.numpy()), cepstra_of_log_mel(mel_reduced.numpy())) < max_mcd_db


def test_int8_quantises_every_per_step_matmul_and_leaves_the_model_alone():
    model = make_synth().model
    synth = Synthesizer(model, make_synth().config, precision="int8")
    layers = synth.model.decoder.reduced
    quantised = {name for name, module in layers.named_modules()
                 if isinstance(module, torch.ao.nn.quantized.dynamic.Linear)}
    assert quantised == set(PER_STEP_LAYERS)
    assert isinstance(model.decoder, Decoder), "the caller's model keeps its float32 decoder"
    assert synth.model.encoder is model.encoder  # encoders are shared, not copied
    with pytest.raises(ConfigError, match="inference only"):
        synth.model.decoder.train()


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="precision must be one of"):
        make_synth(precision="fp16")


@pytest.mark.parametrize("pitch_head, n_mels", [(False, 80), (True, 80), (False, 20)])
def test_from_checkpoint_picks_the_vocoder_the_cli_picks(tmp_path, pitch_head, n_mels):
    """The README's Python example must sound like the demo: both use "auto", the best installed."""
    config = config_from_dict(TrainConfig, {"model": {"preset": "tiny", **MICRO, "n_mels": n_mels,
                                                      "pitch_head": pitch_head}, "audio": {"n_mels": n_mels}}, "test")
    path = save_checkpoint(tmp_path / "micro.pt", {"config": config_to_dict(config),
                                                   "model": ProsodyTacotron(config.model).state_dict(), "step": 1})
    synth = Synthesizer.from_checkpoint(path)
    expected = best_available_vocoder(pitch=pitch_head, audio=config.audio)
    assert synth.vocoder.name == expected
    assert synth.model_card().vocoder == expected
    assert (expected == "source-filter") == pitch_head and (expected == "griffin-lim") == (n_mels != 80
                                                                                          or not available_hifigan())


def available_hifigan() -> bool:
    return any(name.startswith("hifigan") for name in available_vocoders())
