"""Quality you can read as a number: DNSMOS, speaker similarity, voicing and prosody agreement.

DNSMOS P.835 (Reddy et al. 2022) predicts the mean opinion scores listeners would give a clip,
1 (bad) to 5 (excellent): SIG for the speech itself, BAK for the background, OVRL overall. It is
the ONNX model that the `speechmos` wheel ships, run on 16 kHz audio as its reference
implementation does (clips shorter than 9.01 s are repeated up to that length, longer ones are
scored in 9.01 s windows one second apart and averaged). Noise-like audio sits at the floor,
OVRL ~1.1; espeak-ng speech, which is clean but robotic, scores ~2.3.

Speaker similarity is the cosine of two utterances' speaker embeddings from resemblyzer's
GE2E voice encoder (weights ship in its wheel; 16 kHz, silences trimmed by webrtcvad): 1 for
the same signal, higher for the same voice than for different ones.

Voicing and prosody agreement reuse `metrics`: the voiced fraction is pyin's voiced frames over
all frames, and `prosody_correlations` is Pearson r, over (output, reference) pairs, of F0 mean,
F0 range and speaking rate from `metrics.prosody_summary`.

`QualityMeter` puts these together for one condition of an evaluation (outputs, the references
they were conditioned on, and those references resynthesised through the outputs' vocoder);
a missing optional package turns its numbers into None and is reported in one line.

Both models are optional extras, imported on first use; without them the functions raise
`MissingExtraError` with the pip command.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..audio.mel import AudioConfig, MelSpectrogram, griffin_lim
from ..audio.pitch import frame_features
from ..plugin.errors import ProsodyVAEError
from ..vocoders.registry import run_vocoder
from .metrics import F0Config, ProsodySummary, _check_wav, f0_track, prosody_summary

DNSMOS_INSTALL = "pip install speechmos onnxruntime"
# --no-deps: resemblyzer declares `webrtcvad` (an sdist that needs a C compiler; webrtcvad-wheels
# ships the same module prebuilt) and the obsolete `typing` backport; its real needs (torch,
# librosa, scipy, numpy) are prosody_vae's own dependencies
SPEAKER_INSTALL = "pip install --no-deps resemblyzer webrtcvad-wheels"
MODEL_SAMPLE_RATE = 16000  # both DNSMOS and resemblyzer's encoder
_SILENT_PEAK = 1e-5  # below this resemblyzer's loudness normalisation divides by zero

Vocoder = Callable[[torch.Tensor], torch.Tensor]  # log-mel (B, n_mels, T) -> waveform (B, N) or (B, 1, N)


class MissingExtraError(ProsodyVAEError, ImportError):
    """An optional package that a quality measure needs is not installed (the message has the pip line)."""


# ---------------------------------------------------------------------------- DNSMOS
@dataclass(frozen=True)
class DNSMOSScore:
    ovrl: float  # overall quality, 1-5
    sig: float  # speech signal quality, 1-5
    bak: float  # background noise (5: none), 1-5


@lru_cache(maxsize=1)
def _dnsmos_model():
    try:
        import onnxruntime  # noqa: F401  (speechmos declares no dependencies: check it here)
        import speechmos
        from speechmos.dnsmos import DNSMOS
    except ImportError as exc:
        raise MissingExtraError(f"DNSMOS needs the speechmos and onnxruntime packages ({exc}): "
                                f"{DNSMOS_INSTALL}") from None
    from pathlib import Path

    models = Path(speechmos.__file__).parent / "dnsmos_models"
    return DNSMOS(str(models / "sig_bak_ovr.onnx"), str(models / "model_v8.onnx"))


def _at_16k(wav: np.ndarray, sample_rate: int, name: str) -> np.ndarray:
    import librosa

    wav = _check_wav(wav, name)
    if sample_rate != MODEL_SAMPLE_RATE:
        wav = librosa.resample(wav, orig_sr=sample_rate, target_sr=MODEL_SAMPLE_RATE, res_type="soxr_hq")
    return wav.astype(np.float32)


def dnsmos(wavs: Sequence[np.ndarray], sample_rate: int) -> list[DNSMOSScore]:
    """DNSMOS P.835 of each mono waveform (any rate; resampled to 16 kHz)."""
    model = _dnsmos_model()
    scores = []
    for i, wav in enumerate(wavs):
        # speechmos refuses samples outside [-1, 1]; a saved 16-bit wav would be clipped the same way
        audio = np.clip(_at_16k(wav, sample_rate, f"wavs[{i}]"), -1.0, 1.0)
        result = model(audio, MODEL_SAMPLE_RATE, False)
        scores.append(DNSMOSScore(float(result["ovrl_mos"]), float(result["sig_mos"]), float(result["bak_mos"])))
    return scores


def mean_dnsmos(scores: Sequence[DNSMOSScore]) -> DNSMOSScore:
    return DNSMOSScore(*(float(np.mean([getattr(s, k) for s in scores])) for k in ("ovrl", "sig", "bak")))


# ---------------------------------------------------------------------------- speaker similarity
@lru_cache(maxsize=1)
def _voice_encoder():
    try:
        with warnings.catch_warnings():  # resemblyzer imports a scipy namespace deprecated since 1.8
            warnings.simplefilter("ignore", DeprecationWarning)
            import webrtcvad  # noqa: F401
            from resemblyzer import VoiceEncoder
    except ImportError as exc:
        raise MissingExtraError(f"speaker similarity needs the resemblyzer and webrtcvad packages ({exc}): "
                                f"{SPEAKER_INSTALL}") from None
    return VoiceEncoder(device="cpu", verbose=False)


def speaker_embeddings(wavs: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
    """(B, 256) unit-norm GE2E speaker embeddings; a row of NaN for digital silence (no voice to embed)."""
    encoder = _voice_encoder()  # first: it imports resemblyzer, or says how to install it
    from resemblyzer.audio import normalize_volume, trim_long_silences
    from resemblyzer.hparams import audio_norm_target_dBFS

    rows = []
    for i, wav in enumerate(wavs):
        wav = _at_16k(wav, sample_rate, f"wavs[{i}]")
        if np.abs(wav).max() < _SILENT_PEAK:
            rows.append(np.full(256, np.nan, dtype=np.float32))
            continue
        # resemblyzer.preprocess_wav, except that audio in which the VAD hears no speech (garbled
        # output) is embedded whole rather than as an empty signal
        wav = normalize_volume(wav, audio_norm_target_dBFS, increase_only=True)
        speech = trim_long_silences(wav)
        rows.append(encoder.embed_utterance(speech if len(speech) >= MODEL_SAMPLE_RATE // 10 else wav))
    return np.stack(rows).astype(np.float32)


def speaker_similarity(wavs_a: Sequence[np.ndarray], wavs_b: Sequence[np.ndarray], sample_rate: int) -> list[float]:
    """Cosine similarity of the speaker embeddings of wavs_a[i] and wavs_b[i], pair by pair."""
    if len(wavs_a) != len(wavs_b):
        raise ValueError(f"speaker_similarity needs pairs: got {len(wavs_a)} and {len(wavs_b)} wavs")
    if not len(wavs_a):
        return []
    return cosine(speaker_embeddings(wavs_a, sample_rate), speaker_embeddings(wavs_b, sample_rate))


def cosine(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Row-wise cosine of (B, D) and (B, D)."""
    dot = np.sum(a * b, axis=1)
    return [float(v) for v in dot / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))]


