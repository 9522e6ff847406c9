"""The one speed switch (speedups.py): plain PyTorch and the fast path compute the same function.

A small model runs a teacher-forced training step (dropout on, BatchNorm in training mode,
padding in the batch) and free-running synthesis on each path from the same RNG state; outputs,
running statistics and every parameter's gradient must agree."""

from __future__ import annotations

import threading

import pytest
import torch

from prosody_vae.plugin import speedups
from prosody_vae.model.decoder import StepWeights
from prosody_vae.model.cpu_kernels import _RecurrentMatmul
from test_tacotron import make_batch, micro_model


pytestmark = pytest.mark.usefixtures("one_thread")


def training_step(model, batch, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs and gradients of a weighted sum of every output, from RNG state `seed`."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths)
    outputs = {"mel_decoder": out.mel_decoder, "mel_postnet": out.mel_postnet, "stop_logits": out.stop_logits,
               "alignments": out.alignments, "z": out.posterior.z, "kl": out.posterior.kl}
    g = torch.Generator().manual_seed(99)
    loss = sum((value * torch.randn(value.shape, generator=g)).sum() for value in outputs.values())
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in outputs.items()}, grads


@pytest.mark.parametrize("attention_kind, posterior", [("location", "V"), ("forward", "V+T"), ("dca", "V+T")])
def test_plain_and_fast_paths_give_the_same_training_step(attention_kind, posterior):
    batch = make_batch([9, 5, 7], [18, 11, 14], r=2, n_symbols=40)
    batch.mel = batch.mel.double()  # float64: what remains between the paths is their algebra, not rounding
    results = {}
    for fast in (True, False):
        model = micro_model(attention_kind=attention_kind, posterior=posterior, reduction_factor=2).double()
        with speedups.fast_path(fast):
            outputs, grads = training_step(model.train(), batch, seed=5)
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        results[fast] = outputs, grads, buffers
    (fast_out, fast_grads, fast_buffers), (plain_out, plain_grads, plain_buffers) = results[True], results[False]
    for name in fast_out:
        torch.testing.assert_close(plain_out[name], fast_out[name], atol=1e-9, rtol=1e-7, msg=name)
    assert plain_grads.keys() == fast_grads.keys()
    # every parameter is reached, but the no-transcript vector, which only text dropout uses
    assert {name for name, _ in model.named_parameters()} - fast_grads.keys() <= {"reference_encoder.no_text"}
    for name in fast_grads:
        torch.testing.assert_close(plain_grads[name], fast_grads[name], atol=1e-9, rtol=1e-6, msg=name)
    for name in fast_buffers:
        torch.testing.assert_close(plain_buffers[name], fast_buffers[name], atol=1e-12, rtol=1e-9, msg=name)


def test_plain_and_fast_paths_give_the_same_synthesis():
    model = micro_model(attention_kind="location", posterior="V+T", reduction_factor=2).eval()
    batch = make_batch([9, 5, 7], [18, 11, 14], r=2, n_symbols=40)
    z = torch.randn(3, model.config.latent_dim, generator=torch.Generator().manual_seed(1))
    runs = {}
    for fast in (True, False):
        with speedups.fast_path(fast):
            generators = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
            runs[fast] = model.infer(batch.text, batch.text_lengths, z, max_decoder_steps=12, generator=generators)
    assert torch.equal(runs[True].stop_steps, runs[False].stop_steps)
    torch.testing.assert_close(runs[False].mel_postnet, runs[True].mel_postnet, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(runs[False].alignments, runs[True].alignments, atol=1e-6, rtol=1e-5)


def test_the_switch_chooses_the_decoder_weights_and_restores_itself():
    decoder = micro_model().decoder
    before = speedups.fast_path_enabled()
    with speedups.fast_path(False):
        assert not speedups.fast_path_enabled()
        assert not isinstance(decoder.step_weights(2).attention_recurrent, _RecurrentMatmul)
    with speedups.fast_path(True):
        assert isinstance(decoder.step_weights(2).attention_recurrent, _RecurrentMatmul)
    assert speedups.fast_path_enabled() == before
    assert isinstance(StepWeights.plain(decoder).projection, torch.nn.Linear)


def test_the_environment_variable_turns_the_fast_path_off(tmp_path):
    import subprocess
    import sys

    code = "from prosody_vae.plugin import speedups; print(speedups.fast_path_enabled())"
    for value, expected in (("0", "False"), ("off", "False"), ("1", "True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={"PROSODY_VAE_FAST_PATH": value, "PATH": ""}).stdout.strip()
        assert out == expected


def test_a_block_that_turns_the_switch_off_leaves_other_threads_alone():
    """An export's `with fast_path(False)` must not reach a serving thread that is decoding."""
    inside, checked = threading.Event(), threading.Event()
    seen_elsewhere = []

    def exporting_thread():
        with speedups.fast_path(False):
            assert not speedups.fast_path_enabled()
            inside.set()
            checked.wait(timeout=10)

    before = speedups.fast_path_enabled()
    exporter = threading.Thread(target=exporting_thread)
    exporter.start()
    assert inside.wait(timeout=10)
    seen_elsewhere.append(speedups.fast_path_enabled())
    checked.set()
    exporter.join()
    assert seen_elsewhere == [before]


def test_a_pass_keeps_the_switch_it_started_with_while_another_thread_turns_it():
    started, turned = threading.Event(), threading.Event()
    seen_in_the_pass = []

    @speedups.pinned
    def a_pass():
        seen_in_the_pass.append(speedups.fast_path_enabled())
        started.set()
        turned.wait(timeout=10)
        seen_in_the_pass.append(speedups.fast_path_enabled())  # what a later layer of the pass reads

    previous = speedups.set_fast_path(True)
    try:
        worker = threading.Thread(target=a_pass)
        worker.start()
        assert started.wait(timeout=10)
        speedups.set_fast_path(False)
        turned.set()
        worker.join()
        assert seen_in_the_pass == [True, True]
        assert not speedups.fast_path_enabled()  # the process default did change, for the next pass
    finally:
        speedups.set_fast_path(previous)
