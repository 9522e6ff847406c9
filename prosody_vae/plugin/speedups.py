"""One switch for the CPU speed-ups: plain PyTorch, or the same functions made faster.

Every model in the package is written first in plain PyTorch (standard modules, `F.linear`,
autograd), and that is the code a reader meets first. Some of it also has a faster form, kept
because it earns its place in `benchmarks/` on 2-core CPUs:

- the decoder's per-step matmuls on oneDNN-packed weights, with their weight gradients formed
  once per pass instead of once per step (cpu_kernels.py);
- attention energies as sliding-window matmuls whose tanh is recomputed in the backward pass;
- the postnet's BatchNorm + tanh + dropout, and the reference encoder's BatchNorm + ReLU, as
  single autograd functions that keep less memory (masked_norm.py);
- the "V+T" text summary read through the embedding table (layers.py `summarise_text`);
- glibc malloc settings that keep freed activation memory (cpu_memory.py).

Both forms compute the same function: tests/test_speedups.py checks the outputs, gradients and
running statistics of a small model on both paths, and tests/test_masked_norm.py and
tests/test_reference.py check each fused function against its plain form. The fast path is on by default; turn it off to debug, to read a
profile against the plain code, or on a platform where a private oneDNN op misbehaves:

    PROSODY_VAE_FAST_PATH=0 prosody-vae train ...        # for a whole process
    prosody_vae.plugin.speedups.set_fast_path(False)     # from here on, for the whole process
    with prosody_vae.plugin.speedups.fast_path(False):   # for a block of code, in this thread only

A pass reads the switch once, when it starts (`pinned`, at the entry of each forward, inference
and encoding pass), and every layer it runs sees that value: so a pass is decided whole, never half
of one, even while another thread turns the switch. `fast_path` is a context variable, so a block
that turns it off (an export, say) never changes a serving thread's decoding.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from typing import Callable, Iterator, Optional, TypeVar

import torch

_ENV = "PROSODY_VAE_FAST_PATH"
_process_default = os.environ.get(_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
# set inside `fast_path` and `pinned` blocks; each thread (and asyncio task) has its own value
_in_this_context: contextvars.ContextVar[Optional[bool]] = contextvars.ContextVar("prosody_vae_fast_path",
                                                                                    default=None)
F = TypeVar("F", bound=Callable)


def fast_path_enabled() -> bool:
    """Whether the package's speed-ups are in use here (see the module docstring)."""
    if torch.compiler.is_compiling():  # a traced program (torch.export, torch.compile) is plain PyTorch
        return False
    value = _in_this_context.get()
    return _process_default if value is None else value


def set_fast_path(enabled: bool) -> bool:
    """Turn the speed-ups on or off for the whole process (outside `fast_path` blocks); returns the
    previous setting."""
    global _process_default
    previous, _process_default = _process_default, bool(enabled)
    return previous


@contextlib.contextmanager
def fast_path(enabled: bool) -> Iterator[None]:
    """`with fast_path(False):` runs the block on plain PyTorch, in this thread only."""
    token = _in_this_context.set(bool(enabled))
    try:
        yield
    finally:
        _in_this_context.reset(token)


def pinned(function: F) -> F:
    """Decorates a pass's entry point: the switch is read once as the pass starts and held for it."""

    @functools.wraps(function)
    def pass_with_pinned_switch(*args, **kwargs):
        with fast_path(fast_path_enabled()):
            return function(*args, **kwargs)
    return pass_with_pinned_switch  # type: ignore[return-value]
