"""Enrolment: a reference speaker the model never heard is known by the register of a few
recordings, which then stands in for the speaker table's register (relative features, absolute
pitch), persists beside the checkpoint, and is offered by the CLI and the server."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from prosody_vae.cli import main
from prosody_vae.data.speakers import SpeakerTable, UnknownSpeakerError
from prosody_vae.inference import enrolment as enrolment_module
from prosody_vae.inference.enrolment import Enrolment, enrolment_file, load_enrolments
from prosody_vae.inference.synthesizer import Synthesizer
from prosody_vae.model.tacotron import ProsodyTacotron
from prosody_vae.plugin.errors import CheckpointError, ConfigError

from test_speakers import VOICES, micro_config, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
REGISTERS = (math.log(220.0), math.log(110.0), math.log(120.0))  # VOICES' registers in the table


@pytest.fixture(autouse=True)
def quiet_max_steps():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*max_decoder_steps.*")  # an untrained model never stops
        yield


def steady_tone(f0: float, sample_rate: int, seconds: float = 1.5, glide: float = 0.0) -> np.ndarray:
    """A harmonic 'vowel' at `f0` Hz (rising by `glide` of f0 per second), faded in and out."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * np.cumsum(f0 * (1 + glide * t)) / sample_rate
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.05)
    return (sum(0.2 / k * np.sin(k * phase) for k in range(1, 8)) * fade).astype(np.float32)


def synth_of(reference_input: str = "mel", posterior: str = "V") -> Synthesizer:
    torch.manual_seed(0)
    config = micro_config(3, reference_input=reference_input, posterior=posterior)
    return Synthesizer(ProsodyTacotron(config.model), config, speaker_table=SpeakerTable(VOICES, REGISTERS))


@pytest.fixture(scope="module")
def prosody_synth() -> Synthesizer:
    return synth_of("prosody")


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(tmp_path / "model.pt", micro_config(3), speaker_table=SpeakerTable(VOICES, REGISTERS).to_dict())


def test_the_register_of_an_enrolled_voice_is_its_mean_log_f0(prosody_synth):
    sr = prosody_synth.audio.sample_rate
    enrolment = prosody_synth.enroll("me", [steady_tone(150.0, sr), steady_tone(150.0, sr, 1.0)], save=False)
    assert enrolment.f0_mean_hz == pytest.approx(150.0, rel=0.01)
    assert enrolment.n_recordings == 2 and 2.0 <= enrolment.voiced_seconds <= 2.5
    assert prosody_synth.reference_registers("me", 2) == [enrolment.log_f0_mean] * 2
    assert prosody_synth.reference_registers(["me", "en-us+m1"], 2) == [enrolment.log_f0_mean, REGISTERS[1]]


def test_an_enrolled_speaker_is_read_relative_to_their_own_register_not_the_nearest_known(prosody_synth):
    sr = prosody_synth.audio.sample_rate
    prosody_synth.enroll("me", [steady_tone(150.0, sr)] * 2, save=False)
    read = lambda wav, speaker: prosody_synth.reference_input([wav], speaker)[0][0]  # (T, 3)
    mine = read(steady_tone(150.0, sr, glide=0.1), "me")
    voiced = mine[:, 1] == 1
    assert voiced.sum() > 60
    # at their own register, as a training voice at its own: the same features
    torch.testing.assert_close(mine, read(steady_tone(220.0, sr, glide=0.1), "en-us+f3"), atol=0.01, rtol=0)
    # unnamed, 150 Hz is taken for the 120 Hz voice: the offset is then ln(150/120) too high
    guessed = read(steady_tone(150.0, sr, glide=0.1), None)
    assert float((guessed[voiced, 0] - mine[voiced, 0]).mean()) == pytest.approx(math.log(150 / 120), abs=0.01)


def test_absolute_pitch_lands_at_the_enrolled_speakers_hz():
    synth = synth_of("mel")
    sr = synth.audio.sample_rate
    me = synth.enroll("me", [steady_tone(165.0, sr)] * 2, save=False)
    ask = lambda mode: synth.tts("Hello there.", reference=steady_tone(165.0, sr), temperature=0.0,
                                 speaker="en-us+m1", reference_speaker="me", pitch_mode=mode, vocode=False).f0[0]
    relative, absolute = ask("relative"), ask("absolute")
    voiced = relative > 0
    assert voiced.any()
    expected = torch.tensor(me.f0_mean_hz / 110.0)  # the enrolled register over the target voice's
    torch.testing.assert_close((absolute[voiced] / relative[voiced]).mean(), expected, rtol=1e-4, atol=0)


