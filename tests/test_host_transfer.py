"""benchmarks/host_transfer.py's measure of how fast an output read its text: the time its
attention first rests on the last character, which a late or early stop does not move."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from host_transfer import reads_slower, text_seconds  # noqa: E402


def walking_attention(steps_per_char: int, n_chars: int, tail_steps: int) -> torch.Tensor:
    """(T_dec, T_in): one-hot on each character for steps_per_char steps, then tail_steps on the last."""
    positions = torch.arange(n_chars).repeat_interleave(steps_per_char)
    positions = torch.cat([positions, torch.full((tail_steps,), n_chars - 1)])
    return torch.nn.functional.one_hot(positions, n_chars).float()


@pytest.mark.parametrize("tail_steps", [0, 5, 200])
def test_text_seconds_is_when_the_last_character_is_reached_however_long_the_tail(tail_steps):
    attention = walking_attention(steps_per_char=3, n_chars=10, tail_steps=tail_steps)
    assert text_seconds(attention, step_seconds=0.05) == pytest.approx(28 * 0.05)  # steps 0..27, then the last


def test_an_output_that_never_reaches_the_last_character_has_no_text_seconds():
    assert text_seconds(walking_attention(3, 10, 0)[:, :-1].contiguous(), 0.05) is not None  # 9 chars: reached
    stopped_early = walking_attention(3, 10, 0)[:20]  # stops on character 6 of 10
    assert text_seconds(stopped_early, 0.05) is None


def test_the_slower_read_is_the_one_that_reached_the_end_later():
    slow, fast = text_seconds(walking_attention(4, 10, 2), 0.05), text_seconds(walking_attention(2, 10, 60), 0.05)
    assert reads_slower({"slow": {"text_seconds": slow}, "fast": {"text_seconds": fast}})
    assert not reads_slower({"slow": {"text_seconds": fast}, "fast": {"text_seconds": slow}})
    assert not reads_slower({"slow": {"text_seconds": slow}, "fast": {"text_seconds": None}})
