"""A "prosody" reference: speaker-relative pitch, voicing and level, so that the voice's register
and loudness cannot reach z, while the prosody within the voice still does."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prosody_vae.training.config import TrainConfig, config_from_dict, config_to_dict
from prosody_vae.plugin.errors import ConfigError, ReferenceInputError
from prosody_vae.inference.synthesizer import Synthesizer
from prosody_vae.audio.pitch import ENERGY_FLOOR_DB
from prosody_vae.audio.prosody_tracks import LEVEL_FLOOR_DB, LEVEL_SCALE_DB, nearest_register, reference_features
from prosody_vae.data.speakers import SpeakerTable
from prosody_vae.model.tacotron import ProsodyTacotron

from conftest import write_tiny_corpus
from test_speakers import VOICES, micro_config

pytestmark = pytest.mark.usefixtures("one_thread")

LOW, HIGH = math.log(110.0), math.log(220.0)  # two registers an octave apart


def tracks(register: float = LOW, gain_db: float = 0.0, frames: int = 40):
    """One utterance's (1, T) log-F0, voicing and energy: a rising contour around `register`
    with an unvoiced gap, and padding after `frames - 5` frames."""
    t = torch.arange(frames, dtype=torch.float32)
    voiced = (t < frames - 5) & ((t < 10) | (t >= 15))
    log_f0 = torch.where(voiced, register + 0.01 * (t - 20), 0.0)
    energy = torch.where(t < frames - 5, -20.0 - 0.5 * t + gain_db, ENERGY_FLOOR_DB)
    return log_f0[None], voiced[None], energy[None]


def test_the_register_and_the_loudness_of_the_voice_do_not_reach_the_features():
    low = reference_features(*tracks(LOW), torch.tensor([LOW]))
    assert low.shape == (1, 40, 3)
    torch.testing.assert_close(reference_features(*tracks(HIGH, gain_db=-12.0), torch.tensor([HIGH])), low)
    # what is left is the contour relative to the register, where the voice sounds, and the level contour
    pitch, voiced, level = low[0].unbind(-1)
    assert voiced[10:15].eq(0).all() and pitch[10:15].eq(0).all() and voiced[:10].eq(1).all()
    torch.testing.assert_close(pitch[:10], 0.01 * (torch.arange(10.0) - 20))
    assert level[0] == 0 and level[1] == pytest.approx(-0.5 / LEVEL_SCALE_DB)
    assert level[-5:].eq(LEVEL_FLOOR_DB / LEVEL_SCALE_DB).all()  # padding reads as silence


def test_an_unnamed_reference_is_matched_to_the_nearest_known_register():
    own = torch.tensor([math.log(100.0), math.log(200.0), math.nan])
    torch.testing.assert_close(nearest_register(own, [LOW, HIGH, math.nan]), torch.tensor([LOW, HIGH, math.nan]), equal_nan=True)
    assert nearest_register(own, []).isnan().all()


def test_a_reference_higher_in_its_own_voice_keeps_its_offset_and_an_unknown_voice_its_contour():
    raised = reference_features(*tracks(LOW + 0.2), torch.tensor([LOW]))[0, :, 0]
    plain = reference_features(*tracks(LOW), torch.tensor([LOW]))[0, :, 0]
    voiced = tracks()[1][0]
    torch.testing.assert_close(raised[voiced] - plain[voiced], torch.full((int(voiced.sum()),), 0.2))
    # no register: relative to the utterance's own mean, so the offset is gone and the contour stays
    own = reference_features(*tracks(LOW + 0.2), torch.tensor([math.nan]))[0, :, 0]
    assert own[voiced].mean().abs() < 1e-6
    torch.testing.assert_close(own[voiced], plain[voiced] - plain[voiced].mean())


def harmonic_tone(f0: float, gain: float, sample_rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    glide = f0 * (1 + 0.1 * t)  # a rising glide: the same contour in semitones at any register
    phase = 2 * np.pi * np.cumsum(glide) / sample_rate
    return (gain * sum(0.2 / k * np.sin(k * phase) for k in range(1, 8)) * np.hanning(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def prosody_synth() -> Synthesizer:
    torch.manual_seed(0)
    config = micro_config(3, reference_input="prosody")
    table = SpeakerTable(VOICES, (HIGH, LOW, math.log(120.0)))
    return Synthesizer(ProsodyTacotron(config.model), config, speaker_table=table)


def test_a_reference_in_its_own_voice_reads_the_same_at_any_register_or_level(prosody_synth):
    sr = prosody_synth.audio.sample_rate
    high, low = harmonic_tone(220.0, 1.0, sr), harmonic_tone(110.0, 0.3, sr)
    read = lambda wav, speaker: prosody_synth.reference_input([wav], speaker)[0][0]  # (T, 3)
    in_own_voice = read(high, "en-us+f3"), read(low, "en-us+m1")  # registers 220 and 110 Hz
    torch.testing.assert_close(*in_own_voice, atol=0.01, rtol=0)  # Praat's F0 and voicing agree to 0.01
    voiced = in_own_voice[0][:, 1] == 1
    assert voiced.sum() > 40
    # the glide rises 10% over the second: its ln F0 relative to the register runs from 0 to ln 1.1
    assert 0 <= float(in_own_voice[0][voiced, 0].min()) < 0.01 and float(in_own_voice[0][voiced, 0].max()) < math.log(1.1)
    # the low tone said to come from the high voice sits an octave below that voice's register
    torch.testing.assert_close(read(low, "en-us+f3")[voiced, 0], in_own_voice[1][voiced, 0] - math.log(2.0),
                               atol=1e-4, rtol=0)
    # an unnamed reference is taken relative to the known register nearest its own mean pitch
    torch.testing.assert_close(read(high, None), in_own_voice[0])  # the 220-242 Hz glide: 220 Hz
    torch.testing.assert_close(read(harmonic_tone(150.0, 1.0, sr), None)[voiced, 0],  # 150-165 Hz: nearest 120 Hz
                               read(harmonic_tone(150.0, 1.0, sr), "en+m3")[voiced, 0])
    torch.testing.assert_close(prosody_synth.encode(high, reference_speaker="en-us+f3").mean,
                               prosody_synth.encode(low, reference_speaker="en-us+m1").mean, atol=1e-3, rtol=0)


def test_a_log_mel_reference_is_refused_because_it_has_no_pitch_track(prosody_synth):
    with pytest.raises(ReferenceInputError, match="reads the reference's pitch.*not a log-mel"):
        prosody_synth.encode(torch.randn(30, 20))
    with pytest.raises(ReferenceInputError, match="reads the batch's log_f0, voiced, energy and reference_register"):
        model = prosody_synth.model
        model(torch.ones(1, 4, dtype=torch.long), torch.tensor([4]), torch.zeros(1, 8, 20), torch.tensor([8]),
              speaker_ids=torch.tensor([0]))


@pytest.mark.parametrize("register_dropout", [0.0, 0.5])
def test_a_prosody_model_trains_and_its_checkpoint_synthesises_from_a_wav(tmp_path, register_dropout):
    from prosody_vae.training.trainer import train

    corpus = write_tiny_corpus(tmp_path / "corpus", n=8)
    metadata = corpus / "metadata.csv"
    metadata.write_text("".join(f"{line}|{VOICES[i % 2]}\n"
                                for i, line in enumerate(metadata.read_text().splitlines())))
    config = config_from_dict(TrainConfig, {**config_to_dict(micro_config(2, reference_input="prosody",
                                                                          register_dropout=register_dropout)),
                                            "max_steps": 2, "threads": 1, "data": {"n_val": 2, "batch_size": 3}},
                              "test")
    result = train(config, corpus, tmp_path / "run")
    assert result.skipped_steps == 0 and math.isfinite(result.metrics["kl"])
    synth = Synthesizer.from_checkpoint(result.checkpoint)
    assert synth.model.config.reference_input == "prosody"
    assert synth.model.config.register_dropout == register_dropout  # kept in the checkpoint
    with pytest.warns(RuntimeWarning, match="max_decoder_steps"):
        out = synth.tts("The fox.", reference=corpus / "wavs" / "utt000.wav", speaker=VOICES[1],
                        reference_speaker=VOICES[0], vocode=False)
    assert torch.isfinite(out.mel[0]).all()


def test_register_dropout_needs_prosody_tracks_and_a_share_below_one():
    with pytest.raises(ConfigError, match="register_dropout needs reference_input"):
        micro_config(3, register_dropout=0.3)
    with pytest.raises(ConfigError, match=r"register_dropout must be in \[0, 1\)"):
        micro_config(3, reference_input="prosody", register_dropout=1.0)


def test_register_dropout_hides_that_share_of_registers_in_training_and_none_in_validation():
    from types import SimpleNamespace

    from prosody_vae.training.trainer import _Trainer as Trainer

    config = micro_config(3, reference_input="prosody", register_dropout=0.3)
    trainer = SimpleNamespace(config=config, speaker_registers=torch.tensor([HIGH, LOW, math.log(120.0)]))
    batch = SimpleNamespace(speaker_ids=torch.arange(3).repeat(2000), log_f0=None, voiced=None, energy=None)
    torch.manual_seed(0)
    trained = Trainer._conditioning(trainer, batch)["reference_register"]  # (6000,)
    assert trained.isnan().float().mean().item() == pytest.approx(0.3, abs=0.02)
    kept = ~trained.isnan()
    torch.testing.assert_close(trained[kept], trainer.speaker_registers[batch.speaker_ids][kept])
    validated = Trainer._conditioning(trainer, batch, training=False)["reference_register"]
    torch.testing.assert_close(validated, trainer.speaker_registers[batch.speaker_ids])


def test_a_model_trained_with_register_dropout_reads_an_unplaced_reference_against_its_own_mean():
    torch.manual_seed(0)
    config = micro_config(3, reference_input="prosody", register_dropout=0.3)
    synth = Synthesizer(ProsodyTacotron(config.model), config,
                        speaker_table=SpeakerTable(VOICES, (HIGH, LOW, math.log(120.0))))
    sr = synth.audio.sample_rate
    tone = harmonic_tone(150.0, 1.0, sr)  # 150-165 Hz: the guess would take the 120 Hz voice
    unplaced = synth.reference_input([tone], None)[0][0]  # (T, 3)
    voiced = unplaced[:, 1] == 1
    assert voiced.sum() > 40 and abs(float(unplaced[voiced, 0].mean())) < 1e-5  # height 0: the target's usual
    named = synth.reference_input([tone], "en+m3")[0][0]
    torch.testing.assert_close(named[voiced, 0] - unplaced[voiced, 0],  # the same contour, raised by the offset
                               torch.full((int(voiced.sum()),), float(named[voiced, 0].mean())), atol=1e-5, rtol=0)
    assert float(named[voiced, 0].mean()) == pytest.approx(math.log(157.5 / 120.0), abs=0.02)
