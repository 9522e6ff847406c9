"""Data pipeline: metadata parsing and its errors, split, mel and feature cache, collate, bucketed sampler."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from prosody_vae.audio.mel import AudioConfig, MelSpectrogram, load_wav
from prosody_vae.data.ljspeech import (Batch, BucketBatchSampler, MelCache, Sample, TTSDataset, collate_batch,
                              read_metadata, split_train_val)
from prosody_vae.plugin.errors import AudioError, ConfigError, DataError
from prosody_vae.audio.pitch import PitchConfig


def test_read_metadata(tiny_corpus):
    utts = read_metadata(tiny_corpus)
    assert [u.id for u in utts] == [f"utt{i:03d}" for i in range(6)]
    assert utts[0].text == utts[0].raw_text.lower()  # the normalized column is the one read
    assert utts[0].wav_path == tiny_corpus / "wavs" / "utt000.wav"
    assert utts[0].speaker is None


def test_speaker_column_and_two_field_lines(tiny_corpus):
    meta = tiny_corpus / "metadata.csv"
    meta.write_text("utt000|Hello there.|hello there.|alice\nutt001|Just text.\n", encoding="utf-8")
    a, b = read_metadata(tiny_corpus)
    assert (a.speaker, a.text) == ("alice", "hello there.")
    assert (b.speaker, b.text) == (None, "Just text.")


@pytest.mark.parametrize("content, message", [
    ("utt000|a|b\nutt001\n", r"metadata.csv:2: expected 'id\|raw text"),
    ("utt000|a|b|c|d|e\n", r"metadata.csv:1: .*6 field"),
    ("utt000|a|a\n\nutt000|b|b\n", r"metadata.csv:3: duplicate id 'utt000' \(first on line 1\)"),
    ("utt000||\n", r"metadata.csv:1: utterance 'utt000' has empty text"),
    ("../x|a|a\n", r"metadata.csv:1: invalid utterance id"),
])
def test_malformed_metadata_names_file_and_line(tiny_corpus, content, message):
    (tiny_corpus / "metadata.csv").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_metadata(tiny_corpus)


def test_invalid_utf8_names_the_line(tiny_corpus):
    (tiny_corpus / "metadata.csv").write_bytes(b"utt000|a|a\nutt001|caf\xe9|x\n")
    with pytest.raises(DataError, match="metadata.csv:2: not valid UTF-8"):
        read_metadata(tiny_corpus)


def test_missing_wavs_are_reported_together(tiny_corpus):
    for i in (1, 3, 4):
        (tiny_corpus / "wavs" / f"utt{i:03d}.wav").unlink()
    with pytest.raises(DataError) as info:
        read_metadata(tiny_corpus)
    message = str(info.value)
    assert "3 of 6 wav files are missing" in message
    assert all(f"utt{i:03d}.wav" in message for i in (1, 3, 4))
    assert "utt000.wav" not in message


def test_missing_metadata(tmp_path):
    with pytest.raises(DataError, match="metadata.csv: metadata file not found"):
        read_metadata(tmp_path)


def test_split_is_deterministic_and_order_independent(tiny_corpus):
    utts = read_metadata(tiny_corpus)
    train, val = split_train_val(utts, n_val=2, seed=3)
    assert len(train) == 4 and len(val) == 2 and not {u.id for u in train} & {u.id for u in val}
    train_r, val_r = split_train_val(list(reversed(utts)), n_val=2, seed=3)
    assert {u.id for u in val_r} == {u.id for u in val}
    with pytest.raises(DataError, match="n_val=6"):
        split_train_val(utts, n_val=6)


def test_mel_cache_computes_once_and_keys_by_config(tiny_corpus, tmp_path):
    utt = read_metadata(tiny_corpus)[0]
    cache = MelCache(tmp_path / "cache")
    mel = cache.get(utt)
    expected = MelSpectrogram()(torch.from_numpy(load_wav(utt.wav_path))).numpy()
    np.testing.assert_array_equal(mel, expected)
    stamp = os.stat(cache.path(utt)).st_mtime_ns
    np.testing.assert_array_equal(cache.get(utt), mel)
    assert os.stat(cache.path(utt)).st_mtime_ns == stamp, "second get reads the cache"
    other = MelCache(tmp_path / "cache", AudioConfig(n_mels=64))
    assert other.dir != cache.dir and other.get(utt).shape[1] == 64
    assert not list(cache.dir.glob("*.tmp")), "no temporary files left"


def test_mel_cache_recovers_from_a_damaged_file(tiny_corpus, tmp_path):
    utt = read_metadata(tiny_corpus)[0]
    cache = MelCache(tmp_path / "cache")
    good = cache.get(utt)
    cache.path(utt).write_bytes(cache.path(utt).read_bytes()[:40])  # truncated
    np.testing.assert_array_equal(cache.get(utt), good)


def test_dataset_and_collate(tiny_corpus, tmp_path):
    from prosody_vae.data.text import TextProcessor

    processor = TextProcessor()
    dataset = TTSDataset(read_metadata(tiny_corpus), processor, MelCache(tmp_path / "cache"))
    samples = [dataset[i] for i in range(3)]
    assert dataset.mel_lengths[:3] == [s.mel.shape[0] for s in samples]
    batch = collate_batch(samples, pad_id=processor.pad_id, frames_multiple=4)
    assert batch.mel.shape[0] == 3 and batch.mel.shape[1] % 4 == 0
    assert batch.mel.shape[1] >= max(s.mel.shape[0] for s in samples)
    for i, s in enumerate(samples):
        n, L = s.mel.shape[0], len(s.text_ids)
        assert batch.mel_lengths[i] == n and batch.text_lengths[i] == L
        torch.testing.assert_close(batch.mel[i, :n], s.mel)
        assert torch.all(batch.mel[i, n:] == AudioConfig().pad_value)
        assert torch.equal(batch.text[i, :L], s.text_ids) and torch.all(batch.text[i, L:] == processor.pad_id)


def test_collate_pads_text_and_keeps_ids():
    samples = [Sample("a", torch.tensor([3, 4, 5]), torch.zeros(7, 2)), Sample("b", torch.tensor([6]), torch.ones(5, 2), 1)]
    batch = collate_batch(samples, pad_id=0)
    assert batch.ids == ["a", "b"]
    assert batch.text.tolist() == [[3, 4, 5], [6, 0, 0]]
    assert batch.speaker_ids.tolist() == [0, 1]


LENGTHS = [int(x) for x in np.random.default_rng(0).integers(50, 800, size=103)]


def test_bucket_sampler_covers_everything_in_similar_lengths():
    sampler = BucketBatchSampler(LENGTHS, batch_size=8, bucket_batches=4)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    spread = np.mean([np.ptp([LENGTHS[i] for i in b]) for b in batches if len(b) > 1])
    random_spread = np.mean([np.ptp(np.array(LENGTHS)[np.random.default_rng(s).choice(103, 8)]) for s in range(50)])
    assert spread < 0.5 * random_spread
    assert sampler.epoch == 1 and list(sampler) != batches, "a new epoch reshuffles"


@pytest.mark.parametrize("world", [2, 3])
def test_bucket_sampler_shards_equally_across_ranks(world):
    shards = [list(BucketBatchSampler(LENGTHS, batch_size=8, num_replicas=world, rank=r, seed=1)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1, "every rank gets the same number of batches"
    covered = {i for s in shards for b in s for i in b}
    assert covered == set(range(len(LENGTHS)))


def test_bucket_sampler_resumes_mid_epoch():
    straight = BucketBatchSampler(LENGTHS, batch_size=8, seed=5)
    reference = list(straight) + list(straight)
    interrupted = BucketBatchSampler(LENGTHS, batch_size=8, seed=5)
    iterator = iter(interrupted)
    first = [next(iterator) for _ in range(4)]
    state = interrupted.state_dict()
    resumed = BucketBatchSampler(LENGTHS, batch_size=8, seed=5)
    resumed.load_state_dict(state)
    assert first + list(resumed) + list(resumed) == reference


def test_bucket_sampler_rejects_bad_arguments():
    with pytest.raises(DataError, match="rank 2"):
        BucketBatchSampler(LENGTHS, batch_size=4, num_replicas=2, rank=2)
    with pytest.raises(DataError, match="batch_size"):
        BucketBatchSampler(LENGTHS, batch_size=0)


def test_mel_cache_notices_a_rewritten_wav(tiny_corpus, tmp_path):
    import soundfile as sf

    utt = read_metadata(tiny_corpus)[0]
    cache = MelCache(tmp_path / "cache")
    before = cache.get(utt)
    wav, sr = sf.read(utt.wav_path, dtype="float32")
    sf.write(utt.wav_path, 0.5 * wav, sr, subtype="PCM_16")  # same length, other content
    after = cache.get(utt)
    assert after.shape == before.shape and not np.allclose(after, before)


# ---------------------------------------------------------------------------- per-frame prosody
@pytest.fixture
def extractions(monkeypatch):
    """Counts the wavs whose frame features are computed."""
    import prosody_vae.data.ljspeech as data_module

    calls = []
    real = data_module.frame_features

    def counting(wav, *args, **kwargs):
        calls.append(len(wav))
        return real(wav, *args, **kwargs)

    monkeypatch.setattr(data_module, "frame_features", counting)
    return calls


def test_get_caches_the_frame_features_in_the_same_pass(tiny_corpus, tmp_path, extractions):
    from prosody_vae.audio.pitch import frame_features

    utt = read_metadata(tiny_corpus)[0]
    cache = MelCache(tmp_path / "cache")
    assert not cache.is_cached(utt)
    mel = cache.get(utt)
    assert len(extractions) == 1 and cache.is_cached(utt)
    features = cache.features(utt)
    assert len(extractions) == 1, "features() reads what get() cached"
    expected = frame_features(load_wav(utt.wav_path))
    for name in ("log_f0", "voiced", "energy"):
        np.testing.assert_array_equal(getattr(features, name), getattr(expected, name))
    assert len(features) == len(mel)
    stamp = os.stat(cache.features_path(utt)).st_mtime_ns
    MelCache(tmp_path / "cache").features(utt)  # another cache object on the same folder
    assert len(extractions) == 1 and os.stat(cache.features_path(utt)).st_mtime_ns == stamp
    assert cache.features_path(utt).parent.parent == cache.dir and cache.features_path(utt).suffix == ".npz"
    assert MelCache(tmp_path / "cache", pitch=PitchConfig(fmin=70.0)).features_dir != cache.features_dir


def test_features_first_also_caches_the_mel(tiny_corpus, tmp_path, extractions):
    utt = read_metadata(tiny_corpus)[0]
    cache = MelCache(tmp_path / "cache")
    cache.features(utt)
    assert cache.path(utt).exists() and cache.is_cached(utt)
    stamp = os.stat(cache.path(utt)).st_mtime_ns
    cache.get(utt)
    assert len(extractions) == 1 and os.stat(cache.path(utt)).st_mtime_ns == stamp


def test_a_mel_only_cache_stays_readable_and_gains_features(tiny_corpus, tmp_path, extractions):
    utt = read_metadata(tiny_corpus)[0]
    old = MelCache(tmp_path / "cache", pitch=None)  # as the cache was before features existed
    mel = old.get(utt)
    assert extractions == [] and old.is_cached(utt) and old.features_dir is None
    with pytest.raises(ConfigError, match="pitch=None"):
        old.features(utt)
    stamp = os.stat(old.path(utt)).st_mtime_ns
    new = MelCache(tmp_path / "cache")
    assert new.path(utt) == old.path(utt) and not new.is_cached(utt)
    np.testing.assert_array_equal(new.get(utt), mel)
    assert os.stat(new.path(utt)).st_mtime_ns == stamp, "the old mel is read, not rewritten"
    assert len(extractions) == 1 and new.is_cached(utt)


def test_a_rewritten_wav_invalidates_the_features(tiny_corpus, tmp_path, extractions):
    import soundfile as sf

    utt = read_metadata(tiny_corpus)[0]
    cache = MelCache(tmp_path / "cache")
    before = cache.features(utt)
    wav, sr = sf.read(utt.wav_path, dtype="float32")
    sf.write(utt.wav_path, 0.5 * wav, sr, subtype="PCM_16")  # same length, 6 dB quieter
    assert not cache.is_cached(utt)
    after = cache.features(utt)
    assert len(extractions) == 2
    np.testing.assert_allclose(after.energy[before.energy > -60], before.energy[before.energy > -60] - 6.02, atol=0.05)


def test_damaged_feature_files_are_recomputed(tiny_corpus, tmp_path, extractions):
    utt = read_metadata(tiny_corpus)[0]
    cache = MelCache(tmp_path / "cache")
    good = cache.features(utt)
    path = cache.features_path(utt)
    path.write_bytes(path.read_bytes()[:50])  # truncated
    np.testing.assert_array_equal(cache.features(utt).log_f0, good.log_f0)
    np.savez(path, log_f0=good.log_f0)  # loads, but misses arrays
    np.testing.assert_array_equal(cache.features(utt).energy, good.energy)
    assert len(extractions) == 3


def test_features_of_a_missing_or_silent_wav_are_clear_errors(tiny_corpus, tmp_path):
    import soundfile as sf

    utt = read_metadata(tiny_corpus)[0]
    cache = MelCache(tmp_path / "cache")
    sf.write(utt.wav_path, np.zeros(8000, np.float32), 22050, subtype="PCM_16")
    with pytest.raises(AudioError, match=f"{utt.wav_path}: audio is digital silence"):
        cache.features(utt)
    utt.wav_path.unlink()
    with pytest.raises(AudioError, match=f"{utt.wav_path}: no such audio file"):
        cache.features(utt)
    assert not cache.is_cached(utt)


def test_collate_pads_the_frame_features_like_the_mel(tiny_corpus, tmp_path):
    from prosody_vae.audio.pitch import ENERGY_FLOOR_DB
    from prosody_vae.data.text import TextProcessor

    dataset = TTSDataset(read_metadata(tiny_corpus), TextProcessor(), MelCache(tmp_path / "cache"))
    samples = [dataset[i] for i in range(4)]
    batch = collate_batch(samples, frames_multiple=3)
    B, T = batch.mel.shape[:2]
    assert batch.log_f0.shape == batch.voiced.shape == batch.energy.shape == (B, T) and T % 3 == 0
    assert batch.log_f0.dtype == torch.float32 and batch.voiced.dtype == torch.bool
    assert batch.energy.dtype == torch.float32
    for i, s in enumerate(samples):
        n = s.mel.shape[0]
        assert len(s.log_f0) == len(s.voiced) == len(s.energy) == n
        assert torch.equal(batch.log_f0[i, :n], s.log_f0) and torch.equal(batch.voiced[i, :n], s.voiced)
        assert torch.equal(batch.energy[i, :n], s.energy)
        assert not batch.voiced[i, n:].any() and torch.all(batch.log_f0[i, n:] == 0)
        assert torch.all(batch.energy[i, n:] == ENERGY_FLOOR_DB)
        # the tiny corpus is harmonic tones under a Hann envelope: voiced through the middle
        assert s.voiced[n // 4: 3 * n // 4].all()
    assert torch.all(batch.log_f0[~batch.voiced] == 0)
    moved = batch.to("cpu")
    assert torch.equal(moved.voiced, batch.voiced) and torch.equal(moved.energy, batch.energy)


def test_without_features_the_batch_fields_are_none(tiny_corpus, tmp_path):
    from prosody_vae.data.text import TextProcessor

    dataset = TTSDataset(read_metadata(tiny_corpus), TextProcessor(), MelCache(tmp_path / "cache", pitch=None))
    batch = collate_batch([dataset[0], dataset[1]])
    assert batch.log_f0 is None and batch.voiced is None and batch.energy is None
    assert batch.to("cpu").log_f0 is None
    positional = Batch(batch.ids, batch.text, batch.text_lengths, batch.mel, batch.mel_lengths, batch.speaker_ids)
    assert positional.energy is None


def test_filling_the_training_cache_extracts_the_features(tiny_corpus, tmp_path, extractions):
    from prosody_vae.training.distributed import Cluster
    from prosody_vae.training.data import _fill_cache

    utts = read_metadata(tiny_corpus)
    cache = MelCache(tmp_path / "cache", pitch=None)
    for u in utts[:3]:
        cache.get(u)  # an older cache holding some mels already
    cache = MelCache(tmp_path / "cache")
    _fill_cache(cache, utts, Cluster.single())
    assert all(cache.is_cached(u) for u in utts) and len(extractions) == len(utts)
    _fill_cache(cache, utts, Cluster.single())
    assert len(extractions) == len(utts), "a filled cache is left alone"
