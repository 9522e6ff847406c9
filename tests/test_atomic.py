"""Atomic writes: what a failed write leaves, and the permission bits of what a good one makes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from conftest import write_tiny_corpus
from prosody_vae import atomic
from prosody_vae.atomic import atomic_write, write_atomically
from prosody_vae.audio.mel import save_wav
from prosody_vae.training.checkpoint import save_checkpoint
from prosody_vae.data.corpus import CorpusConfig, make_corpus
from prosody_vae.data.ljspeech import MelCache, read_metadata


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_writer_gives_new_files_the_mode_open_would(umask, tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("made by open()")
    expected = {0o022: 0o644, 0o077: 0o600}[umask]
    assert mode(plain) == expected

    written = [save_checkpoint(tmp_path / "run" / "step.pt", {"config": {}, "step": 1}),
               save_wav(tmp_path / "out.wav", np.zeros(512, dtype=np.float32))]
    corpus = tmp_path / "corpus"
    make_corpus(corpus, CorpusConfig(n=2, measure=False))
    written += [corpus / "metadata.csv", corpus / "factors.csv", *sorted((corpus / "wavs").glob("*.wav"))]
    cache = MelCache(tmp_path / "mels")
    utterance = read_metadata(write_tiny_corpus(tmp_path / "tiny", n=1))[0]
    cache.get(utterance)
    written += [cache.path(utterance), cache.dir / "audio_config.json"]

    assert len(written) == 8
    assert {str(path.relative_to(tmp_path)): oct(mode(path)) for path in written} == \
        {str(path.relative_to(tmp_path)): oct(expected) for path in written}


def test_rewriting_keeps_the_existing_files_mode(tmp_path):
    target = tmp_path / "shared.csv"
    target.write_text("old\n")
    target.chmod(0o640)
    write_atomically(target, "new\n")
    assert target.read_text() == "new\n" and mode(target) == 0o640


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "data.bin"
    write_atomically(target, b"old")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_write(target) as f:
            f.write(b"new, but only ")
            raise RuntimeError("failed half way")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_text_is_utf8_with_newlines_as_given(tmp_path):
    target = tmp_path / "metadata.csv"
    write_atomically(target, "utt0|Noël\r\nutt1|two\n")
    assert target.read_bytes() == "utt0|Noël\r\nutt1|two\n".encode("utf-8")


def test_the_umask_is_read_the_same_without_proc(umask, monkeypatch):
    assert atomic._umask() == umask

    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(atomic, "open", no_proc, raising=False)
    assert atomic._umask() == umask
    assert os.umask(umask) == umask, "reading the umask left it as it was"
