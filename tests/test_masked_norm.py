"""BatchNorm over valid positions (prosody_vae/plugin/masked_norm.py): the plain modules against torch's
BatchNorm, and the fast path's fused functions against the plain path."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from prosody_vae.plugin.masked_norm import MaskedBatchNorm1d, MaskedBatchNorm2d, conv_batchnorm_relu, length_mask
from prosody_vae.plugin.speedups import fast_path


def on_both_paths(run: Callable[[bool], list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """[run(False) on the plain path, run(True) on the fast path]."""
    results = []
    for fast in (False, True):
        with fast_path(fast):
            results.append(run(fast))
    return results


def assert_same_function(plain: list[torch.Tensor], fast: list[torch.Tensor]) -> None:
    """Float64 results equal up to rounding; the first gradient (second entry) is not all zeros."""
    assert plain[1].abs().sum() > 0  # the comparison is not between zeros
    for plain_value, fast_value in zip(plain, fast, strict=True):
        torch.testing.assert_close(fast_value, plain_value, rtol=1e-9, atol=1e-10)


def randomised(norm: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """norm with gamma and beta away from their initial 1 and 0, the same for every call with `seed`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0, generator=g)
        norm.bias.uniform_(-1.0, 1.0, generator=g)
    return norm


def test_length_mask():
    expected = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    assert torch.equal(length_mask(torch.tensor([2, 3, 0]), 3), expected)


@pytest.mark.parametrize("lengths", [[9, 9, 9], [9, 4, 1]])  # without padding and with it
@pytest.mark.parametrize("p, tanh", [(0.5, True), (0.0, True), (0.5, False)])
@pytest.mark.parametrize("training", [True, False])
def test_normalise_tanh_dropout_is_the_same_function_on_both_paths(lengths, p, tanh, training):
    """Outputs, gradients of the input, weight and bias, and the running statistics, with the same
    seed for the dropout draw; zero at padding."""
    g = torch.Generator().manual_seed(0)
    x = 2.0 + 3.0 * torch.randn(3, 5, 9, generator=g, dtype=torch.float64)
    mask = length_mask(torch.tensor(lengths), 9)  # (B, L)
    grad_out = torch.randn(3, 5, 9, generator=g, dtype=torch.float64)

    def run(fast: bool) -> list[torch.Tensor]:
        norm = randomised(MaskedBatchNorm1d(5).double()).train(training)
        x_in = x.clone().requires_grad_()
        torch.manual_seed(3)
        y = norm.normalise_tanh_dropout(x_in, mask, p, tanh)
        assert ("NormTanhDropout" in type(y.grad_fn).__name__) == (fast and training)  # the path really taken
        (y * grad_out).sum().backward()
        return [y, x_in.grad, norm.weight.grad, norm.bias.grad, norm.running_mean, norm.running_var]

    plain, fast = on_both_paths(run)
    assert_same_function(plain, fast)
    assert (fast[0].transpose(1, 2)[~mask] == 0).all()
    if training:
        assert not torch.equal(fast[4], torch.zeros(5))  # the running statistics did update
    if training and p > 0:
        assert (fast[0] == 0).float().mean() > 0.3  # dropout is really applied


def test_masked_batchnorm1d_uses_the_valid_positions_only():
    """Training output and running statistics == torch's BatchNorm over the valid positions alone."""
    x = 1.0 + 2.0 * torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = length_mask(torch.tensor([8, 5, 2]), 8)
    masked, reference = randomised(MaskedBatchNorm1d(4).double()), randomised(torch.nn.BatchNorm1d(4).double())
    y = masked(x, mask)  # (B, C, L)
    valid_rows = x.transpose(1, 2)[mask]  # (N_valid, C)
    torch.testing.assert_close(y.transpose(1, 2)[mask], reference(valid_rows))
    assert (y.transpose(1, 2)[~mask] == 0).all()
    torch.testing.assert_close(masked.running_mean, reference.running_mean)
    torch.testing.assert_close(masked.running_var, reference.running_var)