def test_an_enrolment_records_the_usual_level_and_a_gain_moves_it_by_exactly_the_gain(prosody_synth):
    sr = prosody_synth.audio.sample_rate
    quiet = prosody_synth.enroll("quiet", [steady_tone(150.0, sr)] * 2, save=False)
    loud = prosody_synth.enroll("loud", [2 * steady_tone(150.0, sr)] * 2, save=False)
    assert -30.0 < quiet.level_db < -10.0  # a tone of peak ~0.5
    assert loud.level_db - quiet.level_db == pytest.approx(20 * math.log10(2), abs=0.01)
    assert loud.log_f0_mean == pytest.approx(quiet.log_f0_mean, abs=1e-4)


@pytest.mark.parametrize("reference_input", ["mel", "prosody"])
def test_reference_level_makes_the_output_as_much_louder_as_the_reference_is_against_its_enrolment(reference_input):
    synth = synth_of(reference_input)
    sr = synth.audio.sample_rate
    synth.enroll("me", [steady_tone(150.0, sr, glide=0.1)] * 2, save=False)
    gain_db = 6.0
    louder = steady_tone(150.0, sr, glide=0.1) * 10 ** (gain_db / 20)
    ask = lambda reference, level: synth.tts(["Hello there.", "Hi."], reference=reference, reference_speaker="me",
                                             seed=0, reference_level=level, vocode=False, max_decoder_steps=40)
    plain, lifted = ask(louder, False), ask(louder, True)
    for before, after in zip(plain.mel, lifted.mel):  # natural-log magnitudes: + gain ln10 / 20 on every bin
        torch.testing.assert_close(after - before, torch.full_like(before, gain_db * math.log(10) / 20),
                                   atol=1e-4, rtol=0)
    # spoken at the usual level, nothing moves
    same = ask(steady_tone(150.0, sr, glide=0.1), True)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(same.mel, ask(steady_tone(150.0, sr, glide=0.1), False).mel))
    if reference_input == "prosody":  # z reads the level contour only, so the gain does not reach it
        torch.testing.assert_close(plain.z, ask(steady_tone(150.0, sr, glide=0.1), False).z)


def test_reference_level_is_refused_without_an_enrolled_reference_speaker_with_a_level(prosody_synth):
    sr = prosody_synth.audio.sample_rate
    prosody_synth.enroll("me", [steady_tone(150.0, sr)] * 2, save=False)
    prosody_synth.enrolments = {**prosody_synth.enrolments, "old": Enrolment("old", math.log(150.0), 2, 3.0)}
    reference = steady_tone(150.0, sr)
    for kwargs, message in [({"reference_speaker": "me"}, "needs a reference"),
                            ({"reference": reference}, "enrolled speaker"),
                            ({"reference": reference, "reference_speaker": "en-us+m1"}, "enrolled speaker"),
                            ({"reference": reference, "reference_speaker": "old"}, "enroll them again")]:
        with pytest.raises(ConfigError, match=message) as refused:
            prosody_synth.tts("Hello.", reference_level=True, vocode=False, max_decoder_steps=4, **kwargs)
        assert refused.value.field == "reference_level"


def test_enrolments_persist_beside_the_checkpoint_and_never_inside_it(checkpoint):
    before = checkpoint.read_bytes()
    synth = Synthesizer.from_checkpoint(checkpoint, vocoder="griffin-lim")
    sr = synth.audio.sample_rate
    synth.enroll("ann", [steady_tone(180.0, sr)] * 2)
    synth.enroll("bob", [steady_tone(100.0, sr)] * 2)
    synth.enroll("ann", [steady_tone(200.0, sr)] * 2)  # again: replaced
    assert checkpoint.read_bytes() == before
    stored = json.loads(enrolment_file(checkpoint).read_text())
    assert [s["name"] for s in stored["speakers"]] == ["ann", "bob"]
    again = Synthesizer.from_checkpoint(checkpoint, vocoder="griffin-lim")
    assert again.enrolments == synth.enrolments
    assert again.enrolments["ann"].f0_mean_hz == pytest.approx(200.0, rel=0.01)


