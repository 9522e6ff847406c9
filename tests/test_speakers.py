"""Speakers: the table in checkpoints, naming voices at inference, the speaker probe, and
cross-speaker transfer on a small model trained here."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from prosody_vae.training.checkpoint import load_checkpoint, save_checkpoint
from prosody_vae.training.config import TrainConfig, config_from_dict, config_to_dict
from prosody_vae.data.ljspeech import read_metadata, split_train_val
from prosody_vae.plugin.errors import CheckpointError, ConfigError, ProsodyVAEError
from prosody_vae.inference.synthesizer import Synthesizer
from prosody_vae.evaluation.speaker_leakage import speaker_probe
from prosody_vae.data.speakers import SpeakerTable, UnknownSpeakerError
from prosody_vae.model.tacotron import ProsodyTacotron

from conftest import write_tiny_corpus

pytestmark = pytest.mark.usefixtures("one_thread")

MICRO = dict(n_mels=20, embedding_dim=16, encoder_conv_channels=16, encoder_lstm_dim=16, prenet_dims=[16, 16],
             attention_rnn_dim=16, decoder_rnn_dim=16, attention_dim=8, location_filters=4, location_kernel_size=7,
             postnet_channels=8, latent_dim=4, ref_conv_channels=[4, 8], ref_gru_dim=8, ref_mlp_dim=8,
             text_summary_dim=8, max_decoder_steps=8, pitch_head=True)
VOICES = ("en-us+f3", "en-us+m1", "en+m3")


def micro_config(n_speakers: int = 0, **model) -> TrainConfig:
    speakers = dict(n_speakers=n_speakers, speaker_dim=4) if n_speakers else {}
    return config_from_dict(TrainConfig, {"model": {"preset": "tiny", **MICRO, **speakers, **model},
                                          "audio": {"n_mels": 20}}, "test")


def write_checkpoint(path, config: TrainConfig, **entries):
    torch.manual_seed(0)
    model = ProsodyTacotron(config.model)
    return save_checkpoint(path, {"config": config_to_dict(config), "model": model.state_dict(), **entries})


@pytest.fixture(autouse=True)
def quiet_max_steps():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*max_decoder_steps.*")  # an untrained model never stops
        yield


# ------------------------------------------------------------------------------------------ table
def test_speaker_table_round_trips_through_a_checkpoint(tmp_path):
    table = SpeakerTable(VOICES, (math.log(220.0), math.log(110.0), math.log(120.0)))
    path = write_checkpoint(tmp_path / "c.pt", micro_config(3), speaker_table=table.to_dict())
    assert SpeakerTable.from_checkpoint(load_checkpoint(path)) == table
    synth = Synthesizer.from_checkpoint(path)
    assert synth.speakers == list(VOICES)
    assert synth.speaker_table.f0_mean_hz("en-us+m1") == pytest.approx(110.0)


def test_checkpoints_from_before_the_table_still_load(tmp_path):
    old = write_checkpoint(tmp_path / "old.pt", micro_config(3), speakers=list(VOICES))
    assert Synthesizer.from_checkpoint(old).speakers == list(VOICES)
    assert SpeakerTable.from_checkpoint(load_checkpoint(old)).log_f0_mean is None
    single = write_checkpoint(tmp_path / "single.pt", micro_config(0), speakers=[""])
    assert Synthesizer.from_checkpoint(single).speakers == []


def test_a_newer_or_malformed_table_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="version 9 is newer"):
        SpeakerTable.from_dict({"version": 9, "names": ["a"]})
    with pytest.raises(CheckpointError, match="malformed speaker table"):
        SpeakerTable.from_dict({"names": ["a"]})
    with pytest.raises(CheckpointError, match="2 F0 means for 1 speakers"):
        SpeakerTable.from_dict({"version": 1, "names": ["a"], "log_f0_mean": [0.0, 1.0]})


def test_training_stores_the_table_with_each_speakers_f0(tmp_path):
    from prosody_vae.training.trainer import train

    corpus = write_tiny_corpus(tmp_path / "corpus", n=8)
    metadata = corpus / "metadata.csv"
    metadata.write_text("".join(f"{line}|{VOICES[i % 2]}\n"
                                for i, line in enumerate(metadata.read_text().splitlines())))
    config = config_from_dict(TrainConfig, {**config_to_dict(micro_config(2)), "max_steps": 2, "threads": 1,
                                            "data": {"n_val": 2, "batch_size": 3}}, "test")
    result = train(config, corpus, tmp_path / "run")
    table = SpeakerTable.from_checkpoint(load_checkpoint(result.checkpoint))
    assert table.names == tuple(sorted(VOICES[:2]))
    # the fixture's utterances are harmonic tones of one F0 each: the table's register lies among them
    assert all(60 < table.f0_mean_hz(name) < 300 for name in table.names)
    assert Synthesizer.from_checkpoint(result.checkpoint).speakers == sorted(VOICES[:2])


# ------------------------------------------------------------------------------------- inference
@pytest.fixture(scope="module")
def multi() -> Synthesizer:
    torch.manual_seed(0)
    config = micro_config(3)
    table = SpeakerTable(VOICES, (math.log(220.0), math.log(110.0), math.log(120.0)))
    return Synthesizer(ProsodyTacotron(config.model), config, speaker_table=table)


def test_an_unknown_speaker_is_refused_with_the_known_ones(multi):
    with pytest.raises(UnknownSpeakerError, match=r"unknown speaker 'en-gb'.*'en-us\+f3', 'en-us\+m1', 'en\+m3'"):
        multi.tts("Hello.", speaker="en-gb", vocode=False)
    with pytest.raises(UnknownSpeakerError, match="got 2 speakers for 3 texts"):
        multi.tts(["A.", "B.", "C."], speaker=list(VOICES[:2]), vocode=False)
    assert issubclass(UnknownSpeakerError, ProsodyVAEError)


def test_a_speaker_for_a_single_speaker_model_is_refused():
    config = micro_config(0)
    synth = Synthesizer(ProsodyTacotron(config.model), config)
    assert synth.speakers == []
    with pytest.raises(UnknownSpeakerError, match="trained without speaker conditioning"):
        synth.tts("Hello.", speaker="en-us", vocode=False)


def test_the_speaker_changes_the_output_and_none_means_the_first(multi):
    one = lambda speaker: multi.tts("Hello there.", temperature=0.0, speaker=speaker, vocode=False).mel[0]
    assert torch.equal(one(None), one(VOICES[0]))
    assert not torch.equal(one(VOICES[0]), one(VOICES[1]))
    batch = multi.tts(["Hello there."] * 2, temperature=0.0, speaker=[VOICES[0], VOICES[1]], vocode=False).mel
    assert torch.allclose(batch[0], one(VOICES[0]), atol=1e-5) and torch.allclose(batch[1], one(VOICES[1]), atol=1e-5)


def test_absolute_pitch_moves_the_f0_by_the_register_difference(multi):
    relative = multi.tts("Hello there.", temperature=0.0, speaker="en-us+m1", reference_speaker="en-us+f3",
                         vocode=False)
    absolute = multi.tts("Hello there.", temperature=0.0, speaker="en-us+m1", reference_speaker="en-us+f3",
                         pitch_mode="absolute", vocode=False)
    voiced = relative.f0[0] > 0
    assert voiced.any() and torch.equal(voiced, absolute.f0[0] > 0)
    assert torch.allclose(absolute.f0[0][voiced] / relative.f0[0][voiced], torch.tensor(2.0), rtol=1e-4)  # 220/110
    with pytest.raises(ConfigError, match="needs reference_speaker="):
        multi.tts("Hello.", speaker="en-us+m1", pitch_mode="absolute", vocode=False)


def test_the_built_in_corpus_names_its_voice_in_the_metadata(tmp_path):
    from prosody_vae.data.corpus import CorpusConfig, make_corpus

    make_corpus(tmp_path, CorpusConfig(n=3, voices=VOICES[:2], measure=False))
    utterances = read_metadata(tmp_path)
    assert {u.speaker for u in utterances} <= set(VOICES[:2]) and all(u.speaker for u in utterances)


# ------------------------------------------------------------------------------------------ probe
def test_the_probe_finds_a_speaker_that_is_there_and_not_one_that_is_not():
    rng = np.random.default_rng(0)
    labels = [VOICES[i % 3] for i in range(150)]
    centres = rng.normal(size=(3, 8)) * 3
    separable = np.stack([centres[i % 3] for i in range(150)]) + rng.normal(size=(150, 8))
    found = speaker_probe(separable, labels)
    assert found.accuracy > 0.95 and found.chance == pytest.approx(1 / 3)
    assert speaker_probe(rng.normal(size=(150, 8)), labels).accuracy < 0.5


# ------------------------------------------------------------------------- cross-speaker transfer
@pytest.mark.parametrize("per_reference, expected_pairs", [(1, 3), (2, 6), (5, 6)])
def test_the_transfer_schedule_walks_the_other_voices_and_never_the_references_own(per_reference, expected_pairs):
    from pathlib import Path

    from prosody_vae.data.ljspeech import Utterance
    from prosody_vae.evaluation.speaker_leakage import transfer_schedule

    voices = list(VOICES)  # the names are all the schedule reads (a dict of Voices works the same)
    references = [Utterance(f"u{i}", "three words here", "", Path(f"u{i}.wav"), v) for i, v in enumerate(VOICES)]
    references.append(Utterance("short", "too short", "", Path("short.wav"), VOICES[0]))  # not measurable
    texts = [f"text {i}" for i in range(4)]
    schedule = list(transfer_schedule(references, texts, voices, per_reference))
    pairs = [(ref.speaker, target) for _, ref, targets, _ in schedule for target in targets]
    assert len(pairs) == expected_pairs and all(a != b for a, b in pairs)
    assert len(set(pairs)) == len(pairs)  # all other voices at most once each (5 is more than the 2 there are)
    spoken = [text for *_, own_texts in schedule for text in own_texts]
    assert spoken == [texts[k % 4] for k in range(expected_pairs)]  # each pair on the next text
    with pytest.raises(ValueError, match="targets_per_reference"):
        list(transfer_schedule(references, texts, voices, 0))


def test_the_wins_interval_is_the_wilson_score_interval():
    from prosody_vae.evaluation.speaker_leakage import wins_interval

    low, high = wins_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)  # textbook values
    low, high = wins_interval(38, 38)
    assert high == pytest.approx(1.0) and 0.90 < low < 0.92  # 38 of 38 still cannot rule out 91%


@pytest.mark.parametrize("recordings", [40, 5])
def test_a_voice_is_enrolled_from_its_first_recordings(monkeypatch, recordings):
    """The centroid is the unit mean of the first ENROLMENT_UTTERANCES embeddings (all, when a voice
    has fewer), and the register the geometric mean of their F0."""
    from pathlib import Path
    from types import SimpleNamespace

    from prosody_vae.evaluation import speaker_leakage
    from prosody_vae.data.ljspeech import Utterance

    # recording i of a voice "is" embedding e_i and F0 100 + i Hz, so what was averaged shows
    monkeypatch.setattr(speaker_leakage, "load_wav", lambda path, sr: int(Path(path).stem.split("_")[1]))
    monkeypatch.setattr(speaker_leakage, "speaker_embeddings", lambda wavs, sr: np.eye(64)[list(wavs)])
    monkeypatch.setattr(speaker_leakage, "prosody_summary", lambda i, sr: SimpleNamespace(f0_mean_hz=100.0 + i))
    utterances = [Utterance(f"{v}_{i}", "a b c", "", Path(f"{v}_{i}.wav"), v)
                  for i in range(recordings) for v in VOICES]
    voices = speaker_leakage.enrol_voices(utterances, 22050)
    used = min(recordings, speaker_leakage.ENROLMENT_UTTERANCES)
    assert sorted(voices) == sorted(VOICES)
    for voice in voices.values():
        assert voice.embedding == pytest.approx(np.r_[np.ones(used), np.zeros(64 - used)] / math.sqrt(used))
        assert voice.log_f0 == pytest.approx(np.mean(np.log(100.0 + np.arange(used))))


# Two voices an octave apart, a model small enough to train in well under a minute on one thread:
# it has not learnt to read yet, but it has learnt who speaks, which is what this test is about.
TWO_VOICES = ("en-us+f3", "en-us+m1")
SMALL = dict(embedding_dim=32, encoder_conv_channels=32, encoder_lstm_dim=32, prenet_dims=[32, 32],
             attention_rnn_dim=64, decoder_rnn_dim=64, attention_dim=16, location_filters=4, postnet_channels=32,
             latent_dim=8, ref_conv_channels=[8, 8, 16, 16], ref_gru_dim=16, ref_mlp_dim=16,
             n_speakers=2, speaker_dim=8, pitch_head=True, max_decoder_steps=60)
TRANSFER_STEPS = 150


@pytest.fixture(scope="module")
def two_voice_model(tmp_path_factory):
    from prosody_vae.training.config import load_config, recipe_config
    from prosody_vae.data.corpus import CorpusConfig, make_corpus
    from prosody_vae.training.trainer import train

    root = tmp_path_factory.mktemp("speakers")
    make_corpus(root / "corpus", CorpusConfig(n=96, voices=TWO_VOICES, measure=False))
    demo = config_to_dict(load_config(recipe_config("demo")))
    config = config_from_dict(TrainConfig, {
        **demo, "model": {**demo["model"], **SMALL}, "max_steps": TRANSFER_STEPS, "threads": 1,
        "val_every": TRANSFER_STEPS, "checkpoint_every": TRANSFER_STEPS, "data": {**demo["data"], "n_val": 8}},
        "test")
    result = train(config, root / "corpus", root / "run")
    return root / "corpus", result.checkpoint


@pytest.mark.slow
def test_cross_speaker_transfer_speaks_in_the_target_voice(two_voice_model):
    from prosody_vae.evaluation.speaker_leakage import cross_speaker_transfer, enrol_voices, measurable, summarise_pairs

    corpus, checkpoint = two_voice_model
    synth = Synthesizer.from_checkpoint(checkpoint, vocoder="source-filter")
    utterances = read_metadata(corpus)
    training, held_out = split_train_val(utterances, synth.config.data.n_val, synth.config.data.seed)
    voices = enrol_voices(training, synth.audio.sample_rate)
    references = [next(u for u in held_out if u.speaker == v and measurable(u)) for v in TWO_VOICES]  # one each
    pairs = cross_speaker_transfer(synth, references, [u.text for u in held_out[:2]], voices,
                                   targets_per_reference=1)
    assert [(p.reference_speaker, p.target_speaker) for p in pairs] == [TWO_VOICES, TWO_VOICES[::-1]]
    assert summarise_pairs(pairs)["target_voice_wins"] == 1.0, [
        (p.similarity_to_target, p.similarity_to_reference) for p in pairs]


# ------------------------------------------------------------------- a posterior that knows the speaker
def test_a_v_plus_s_posterior_reads_the_reference_speaker():
    torch.manual_seed(0)
    config = micro_config(3, posterior="V+S")
    synth = Synthesizer(ProsodyTacotron(config.model), config, speaker_table=SpeakerTable(VOICES))
    mel = torch.randn(30, 20)
    means = [synth.encode(mel, reference_speaker=v).mean for v in VOICES[:2]]
    assert not torch.allclose(*means)
    assert torch.equal(synth.encode(mel).mean, synth.encode(mel, reference_speaker=VOICES[0]).mean)  # the default


def test_the_speaker_adversary_trains_its_classifier_and_pushes_z_to_confuse_it():
    from prosody_vae.training.losses import TacotronLoss
    from prosody_vae.data.ljspeech import collate_batch, Sample
    from prosody_vae.model.speaker_adversary import confusion_loss

    torch.manual_seed(0)
    model = ProsodyTacotron(micro_config(3, posterior="V+S", speaker_adversary=True).model)
    samples = [Sample(f"u{i}", torch.randint(1, 30, (6,)), torch.randn(16, 20), speaker_id=i,
                      log_f0=torch.full((16,), 5.0), voiced=torch.ones(16, dtype=torch.bool), energy=torch.zeros(16))
               for i in range(3)]
    batch = collate_batch(samples, frames_multiple=4)
    output = model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths, speaker_ids=batch.speaker_ids)
    guess, confusion_logits = output.speaker_logits
    assert torch.allclose(guess, confusion_logits)  # the same classifier, once on detached z, once frozen
    terms = TacotronLoss()(output, batch, None, 0)
    assert float(terms.speaker_adversary.detach()) == pytest.approx(
        float(torch.nn.functional.cross_entropy(guess.detach(), batch.speaker_ids)))
    classifier, encoder = model.speaker_adversary.classifier[0].weight, model.reference_encoder.head[0].weight
    # the classifier's loss trains the classifier and leaves the encoder alone ...
    grads = torch.autograd.grad(torch.nn.functional.cross_entropy(guess, batch.speaker_ids), [classifier, encoder],
                                retain_graph=True, allow_unused=True)
    assert grads[0].abs().sum() > 0 and grads[1] is None
    # ... the confusion loss moves the encoder and not the classifier, and is least for a uniform guess
    grads = torch.autograd.grad(confusion_loss(confusion_logits), [classifier, encoder], allow_unused=True)
    assert grads[0] is None and grads[1].abs().sum() > 0
    assert float(confusion_loss(torch.zeros(2, 3))) == pytest.approx(math.log(3))
    with pytest.raises(ConfigError, match="speaker_adversary needs n_speakers"):
        micro_config(0, speaker_adversary=True)
