"""BatchNorm over the valid positions of padded sequences, and its fusion with tanh and dropout.

`MaskedBatchNorm1d` normalises (B, C, L) with statistics over valid positions only, so padding
never shifts them. In training the postnet runs conv -> BatchNorm -> tanh -> dropout five times
over the largest activations of the model (B, 512, T); `normalise_tanh_dropout` does the last
three as one autograd function that keeps only its input and a bool keep-mask for the backward
pass and recomputes tanh there. Autograd would keep the input and the tanh output (and, with
padding, gathered copies of the valid rows): at the issue-6 benchmark size this saves 12.5 MiB per
layer at the memory peak of a training step, the end of the forward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from .reference import track_running_stats


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) lengths -> (B, size) bool, True on each item's first `lengths` positions."""
    return torch.arange(size, device=lengths.device) < lengths[:, None]


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
        scale = gamma * rstd
        grad = torch.where(keep, grad * ctx.keep_scale, 0.0)  # through dropout; zero at padding
        if ctx.tanh:
            activation = _affine_act(x, scale, beta - mean * scale, tanh=True)  # recomputed, not kept
            grad = grad.mul_(activation.square_().neg_().add_(1.0))  # tanh' = 1 - tanh^2
            del activation
        grad_beta = grad.sum(dim=(0, 2))  # (C,)
        grad_gamma = (torch.linalg.vecdot(grad, x, dim=2).sum(dim=0) - mean * grad_beta) * rstd
        # BatchNorm's backward with valid-only statistics: dx = a * g + b * x + c on valid positions
        b = -scale * rstd * grad_gamma / count
        c = -scale * grad_beta / count - b * mean
        grad_x = torch.addcmul(c[:, None], x, b[:, None]).addcmul_(grad, scale[:, None]).mul_(valid)
        return grad_x, None, None, grad_gamma, grad_beta, None, None, None


def _affine_act(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, tanh: bool) -> torch.Tensor:
    y = torch.addcmul(shift[:, None], x, scale[:, None])  # (B, C, L)
    return y.tanh_() if tanh else y


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
        """dropout(tanh(self(x, mask)), p) in training mode (`tanh=False`: no tanh), zero at padding.
        x (B, C, L) must be finite everywhere; mask (B, L) bool. The same function as those three
        modules, with a third less memory kept for the backward pass (see the module docstring)."""
        if not self.training or x.dtype not in (torch.float32, torch.float64):
            # eval, or autocast's half precision (statistics need float32): the three plain modules
            y = self(x, mask)
            y = torch.tanh(y) if tanh else y
            if not self.training or p == 0.0:
                return y
            return torch.where(torch.rand(x.shape, device=x.device) >= p, y * (1.0 / (1.0 - p)), 0.0)
        # the keep-mask draw is tacotron.dropout's: uniform noise against p, here also False at padding
        keep = mask[:, None, :] if p == 0.0 else (torch.rand(x.shape, device=x.device) >= p) & mask[:, None, :]
        valid = mask[:, None, :].to(x.dtype)
        y, mean, var = _NormTanhDropout.apply(x, valid, keep, self.weight, self.bias, self.eps, tanh, 1.0 / (1.0 - p))
        track_running_stats(self, mean, var, valid.sum())
        return y
