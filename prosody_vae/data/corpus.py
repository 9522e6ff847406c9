"""Built-in prosody corpus: real espeak-ng speech whose prosody factors are known.

Each utterance is a generated English sentence spoken by espeak-ng with a sampled voice, rate,
pitch, pitch range and volume. The requested values are ground truth for probing what a
prosody latent has learnt, and the measured ones (duration, F0 over voiced frames, RMS) show
what actually reached the waveform. The output is an LJSpeech folder plus `factors.csv`.

espeak-ng comes from the `espeakng-loader` wheel (library and data, no system install) and is
driven through ctypes in synchronous mode: a callback collects 22050 Hz int16 samples.

Determinism. Sentences and factors come from a `random.Random` seeded by (seed, utterance
index), so utterance i does not depend on n, workers or the other utterances. espeak-ng itself
is not stateless: pitch flutter, oscillator phase and the noise generators run on from one call
to the next, so the same text gives slightly different samples depending on what the library
spoke before. The maker therefore speaks the whole corpus in index order with its own freshly
loaded copy of the library (synthesis takes milliseconds) and reseeds the noise before each
utterance; only the measurement, which is stateless, is spread over `workers` processes. The
bytes then depend on the seed alone, and a corpus of n utterances is a prefix of any larger one
with the same seed.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import ctypes
import io
import math
import multiprocessing
import os
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_atomically
from ..audio.mel import save_wav
from ..plugin.errors import ConfigError, CorpusError
from .sentences import Sentence, make_sentence

SAMPLE_RATE = 22050
FACTOR_COLUMNS = ("id", "voice", "rate", "pitch", "pitch_range", "volume", "duration_s",
                  "f0_mean_hz", "f0_std_hz", "rms", "n_words", "sentence_type")
_CHUNK = 50  # utterances spoken per batch of measurement jobs; bounds the audio held in memory

# Accents (the base voice) crossed with espeak-ng's formant variants; the f-variants sit about an
# octave above the m-variants, so F0 varies by speaker as well as by the requested pitch.
DEFAULT_VOICES = (
    "en-us", "en-us+m1", "en-us+f1", "en-us+f3", "en+m3", "en+f2", "en-gb-x-rp+m4",
    "en-gb-x-rp+f4", "en-gb-scotland+m7", "en-gb-scotland+f5", "en-029+m6", "en-us-nyc+m2",
)

# More of espeak-ng's variants (each with one of the accents above, in turn) for a model that must
# generalise to voices it never heard: the 12 above and 26 more, 38 voices.
_MORE_VARIANTS = ("m2", "m4", "m6", "m7", "klatt4", "klatt6", "Jacky", "Lee", "Denis", "edward", "john",
                  "norbert", "victor", "Hugo", "Reed", "david", "pablo", "iven", "f1", "f4", "f5", "Alicia",
                  "Andrea", "aunty", "shelby", "Annie")
_ACCENTS = ("en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-us")


def _wide_voices() -> tuple[str, ...]:
    voices = list(DEFAULT_VOICES)
    for i, variant in enumerate(_MORE_VARIANTS):  # the i-th accent, or the next one not yet taken
        accents = _ACCENTS[i % len(_ACCENTS):] + _ACCENTS[:i % len(_ACCENTS)]
        voices.append(next(f"{a}+{variant}" for a in accents if f"{a}+{variant}" not in voices))
    return tuple(voices)


WIDE_VOICES = _wide_voices()
VOICE_SETS = {"demo": DEFAULT_VOICES, "wide": WIDE_VOICES}
# Voices that no set above holds, by variant and, for four of them, by accent too (gbclan and
# gbcwmd): what benchmarks/unseen_voices.py reports transfer from. Three male, three female.
HELD_OUT_VOICES = ("en-gb-x-gbclan+m5", "en-gb-x-gbcwmd+m8", "en-us+adam", "en+steph", "en-gb-x-gbclan+linda",
                   "en+belinda")

# ---------------------------------------------------------------------------- factors and config
@dataclass(frozen=True)
class Factors:
    """espeak-ng settings for one utterance: rate in words per minute, the rest in espeak units
    (pitch and pitch_range 0-100, 50 is the voice's own; volume 0-200, 100 is normal)."""

    voice: str
    rate: int
    pitch: int
    pitch_range: int
    volume: int


_FACTOR_LIMITS = {"rate": (80, 450), "pitch": (0, 100), "pitch_range": (0, 100), "volume": (0, 200)}


@dataclass(frozen=True)
class CorpusConfig:
    """What to make: n utterances from `seed`, factors drawn uniformly from these integer ranges
    (inclusive, units as in `Factors`), and the voice uniformly from `voices`."""

    n: int = 1000
    seed: int = 0
    voices: tuple[str, ...] = DEFAULT_VOICES
    rate: tuple[int, int] = (110, 260)
    pitch: tuple[int, int] = (20, 80)
    pitch_range: tuple[int, int] = (10, 90)
    volume: tuple[int, int] = (60, 140)
    workers: int = 2
    measure: bool = True  # pYIN F0 and RMS; duration is always measured

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ConfigError(f"CorpusConfig.n must be a positive integer, got {self.n!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"CorpusConfig.seed must be an integer, got {self.seed!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"CorpusConfig.workers must be a positive integer, got {self.workers!r}")
        if not self.voices or not all(isinstance(v, str) and v.strip() for v in self.voices):
            raise ConfigError(f"CorpusConfig.voices must be non-empty voice names, got {self.voices!r}")
        for name, (lowest, highest) in _FACTOR_LIMITS.items():
            value = getattr(self, name)
            if not (isinstance(value, (tuple, list)) and len(value) == 2
                    and all(isinstance(v, int) for v in value) and lowest <= value[0] <= value[1] <= highest):
                raise ConfigError(f"CorpusConfig.{name} must be (low, high) integers with "
                                  f"{lowest} <= low <= high <= {highest}, got {value!r}")

    def sample_factors(self, index: int) -> Factors:
        rng = random.Random(f"prosody-corpus-factors:{self.seed}:{index}")
        return Factors(rng.choice(self.voices), rng.randint(*self.rate), rng.randint(*self.pitch),
                       rng.randint(*self.pitch_range), rng.randint(*self.volume))


# ---------------------------------------------------------------------------- espeak-ng
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT in speak_lib.h
_POS_CHARACTER = 1
_CHARS_AUTO = 0
_EE_OK, _EE_NOT_FOUND = 0, 2
_PARAMETER_IDS = {"rate": 1, "volume": 2, "pitch": 3, "pitch_range": 4}  # espeakRATE, ... RANGE
_NOISE_SEED = 1
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.c_void_p)


class EspeakSynth:
    """A private, freshly initialised espeak-ng; `EspeakSynth.shared()` is the process's own.

    espeak-ng keeps synthesis state (pitch flutter, oscillator phase, noise filters) in C globals
    that no call resets, so its samples depend a little on everything it spoke before. Each
    instance therefore loads its own copy of the library (from a temporary copy of the file: the
    dynamic loader hands back the loaded library for a path it knows) and its output depends on
    its own history alone. Calls on one instance are serialised by a lock.
    """

    _shared: EspeakSynth | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise CorpusError("espeak-ng is unavailable: `pip install espeakng-loader` provides "
                              "its library and data") from exc
        library_path = Path(espeakng_loader.get_library_path())
        try:
            self.data_path = Path(espeakng_loader.get_data_path())
            with tempfile.TemporaryDirectory(prefix="espeak-", ignore_cleanup_errors=True) as tmp:
                private_copy = Path(tmp) / library_path.name
                shutil.copyfile(library_path, private_copy)
                lib = ctypes.CDLL(str(private_copy))  # stays mapped after the file is removed
        except (OSError, RuntimeError) as exc:
            raise CorpusError(f"cannot load espeak-ng from {library_path}: {exc}") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(), 0)
        if sample_rate != SAMPLE_RATE:
            raise CorpusError(f"espeak_Initialize with data {self.data_path} returned {sample_rate} "
                              f"(expected the sample rate, {SAMPLE_RATE})")
        self._chunks: list[np.ndarray] = []
        # Held by the instance for its whole life: espeak keeps only the raw function pointer.
        self._callback = _SYNTH_CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib
        # Glottal and breath noise also draw on libc's rand(), which anything may advance.
        self._libc = ctypes.CDLL(None) if os.name == "posix" else None
        self._lock = threading.Lock()

    @classmethod
    def shared(cls) -> EspeakSynth:
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def _collect(self, wav, num_samples: int, events) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0: keep synthesising

    def validate_voice(self, voice: str) -> None:
        """Raise CorpusError unless espeak-ng knows `voice` (e.g. 'en-us', 'en+f3')."""
        with self._lock:
            self._set_voice(voice)

    def _set_voice(self, voice: str) -> None:
        _, _, variant = voice.partition("+")
        if variant and not (self.data_path / "voices" / "!v" / variant).is_file():
            # espeak silently ignores an unknown variant; refuse rather than mislabel the speaker
            raise CorpusError(f"voice {voice!r}: no variant {variant!r} in {self.data_path}/voices/!v")
        status = self._lib.espeak_SetVoiceByName(voice.encode())
        if status != _EE_OK:
            reason = "unknown voice" if status == _EE_NOT_FOUND else f"error {status}"
            raise CorpusError(f"voice {voice!r}: espeak-ng {reason} (try e.g. 'en-us' or 'en+f3')")

    def synthesize_pcm(self, text: str, factors: Factors) -> np.ndarray:
        """(N,) int16 samples at 22050 Hz, espeak-ng's native output."""
        with self._lock:
            self._set_voice(factors.voice)
            for name, parameter_id in _PARAMETER_IDS.items():
                self._lib.espeak_SetParameter(parameter_id, getattr(factors, name), 0)
            self._lib.espeak_ng_SetRandSeed(_NOISE_SEED)
            if self._libc is not None:
                self._libc.srand(_NOISE_SEED)
            encoded = text.encode("utf-8")
            status = self._lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0,
                                            _CHARS_AUTO, None, None)
            samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            self._chunks.clear()
        if status != _EE_OK or samples.size == 0:
            raise CorpusError(f"espeak-ng produced no audio for {text!r} with {factors} (status {status})")
        return samples


