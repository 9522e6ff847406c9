"""The examples run as documented: a host model trains through the plugin alone."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
