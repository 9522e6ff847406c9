"""What a training run reads: the train/validation split, the training loader and the validation batches.

    data = build_data(config, Path("corpus/"))   # also fills DATA/.mel_cache

Log-mels are cached in DATA/.mel_cache (shared by every run on DATA) unless `data.cache_dir` says
otherwise, and computed before training starts, each rank a share. Utterances longer than
`data.max_frames` are left out and counted in `summary`.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from ..audio.postfilter import GlobalVariance
from ..data.ljspeech import (Batch, BucketBatchSampler, MelCache, TTSDataset, Utterance, collate_batch, read_metadata,
                             split_train_val)
from ..data.speakers import SpeakerTable
from ..data.text import TextProcessor
from ..plugin.errors import ConfigError, DataError
from .config import TrainConfig
from .distributed import Cluster


@dataclass
class TrainingData:
    loader: torch.utils.data.DataLoader
    sampler: BucketBatchSampler
    val_batches: list[Batch]  # rank 0 only; empty elsewhere
    speaker_table: SpeakerTable
    summary: dict[str, int]
    mel_variance: Optional[GlobalVariance] = None  # the training mels' contrast, for the postfilter; rank 0 only

    @property
    def speakers(self) -> list[str]:
        return list(self.speaker_table.names)


def build_data(config: TrainConfig, data_dir: Path, cluster: Optional[Cluster] = None) -> TrainingData:
    """The run's split, datasets, training loader and validation batches (the latter on rank 0 only)."""
    cluster = cluster or Cluster.single()
    c = config.data
    utterances = read_metadata(data_dir)
    train_utts, val_utts = split_train_val(utterances, c.n_val, c.seed)
    speakers = sorted({u.speaker or "" for u in utterances})
    if config.model.n_speakers and len(speakers) > config.model.n_speakers:
        raise ConfigError(f"{data_dir} has {len(speakers)} speakers, model.n_speakers is {config.model.n_speakers}")
    text = TextProcessor(config.text)
    if text.n_symbols > config.model.n_symbols:
        raise ConfigError(f"model.n_symbols ({config.model.n_symbols}) is below the text front end's "
                          f"{text.n_symbols} symbols")
    cache = MelCache(Path(c.cache_dir) if c.cache_dir else data_dir / ".mel_cache", config.audio)
    train_set, skipped_train = _dataset(train_utts, text, cache, speakers, c.max_frames)
    val_set, skipped_val = _dataset(val_utts, text, cache, speakers, c.max_frames)
    if not len(train_set) or not len(val_set):
        raise DataError(f"{data_dir}: no {'training' if not len(train_set) else 'validation'} utterance has "
                        f"at most data.max_frames = {c.max_frames} frames")
    _fill_cache(cache, train_set.utterances + val_set.utterances, cluster)
    speaker_table = _speaker_table(speakers, train_set.utterances, cache)

    collate = partial(collate_batch, pad_id=text.pad_id, pad_value=config.audio.pad_value,
                      frames_multiple=config.model.reduction_factor)
    sampler = BucketBatchSampler(train_set.mel_lengths, c.batch_size, num_replicas=cluster.world,
                                 rank=cluster.rank, seed=c.seed, bucket_batches=c.bucket_batches)
    # its own generator: starting an iterator draws a worker seed, which must not come from the
    # global RNG, or a run resumed mid-epoch would diverge from one that never stopped
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=c.num_workers, generator=torch.Generator().manual_seed(c.seed),
                                         worker_init_fn=_ignore_sigint if c.num_workers else None)
    val_batches, mel_variance = [], None
    if cluster.is_main:
        mel_variance = GlobalVariance.from_mels((cache.get(u) for u in train_set.utterances), config.audio.pad_value)
        order = sorted(range(len(val_set)), key=lambda i: val_set.mel_lengths[i])
        val_batches = [collate([val_set[i] for i in order[s: s + c.batch_size]])
                       for s in range(0, len(order), c.batch_size)]
    summary = {"train_utterances": len(train_set), "val_utterances": len(val_set),
               "skipped_longer_than_max_frames": skipped_train + skipped_val}
    return TrainingData(loader, sampler, val_batches, speaker_table, summary, mel_variance)


def _dataset(utterances: list[Utterance], text: TextProcessor, cache: MelCache, speakers: list[str],
             max_frames: Optional[int]) -> tuple[TTSDataset, int]:
    """The utterances of at most max_frames frames as a dataset, and how many were longer."""
    dataset = TTSDataset(utterances, text, cache, speakers)
    if max_frames is None:
        return dataset, 0
    kept = [u for u, n in zip(utterances, dataset.mel_lengths) if n <= max_frames]
    return TTSDataset(kept, text, cache, speakers), len(utterances) - len(kept)


def _speaker_table(speakers: list[str], utterances: list[Utterance], cache: MelCache) -> SpeakerTable:
    """The speaker names and, where the cache holds pitch, each speaker's mean log-F0 over its
    training utterances."""
    def log_f0_of(i: int):
        features = cache.features(utterances[i])
        return features.log_f0, features.voiced

    return SpeakerTable.from_utterances(speakers, [u.speaker or "" for u in utterances],
                                        log_f0_of if cache.pitch is not None else None)


def _fill_cache(cache: MelCache, utterances: list[Utterance], cluster: Cluster) -> None:
    """Compute missing log-mels before training, each rank a share, so the first epoch is not
    slowed by (or repeated across ranks for) feature extraction."""
    missing = [u for u in utterances if not cache.is_cached(u)][cluster.rank:: cluster.world]
    for utt in tqdm(missing, desc="caching log-mels", disable=not (cluster.is_main and sys.stderr.isatty())):
        cache.get(utt)
    cluster.barrier()


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the trainer, which stops between steps."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