def test_half_precision_input_takes_the_plain_path_under_autocast():
    norm = MaskedBatchNorm1d(4).train()
    x = torch.randn(2, 4, 6, dtype=torch.bfloat16, requires_grad=True)
    y = norm.normalise_tanh_dropout(x, torch.ones(2, 6, dtype=torch.bool), 0.5)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all() and norm.num_batches_tracked == 1


def test_masked_batchnorm2d_without_padding_equals_torch_batchnorm():
    x = 3.0 + 2.0 * torch.randn(4, 5, 7, 3)
    masked, reference = MaskedBatchNorm2d(5), torch.nn.BatchNorm2d(5)
    for _ in range(2):
        torch.testing.assert_close(masked(x, torch.ones(4, 1, 7, 1, dtype=torch.bool)), reference(x))
    torch.testing.assert_close(masked.running_mean, reference.running_mean)
    torch.testing.assert_close(masked.running_var, reference.running_var)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("training", [True, False])
def test_normalise_relu_is_the_same_function_on_both_paths(memory_format, training):
    """Outputs, gradients of input, weight and bias, and the running statistics, with padding."""
    g = torch.Generator().manual_seed(0)
    x = (3.0 + 2.0 * torch.randn(4, 5, 9, 3, generator=g, dtype=torch.float64)).contiguous(memory_format=memory_format)
    frame_mask = length_mask(torch.tensor([9, 4, 1, 7]), 9)[:, None, :, None]  # (B, 1, T, 1)
    grad_out = torch.randn(4, 5, 9, 3, generator=g, dtype=torch.float64)

    def run(fast: bool) -> list[torch.Tensor]:
        norm = randomised(MaskedBatchNorm2d(5).double()).train(training)
        x_in = x.detach().clone().requires_grad_()
        y = norm.normalise_relu(x_in, frame_mask)
        assert ("MaskedBatchNormReLU" in type(y.grad_fn).__name__) == (fast and training)
        (y * grad_out).sum().backward()
        return [y, x_in.grad, norm.weight.grad, norm.bias.grad, norm.running_mean, norm.running_var]

    plain, fast = on_both_paths(run)
    assert_same_function(plain, fast)
    assert (fast[0][~frame_mask.expand_as(x)] == 0).all()


@pytest.mark.parametrize("training", [True, False])
def test_conv_batchnorm_relu_is_the_same_function_on_both_paths(training):
    """The fast path folds a one-channel conv's BatchNorm into the conv (statistics from patch
    moments); the plain path runs conv, masked BatchNorm, ReLU, zeroing. Outputs, gradients of the
    input, conv weight, gamma and beta, and the running statistics, with padding in the batch."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([11, 6, 1, 9])
    x = 3.0 + 2.0 * torch.randn(4, 1, 11, 7, generator=g, dtype=torch.float64)
    x = torch.where(length_mask(lengths, 11)[:, None, :, None], x, 0.0)
    frame_mask = length_mask((lengths - 1) // 2 + 1, 6)[:, None, :, None]  # the conv output's valid frames
    grad_out = torch.randn(4, 5, 6, 4, generator=g, dtype=torch.float64)

    def run(fast: bool) -> list[torch.Tensor]:
        torch.manual_seed(1)
        conv = torch.nn.Conv2d(1, 5, 3, stride=2, padding=1, bias=False).double()
        norm = randomised(MaskedBatchNorm2d(5).double()).train(training)
        with torch.no_grad():
            norm.running_mean.fill_(0.3)
        conv_calls = []
        conv.register_forward_hook(lambda *_: conv_calls.append(1))
        x_in = x.clone().requires_grad_()
        y = conv_batchnorm_relu(conv, norm, x_in, frame_mask)
        assert bool(conv_calls) != fast  # the fast path never calls the conv module: it is folded
        (y * grad_out).sum().backward()
        return [y, x_in.grad, conv.weight.grad, norm.weight.grad, norm.bias.grad, norm.running_mean, norm.running_var]

    plain, fast = on_both_paths(run)
    assert_same_function(plain, fast)
    assert (fast[0][1, :, 3:] == 0).all()
