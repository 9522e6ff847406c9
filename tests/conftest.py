"""Shared fixtures: a few-second LJSpeech-format corpus made of synthetic voiced signals, and the
session's trained models (tests/trained_models.py: one training, shared by every test that needs one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from trained_models import calibrate_copy, make_transfer_corpus, train_demo_models

SR = 22050


def write_tiny_corpus(root: Path, n: int = 6, seed: int = 0, sample_rate: int = SR) -> Path:
    """n utterances of 0.3-0.9 s harmonic 'speech' with varied pitch; returns the corpus root."""
    rng = np.random.default_rng(seed)
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    lines = []
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "again"]
    for i in range(n):
        seconds = rng.uniform(0.3, 0.9)
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        f0 = rng.uniform(90, 260)
        phase = 2 * np.pi * f0 * t
        wav = sum(0.2 / k * np.sin(k * phase) for k in range(1, 12)) * np.hanning(len(t))
        utt_id = f"utt{i:03d}"
        sf.write(root / "wavs" / f"{utt_id}.wav", wav.astype(np.float32), sample_rate, subtype="PCM_16")
        text = " ".join(rng.choice(words, size=rng.integers(3, 8)))
        lines.append(f"{utt_id}|{text.capitalize()}.|{text}.")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    return write_tiny_corpus(tmp_path / "corpus")


@pytest.fixture
def one_thread():
    """Micro models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP
    threads waiting on each other can make a step many times slower. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def transfer_corpus(tmp_path_factory) -> Path:
    """240 utterances of one espeak-ng voice, rate and pitch varied (trained_models.py)."""
    return make_transfer_corpus(tmp_path_factory.mktemp("transfer") / "corpus")


@pytest.fixture(scope="session")
def demo_checkpoints(transfer_corpus) -> dict[str, Path]:
    """{"demo": the demo recipe trained briefly on transfer_corpus, "collapsed": its C = 0 control}."""
    return train_demo_models(transfer_corpus)


@pytest.fixture(scope="session")
def calibrated_demo_checkpoint(demo_checkpoints, transfer_corpus, tmp_path_factory) -> Path:
    """A copy of the session's demo model with its knobs calibrated on its training corpus."""
    return calibrate_copy(demo_checkpoints["demo"], transfer_corpus,
                          tmp_path_factory.mktemp("calibrated") / "demo.pt")
