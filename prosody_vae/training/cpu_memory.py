"""Keep freed activation memory in the process: glibc malloc settings for CPU training.

A training step frees and re-allocates the same few hundred large activation buffers every step.
glibc serves each block above its mmap threshold (dynamic, at most 32 MiB) with a fresh mmap and
returns it to the kernel on free, and trims the heap top whenever 128 KiB+ is free there. So every
step pays again for page faults and zero-filling of memory it had a moment ago: at the
benchmarks' size (tacotron2, batch 16) a fifth of the reference encoder's time and a tenth of the
training step's, on a 2-core Zen 4. `keep_freed_memory` raises the mmap threshold to its maximum
and stops the trimming, so freed blocks are reused. Peak RSS is unchanged (it is the step's
peak either way); the process simply does not shrink between steps.

This is what PyTorch's CPU performance guide gets by preloading jemalloc or tcmalloc, done
in-process so it needs no LD_PRELOAD. The trainer calls it when it trains on the CPU with the
speed-ups on (speedups.py).
"""

from __future__ import annotations

import ctypes
import platform

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's cap on 64-bit (HEAP_MAX_SIZE / 2); larger values are refused
_applied = False


def keep_freed_memory() -> bool:
    """Set glibc's mmap threshold to its maximum and turn off heap trimming, once per process.
    Returns whether the settings are in effect (False off glibc, e.g. macOS, Windows or musl)."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the trim threshold is an int: its largest value means "never trim"
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied
