"""prosody_vae.integrations.coqui against the real Coqui TTS 0.28: its Tacotron2, Trainer,
checkpoints and Synthesizer. Skipped where Coqui is not installed; .ci/run installs the `coqui`
extra in a virtual environment and runs this file there."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

if importlib.util.find_spec("TTS") is None:  # not importorskip: TTS/__init__ raises without torchaudio
    pytest.skip("Coqui TTS is not installed (pip install 'prosody_vae[coqui]'; .ci/run runs this file in a venv "
                "that has it)", allow_module_level=True)

from conftest import write_tiny_corpus  # noqa: E402
from prosody_vae.integrations.coqui import (ProsodyLayer, ProsodySynthesizer, ProsodyTacotron2,  # noqa: E402
                                            ProsodyTacotron2Config, ProsodyVAEArgs)
from prosody_vae.plugin import from_pretrained, save_pretrained  # noqa: E402
from prosody_vae.plugin.reference import Posterior  # noqa: E402
from TTS.config.shared_configs import BaseDatasetConfig  # noqa: E402
from TTS.tts.datasets import load_tts_samples  # noqa: E402
from trainer import Trainer, TrainerArgs  # noqa: E402

pytestmark = pytest.mark.slow


def coqui_config(corpus: Path, out: Path, epochs: int = 2, capacity: float = 10.0) -> ProsodyTacotron2Config:
    dataset = BaseDatasetConfig(formatter="ljspeech", meta_file_train="metadata.csv", path=str(corpus))
    config = ProsodyTacotron2Config(
        r=2, batch_size=2, eval_batch_size=2, num_loader_workers=0, num_eval_loader_workers=0, run_eval=False,
        epochs=epochs, print_step=1, save_step=3, save_checkpoints=True, output_path=str(out), datasets=[dataset],
        text_cleaner="basic_cleaners", use_phonemes=False, test_sentences=[], mixed_precision=False,
        eval_split_size=0.15, max_decoder_steps=40, prenet_dropout_at_inference=False,
        prosody_vae=ProsodyVAEArgs(latent_dim=8, capacity=capacity, beta_init=1.0, beta_lr=0.05))
    config.audio.sample_rate = 22050
    return config


def coqui_trainer(config: ProsodyTacotron2Config, continue_path: str = "") -> Trainer:
    train, evals = load_tts_samples(config, eval_split=True, eval_split_size=config.eval_split_size)
    model = ProsodyTacotron2.init_from_config(config)
    return Trainer(TrainerArgs(continue_path=continue_path), config, config.output_path, model=model,
                   train_samples=train, eval_samples=evals)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two epochs of Coqui's own Trainer on six utterances (three steps each)."""
    root = tmp_path_factory.mktemp("coqui")
    corpus = write_tiny_corpus(root / "corpus", n=7)
    logging.getLogger("TTS").setLevel(logging.WARNING)
    trainer = coqui_trainer(coqui_config(corpus, root / "runs"))
    trainer.fit()
    run = Path(trainer.output_path)
    return trainer, run, corpus


def test_the_switch_fills_coquis_slot_and_keeps_coquis_own_capacitron_off(trained):
    trainer, _, _ = trained
    model = trainer.model
    assert isinstance(model.capacitron_vae_layer, ProsodyLayer)
    assert model.config.use_capacitron_vae is False  # Coqui's softplus-beta loss and CapacitronOptimizer unused
    assert not any(name.endswith("capacitron_vae_layer.beta") for name, _ in model.named_parameters())
    optimizers = trainer.optimizer if isinstance(trainer.optimizer, list) else [trainer.optimizer]
    assert [type(o).__name__ for o in optimizers] == [model.config.optimizer]  # the config's, not CapacitronOptimizer


def test_coquis_trainer_trains_with_our_kl_term_and_dual_ascent(trained):
    trainer, _, _ = trained
    controller = trainer.model.controller
    assert trainer.total_steps_done == 6 and controller.step == 6
    # The synthetic corpus carries few nats at first: KL < C, so beta fell from 1 by the dual step
    assert controller.beta < 1.0 and controller.skipped_updates == 0
    kl = float(trainer.keep_avg_train["avg_prosody_kl"])
    assert np.isfinite(kl) and np.isfinite(float(trainer.keep_avg_train["avg_loss"]))


def test_the_guided_attention_width_travels_in_config_json_to_coquis_loss(trained, tmp_path):
    trainer, run, _ = trained
    assert trainer.model.get_criterion().criterion_ga.sigma == 0.4  # Coqui's own width by default
    config = ProsodyTacotron2Config()
    config.load_json(str(run / "config.json"))
    config.ga_sigma = 0.2
    config.save_json(str(tmp_path / "config.json"))
    reloaded = ProsodyTacotron2Config()
    reloaded.load_json(str(tmp_path / "config.json"))
    assert ProsodyTacotron2.init_from_config(reloaded).get_criterion().criterion_ga.sigma == 0.2


def test_a_coqui_checkpoint_resumes_the_controller_exactly(trained, tmp_path):
    trainer, run, _ = trained
    state = torch.load(run / "checkpoint_3.pth", map_location="cpu", weights_only=False)  # save_step 3
    saved = state["model"]["capacitron_vae_layer._extra_state"]["controller"]
    # Coqui counts steps from 0 and saves after step 3's update: four dual steps are in it
    assert state["step"] == 3 and saved["step"] == 4 and saved["beta"].dtype == torch.float64
    fresh = ProsodyTacotron2.init_from_config(coqui_config(Path(trainer.config.datasets[0].path), tmp_path))
    fresh.load_state_dict(state["model"])
    assert fresh.controller.beta == float(saved["beta"]) and fresh.controller.step == 4
    # Coqui's own resume (--continue_path): the controller goes on from the checkpoint Coqui picks
    resumed = coqui_trainer(coqui_config(Path(trainer.config.datasets[0].path), tmp_path, epochs=3),
                            continue_path=str(run))
    picked = torch.load(resumed.args.restore_path, map_location="cpu", weights_only=False)
    restored = resumed.model.controller.state_dict()
    expected = picked["model"]["capacitron_vae_layer._extra_state"]["controller"]
    assert restored["step"] == expected["step"] and torch.equal(restored["beta"], expected["beta"])
    updates = []
    inner = resumed.model.train_step
    resumed.model.train_step = lambda *a, **k: (updates.append(resumed.model.training), inner(*a, **k))[1]
    resumed.fit()
    assert sum(updates) > 0 and resumed.model.controller.step == expected["step"] + sum(updates)


def test_style_wav_reaches_the_model_through_coquis_synthesizer(trained):
    _, run, corpus = trained
    synth = ProsodySynthesizer(tts_checkpoint=str(sorted(run.glob("checkpoint_*.pth"))[-1]),
                               tts_config_path=str(run / "config.json"))
    seen = []
    synth.tts_model.capacitron_vae_layer.encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    references = sorted((corpus / "wavs").glob("*.wav"))

    def speak(**kwargs) -> np.ndarray:
        np.random.seed(0)  # Coqui's Griffin-Lim starts from a random phase
        return np.asarray(synth.tts("The quick brown fox.", **kwargs))

    a, again, b = (speak(style_wav=str(path)) for path in (references[0], references[0], references[1]))
    assert len(seen) == 3 and seen[0][2] == synth.tts_model.decoder_output_dim  # (1, T, num_mels)
    assert np.array_equal(a, again) and not np.array_equal(a, b)
    none = speak()  # no reference: the prior mean, encoder not run
    assert len(seen) == 3 and not np.array_equal(none, a)


def test_prior_samples_follow_seed_and_temperature(trained):
    trainer, _, _ = trained
    model = trainer.model.eval()
    text = "A lazy dog again."
    wav = lambda **kw: model.synthesize(text, use_griffin_lim=False, **kw)["outputs"]["model_outputs"]
    torch.testing.assert_close(wav(mode="sample", seed=3), wav(mode="sample", seed=3), rtol=0, atol=0)
    assert not torch.equal(wav(mode="sample", seed=3), wav(mode="sample", seed=4))
    torch.testing.assert_close(wav(mode="sample", seed=3, temperature=0.0), wav(mode="mean"), rtol=0, atol=0)