def test_an_enrolment_that_cannot_be_written_is_not_kept(checkpoint, monkeypatch):
    synth = Synthesizer.from_checkpoint(checkpoint, vocoder="griffin-lim")

    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(enrolment_module, "write_atomically", full_disk)
    with pytest.raises(CheckpointError, match="model.pt.enrolled.json: cannot write the enrolments.*No space"):
        synth.enroll("ann", [steady_tone(180.0, synth.audio.sample_rate)] * 2)
    assert synth.enrolments == {} and not enrolment_file(checkpoint).exists()


@pytest.mark.parametrize("name, recordings, field, message", [
    ("en-us+m1", 2, "name", "a voice this model was trained on"),
    ("", 2, "name", "non-empty"),
    ("me", 0, "recordings", "at least one recording"),
    ("me", "short", "recordings", r"0\.\d+ s of voiced speech; a register needs at least 2 s"),
])
def test_a_bad_enrolment_is_refused_naming_its_argument(prosody_synth, name, recordings, field, message):
    sr = prosody_synth.audio.sample_rate
    wavs = [steady_tone(150.0, sr, 0.6)] if recordings == "short" else [steady_tone(150.0, sr)] * recordings
    with pytest.raises(ConfigError, match=message) as refused:
        prosody_synth.enroll(name, wavs, save=False)
    assert refused.value.field == field


def test_an_unknown_reference_speaker_names_the_known_and_the_enrolled():
    synth = synth_of("prosody")
    synth.enroll("me", [steady_tone(150.0, synth.audio.sample_rate)] * 2, save=False)
    with pytest.raises(UnknownSpeakerError, match=r"unknown speaker 'you'.*en-us\+f3.*enrolled me.*enroll") as refused:
        synth.reference_input([steady_tone(150.0, synth.audio.sample_rate)], "you")
    assert refused.value.field == "reference_speaker"


def test_a_posterior_that_reads_a_speaker_embedding_refuses_an_enrolled_reference_speaker():
    synth = synth_of("mel", posterior="V+S")
    sr = synth.audio.sample_rate
    synth.enroll("me", [steady_tone(150.0, sr)] * 2, save=False)
    with pytest.raises(ConfigError, match="'me' is enrolled, not trained on: a V\\+S posterior") as refused:
        synth.encode(steady_tone(150.0, sr), reference_speaker="me")
    assert refused.value.field == "reference_speaker"


def test_the_cli_enrolls_from_a_folder_of_wavs(checkpoint, tmp_path, capsys):
    import soundfile as sf

    sr = Synthesizer.from_checkpoint(checkpoint, vocoder="griffin-lim").audio.sample_rate
    folder = tmp_path / "me"
    folder.mkdir()
    for i in range(3):
        sf.write(folder / f"take{i}.wav", steady_tone(140.0, sr), sr, subtype="PCM_16")
    assert main(["enroll", "--checkpoint", str(checkpoint), "--name", "me", "--recordings", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "enrolled 'me': 140" in out and "3 recording(s)" in out and str(enrolment_file(checkpoint)) in out
    assert load_enrolments(enrolment_file(checkpoint))["me"].n_recordings == 3
    assert main(["enroll", "--checkpoint", str(checkpoint), "--name", "en-us+f3", "--recordings", str(folder)]) == 2
    assert "trained on" in capsys.readouterr().err


def test_an_enrolment_file_from_before_levels_loads_without_a_level(tmp_path):
    path = tmp_path / "c.pt.enrolled.json"
    path.write_text('{"version": 1, "speakers": [{"name": "x", "log_f0_mean": 5.0, "n_recordings": 2, '
                    '"voiced_seconds": 3.0}]}')
    (old,) = load_enrolments(path).values()
    assert old.name == "x" and old.f0_mean_hz == pytest.approx(math.exp(5.0)) and math.isnan(old.level_db)


def test_a_malformed_enrolment_file_is_a_checkpoint_error_naming_it(tmp_path):
    path = tmp_path / "c.pt.enrolled.json"
    path.write_text('{"version": 1, "speakers": [{"name": "x"}]}')
    with pytest.raises(CheckpointError, match="c.pt.enrolled.json: malformed enrolment file"):
        load_enrolments(path)
    path.write_text('{"version": 7, "speakers": []}')
    with pytest.raises(CheckpointError, match="enrolment version 7 is newer"):
        load_enrolments(path)