def synthesize(text: str, factors: Factors | None = None) -> np.ndarray:
    """Speak `text` with the process's shared espeak-ng: (N,) float32 in [-1, 1) at 22050 Hz.

    `factors` defaults to en-us at espeak's neutral settings. The samples depend a little on
    what the shared instance spoke before; use a new `EspeakSynth` for repeatable output.
    """
    factors = factors or Factors("en-us", 175, 50, 50, 100)
    return EspeakSynth.shared().synthesize_pcm(text, factors).astype(np.float32) / 32768.0


# ---------------------------------------------------------------------------- measurement
# pYIN's Viterbi is quadratic in its pitch bins and linear in frames, so a 23 ms hop and a
# 55-500 Hz band (espeak's F0 at the extreme settings, bar creaky final falls below 55 Hz) keep
# it near a tenth of a CPU second per utterance.
_PYIN_FRAME, _PYIN_HOP, _PYIN_FMIN, _PYIN_FMAX = 1024, 512, 55.0, 500.0
# espeak's fast, wide glides are less periodic than pYIN's default prior on the voicing
# threshold, Beta(2, 18), expects: about 1 utterance in 80 (fast male voices) comes out wholly
# unvoiced. Those are measured again with a looser prior. It is not the first choice because it
# also lets fricatives through as spurious 400 Hz "voiced" frames (octave-confused statistics for
# about 1 utterance in 1000).
_PYIN_BETA, _LOOSE_BETA = (2.0, 18.0), (1.0, 6.0)


