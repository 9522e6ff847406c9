"""The examples run as documented: a host model trains through the plugin alone."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from conftest import write_tiny_corpus

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plugin_minimal_trains_a_host_through_the_plugin(tmp_path):
    example = load_example("plugin_minimal")
    corpus = write_tiny_corpus(tmp_path / "corpus", n=6)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        history = example.train(corpus, steps=40, capacity=5.0, batch_size=3, log_every=0)
    finally:
        torch.set_num_threads(threads)
    assert len(history) == 40
    first, last = history[0], history[-1]
    assert last["l1"] < 0.6 * first["l1"], "the host learns with z attached"
    assert all(h["kl"] >= 0 and h["beta"] >= 0 for h in history)
    assert len({h["beta"] for h in history}) > 1, "the controller's beta moves"


@pytest.mark.slow
def test_fastspeech_host_holds_the_kl_at_capacity_through_the_plugin(tmp_path):
    example = load_example("fastspeech_host")
    corpus = write_tiny_corpus(tmp_path / "corpus", n=8)
    capacity = 2.0  # below the KL the host would use unconstrained (about 4 nats here), so beta must act
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        history = example.train(corpus, steps=300, capacity=capacity, batch_size=4, log_every=0)
    finally:
        torch.set_num_threads(threads)
    tail = history[-50:]
    mean_kl = sum(h["kl"] for h in tail) / len(tail)
    assert abs(mean_kl - capacity) < 0.25 * capacity, f"mean KL {mean_kl:.2f} nats over the last 50 steps, C = {capacity}"
    assert max(h["beta"] for h in history[-100:]) > 0, "the constraint binds: beta is active"
    assert sum(h["l1"] for h in tail) / len(tail) < 0.2 * history[0]["l1"], "the host learns"
    assert all(h["duration"] >= 0 for h in history)


def test_fastspeech_host_regulates_length_and_synthesizes_from_predicted_durations():
    example = load_example("fastspeech_host")
    durations = example.uniform_durations(torch.tensor([3, 2]), torch.tensor([7, 5]), n_symbols=3)
    assert durations.tolist() == [[3, 2, 2], [3, 2, 0]]  # even shares, remainder first, padding 0
    memory = torch.arange(6.0).reshape(2, 3, 1)  # (B, L, 1): symbol i of item b holds 3b + i
    frames, lengths = example.regulate_length(memory, durations)
    assert lengths.tolist() == [7, 5]
    assert frames[..., 0].tolist() == [[0, 0, 0, 1, 1, 2, 2], [3, 3, 3, 4, 4, 0, 0]]

    torch.manual_seed(0)
    host = example.FastSpeechHost(n_symbols=10, latent_dim=4, n_mels=6, dim=16).eval()
    text, text_lengths = torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2])
    mel, mel_lengths = host.synthesize(text, text_lengths, torch.zeros(2, 4))
    assert mel.shape == (2, int(mel_lengths.max()), 6) and (mel_lengths >= text_lengths).all()
