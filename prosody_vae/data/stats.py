"""Per-utterance prosody statistics of any LJSpeech-format corpus, from the cached frame features.

    rows = corpus_stats("LJSpeech-1.1/")          # fills DATA/.mel_cache on first use
    write_stats("prosody_stats.csv", rows)
    rows = read_stats("prosody_stats.csv")        # list[UtteranceStats]
    by_speaker = speaker_stats(rows)              # {speaker: SpeakerStats}

Definitions, all on the log-mel's frames (hop 256 at 22050 Hz; `pitch.FrameFeatures`):

- speech span: from the first to the last frame whose energy is within `SPEECH_TOP_DB` = 40 dB
  of the utterance's loudest frame. Leading and trailing silence fall outside; pauses inside
  count, so the rate below is a speaking rate, not an articulation rate.
- semitones: 12 * log2(f / 100 Hz) (`ST_REFERENCE_HZ`), so 100 Hz is 0 st and 200 Hz is 12 st.
- F0 mean: the mean of the voiced frames in semitones; `f0_mean_hz` is the same figure in Hz
  (the geometric mean of F0), so the two columns are one number in two units.
- F0 range: 95th minus 5th percentile of the voiced frames, in semitones and in Hz (each
  percentile converted, then subtracted). `f0_std_st` is the standard deviation in semitones.
- voiced fraction: voiced frames / frames of the speech span.
- speaking rate: syllables of the normalised text per second of speech span. Syllables are
  counted from spelling (`count_syllables`: vowel groups per word, less a silent e, -ed or -es),
  or from the vowels of inline ARPAbet. A heuristic that needs no dictionary or aligner; it
  counts dictionary syllables, not the reductions of fast speech ("every" is 3), and a text
  gets the same count whoever speaks it, so rates compare across speakers.
- energy: dB of the mean power over the frames within 40 dB of the loudest (`pitch` defines a
  frame's level), so a gain of g dB adds g dB.

F0 figures of an utterance with no voiced frame are NaN (an empty cell in the CSV).
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..atomic import write_atomically
from ..audio.mel import AudioConfig
from ..audio.pitch import FrameFeatures, PitchConfig
from ..plugin.errors import DataError
from .ljspeech import MelCache, Utterance, read_metadata

ST_REFERENCE_HZ = 100.0
SPEECH_TOP_DB = 40.0


@dataclass(frozen=True)
class UtteranceStats:
    id: str
    speaker: str  # "" where metadata names none
    duration_s: float  # all frames: T * hop / sample rate
    speech_s: float  # the speech span
    voiced_fraction: float  # of the speech span's frames
    f0_mean_hz: float  # geometric mean over voiced frames (NaN if none)
    f0_mean_st: float  # semitones re 100 Hz
    f0_std_st: float
    f0_range_hz: float  # 95th minus 5th percentile
    f0_range_st: float
    syllables: int
    speaking_rate: float  # syllables per second of speech span
    energy_db: float  # mean power of the frames within 40 dB of the loudest, in dB


@dataclass(frozen=True)
class SpeakerStats:
    """Means over a speaker's utterances (those with voiced frames, for the F0 figures)."""

    speaker: str
    n_utterances: int
    f0_mean_st: float
    f0_mean_hz: float  # f0_mean_st in Hz
    f0_range_st: float
    speaking_rate: float
    energy_db: float


def semitones(hz: np.ndarray | float) -> np.ndarray | float:
    return 12.0 * np.log2(np.asarray(hz) / ST_REFERENCE_HZ)


def hertz(st: np.ndarray | float) -> np.ndarray | float:
    return ST_REFERENCE_HZ * 2.0 ** (np.asarray(st) / 12.0)


_BRACES = re.compile(r"\{([^}]*)\}")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
_VOWEL_GROUP = re.compile(r"[aeiouy]+")
_SOUNDED_BEFORE = {"d": "td", "s": "csxzhg"}  # consonants after which -ed / -es is a syllable


def count_syllables(text: str) -> int:
    """Syllables of English text from its spelling; ARPAbet in braces counts its vowel phones."""
    count = 0
    for arpabet in _BRACES.findall(text):
        count += sum(phone[-1:].isdigit() for phone in arpabet.split())  # vowels carry a stress digit
    for word in _WORD.findall(_BRACES.sub(" ", text).lower()):
        count += _word_syllables(word.replace("'", ""))
    return count


def _word_syllables(word: str) -> int:
    """Vowel groups, less a silent final e, -ed or -es; at least one."""
    for suffix in ("ly", "ment", "ful", "ness", "less"):  # a silent e before a suffix: "closely"
        stem = word[: -len(suffix)]
        if word.endswith(suffix) and stem.endswith("e") and len(stem) > 2:
            return _word_syllables(stem) + 1
    groups = len(_VOWEL_GROUP.findall(word))
    if groups < 2:
        return 1
    if word.endswith("e") and not word.endswith("ee") and not (word.endswith("le") and word[-3] not in "aeiouy"):
        return groups - 1  # "make", "whale"; but "table", "free"
    if word.endswith("les") and word[-4] not in "aeiouy":
        return groups  # "tables"
    if word.endswith(("ed", "es")) and word[-3] not in "aeiouy" + _SOUNDED_BEFORE[word[-1]]:
        return groups - 1  # "moved", "makes"; but "wanted", "boxes", "carried"
    return groups