@dataclass(frozen=True)
class Measurement:
    duration_s: float
    f0_mean_hz: float  # over pYIN's voiced frames; NaN if none is voiced
    f0_std_hz: float
    rms: float  # root mean square amplitude over voiced frames, full scale = 1


def measure_prosody(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Measurement:
    """Duration, F0 mean and std over voiced frames (librosa.pyin), RMS over the same frames."""
    import librosa

    def pyin(beta: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        f0, voiced, _ = librosa.pyin(wav, fmin=_PYIN_FMIN, fmax=_PYIN_FMAX, sr=sample_rate,
                                     frame_length=_PYIN_FRAME, hop_length=_PYIN_HOP,
                                     beta_parameters=beta)
        return f0, voiced  # (frames,), (frames,)

    f0, voiced = pyin(_PYIN_BETA)
    if not voiced.any():
        f0, voiced = pyin(_LOOSE_BETA)
    duration_s = len(wav) / sample_rate
    if not voiced.any():
        return Measurement(duration_s, math.nan, math.nan, math.nan)
    frame_rms = librosa.feature.rms(y=wav, frame_length=_PYIN_FRAME, hop_length=_PYIN_HOP)[0]
    rms = float(np.sqrt(np.mean(frame_rms[voiced] ** 2)))
    return Measurement(duration_s, float(f0[voiced].mean()), float(f0[voiced].std()), rms)


# ---------------------------------------------------------------------------- the maker
@dataclass(frozen=True)
class _Planned:
    utt_id: str
    sentence: Sentence
    factors: Factors


def _measure_pcm(pcm: np.ndarray) -> Measurement:
    return measure_prosody(pcm.astype(np.float32) / 32768.0)


def _prepare_out_dir(out_dir: Path) -> None:
    """Accept a missing or empty folder, or one this maker wrote before (its factors.csv header)."""
    factors_path = out_dir / "factors.csv"
    if out_dir.exists():
        if not out_dir.is_dir():
            raise CorpusError(f"{out_dir}: exists and is not a folder")
        if any(out_dir.iterdir()):
            try:
                with factors_path.open(encoding="utf-8") as f:
                    header = f.readline().rstrip("\n")
            except OSError:
                header = ""
            if header != ",".join(FACTOR_COLUMNS):
                raise CorpusError(f"{out_dir}: folder is not empty and holds no corpus made by "
                                  f"make_corpus (no {factors_path.name} with its header); refusing "
                                  f"to write into it")
    (out_dir / "wavs").mkdir(parents=True, exist_ok=True)
    # The header alone marks the folder as ours, so an interrupted run can be re-run in place;
    # metadata.csv goes until the end, so no reader sees old text beside new wavs.
    write_atomically(factors_path, ",".join(FACTOR_COLUMNS) + "\n")
    (out_dir / "metadata.csv").unlink(missing_ok=True)


def _format_value(value: float, digits: int) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def _factor_row(item: _Planned, measured: Measurement | None, duration_s: float) -> list[str]:
    f = item.factors
    measured_columns = ([_format_value(measured.f0_mean_hz, 2), _format_value(measured.f0_std_hz, 2),
                         _format_value(measured.rms, 5)] if measured else ["", "", ""])
    return [item.utt_id, f.voice, str(f.rate), str(f.pitch), str(f.pitch_range), str(f.volume),
            f"{duration_s:.4f}", *measured_columns, str(item.sentence.n_words), item.sentence.kind]


@dataclass(frozen=True)
class CorpusSummary:
    out_dir: Path
    n: int
    total_seconds: float
    wall_seconds: float
    stats: dict[str, tuple[float, float, float]]  # column -> (min, mean, max), NaNs skipped

    def format(self) -> str:
        lines = [f"{self.n} utterances, {self.total_seconds / 60:.1f} min of audio, made in "
                 f"{self.wall_seconds:.1f} s -> {self.out_dir}",
                 f"{'factor':<12}{'min':>10}{'mean':>10}{'max':>10}"]
        lines += [f"{name:<12}{lo:>10.4g}{mean:>10.4g}{hi:>10.4g}"
                  for name, (lo, mean, hi) in self.stats.items()]
        return "\n".join(lines)


_SUMMARY_COLUMNS = ("rate", "pitch", "pitch_range", "volume", "n_words", "duration_s",
                    "f0_mean_hz", "f0_std_hz", "rms")


def _summarise(rows: list[list[str]]) -> dict[str, tuple[float, float, float]]:
    stats = {}
    for name in _SUMMARY_COLUMNS:
        column = FACTOR_COLUMNS.index(name)
        values = np.array([float(row[column]) for row in rows if row[column]], dtype=np.float64)
        values = values[~np.isnan(values)]
        if values.size:
            stats[name] = (float(values.min()), float(values.mean()), float(values.max()))
    return stats


def make_corpus(out_dir: str | os.PathLike, config: CorpusConfig | None = None) -> CorpusSummary:
    """Write `metadata.csv` (id|text|text|voice), `wavs/<id>.wav` and `factors.csv` to `out_dir`.

    The same config gives byte-identical files, whatever `workers` is. `out_dir` must be missing,
    empty, or a corpus this function made before (it is then remade in place). Measurement runs
    in a multiprocessing pool, so where processes are spawned (macOS, Windows) a calling script
    needs the usual `if __name__ == "__main__":` guard.
    """
    config = config or CorpusConfig()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    width = max(5, len(str(config.n - 1)))
    planned = [_Planned(f"utt{i:0{width}d}", make_sentence(config.seed, i), config.sample_factors(i))
               for i in range(config.n)]
    synth = EspeakSynth()  # its own fresh library: the samples depend on this corpus alone
    for voice in sorted(set(config.voices)):
        synth.validate_voice(voice)
    _prepare_out_dir(out_dir)

    def speak_and_save(chunk: list[_Planned]) -> list[np.ndarray]:
        pcms = [synth.synthesize_pcm(item.sentence.text, item.factors) for item in chunk]
        for item, pcm in zip(chunk, pcms):  # int16 / 32768 is exact in PCM_16
            save_wav(out_dir / "wavs" / f"{item.utt_id}.wav", pcm.astype(np.float32) / 32768.0,
                     SAMPLE_RATE)
        return pcms

    def factor_rows_of(chunk: list[_Planned], pcms: list[np.ndarray], measuring) -> list[list[str]]:
        measured = measuring.get() if measuring else [None] * len(pcms)
        return [_factor_row(item, m, len(pcm) / SAMPLE_RATE) for item, pcm, m in zip(chunk, pcms, measured)]

    # Speaking takes milliseconds and happens here, in index order; pYIN is the slow part and,
    # being stateless, goes to the pool. One chunk waits queued behind the one being measured.
    factor_rows: list[list[str]] = []
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(multiprocessing.Pool(config.workers)) if config.measure else None
        in_flight: collections.deque = collections.deque()
        for start in range(0, config.n, _CHUNK):
            chunk = planned[start:start + _CHUNK]
            pcms = speak_and_save(chunk)
            in_flight.append((chunk, pcms, pool.map_async(_measure_pcm, pcms, chunksize=1) if pool else None))
            if len(in_flight) > 1:
                factor_rows += factor_rows_of(*in_flight.popleft())
        while in_flight:
            factor_rows += factor_rows_of(*in_flight.popleft())

    kept = {f"{item.utt_id}.wav" for item in planned}
    for stale in (out_dir / "wavs").glob("utt*.wav"):  # left by a larger earlier corpus
        if stale.name not in kept:
            stale.unlink()
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([list(FACTOR_COLUMNS), *factor_rows])
    write_atomically(out_dir / "factors.csv", buffer.getvalue())
    write_atomically(out_dir / "metadata.csv", "".join(
        f"{item.utt_id}|{item.sentence.text}|{item.sentence.text}|{item.factors.voice}\n" for item in planned))

    total = sum(float(row[FACTOR_COLUMNS.index("duration_s")]) for row in factor_rows)
    return CorpusSummary(out_dir, config.n, total, time.perf_counter() - started,
                         _summarise(factor_rows))