def test_the_encoder_saved_from_coqui_loads_with_from_pretrained_and_encodes_identically(trained, tmp_path):
    trainer, _, _ = trained
    layer = trainer.model.capacitron_vae_layer.eval()
    save_pretrained(layer.encoder, tmp_path / "enc", controller=layer.controller, controller_config=layer.controller_config)
    encoder, controller = from_pretrained(tmp_path / "enc")
    mel = torch.randn(2, 37, layer.encoder.n_mels, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([37, 20])
    with torch.no_grad():
        ours, theirs = encoder.eval()(mel, lengths, mode="mean"), layer.encoder(mel, lengths, mode="mean")
    assert torch.equal(ours.mean, theirs.mean) and torch.equal(ours.std, theirs.std)
    assert controller.beta == layer.controller.beta


def pace_posterior(mean: torch.Tensor) -> Posterior:
    std = torch.ones_like(mean)
    return Posterior(z=mean, mean=mean, std=std, kl=torch.zeros(len(mean)), kl_per_dim=torch.zeros_like(mean))


def test_the_pace_readout_scores_pace_differences_and_trains_the_encoder():
    layer = ProsodyLayer(80, ProsodyVAEArgs(latent_dim=4, pace_weight=2.0))
    with torch.no_grad():
        layer.pace_head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    mel_lengths, text_lengths = torch.tensor([120, 200, 90]), torch.tensor([30, 25, 30])
    pace = torch.log(mel_lengths / text_lengths)  # log frames per character
    # a mean that reads the pace exactly, up to a constant the batch-centred readout does not score
    exact = torch.zeros(3, 4)
    exact[:, 0] = pace + 5.0
    assert layer.pace_loss(pace_posterior(exact), mel_lengths, text_lengths).item() < 1e-10
    # the pace read backwards: the loss is the weighted squared error of the centred readout
    expected = 2.0 * ((pace.flip(0) - pace.flip(0).mean()) - (pace - pace.mean())).pow(2).mean()
    mean = exact.flip(0).requires_grad_(True)
    loss = layer.pace_loss(pace_posterior(mean), mel_lengths, text_lengths)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    # its gradient reaches the posterior mean (hence the encoder) through the readout's one weight
    assert mean.grad[:, 0].abs().sum() > 0 and torch.equal(mean.grad[:, 1:], torch.zeros(3, 3))


def test_the_pace_readout_is_off_by_default_and_refuses_a_negative_weight():
    assert ProsodyLayer(80, ProsodyVAEArgs(latent_dim=4)).pace_head is None
    assert not any("pace" in key for key in ProsodyLayer(80, ProsodyVAEArgs(latent_dim=4)).state_dict())
    with pytest.raises(ValueError, match="pace_weight"):
        ProsodyLayer(80, ProsodyVAEArgs(latent_dim=4, pace_weight=-1.0))


def test_coquis_trainer_trains_the_pace_readout(tmp_path):
    corpus = write_tiny_corpus(tmp_path / "corpus", n=7)
    config = coqui_config(corpus, tmp_path / "runs", epochs=1)
    config.prosody_vae.pace_weight = 1.0
    config.lr_scheduler = None  # Coqui's Noam warm-up starts at lr 2.5e-8: too small to move a weight
    trainer = coqui_trainer(config)
    head = trainer.model.capacitron_vae_layer.pace_head
    before = head.weight.detach().clone()
    trainer.fit()
    assert np.isfinite(float(trainer.keep_avg_train["avg_prosody_pace_loss"]))
    assert not torch.equal(head.weight, before)


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_decoder_input_dropout_zeroes_teacher_forced_frames_only_in_training(tmp_path, share):
    config = coqui_config(tmp_path, tmp_path / "runs")
    config.prosody_vae.decoder_input_dropout = share
    model = ProsodyTacotron2(config)
    seen = []
    model.decoder.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[1].clone()))
    torch.manual_seed(0)
    text = torch.randint(1, 20, (2, 12))
    mels = torch.ones(2, 200, config.audio.num_mels)  # (B, T, n_mels)
    lengths = (torch.tensor([12, 12]), torch.tensor([200, 200]))
    for training in (True, False):
        model.train(training)
        with torch.no_grad():
            model.forward(text, lengths[0], mels, lengths[1], aux_input={"speaker_ids": None, "d_vectors": None})
    dropped_in_training = (seen[0].abs().sum(-1) == 0).float().mean().item()  # frames zeroed whole
    assert dropped_in_training == pytest.approx(share, abs=0.06)
    assert torch.equal(seen[0][seen[0] != 0], torch.ones_like(seen[0][seen[0] != 0]))  # kept frames untouched
    assert torch.equal(seen[1], mels)  # eval: Coqui's validation sees the real frames


def test_decoder_input_dropout_refuses_a_share_outside_0_1():
    for share in (-0.1, 1.0):
        with pytest.raises(ValueError, match="decoder_input_dropout"):
            ProsodyVAEArgs(decoder_input_dropout=share).check_values()
