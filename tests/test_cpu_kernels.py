"""The oneDNN-packed per-step matmul (prosody_vae/model/cpu_kernels.py) against the plain one.

The packed path is an optimisation only: with `torch.backends.mkldnn.flags(enabled=False)` the same
code runs plain matmuls, and every output and gradient must agree within float32 rounding.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prosody_vae.model.cpu_kernels import PackedMatmul, _RecurrentMatmul
from test_tacotron import make_batch, micro_model, run

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@needs_onednn
@pytest.mark.parametrize("rows, hint", [(16, 16), (1, 16), (5, 8)])  # the hint is a layout choice, any row count works
@pytest.mark.parametrize("with_bias", [False, True])
def test_packed_matmul_is_the_linear_layer(rows, hint, with_bias):
    torch.manual_seed(0)
    weight, bias, x = torch.randn(96, 40), torch.randn(96), torch.randn(rows, 40)
    matmul = PackedMatmul(weight, hint, bias if with_bias else None)
    assert matmul.packed is not None  # the fast path is really taken on this CPU
    torch.testing.assert_close(matmul(x), F.linear(x, weight, bias if with_bias else None), atol=1e-5, rtol=1e-5)
    # a transposed view (the backward pass packs weight.T) is copied in blocks of 256 columns: use 3
    wide, grad = torch.randn(600, 40), torch.randn(rows, 600)
    torch.testing.assert_close(PackedMatmul(wide.T, hint)(grad), grad @ wide, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_packing_falls_back_to_the_plain_matmul(dtype):
    weight, x = torch.randn(8, 6, dtype=dtype), torch.randn(3, 6, dtype=dtype)
    matmul = PackedMatmul(weight, 3)
    assert matmul.packed is None
    torch.testing.assert_close(matmul(x), x @ weight.T)
    with torch.backends.mkldnn.flags(enabled=False):
        assert PackedMatmul(weight.float(), 3).packed is None  # torch's own switch turns it off


@needs_onednn
def test_packed_recurrence_gradients_equal_autograd_on_a_plain_matmul():
    torch.manual_seed(0)
    weight = torch.randn(24, 24, requires_grad=True)
    x0 = torch.randn(4, 24, requires_grad=True)

    def recurrence(matmul_of):
        h, total = x0, 0.0
        for _ in range(9):
            h = torch.tanh(matmul_of(h) / 5)
            total = total + h.square().sum()
        return total

    packed = _RecurrentMatmul(weight, rows=4)
    assert packed.forward_matmul.packed is not None
    grads = torch.autograd.grad(recurrence(packed), (weight, x0))
    expected = torch.autograd.grad(recurrence(lambda h: h @ weight.T), (weight, x0))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@needs_onednn
@pytest.mark.filterwarnings("ignore:.*max_decoder_steps:RuntimeWarning", "ignore:TF32:UserWarning")
@pytest.mark.parametrize("kind", ["location", "dca"])
def test_model_outputs_and_gradients_do_not_depend_on_packing(kind):
    def outputs_and_grads(model):
        batch = make_batch([7, 5], [12, 9], 2, model.config.n_symbols, seed=3)
        out = run(model, batch, mode="mean")
        (out.mel_postnet.abs().mean() + out.stop_logits.square().mean()).backward()
        with torch.no_grad():
            frames = model.infer(batch.text, batch.text_lengths, max_decoder_steps=6).mel_postnet
        return ([out.mel_postnet, out.stop_logits, frames]
                + [p.grad for p in model.parameters() if p.grad is not None])

    packed = outputs_and_grads(micro_model(attention_kind=kind, reduction_factor=2).train())
    with torch.backends.mkldnn.flags(enabled=False):
        plain = outputs_and_grads(micro_model(attention_kind=kind, reduction_factor=2).train())
    assert len(packed) == len(plain) > 20
    for got, want in zip(packed, plain):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@needs_onednn
def test_a_copied_or_pickled_packed_matmul_packs_its_own_weight():
    import copy
    import pickle

    weight, x = torch.randn(16, 8), torch.randn(3, 8)
    matmul = PackedMatmul(weight, 3)
    for clone in (copy.deepcopy(matmul), pickle.loads(pickle.dumps(matmul))):
        assert clone.packed is not None and clone.packed is not matmul.packed
        torch.testing.assert_close(clone(x), matmul(x))


def test_attention_context_gradient_is_exact():
    """Memory's deferred gradient (one bmm after the loop) and the alignments' per-step ones, against
    autograd, through a loop where each alignment depends on the previous context."""
    from prosody_vae.model.cpu_kernels import AttentionContext

    def loop(memory, query):
        context_of = AttentionContext(memory)
        total, context = 0.0, torch.zeros(3, 4, dtype=torch.float64)
        for _ in range(5):
            alignment = torch.softmax(torch.einsum("bld,bd->bl", memory, query + context), dim=1)  # (B, L)
            context = context_of(alignment)  # (B, D)
            total = total + context.square().sum()
        return total

    memory = torch.randn(3, 6, 4, dtype=torch.float64, requires_grad=True)
    query = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(loop, (memory, query))


@pytest.mark.parametrize("kind", ["location", "dca"])
def test_every_parameter_gets_a_finite_float32_gradient_under_bf16_autocast(kind):
    """The custom functions of the decoder loop (taped matmuls and context, tanh energies, the
    postnet's fused norm) return gradients in their inputs' dtypes under autocast."""
    model = micro_model(attention_kind=kind, reduction_factor=2).train()
    batch = make_batch([7, 5], [12, 9], 2, model.config.n_symbols, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(model, batch)
        loss = out.mel_postnet.float().abs().mean() + out.stop_logits.float().square().mean() + out.posterior.kl.mean()
    loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith("speaker") or name.endswith("no_text"):
            continue  # unused by this batch: no speakers, and every item has a transcript
        assert parameter.grad is not None and parameter.grad.dtype == torch.float32, name
        assert torch.isfinite(parameter.grad).all(), name
