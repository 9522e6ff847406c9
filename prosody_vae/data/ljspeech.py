"""Data pipeline: LJSpeech-format corpora, an on-disk feature cache, collate, and a bucketed sampler.

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
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..atomic import write_atomically
from ..audio.mel import AudioConfig, MelSpectrogram, check_not_silent, load_wav
from ..audio.pitch import ENERGY_FLOOR_DB, FrameFeatures, PitchConfig, frame_features
from ..plugin.errors import AudioError, ConfigError, DataError, TextError


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
    """Log-mels and per-frame prosody features on disk, in a folder keyed by the audio config.

    Per utterance, `<id>.<fingerprint>.npy` holds the (T, n_mels) log-mel and, in the subfolder
    `frames-<digest of the PitchConfig>/`, `<id>.<fingerprint>.npz` holds the `FrameFeatures`
    (log_f0, voiced, energy, T values each). Both are filled from one decode of the wav, by
    `get` or `features`, whichever comes first. `pitch=None` caches log-mels only, as before
    features existed; a folder written then is read as is, its features filled on first use.

    Files are written to a temporary name and renamed, so an interrupted run leaves either a
    complete file or none; a file that still fails to load is recomputed. A wav that is missing,
    unreadable, non-finite, shorter than one frame or digital silence raises `AudioError` naming it.
    """

    def __init__(self, cache_dir: str | os.PathLike, audio: AudioConfig | None = None,
                 pitch: PitchConfig | None = PitchConfig()):
        self.audio = audio or AudioConfig()
        self.pitch = pitch
        digest = hashlib.sha1(self.audio.key().encode()).hexdigest()[:12]
        self.dir = Path(cache_dir) / f"mel-{digest}"
        self.dir.mkdir(parents=True, exist_ok=True)
        info = self.dir / "audio_config.json"
        if not info.exists():  # for humans: which config made these mels
            write_atomically(info, json.dumps(self.audio.__dict__, indent=1))
        self.features_dir: Path | None = None
        if pitch is not None:
            self.features_dir = self.dir / f"frames-{hashlib.sha1(pitch.key().encode()).hexdigest()[:12]}"
            self.features_dir.mkdir(exist_ok=True)
            info = self.features_dir / "pitch_config.json"
            if not info.exists():
                write_atomically(info, json.dumps({"tracker": "praat-ac", **pitch.__dict__}, indent=1))
        self._mel_spec: MelSpectrogram | None = None

    def _stem(self, utt: Utterance) -> str:
        """Id and the wav's size and mtime, so a wav rewritten in place (a corpus remade with
        another seed) never reads stale features."""
        stat = utt.wav_path.stat()
        fingerprint = hashlib.sha1(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
        return f"{utt.id}.{fingerprint}"

    def path(self, utt: Utterance) -> Path:
        """The log-mel's file."""
        return self.dir / f"{self._stem(utt)}.npy"

    def features_path(self, utt: Utterance) -> Path:
        """The `FrameFeatures` file."""
        if self.features_dir is None:
            raise ConfigError("this MelCache was made with pitch=None: it caches log-mels only")
        return self.features_dir / f"{self._stem(utt)}.npz"

    def is_cached(self, utt: Utterance) -> bool:
        """Whether everything `get` fills is on disk (a missing wav counts as not cached)."""
        if not utt.wav_path.is_file():
            return False
        return self.path(utt).exists() and (self.pitch is None or self.features_path(utt).exists())

    def get(self, utt: Utterance) -> np.ndarray:
        """(T, n_mels) float32 log-mel, computed on first use; missing features are filled in
        the same pass, so filling the cache with `get` prepares everything a dataset reads."""
        _check_wav_file(utt)
        mel = _load(self.path(utt), np.load)
        if mel is None or (self.pitch is not None and not self.features_path(utt).exists()):
            mel, _ = self._fill(utt, mel)
        return mel

    def features(self, utt: Utterance) -> FrameFeatures:
        """Log-F0, voicing and energy on the log-mel's frames, computed on first use."""
        _check_wav_file(utt)
        features = _load(self.features_path(utt), _load_features)
        if features is None:
            _, features = self._fill(utt, _load(self.path(utt), np.load))
        return features

    def _fill(self, utt: Utterance, mel: np.ndarray | None) -> tuple[np.ndarray, FrameFeatures | None]:
        """Compute what is missing from one decode of the wav and write it."""
        wav = self._load_wav(utt)
        if mel is None:
            mel = self._log_mel(wav, utt)
            buffer = io.BytesIO()
            np.save(buffer, mel, allow_pickle=False)
            write_atomically(self.path(utt), buffer.getvalue())
        if self.pitch is None:
            return mel, None
        features = frame_features(wav, self.audio, self.pitch, source=str(utt.wav_path))
        if len(features) != len(mel):  # the same wav and config give the same frame count
            raise AudioError(f"{utt.wav_path}: {len(features)} feature frames for {len(mel)} mel frames")
        buffer = io.BytesIO()
        np.savez(buffer, log_f0=features.log_f0, voiced=features.voiced, energy=features.energy)
        write_atomically(self.features_path(utt), buffer.getvalue())
        return mel, features

    def compute(self, utt: Utterance) -> np.ndarray:
        """(T, n_mels) log-mel of the wav, not cached."""
        return self._log_mel(self._load_wav(utt), utt)

    def _load_wav(self, utt: Utterance) -> np.ndarray:
        wav = load_wav(utt.wav_path, self.audio.sample_rate)
        if len(wav) < max(self.audio.min_samples, self.audio.hop_length):
            raise AudioError(f"{utt.wav_path}: {len(wav)} samples is shorter than one mel frame")
        check_not_silent(wav, str(utt.wav_path))
        return wav

    def _log_mel(self, wav: np.ndarray, utt: Utterance) -> np.ndarray:
        if self._mel_spec is None:
            self._mel_spec = MelSpectrogram(self.audio)
        with torch.no_grad():
            mel = self._mel_spec(torch.from_numpy(wav)).numpy()
        if not np.isfinite(mel).all():  # float samples near float32's limit overflow the power spectrum
            raise AudioError(f"{utt.wav_path}: samples too large for a log-mel (audio should lie in [-1, 1])")
        return mel


