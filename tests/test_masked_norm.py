"""The fused BatchNorm + tanh + dropout of the postnet (prosody_vae/masked_norm.py) against the plain modules."""

from __future__ import annotations

import pytest
import torch

from prosody_vae.masked_norm import MaskedBatchNorm1d
from prosody_vae.tacotron import dropout


def plain_path(norm: MaskedBatchNorm1d, x: torch.Tensor, mask: torch.Tensor, p: float, tanh: bool) -> torch.Tensor:
    """The three modules the postnet ran before: MaskedBatchNorm1d, tanh and tacotron.dropout."""
    y = norm(x, mask)
    return dropout(torch.tanh(y) if tanh else y, p, norm.training)


@pytest.mark.parametrize("lengths", [[9, 9, 9], [9, 4, 1]])  # without padding and with it
@pytest.mark.parametrize("p, tanh", [(0.5, True), (0.0, True), (0.5, False)])
@pytest.mark.parametrize("training", [True, False])
def test_fused_equals_batchnorm_tanh_dropout(lengths, p, tanh, training):
    """Outputs, gradients of the input, weight and bias, and the running statistics, with the same
    dropout noise; zero at padding."""
    g = torch.Generator().manual_seed(0)
    x = 2.0 + 3.0 * torch.randn(3, 5, 9, generator=g, dtype=torch.float64)
    mask = torch.arange(9) < torch.tensor(lengths)[:, None]  # (B, L)
    grad_out = torch.randn(3, 5, 9, generator=g, dtype=torch.float64)
    results = []
    for fused in (False, True):
        norm = MaskedBatchNorm1d(5).double().train(training)
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(1))
            norm.bias.uniform_(-1.0, 1.0, generator=torch.Generator().manual_seed(2))
        x_in = x.clone().requires_grad_()
        torch.manual_seed(3)  # the same dropout draw on both paths
        y = norm.normalise_tanh_dropout(x_in, mask, p, tanh) if fused else plain_path(norm, x_in, mask, p, tanh)
        (y * grad_out).sum().backward()
        results.append([y, x_in.grad, norm.weight.grad, norm.bias.grad, norm.running_mean, norm.running_var])
    assert (results[1][0].transpose(1, 2)[~mask] == 0).all()
    assert results[0][1].abs().sum() > 0  # not a comparison between zeros
    if training and p > 0:
        assert (results[1][0] == 0).float().mean() > 0.3  # dropout is really applied
    for plain_value, fused_value in zip(*results):
        torch.testing.assert_close(fused_value, plain_value, rtol=1e-9, atol=1e-10)


def test_half_precision_input_takes_the_plain_path_under_autocast():
    norm = MaskedBatchNorm1d(4).train()
    x = torch.randn(2, 4, 6, dtype=torch.bfloat16, requires_grad=True)
    y = norm.normalise_tanh_dropout(x, torch.ones(2, 6, dtype=torch.bool), 0.5)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all() and norm.num_batches_tracked == 1
