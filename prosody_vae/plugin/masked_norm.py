"""BatchNorm over the valid positions of padded batches.

In a padded batch, BatchNorm's training statistics must count only the valid positions: padding
would shift them, and a batch would no longer equal its items. Two modules do that:

- `MaskedBatchNorm1d` over (B, C, L), zero at padding, with `normalise_tanh_dropout` for the
  postnet's BatchNorm -> tanh -> dropout;
- `MaskedBatchNorm2d` over (B, C, T, F), with `normalise_relu` for the reference encoder's
  BatchNorm -> ReLU, zero at padding, and `conv_batchnorm_relu` for a whole conv layer.

In eval mode both are plain BatchNorm, a per-position affine, so masking after it suffices.

Everything is first written with ordinary autograd ops. When `speedups.fast_path_enabled()`, the
methods run the fused forms at the end of this file instead (in training; the folded conv also in
eval), which compute the same function: tests/test_masked_norm.py checks outputs, gradients and
running statistics. Both paths hold the same parameters and buffers, so a checkpoint loads on either.

- `_NormTanhDropout`: the postnet runs conv -> BatchNorm -> tanh -> dropout five times over the
  largest activations of the model (B, 512, T). Autograd would keep the input and the tanh output
  (and, with padding, gathered copies of the valid rows); the fused function keeps the input and
  a bool keep-mask and recomputes tanh in the backward pass. At batch 16 and 400 frames that is
  12.5 MiB less per layer at the memory peak of a training step, the end of the forward pass.
- `_MaskedBatchNormReLU`: autograd through the masked statistics takes about 20 full passes over
  the activation per layer; the fused function takes 11 (forward 4, backward 7).
- `_folded_conv_batchnorm_relu`: a conv with one input channel (the reference encoder's first)
  has its BatchNorm folded in, the batch statistics taken from the input patches' moments: one
  pass over the largest activation of the reference encoder instead of about a dozen.

This file needs only torch, einops and speedups.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from .speedups import fast_path_enabled


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) lengths -> (B, size) bool, True on each item's first `lengths` positions."""
    return torch.arange(size, device=lengths.device) < lengths[:, None]


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """x in float32 if it is half precision (as under autocast), else unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@torch.no_grad()
def track_running_stats(norm: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor,
                        count: torch.Tensor) -> None:
    """Update norm's running statistics from batch statistics over `count` positions, as torch does."""
    norm.num_batches_tracked += 1
    momentum = norm.momentum if norm.momentum is not None else 1.0 / float(norm.num_batches_tracked)
    norm.running_mean.lerp_(mean, momentum)
    norm.running_var.lerp_(var * count / (count - 1).clamp(min=1), momentum)  # unbiased, as torch


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over (B, C, L) whose statistics count only valid positions; output is zero at padding."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # mask (B, L) bool
        if not self.training:  # per-position affine: masking after it suffices (and no data-dependent branch to export)
            return super().forward(x) * mask[:, None]
        if bool(mask.all()):  # no padding: plain BatchNorm
            return super().forward(x)
        channels_last = x.transpose(1, 2)  # (B, L, C)
        out = torch.zeros_like(channels_last)
        out[mask] = super().forward(channels_last[mask])  # statistics over the (N_valid, C) rows
        return out.transpose(1, 2)

    def normalise_tanh_dropout(self, x: torch.Tensor, mask: torch.Tensor, p: float, tanh: bool = True) -> torch.Tensor:
        """dropout(tanh(self(x, mask)), p), dropout in training mode only (`tanh=False`: no tanh),
        zero at padding. x (B, C, L) must be finite everywhere; mask (B, L) bool.

        Dropout keeps where `torch.rand(x.shape) >= p`, drawn once per call on either path, so with
        the same seed both paths give the same output."""
        keep = torch.rand(x.shape, device=x.device) >= p if self.training and p > 0 else None  # (B, C, L)
        keep_scale = 1.0 / (1.0 - p) if keep is not None else 1.0
        # autocast's half precision takes the plain path too: the fused statistics need float32
        if not (self.training and fast_path_enabled() and x.dtype in (torch.float32, torch.float64)):
            y = self(x, mask)
            y = torch.tanh(y) if tanh else y
            return y if keep is None else torch.where(keep, y * keep_scale, 0.0)
        keep = mask[:, None, :] if keep is None else keep & mask[:, None, :]
        valid = mask[:, None, :].to(x.dtype)  # (B, 1, L)
        y, mean, var = _NormTanhDropout.apply(x, valid, keep, self.weight, self.bias, self.eps, tanh, keep_scale)
        track_running_stats(self, mean, var, valid.sum())
        return y


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over (B, C, T, F) whose training statistics count only the valid frames."""

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:  # frame_mask (B, 1, T, 1) bool
        if not self.training:
            return super().forward(x)
        # statistics in float32 even under bf16 autocast: the running buffers are float32
        x_in, x = x, at_least_float32(x)
        weights = frame_mask.to(x.dtype)
        count = weights.sum() * x.shape[3]
        masked = x * weights
        mean = masked.sum(dim=(0, 2, 3)) / count  # (C,)
        # E[x^2] - E[x]^2 saves a full pass over x against centring first (the clamp absorbs rounding)
        var = ((masked * x).sum(dim=(0, 2, 3)) / count - mean.square()).clamp(min=0)  # (C,)
        track_running_stats(self, mean.detach(), var.detach(), count)
        scale = self.weight * torch.rsqrt(var + self.eps)  # (C,)
        shift = self.bias - mean * scale
        return torch.addcmul(shift[:, None, None], x, scale[:, None, None]).to(x_in.dtype)

    def normalise_relu(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """relu(self(x, frame_mask)), zero on padded frames; x (B, C, T, F) must be finite everywhere."""
        if not (self.training and fast_path_enabled()):
            return torch.where(frame_mask, F.relu(self(x, frame_mask)), 0.0)
        weights = frame_mask.to(torch.float32)
        y, mean, var = _MaskedBatchNormReLU.apply(x, weights, self.weight, self.bias, self.eps)
        track_running_stats(self, mean, var, weights.sum() * x.shape[3])
        return y


def conv_batchnorm_relu(conv: nn.Conv2d, norm: MaskedBatchNorm2d, x: torch.Tensor,
                        frame_mask: torch.Tensor) -> torch.Tensor:
    """relu(norm(conv(x))), zero on the output's padded frames. x (B, C_in, T, F) must be finite
    everywhere; frame_mask (B, 1, T', 1) bool marks the valid frames of conv's output."""
    foldable = conv.in_channels == 1 and conv.bias is None and conv.padding_mode == "zeros"
    if not (fast_path_enabled() and foldable):
        return norm.normalise_relu(conv(x), frame_mask)
    return _folded_conv_batchnorm_relu(conv, norm, x, frame_mask)


# ---------------------------------------------------------------------------------------------
# The fast path: the same functions as above, fused (see the module docstring for what each saves).
# ---------------------------------------------------------------------------------------------

def _masked_batchnorm_backward(grad: torch.Tensor, x: torch.Tensor, valid: torch.Tensor, gamma: torch.Tensor,
                               mean: torch.Tensor, rstd: torch.Tensor,
                               count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BatchNorm's backward with batch statistics over the valid positions: (grad_x, grad_gamma, grad_beta).

    x, grad (B, C, ...), grad already zero at padding; valid broadcasts against x, 1 on valid
    positions; gamma, mean, rstd (C,); count: valid positions per channel. With
    x_hat = (x - mean) * rstd and averages over the valid positions, a valid position's gradient is

        gamma * rstd * (grad - avg(grad) - x_hat * avg(grad * x_hat)) = a * grad + b * x + c,

    a, b, c per channel. Padding, which the statistics never saw, gets zero.
    """
    grad_flat, x_flat = grad.flatten(2), x.flatten(2)  # (B, C, N): one axis for all positions of an item
    grad_beta = grad_flat.sum(dim=(0, 2))  # (C,)
    # a dot product along the long position axis: no activation-sized temporary, and fast on CPU
    grad_gamma = (torch.linalg.vecdot(grad_flat, x_flat).sum(dim=0) - mean * grad_beta) * rstd
    a = gamma * rstd
    b = -a * rstd * grad_gamma / count
    c = -a * grad_beta / count - b * mean
    grad_x = torch.addcmul(c[:, None], x_flat, b[:, None]).addcmul_(grad_flat, a[:, None])  # (B, C, N)
    return grad_x.view(x.shape).mul_(valid), grad_gamma, grad_beta


class _NormTanhDropout(torch.autograd.Function):
    """y = where(keep, act(BatchNorm(x)) * keep_scale, 0), act = tanh or identity, with batch
    statistics over the positions where `valid` is 1. Returns (y, mean, var); the last two are per
    channel, for the running statistics."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor, gamma: torch.Tensor,
                beta: torch.Tensor, eps: float, tanh: bool, keep_scale: float):
        # x (B, C, L) finite; valid (B, 1, L) float, 1 on valid positions; keep (B, C, L) bool, False at padding
        count = valid.sum()
        masked = x * valid
        mean = masked.sum(dim=(0, 2)) / count  # (C,)
        # sum of squares by a norm reduction: no second activation-sized temporary
        squares = torch.linalg.vector_norm(masked, dim=2).square().sum(dim=0)
        del masked
        var = (squares / count - mean.square()).clamp(min=0)  # (C,)
        rstd = torch.rsqrt(var + eps)
        y = _affine_act(x, gamma * rstd, beta - mean * gamma * rstd, tanh)
        y = torch.where(keep, y.mul_(keep_scale), 0.0)
        ctx.save_for_backward(x, valid, keep, gamma, beta, mean, rstd, count)
        ctx.tanh, ctx.keep_scale = tanh, keep_scale
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _mean: None, _var: None):
        x, valid, keep, gamma, beta, mean, rstd, count = ctx.saved_tensors
        grad = torch.where(keep, grad * ctx.keep_scale, 0.0)  # through dropout; zero at padding
        if ctx.tanh:
            scale = gamma * rstd
            activation = _affine_act(x, scale, beta - mean * scale, tanh=True)  # recomputed, not kept
            grad = grad.mul_(activation.square_().neg_().add_(1.0))  # tanh' = 1 - tanh^2
            del activation
        grad_x, grad_gamma, grad_beta = _masked_batchnorm_backward(grad, x, valid, gamma, mean, rstd, count)
        return grad_x, None, None, grad_gamma, grad_beta, None, None, None


def _affine_act(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, tanh: bool) -> torch.Tensor:
    y = torch.addcmul(shift[:, None], x, scale[:, None])  # (B, C, L)
    return y.tanh_() if tanh else y


class _MaskedBatchNormReLU(torch.autograd.Function):
    """relu(BatchNorm(x)) zeroed at padding, with batch statistics over the valid frames only.
    Returns (y, mean, var), the last two per channel for the running statistics."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weights: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # x (B, C, T, F) finite everywhere; weights (B, 1, T, 1) float, 1 on valid frames
        x_in, x = x, at_least_float32(x)
        frame_weights = weights[:, :, :, 0]  # (B, 1, T)
        count = frame_weights.sum() * x.shape[3]
        # per-frame sums first (no activation-sized temporaries), then the valid frames' share
        mean = (x.sum(dim=3) * frame_weights).sum(dim=(0, 2)) / count  # (C,)
        squares = torch.linalg.vector_norm(x, dim=3).square()  # (B, C, T)
        var = ((squares * frame_weights).sum(dim=(0, 2)) / count - mean.square()).clamp(min=0)
        rstd = torch.rsqrt(var + eps)
        scale = gamma * rstd
        y = torch.addcmul((beta - mean * scale)[:, None, None], x, scale[:, None, None])
        y = y.relu_().mul_(weights).to(x_in.dtype)
        ctx.save_for_backward(x, y, weights, gamma, mean, rstd, count)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _mean: None, _var: None):
        x, y, weights, gamma, mean, rstd, count = ctx.saved_tensors
        grad = torch.where(y > 0, grad, 0.0).to(x.dtype)  # ReLU and padding (y is 0 there) in one pass
        grad_x, grad_gamma, grad_beta = _masked_batchnorm_backward(grad, x, weights, gamma, mean, rstd, count)
        return grad_x.to(y.dtype), None, grad_gamma, grad_beta, None