def _check_wav_file(utt: Utterance) -> None:
    """Checked before the cache is read, because cache files are named by the wav's stat."""
    if not utt.wav_path.is_file():
        what = "is a folder, not an audio file" if utt.wav_path.is_dir() else "no such audio file"
        raise AudioError(f"{utt.wav_path}: {what}")


def _load(path: Path, loader):
    """What `loader` reads from `path`, or None if the file is absent or damaged (by something
    outside our atomic writes): the caller recomputes it."""
    if not path.exists():
        return None
    try:
        return loader(path)
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile):
        return None


def _load_features(path: Path) -> FrameFeatures:
    with np.load(path, allow_pickle=False) as arrays:
        features = FrameFeatures(log_f0=arrays["log_f0"], voiced=arrays["voiced"], energy=arrays["energy"])
    if not (features.log_f0.shape == features.voiced.shape == features.energy.shape) or features.voiced.dtype != bool:
        raise ValueError(f"{path}: inconsistent feature arrays")
    return features


@dataclass
class Sample:
    id: str
    text_ids: torch.Tensor  # (L,) long
    mel: torch.Tensor  # (T, n_mels)
    speaker_id: int = 0
    log_f0: torch.Tensor | None = None  # (T,) float32, 0 where unvoiced
    voiced: torch.Tensor | None = None  # (T,) bool
    energy: torch.Tensor | None = None  # (T,) float32 dB


@dataclass
class Batch:
    ids: list[str]
    text: torch.Tensor  # (B, L) long, padded with the pad id
    text_lengths: torch.Tensor  # (B,) long
    mel: torch.Tensor  # (B, T, n_mels), padded with the log-mel of silence
    mel_lengths: torch.Tensor  # (B,) long
    speaker_ids: torch.Tensor  # (B,) long
    # per-frame prosody on the mel's frames; None when the samples carry none
    log_f0: torch.Tensor | None = None  # (B, T) float32, 0 where unvoiced and at padding
    voiced: torch.Tensor | None = None  # (B, T) bool, False at padding
    energy: torch.Tensor | None = None  # (B, T) float32 dB, ENERGY_FLOOR_DB at padding

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)
        return Batch(self.ids, move(self.text), move(self.text_lengths), move(self.mel),
                     move(self.mel_lengths), move(self.speaker_ids), move(self.log_f0), move(self.voiced),
                     move(self.energy))


class TTSDataset(torch.utils.data.Dataset):
    """Utterances -> `Sample`s of symbol ids, cached log-mels and, when the cache has a
    `PitchConfig`, cached per-frame log-F0, voicing and energy. Texts are encoded up front: one
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
        sample = Sample(utt.id, self._text_ids[index], mel, self.speaker_index.get(utt.speaker or "", 0))
        if self.mel_cache.pitch is not None:
            features = self.mel_cache.features(utt)
            if len(features) != len(mel):
                raise DataError(f"{self.mel_cache.features_path(utt)}: {len(features)} feature frames for "
                                f"{len(mel)} mel frames of {utt.wav_path}; delete the cache file")
            sample.log_f0, sample.voiced, sample.energy = (torch.from_numpy(features.log_f0),
                                                           torch.from_numpy(features.voiced),
                                                           torch.from_numpy(features.energy))
        return sample

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
    emits r frames per step, so r divides T). Per-frame prosody is padded to the same T (log-F0
    0, unvoiced, energy `ENERGY_FLOOR_DB`) when every sample has it, else left None."""
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
    batch = Batch([s.id for s in samples], text, text_lengths, mel, mel_lengths, speakers)
    if all(s.log_f0 is not None and s.voiced is not None and s.energy is not None for s in samples):
        batch.log_f0 = _pad_frames([s.log_f0 for s in samples], max_frames, 0.0, torch.float32)
        batch.voiced = _pad_frames([s.voiced for s in samples], max_frames, False, torch.bool)
        batch.energy = _pad_frames([s.energy for s in samples], max_frames, ENERGY_FLOOR_DB, torch.float32)
    return batch


def _pad_frames(tracks: Sequence[torch.Tensor], max_frames: int, value, dtype: torch.dtype) -> torch.Tensor:
    """(B, max_frames) from B tracks (T_i,), padded with `value`."""
    out = torch.full((len(tracks), max_frames), value, dtype=dtype)
    for i, track in enumerate(tracks):
        out[i, : len(track)] = track
    return out


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
