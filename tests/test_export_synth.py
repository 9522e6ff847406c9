"""torch.export of the whole synthesiser (inference/export_program.py): each program and the host loop against eager mode."""

from __future__ import annotations

import pytest
import torch

from prosody_vae.plugin.errors import CheckpointError, ReferenceInputError, TextError
from prosody_vae.inference.export_program import STATE_NAMES, ExportedSynthesizer, prenet_noise
from prosody_vae.model.decoder import DecoderPass, DecoderState
from prosody_vae.plugin.masked_norm import length_mask
from test_tacotron import micro_model

ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """As in test_tacotron: micro models gain nothing from intra-op threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["location", "dca"])
def pair(request):
    """A model with prenet dropout at inference (the Tacotron 2 default) and its export. Its stop
    logit is 10 * z[:, 0] (the projection's stop row reads only the z channel of the context, which
    equals z since alignments sum to 1): an item stops at its first step when z[:, 0] > 0, never
    when z[:, 0] < 0, whatever the weights, so stop steps are far from rounding."""
    model = micro_model(reduction_factor=2, attention_kind=request.param, stop_gate_tokens=0).eval()
    with torch.no_grad():
        stop_row = model.decoder.projection.weight[-1]
        stop_row.zero_()
        stop_row[model.config.decoder_rnn_dim + model.config.encoder_lstm_dim] = 10.0
        model.decoder.projection.bias[-1] = 0.0
    return model, ExportedSynthesizer.from_model(model)


@pytest.fixture(scope="module")
def deterministic_speaker_pair():
    model = micro_model(reduction_factor=2, prenet_dropout_at_inference=False, n_speakers=3, speaker_dim=5).eval()
    return model, ExportedSynthesizer.from_model(model)


def text_batch(model, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ids (padding included: it must not matter), lengths, z; never the export example's (2, 7)."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, model.config.n_symbols, (len(lengths), max(lengths)), generator=g)
    return text, torch.tensor(lengths), torch.randn(len(lengths), model.config.latent_dim, generator=g)


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def test_text_program_equals_eager_memory(pair):
    model, synth = pair
    text, lengths, z = text_batch(model, [13, 4, 9])
    memory, mask, *_ = synth.text_program(text, lengths, z, ())
    with torch.no_grad():
        expected = model._memory(model.embedding(text), lengths, length_mask(lengths, 13), z, None)
    assert torch.equal(mask, length_mask(lengths, 13))
    torch.testing.assert_close(memory, expected, atol=ATOL, rtol=0)


def test_exported_step_equals_eager_step_on_random_state(pair):
    model, synth = pair
    text, lengths, z = text_batch(model, [10, 6], seed=1)
    utterance = synth.text_program(text, lengths, z, ())
    g = torch.Generator().manual_seed(2)
    n_tokens, memory_dim = utterance[0].shape[1:]
    initial = DecoderState.initial(model.config, 2, n_tokens, memory_dim)
    state = [torch.randn(value.shape, generator=g) for value in initial]
    state[5] = state[5].softmax(dim=1) * utterance[1]  # alignment: a distribution over valid tokens
    state[6] = state[6].abs()  # cumulative alignment
    frame = torch.randn(2, model.config.n_mels, generator=g)
    with torch.no_grad():
        decoding = DecoderPass(model.decoder, utterance[0], utterance[1], model.decoder.step_weights(2),
                               state=DecoderState(*state))
        expected_out = decoding.infer_step(frame, torch.Generator().manual_seed(3))
    noise = prenet_noise(synth.config, 2, torch.Generator().manual_seed(3))
    assert len(noise) == len(model.config.prenet_dims)
    out, new_state = synth.step(frame, tuple(state), utterance, noise)
    torch.testing.assert_close(out, expected_out, atol=ATOL, rtol=0)
    for name, value, expected in zip(STATE_NAMES, new_state, decoding.state):
        torch.testing.assert_close(value, expected, atol=ATOL, rtol=0, msg=name)


def test_exported_infer_equals_eager_infer_with_the_same_generators(pair):
    model, synth = pair
    text, lengths, z = text_batch(model, [5, 11], seed=4)
    z[:, 0] = torch.tensor([1.0, -1.0])  # item 0 stops at once, item 1 runs to max_decoder_steps
    with pytest.warns(RuntimeWarning, match="max_decoder_steps"):
        expected = model.infer(text, lengths, z, max_decoder_steps=12, generator=generators([5, 6]))
    with pytest.warns(RuntimeWarning, match="max_decoder_steps"):
        got = synth.infer(text, lengths, z, max_decoder_steps=12, generator=generators([5, 6]))
    assert expected.stop_steps.tolist() == [1, 12]
    for field in ("stop_steps", "mel_lengths", "hit_max_steps"):
        assert torch.equal(getattr(got, field), getattr(expected, field)), field
    torch.testing.assert_close(got.mel_postnet, expected.mel_postnet, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.alignments, expected.alignments, atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore:.*max_decoder_steps")
def test_prenet_noise_follows_the_generator(pair):
    """The exported path is stochastic exactly where eager is: other seeds, other mel."""
    model, synth = pair
    text, lengths, z = text_batch(model, [7], seed=7)
    z[:, 0] = -1.0  # no stop: four steps of noise
    runs = [synth.infer(text, lengths, z, max_decoder_steps=4, generator=torch.Generator().manual_seed(seed))
            for seed in (0, 0, 1)]
    assert torch.equal(runs[0].mel_postnet, runs[1].mel_postnet)
    assert not torch.allclose(runs[0].mel_postnet, runs[2].mel_postnet)


@pytest.mark.filterwarnings("ignore:.*max_decoder_steps")
def test_save_load_round_trip_and_speakers(deterministic_speaker_pair, tmp_path):
    model, synth = deterministic_speaker_pair
    loaded = ExportedSynthesizer.load(synth.save(tmp_path / "synth"))
    assert loaded.config == model.config
    text, lengths, z = text_batch(model, [3, 15, 8], seed=8)  # batch 3, a length never exported
    speakers = torch.tensor([2, 0, 1])
    expected = model.infer(text, lengths, z, speaker_ids=speakers, max_decoder_steps=6)
    for exported in (synth, loaded):
        got = exported.infer(text, lengths, z, speaker_ids=speakers, max_decoder_steps=6)
        assert torch.equal(got.stop_steps, expected.stop_steps)
        torch.testing.assert_close(got.mel_postnet, expected.mel_postnet, atol=1e-4, rtol=0)


def test_load_rejects_a_directory_without_the_programs(deterministic_speaker_pair, tmp_path):
    _, synth = deterministic_speaker_pair
    directory = synth.save(tmp_path / "synth")
    (directory / "step.pt2").unlink()
    with pytest.raises(CheckpointError, match="step.pt2"):
        ExportedSynthesizer.load(directory)


def test_infer_rejects_bad_inputs_with_the_models_errors(deterministic_speaker_pair):
    model, synth = deterministic_speaker_pair
    text, lengths, z = text_batch(model, [4, 6])
    speakers = torch.tensor([0, 1])
    with pytest.raises(TextError, match="n_symbols"):
        synth.infer(text.masked_fill(text == text[0, 0], model.config.n_symbols), lengths, z, speaker_ids=speakers)
    with pytest.raises(ReferenceInputError, match="z must be"):
        synth.infer(text, lengths, z[:1], speaker_ids=speakers)
    with pytest.raises(TextError, match="text_lengths"):
        synth.infer(text, torch.tensor([4, 7]), z, speaker_ids=speakers)