def utterance_stats(utt: Utterance, features: FrameFeatures, audio: AudioConfig | None = None) -> UtteranceStats:
    """The statistics of one utterance (module docstring) from its frame features."""
    audio = audio or AudioConfig()
    frame_s = audio.hop_length / audio.sample_rate
    energy = features.energy.astype(np.float64)  # (T,)
    if not len(energy):
        raise DataError(f"{utt.wav_path}: no frames")
    loud = energy >= energy.max() - SPEECH_TOP_DB  # (T,)
    first, last = np.flatnonzero(loud)[[0, -1]]
    span = slice(first, last + 1)
    speech_s = (last + 1 - first) * frame_s
    voiced_st = semitones(np.exp(features.log_f0[features.voiced].astype(np.float64)))  # (V,)
    if len(voiced_st):
        mean_st, std_st = float(voiced_st.mean()), float(voiced_st.std())
        low, high = np.percentile(voiced_st, [5, 95])
        range_st, range_hz = float(high - low), float(hertz(high) - hertz(low))
    else:
        mean_st = std_st = range_st = range_hz = math.nan
    syllables = count_syllables(utt.text)
    return UtteranceStats(
        id=utt.id, speaker=utt.speaker or "",
        duration_s=len(energy) * frame_s, speech_s=speech_s,
        voiced_fraction=float(features.voiced[span].mean()),
        f0_mean_hz=float(hertz(mean_st)), f0_mean_st=mean_st, f0_std_st=std_st,
        f0_range_hz=range_hz, f0_range_st=range_st,
        syllables=syllables, speaking_rate=syllables / speech_s,
        energy_db=float(10.0 * np.log10(np.mean(10.0 ** (energy[loud] / 10.0)))),
    )


def corpus_stats(data_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 audio: AudioConfig | None = None, pitch: PitchConfig | None = None) -> list[UtteranceStats]:
    """Statistics of every utterance of an LJSpeech folder, in metadata order. Features come from
    the cache the trainer uses (DATA/.mel_cache unless `cache_dir`), filled where missing."""
    from tqdm import tqdm

    data_dir = Path(data_dir)
    audio = audio or AudioConfig()
    utterances = read_metadata(data_dir)  # before the cache folder is made: a bad folder stays untouched
    cache = MelCache(Path(cache_dir) if cache_dir else data_dir / ".mel_cache", audio, pitch or PitchConfig())
    return [utterance_stats(u, cache.features(u), audio)
            for u in tqdm(utterances, desc="prosody statistics", disable=not sys.stderr.isatty())]


def speaker_stats(rows: list[UtteranceStats]) -> dict[str, SpeakerStats]:
    """Per-speaker means, for statistics relative to the speaker (`row.f0_mean_st - s.f0_mean_st`)."""
    by_speaker: dict[str, list[UtteranceStats]] = {}
    for row in rows:
        by_speaker.setdefault(row.speaker, []).append(row)

    def mean(values: list[float]) -> float:
        kept = [v for v in values if not math.isnan(v)]
        return float(np.mean(kept)) if kept else math.nan

    out = {}
    for speaker, group in sorted(by_speaker.items()):
        f0_mean_st = mean([r.f0_mean_st for r in group])
        out[speaker] = SpeakerStats(speaker, len(group), f0_mean_st, float(hertz(f0_mean_st)),
                                    mean([r.f0_range_st for r in group]), mean([r.speaking_rate for r in group]),
                                    mean([r.energy_db for r in group]))
    return out


# ---------------------------------------------------------------------------- CSV
def _format(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _write_rows(path: Path, rows: list) -> Path:
    names = [f.name for f in fields(rows[0])] if rows else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    writer.writerows([_format(getattr(row, name)) for name in names] for row in rows)
    write_atomically(path, buffer.getvalue())
    return path


def write_stats(path: str | os.PathLike, rows: list[UtteranceStats]) -> Path:
    """One row per utterance, columns in `UtteranceStats` order; NaN is an empty cell."""
    return _write_rows(Path(path), rows)


def write_speaker_stats(path: str | os.PathLike, stats: dict[str, SpeakerStats]) -> Path:
    return _write_rows(Path(path), list(stats.values()))


def _read_rows(path: Path, kind: type) -> list:
    columns = {f.name: f.type for f in fields(kind)}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read statistics ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [name for name in columns if name not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path}: not a {kind.__name__} file, missing column(s) {', '.join(missing)}")
    rows = []
    for line_no, record in enumerate(reader, start=2):
        values = {}
        for name, type_name in columns.items():
            cell = record[name]
            try:
                if type_name == "float":
                    values[name] = float(cell) if cell else math.nan
                elif type_name == "int":
                    values[name] = int(cell)
                else:
                    values[name] = cell or ""
            except (TypeError, ValueError):
                raise DataError(f"{path}:{line_no}: column {name!r} holds {cell!r}, expected {type_name}") from None
        rows.append(kind(**values))
    return rows


def read_stats(path: str | os.PathLike) -> list[UtteranceStats]:
    """What `write_stats` wrote; a malformed file raises `DataError` naming the file and line."""
    return _read_rows(Path(path), UtteranceStats)


def read_speaker_stats(path: str | os.PathLike) -> dict[str, SpeakerStats]:
    return {row.speaker: row for row in _read_rows(Path(path), SpeakerStats)}


def speakers_path(stats_path: str | os.PathLike) -> Path:
    """Where the per-speaker table goes beside a statistics file: prosody_stats.csv -> prosody_stats.speakers.csv."""
    path = Path(stats_path)
    return path.with_name(f"{path.stem}.speakers{path.suffix or '.csv'}")