# ---------------------------------------------------------------------------- voicing and prosody
def voiced_fraction(wav: np.ndarray, sample_rate: int = 22050) -> float:
    """Fraction of pyin frames judged voiced (silences count as unvoiced frames)."""
    return float(f0_track(wav, F0Config(sample_rate=sample_rate)).voiced.mean())


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson r over the pairs where both values are finite; NaN with fewer than 3 or no spread."""
    pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return math.nan
    a, b = np.array(pairs).T
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else math.nan


@dataclass(frozen=True)
class ProsodyCorrelations:
    """Pearson r between outputs and their references over pairs (NaN: fewer than 3 pairs with a
    value on both sides, or no spread, e.g. no pitch found in the outputs)."""

    f0_mean: float
    f0_range: float
    rate: float
    n_pairs: int


def summary_correlations(outputs: Sequence[ProsodySummary], references: Sequence[ProsodySummary]
                         ) -> ProsodyCorrelations:
    def r(name: str) -> float:
        return pearson([getattr(s, name) for s in outputs], [getattr(s, name) for s in references])

    return ProsodyCorrelations(r("f0_mean_hz"), r("f0_range_semitones"), r("rate"), len(outputs))


def prosody_correlations(outputs: Sequence[np.ndarray], references: Sequence[np.ndarray], texts: Sequence[str],
                         sample_rate: int = 22050, reference_texts: Optional[Sequence[str]] = None
                         ) -> ProsodyCorrelations:
    """F0 mean, F0 range and speaking rate of outputs[i] against references[i] (pyin on the audio).
    `texts` are the outputs' texts; `reference_texts` the references' (default: the same texts)."""
    reference_texts = texts if reference_texts is None else reference_texts
    if not len(outputs) == len(references) == len(texts) == len(reference_texts):
        raise ValueError(f"prosody_correlations needs one text per pair: {len(outputs)} outputs, "
                         f"{len(references)} references, {len(texts)} and {len(reference_texts)} texts")
    return summary_correlations([prosody_summary(w, sample_rate, text=t) for w, t in zip(outputs, texts)],
                                [prosody_summary(w, sample_rate, text=t) for w, t in zip(references, reference_texts)])


# ---------------------------------------------------------------------------- copy-synthesis
@torch.no_grad()
def copy_synthesis(wavs: Sequence[np.ndarray], audio: AudioConfig, vocoder: Optional[Vocoder] = None,
                   griffin_lim_iterations: int = 60, device: str | torch.device = "cpu") -> list[np.ndarray]:
    """Each wav through its own log-mel and back through `vocoder` (Griffin-Lim when None), on
    `device` (the vocoder's): the quality a perfect acoustic model would get from that vocoder.
    A pitch-aware vocoder (`uses_pitch`) also gets the wav's own F0 track (pitch.py)."""
    mel_spec = MelSpectrogram(audio).to(device)
    outputs = []
    for i, wav in enumerate(wavs):
        mel = mel_spec(torch.from_numpy(_check_wav(wav, f"wavs[{i}]")).to(device))  # (T, n_mels)
        if vocoder is None:
            out = griffin_lim(mel, n_iter=griffin_lim_iterations, mel_spec=mel_spec)
        else:
            f0 = None
            if getattr(vocoder, "uses_pitch", False):  # only then is the F0 track worth extracting
                features = frame_features(wav, audio, source=f"wavs[{i}]")
                f0 = np.where(features.voiced, np.exp(features.log_f0), 0.0)[: mel.shape[0]]  # (T,) Hz
                f0 = torch.as_tensor(f0, dtype=torch.float32, device=device)
            out = run_vocoder(vocoder, mel, f0)
        outputs.append(out.reshape(-1).float().cpu().numpy())
    return outputs


# ---------------------------------------------------------------------------- one condition
@dataclass
class ConditionQuality:
    """Means over one condition's outputs and, where they had any, the references they were
    conditioned on. None: the measure's optional package is missing (or there is no reference)."""

    n_outputs: int
    dnsmos_output: Optional[DNSMOSScore]
    voiced_fraction_output: float
    n_references: int = 0
    dnsmos_reference: Optional[DNSMOSScore] = None
    dnsmos_copy_synthesis: Optional[DNSMOSScore] = None  # references through the outputs' vocoder
    speaker_similarity: Optional[float] = None  # output against the reference it was conditioned on
    voiced_fraction_reference: Optional[float] = None
    correlations: Optional[ProsodyCorrelations] = None


class QualityMeter:
    """Measures conditions with one vocoder (the outputs'), computing what depends on a reference
    once per distinct reference. A measure whose package is missing is logged once and skipped."""

    def __init__(self, audio: AudioConfig, vocoder: Optional[Vocoder] = None, griffin_lim_iterations: int = 60,
                 device: str | torch.device = "cpu", log: Callable[[str], None] = print):
        self.audio, self.vocoder, self.griffin_lim_iterations = audio, vocoder, griffin_lim_iterations
        self.device, self.log = device, log
        self.skipped: dict[str, str] = {}  # measure -> why, with the pip command
        self._cache: dict[tuple[str, str], object] = {}

    @classmethod
    def for_synthesizer(cls, synth, log: Callable[[str], None] = print) -> "QualityMeter":
        """A meter whose copy-synthesis uses the vocoder (hook or Griffin-Lim) that `synth` vocodes with."""
        return cls(synth.audio, synth.vocoder, synth.griffin_lim_iterations, synth.device, log)

    def _try(self, measure: str, compute: Callable):
        if measure in self.skipped:
            return None
        try:
            return compute()
        except MissingExtraError as exc:
            self.skipped[measure] = str(exc)
            self.log(f"quality: {measure} numbers skipped: {exc}")
            return None

    def _cached(self, wav: np.ndarray, what: str, compute: Callable):
        key = (hashlib.sha1(np.ascontiguousarray(wav, dtype=np.float32).tobytes()).hexdigest(), what)
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def copy_synthesis(self, wav: np.ndarray) -> np.ndarray:
        """`wav` through its log-mel and this meter's vocoder (computed once per distinct wav)."""
        return self._cached(wav, "copy", lambda: copy_synthesis([wav], self.audio, self.vocoder,
                                                                self.griffin_lim_iterations, self.device)[0])

    def _reference_dnsmos(self, wav: np.ndarray, copy: bool) -> DNSMOSScore:
        return self._cached(wav, f"dnsmos copy={copy}", lambda: dnsmos(
            [self.copy_synthesis(wav) if copy else wav], self.audio.sample_rate)[0])

    def measure(self, outputs: Sequence[np.ndarray], output_texts: Optional[Sequence[str]] = None,
                references: Sequence[np.ndarray] = (), reference_of: Optional[Sequence[int]] = None,
                reference_texts: Optional[Sequence[str]] = None,
                output_summaries: Optional[Sequence[ProsodySummary]] = None) -> ConditionQuality:
        """`outputs[i]` was conditioned on `references[reference_of[i]]` (default: references[i]);
        texts give speaking rates (NaN without them); `output_summaries` saves recomputing pyin."""
        sr = self.audio.sample_rate
        texts = list(output_texts) if output_texts is not None else [None] * len(outputs)
        if output_summaries is None:
            output_summaries = [prosody_summary(w, sr, text=t) for w, t in zip(outputs, texts)]
        result = ConditionQuality(
            n_outputs=len(outputs), dnsmos_output=self._try("DNSMOS", lambda: mean_dnsmos(dnsmos(outputs, sr))),
            voiced_fraction_output=float(np.mean([s.voiced_fraction for s in output_summaries])))
        if not len(references):
            return result
        reference_of = list(range(len(outputs))) if reference_of is None else list(reference_of)
        ref_texts = list(reference_texts) if reference_texts is not None else [None] * len(references)
        ref_summaries = [self._cached(w, f"summary {t}", lambda w=w, t=t: prosody_summary(w, sr, text=t))
                         for w, t in zip(references, ref_texts)]
        result.n_references = len(references)
        result.voiced_fraction_reference = float(np.mean([s.voiced_fraction for s in ref_summaries]))
        result.dnsmos_reference = self._try(
            "DNSMOS", lambda: mean_dnsmos([self._reference_dnsmos(w, copy=False) for w in references]))
        result.dnsmos_copy_synthesis = self._try(
            "DNSMOS", lambda: mean_dnsmos([self._reference_dnsmos(w, copy=True) for w in references]))

        def similarity() -> float:
            ref_embeddings = [self._cached(w, "speaker", lambda w=w: speaker_embeddings([w], sr)[0]) for w in references]
            paired = np.stack([ref_embeddings[j] for j in reference_of])  # (B, 256)
            return float(np.nanmean(cosine(speaker_embeddings(outputs, sr), paired)))

        result.speaker_similarity = self._try("speaker similarity", similarity)
        result.correlations = summary_correlations(output_summaries, [ref_summaries[j] for j in reference_of])
        return result


def quality_table(conditions: dict[str, ConditionQuality]) -> list[str]:
    """Markdown lines: one row per condition's outputs, and its references and their copy-synthesis."""
    def fmt(value, digits: int = 2) -> str:
        return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

    def row(name: str, n: int, score: Optional[DNSMOSScore], voiced, similarity=None) -> str:
        mos = [fmt(getattr(score, k)) if score else "—" for k in ("ovrl", "sig", "bak")]
        return f"| {name} | {n} | {' | '.join(mos)} | {fmt(voiced)} | {fmt(similarity)} |"

    lines = ["| audio | n | DNSMOS OVRL | SIG | BAK | voiced fraction | speaker similarity to reference |",
             "|---|---|---|---|---|---|---|"]
    for name, q in conditions.items():
        lines.append(row(f"{name}: outputs", q.n_outputs, q.dnsmos_output, q.voiced_fraction_output,
                         q.speaker_similarity))
        if q.n_references:
            lines.append(row(f"{name}: references", q.n_references, q.dnsmos_reference, q.voiced_fraction_reference))
            lines.append(row(f"{name}: references through the same vocoder", q.n_references,
                             q.dnsmos_copy_synthesis, None))
    correlated = {name: q.correlations for name, q in conditions.items() if q.correlations is not None}
    if correlated:
        lines += ["", "Pearson r, output against its reference, over pairs:", "",
                  "| condition | pairs | F0 mean | F0 range | speaking rate |", "|---|---|---|---|---|",
                  *(f"| {name} | {c.n_pairs} | {fmt(c.f0_mean, 3)} | {fmt(c.f0_range, 3)} | {fmt(c.rate, 3)} |"
                    for name, c in correlated.items())]
    return lines


QUALITY_NOTE = ("DNSMOS P.835 (1-5, higher is better): noise-like audio scores ~1.1, espeak-ng references "
                "~2.3. Copy-synthesis (a reference's own mel through the outputs' vocoder) is the ceiling "
                "that vocoder allows. Speaker similarity: cosine of resemblyzer speaker embeddings. "
                "F0 by pyin on the audio; — means not measured (package missing) or no pitch found.")
