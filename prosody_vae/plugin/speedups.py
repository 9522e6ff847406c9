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
    with prosody_vae.plugin.speedups.fast_path(False): ...      # for a block of code
    prosody_vae.plugin.speedups.set_fast_path(False)            # from here on

The switch is read when a forward pass starts, so it decides whole passes, never half of one.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

_ENV = "PROSODY_VAE_FAST_PATH"
_enabled = os.environ.get(_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def fast_path_enabled() -> bool:
    """Whether the package's speed-ups are in use (see the module docstring)."""
    return _enabled


def set_fast_path(enabled: bool) -> bool:
    """Turn the speed-ups on or off for the whole process; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


@contextlib.contextmanager
def fast_path(enabled: bool) -> Iterator[None]:
    """`with fast_path(False):` runs the block on plain PyTorch, then restores the setting."""
    previous = set_fast_path(enabled)
    try:
        yield
    finally:
        set_fast_path(previous)
