"""Data pipeline: LJSpeech-format corpora, an on-disk mel cache, collate, and a bucketed sampler.

A corpus folder holds `metadata.csv` and `wavs/`. Each metadata line is

    id|raw text|normalized text[|speaker]

split on '|' with no quoting (LJSpeech's own convention: its texts contain quotes). Two fields
(`id|text`) are accepted for home-made corpora. The normalized column is what the model reads.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .atomic import write_atomically
from .audio import AudioConfig, MelSpectrogram, check_not_silent, load_wav
from .errors import AudioError, DataError, TextError


@dataclass(frozen=True)
class Utterance:
    id: str
    text: str  # normalized text: what the model reads
    raw_text: str
    wav_path: Path
    speaker: str | None = None


def read_metadata(root: str | os.PathLike, metadata: str = "metadata.csv", wav_dir: str = "wavs",
                  check_wavs: bool = True) -> list[Utterance]:
    """Parse `root/metadata.csv`; every problem names the file and line.

    Missing wavs are collected and reported together in one error, so a user fixes them in one
    pass rather than one crash at a time.
    """
    root = Path(root)
    meta_path = root / metadata
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: metadata file not found (expected LJSpeech layout: "
                        f"{metadata} and {wav_dir}/ inside {root})")
    try:
        lines = meta_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line_no = meta_path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"{meta_path}:{line_no}: not valid UTF-8 ({exc.reason})") from exc

    utterances: list[Utterance] = []
    first_line_of: dict[str, int] = {}
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("|")]
        if not 2 <= len(fields) <= 4:
            raise DataError(f"{meta_path}:{line_no}: expected 'id|raw text|normalized text[|speaker]', "
                            f"got {len(fields)} field(s): {line[:80]!r}")
        utt_id, raw = fields[0], fields[1]
        text = fields[2] if len(fields) >= 3 and fields[2] else raw
        speaker = fields[3] if len(fields) == 4 and fields[3] else None
        if not utt_id or any(c in utt_id for c in "/\\") or utt_id in (".", ".."):
            raise DataError(f"{meta_path}:{line_no}: invalid utterance id {utt_id!r}")
        if not text:
            raise DataError(f"{meta_path}:{line_no}: utterance {utt_id!r} has empty text")
        if utt_id in first_line_of:
            raise DataError(f"{meta_path}:{line_no}: duplicate id {utt_id!r} (first on line "
                            f"{first_line_of[utt_id]})")
        first_line_of[utt_id] = line_no
        utterances.append(Utterance(utt_id, text, raw, root / wav_dir / f"{utt_id}.wav", speaker))

    if not utterances:
        raise DataError(f"{meta_path}: no utterances")
    if check_wavs:
        missing = [u.wav_path for u in utterances if not u.wav_path.is_file()]
        if missing:
            shown = ", ".join(str(p) for p in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise DataError(f"{meta_path}: {len(missing)} of {len(utterances)} wav files are missing: {shown}{more}")
    return utterances


def split_train_val(utterances: Sequence[Utterance], n_val: int, seed: int = 0) -> tuple[list[Utterance], list[Utterance]]:
    """Deterministic split by a seeded hash of each id.

    The split depends on ids and seed only, not on metadata order, so appending utterances to a
    corpus never moves an old one between the sets.
    """
    if not 0 <= n_val < len(utterances):
        raise DataError(f"n_val={n_val} must be in [0, {len(utterances)}) for {len(utterances)} utterances")
    rank = lambda u: hashlib.sha1(f"{seed}:{u.id}".encode()).hexdigest()
    val_ids = {u.id for u in sorted(utterances, key=rank)[:n_val]}
    return [u for u in utterances if u.id not in val_ids], [u for u in utterances if u.id in val_ids]


class MelCache:
    """Log-mels on disk, one .npy per utterance, in a folder keyed by the audio config.

    Files are written to a temporary name and renamed, so an interrupted run leaves either a
    complete file or none; a file that still fails to load is recomputed. A wav that is missing,
    unreadable, non-finite, shorter than one frame or digital silence raises `AudioError` naming it.
    """

    def __init__(self, cache_dir: str | os.PathLike, audio: AudioConfig | None = None):
        self.audio = audio or AudioConfig()
        digest = hashlib.sha1(self.audio.key().encode()).hexdigest()[:12]
        self.dir = Path(cache_dir) / f"mel-{digest}"
        self.dir.mkdir(parents=True, exist_ok=True)
        info = self.dir / "audio_config.json"
        if not info.exists():  # for humans: which config made these mels
            write_atomically(info, json.dumps(self.audio.__dict__, indent=1))
        self._mel_spec: MelSpectrogram | None = None

    def path(self, utt: Utterance) -> Path:
        """Named by id and the wav's size and mtime, so a wav rewritten in place (a corpus remade
        with another seed) never reads a stale mel."""
        stat = utt.wav_path.stat()
        fingerprint = hashlib.sha1(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
        return self.dir / f"{utt.id}.{fingerprint}.npy"

    def get(self, utt: Utterance) -> np.ndarray:
        """(T, n_mels) float32 log-mel, computed on first use."""
        if not utt.wav_path.is_file():  # checked here because the cache file is named by its stat
            what = "is a folder, not an audio file" if utt.wav_path.is_dir() else "no such audio file"
            raise AudioError(f"{utt.wav_path}: {what}")
        path = self.path(utt)
        if path.exists():
            try:
                return np.load(path, allow_pickle=False)
            except (ValueError, OSError, EOFError):
                pass  # damaged by something outside our atomic writes: recompute below
        mel = self.compute(utt)
        buffer = io.BytesIO()
        np.save(buffer, mel, allow_pickle=False)
        write_atomically(path, buffer.getvalue())
        return mel

    def compute(self, utt: Utterance) -> np.ndarray:
        if self._mel_spec is None:
            self._mel_spec = MelSpectrogram(self.audio)
        wav = load_wav(utt.wav_path, self.audio.sample_rate)
        if len(wav) < max(self.audio.min_samples, self.audio.hop_length):
            raise AudioError(f"{utt.wav_path}: {len(wav)} samples is shorter than one mel frame")
        check_not_silent(wav, str(utt.wav_path))
        with torch.no_grad():
            mel = self._mel_spec(torch.from_numpy(wav)).numpy()
        if not np.isfinite(mel).all():  # float samples near float32's limit overflow the power spectrum
            raise AudioError(f"{utt.wav_path}: samples too large for a log-mel (audio should lie in [-1, 1])")
        return mel


@dataclass
class Sample:
    id: str
    text_ids: torch.Tensor  # (L,) long
    mel: torch.Tensor  # (T, n_mels)
    speaker_id: int = 0


@dataclass
class Batch:
    ids: list[str]
    text: torch.Tensor  # (B, L) long, padded with the pad id
    text_lengths: torch.Tensor  # (B,) long
    mel: torch.Tensor  # (B, T, n_mels), padded with the log-mel of silence
    mel_lengths: torch.Tensor  # (B,) long
    speaker_ids: torch.Tensor  # (B,) long

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda t: t.to(device, non_blocking=True)
        return Batch(self.ids, move(self.text), move(self.text_lengths), move(self.mel),
                     move(self.mel_lengths), move(self.speaker_ids))


class TTSDataset(torch.utils.data.Dataset):
    """Utterances -> `Sample`s of symbol ids and cached log-mels. Texts are encoded up front: one
    the text processor refuses is a `TextError` naming the utterance id."""

    def __init__(self, utterances: Sequence[Utterance], text_processor, mel_cache: MelCache,
                 speakers: Sequence[str] | None = None):
        self.utterances = list(utterances)
        self.text_processor = text_processor
        self.mel_cache = mel_cache
        names = speakers if speakers is not None else sorted({u.speaker or "" for u in self.utterances})
        self.speaker_index = {name: i for i, name in enumerate(names)}
        self._lengths: list[int] | None = None
        self._text_ids = [self._encode(u) for u in self.utterances]

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> Sample:
        utt = self.utterances[index]
        mel = torch.from_numpy(self.mel_cache.get(utt))
        return Sample(utt.id, self._text_ids[index], mel, self.speaker_index.get(utt.speaker or "", 0))

    def _encode(self, utt: Utterance) -> torch.Tensor:
        try:
            return torch.tensor(self.text_processor.encode(utt.text), dtype=torch.long)  # (L,)
        except TextError as exc:
            raise TextError(f"metadata of utterance {utt.id!r}: {exc}") from None

    @property
    def mel_lengths(self) -> list[int]:
        """Frame counts from the wav headers, without decoding audio (for bucketing)."""
        if self._lengths is None:
            self._lengths = [_header_frames(u.wav_path, self.mel_cache.audio) for u in self.utterances]
        return self._lengths


def _header_frames(path: Path, audio: AudioConfig) -> int:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for a missing or corrupt header
        raise AudioError(f"{path}: cannot read audio header ({exc})") from None
    return math.floor(info.frames * audio.sample_rate / info.samplerate) // audio.hop_length


def collate_batch(samples: Sequence[Sample], pad_id: int = 0, pad_value: float | None = None,
                  frames_multiple: int = 1) -> Batch:
    """Pad to the longest item. `frames_multiple` rounds T up (a decoder with reduction factor r
    emits r frames per step, so r divides T)."""
    pad_value = AudioConfig().pad_value if pad_value is None else pad_value
    text_lengths = torch.tensor([len(s.text_ids) for s in samples], dtype=torch.long)
    mel_lengths = torch.tensor([s.mel.shape[0] for s in samples], dtype=torch.long)
    max_frames = int(math.ceil(int(mel_lengths.max()) / frames_multiple) * frames_multiple)
    text = torch.full((len(samples), int(text_lengths.max())), pad_id, dtype=torch.long)
    mel = torch.full((len(samples), max_frames, samples[0].mel.shape[1]), pad_value)
    for i, s in enumerate(samples):
        text[i, : len(s.text_ids)] = s.text_ids
        mel[i, : s.mel.shape[0]] = s.mel
    speakers = torch.tensor([s.speaker_id for s in samples], dtype=torch.long)
    return Batch([s.id for s in samples], text, text_lengths, mel, mel_lengths, speakers)


@dataclass
class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of similar length, reshuffled each epoch, sharded across DDP ranks.

    Indices are shuffled, cut into buckets of `batch_size * bucket_batches`, sorted by length
    inside each bucket, cut into batches, and the batch order is shuffled. Each rank takes every
    `num_replicas`-th batch; the batch list is padded by repetition so every rank gets the same
    count, which DDP needs to avoid a hang. Order depends only on (seed, epoch); iteration
    starts at `consumed`, so resume continues mid-epoch exactly. A DataLoader prefetches, so a
    trainer records its own position (batches it actually stepped on) with `load_state_dict`
    rather than trusting the count of batches this sampler has handed out.
    """

    lengths: Sequence[int]
    batch_size: int
    num_replicas: int = 1
    rank: int = 0
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = False
    bucket_batches: int = 50
    epoch: int = field(default=0, init=False)
    consumed: int = field(default=0, init=False)  # batches of this epoch already yielded

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise DataError(f"batch_size must be positive, got {self.batch_size}")
        if not 0 <= self.rank < self.num_replicas:
            raise DataError(f"rank {self.rank} is outside [0, {self.num_replicas})")

    def _all_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        bucket = self.batch_size * self.bucket_batches
        batches = []
        for start in range(0, len(order), bucket):
            chunk = sorted(order[start: start + bucket].tolist(), key=lambda i: self.lengths[i])
            batches += [chunk[i: i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if not batches:
            return []
        shortfall = -len(batches) % self.num_replicas
        batches += batches[:shortfall]
        return batches[self.rank:: self.num_replicas]

    def __len__(self) -> int:
        return len(self._all_batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        while self.consumed < len(batches):
            self.consumed += 1
            yield batches[self.consumed - 1]
        self.epoch += 1
        self.consumed = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.consumed = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
