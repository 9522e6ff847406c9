"""keep_freed_memory (prosody_vae/training/cpu_memory.py): a training step stops page-faulting its activations.

Each measurement runs in a fresh interpreter, since malloc settings are process-wide and cannot be undone.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

import prosody_vae.training.trainer
from conftest import write_tiny_corpus
from prosody_vae.plugin.speedups import fast_path
from test_train import make_config

STEP_FAULTS = """
import resource, sys, torch
from prosody_vae.training.cpu_memory import keep_freed_memory
from prosody_vae.plugin.reference import VariationalReferenceEncoder
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
torch.manual_seed(0)
torch.set_num_threads(1)
encoder = VariationalReferenceEncoder(n_mels=80, latent_dim=16)
mel, lengths = torch.randn(8, 400, 80), torch.full((8,), 400)
def step():
    encoder(mel, lengths).kl.sum().backward()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def page_faults_per_step(mode: str) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", STEP_FAULTS, mode], check=True, capture_output=True, text=True)
    applied, faults = out.stdout.split()
    return applied == "True", float(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_activation_memory_is_reused_instead_of_faulted_in_again():
    applied, kept = page_faults_per_step("keep")
    _, default = page_faults_per_step("default")
    assert applied
    # a reference-encoder step at batch 8 frees and re-allocates ~30 MB of activations: ~12,000
    # page faults a step by default, 100-800 (the interpreter's own, thread stacks) when kept
    assert default > 1000 and kept < 0.2 * default


@pytest.mark.parametrize("fast", [True, False])
def test_the_trainer_tunes_malloc_on_the_cpu_only_on_the_fast_path(fast, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(prosody_vae.training.trainer, "keep_freed_memory", lambda: calls.append("tuned") or True)
    corpus = write_tiny_corpus(tmp_path / "corpus", n=8)
    config = make_config(str(tmp_path / "mels"), max_steps=1, device="cpu")
    with fast_path(fast):
        prosody_vae.training.trainer.train(config, corpus, tmp_path / "run")
    assert calls == (["tuned"] if fast else [])