def _folded_conv_batchnorm_relu(conv: nn.Conv2d, norm: MaskedBatchNorm2d, x: torch.Tensor,
                                frame_mask: torch.Tensor) -> torch.Tensor:
    """`conv_batchnorm_relu` for a conv with one input channel and no bias, BatchNorm folded into it.

    Such a conv's output is w_c . p for the k x k input patch p under each output position, so its
    batch statistics over the valid positions follow from the patches' mean m and covariance S:
    mean_c = w_c . m, var_c = w_c S w_c. The patches are few (k * k values per output position),
    their moments cheap; autograd differentiates the folded weight and shift with respect to w,
    gamma and beta as it would the BatchNorm."""
    weight = conv.weight.flatten(1)  # (C, k * k)
    with torch.autocast(x.device.type, enabled=False):  # statistics in the weights' precision
        if norm.training:
            patches = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
                               stride=conv.stride)  # (B, k * k, T' * F')
            n_frames = frame_mask.shape[2]
            weights = repeat(frame_mask[:, 0, :, 0], "b t -> b 1 (t f)",
                             f=patches.shape[2] // n_frames).to(patches.dtype)
            count = weights.sum()
            patch_mean = (patches * weights).sum(dim=(0, 2)) / count  # (k * k,)
            centred = (patches - patch_mean[:, None]) * weights  # centred, so var has no cancellation
            patch_cov = torch.bmm(centred, centred.transpose(1, 2)).sum(dim=0) / count  # (k * k, k * k)
            mean = weight @ patch_mean  # (C,)
            var = ((weight @ patch_cov) * weight).sum(dim=1)  # (C,)
            track_running_stats(norm, mean.detach(), var.detach(), count)
        else:
            mean, var = norm.running_mean, norm.running_var
        scale = norm.weight * torch.rsqrt(var + norm.eps)  # (C,)
        shift = norm.bias - mean * scale
    folded = rearrange(weight * scale[:, None], "c (h w) -> c 1 h w", h=conv.kernel_size[0])
    y = F.conv2d(x, folded, shift, stride=conv.stride, padding=conv.padding, dilation=conv.dilation)  # (B, C, T', F')
    return F.relu(y) * frame_mask.to(y.dtype)
