"""Quality numbers on real espeak-ng speech: DNSMOS, speaker similarity, voicing, prosody agreement,
copy-synthesis, and what happens when an optional package is missing."""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest
import torch

from prosody_vae.evaluation import quality
from prosody_vae.audio.mel import AudioConfig
from prosody_vae.data.corpus import SAMPLE_RATE, Factors, synthesize
from prosody_vae.plugin.errors import ProsodyVAEError
from prosody_vae.evaluation.metrics import mel_cepstral_distortion
from prosody_vae.evaluation.quality import (DNSMOS_INSTALL, SPEAKER_INSTALL, MissingExtraError, QualityMeter, copy_synthesis,
                                 dnsmos, pearson, prosody_correlations, quality_table, speaker_embeddings,
                                 speaker_similarity, voiced_fraction)

TEXT_A = "The painter carried a wooden ladder across the river."
TEXT_B = "We bought apples, bread and honey at the market."
SHORT_A, SHORT_B = "Please wash seven baskets.", "Did you find the golden key?"  # pyin costs ~0.4 s per second of audio


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


needs_dnsmos = pytest.mark.skipif(not _installed("speechmos", "onnxruntime"),
                                  reason=f"DNSMOS extra not installed: {DNSMOS_INSTALL}")
needs_speaker = pytest.mark.skipif(not _installed("resemblyzer", "webrtcvad"),
                                   reason=f"speaker-similarity extra not installed: {SPEAKER_INSTALL}")


def speak(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> np.ndarray:
    return synthesize(text, Factors(voice, rate, pitch, 50, 100))


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return speak(TEXT_A)


@pytest.fixture
def fresh_models():
    """Forget the loaded models, so an import is tried again (and forget a simulated failure after)."""
    quality._dnsmos_model.cache_clear()
    quality._voice_encoder.cache_clear()
    yield
    quality._dnsmos_model.cache_clear()
    quality._voice_encoder.cache_clear()


# ---------------------------------------------------------------------------- DNSMOS
@needs_dnsmos
@pytest.mark.slow
def test_dnsmos_ranks_clean_speech_above_noise_clipping_and_buried_speech(clean):
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(len(clean))).astype(np.float32)
    clipped = np.clip(clean * 50, -0.3, 0.3)  # hard clipping: the waveform is nearly a square wave
    buried = clean + 0.3 * np.abs(clean).max() * rng.standard_normal(len(clean)).astype(np.float32)
    scores = dnsmos([clean, noise, clipped, buried], SAMPLE_RATE)
    assert all(1.0 <= getattr(s, k) <= 5.0 for s in scores for k in ("ovrl", "sig", "bak"))
    ovrl = [s.ovrl for s in scores]
    assert ovrl[0] > max(ovrl[1:]) + 0.5, ovrl  # clean espeak-ng speech well above every damaged version
    assert scores[1].bak < scores[0].bak and scores[3].bak < scores[0].bak  # noise is heard as background
    assert dnsmos([clean], SAMPLE_RATE) == scores[:1]  # deterministic, alone or in a batch


# ---------------------------------------------------------------------------- speaker similarity
@needs_speaker
def test_speaker_similarity_is_higher_for_the_same_voice_than_for_another(clean):
    male_a, male_b = speak(TEXT_A, "en-us+m1"), speak(TEXT_B, "en-us+m1")
    female_b = speak(TEXT_B, "en-us+f3")
    same, different = speaker_similarity([male_a, male_a], [male_b, female_b], SAMPLE_RATE)
    assert same > different + 0.1, (same, different)
    embeddings = speaker_embeddings([male_a, np.zeros(SAMPLE_RATE, np.float32)], SAMPLE_RATE)
    assert embeddings.shape == (2, 256)
    assert np.linalg.norm(embeddings[0]) == pytest.approx(1.0, abs=1e-5)
    assert np.isnan(embeddings[1]).all()  # digital silence has no speaker
    assert speaker_similarity([male_a], [male_a], SAMPLE_RATE)[0] == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------------------- voicing and prosody
def test_voiced_fraction_of_a_harmonic_tone_is_high_and_of_noise_low():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = sum(0.2 / k * np.sin(2 * np.pi * 150 * k * t) for k in range(1, 8)).astype(np.float32)
    noise = (0.1 * np.random.default_rng(0).standard_normal(SAMPLE_RATE)).astype(np.float32)
    assert voiced_fraction(tone, SAMPLE_RATE) > 0.9
    assert voiced_fraction(noise, SAMPLE_RATE) < 0.1


@pytest.mark.slow
def test_prosody_correlations_of_references_against_themselves_are_one():
    voices = [("en-us+m1", 120, 30), ("en-us+f3", 240, 70), ("en+m3", 170, 50), ("en+f2", 200, 40)]
    texts = [SHORT_A, SHORT_B, SHORT_A, SHORT_B]
    wavs = [speak(text, voice, rate, pitch) for text, (voice, rate, pitch) in zip(texts, voices)]
    same = prosody_correlations(wavs, wavs, texts, SAMPLE_RATE)
    assert same.n_pairs == 4
    assert (same.f0_mean, same.f0_range, same.rate) == pytest.approx((1.0, 1.0, 1.0))
    crossed = prosody_correlations(wavs, wavs[::-1], texts, SAMPLE_RATE, reference_texts=texts[::-1])
    assert crossed.f0_mean < 0.9  # not 1 by construction: pairing the wrong references breaks it


def test_pearson_needs_three_finite_pairs_with_spread():
    assert pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]) > 0.9
    assert math.isnan(pearson([1.0, 2.0, math.nan], [1.0, 2.0, 3.0]))
    assert math.isnan(pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


# ---------------------------------------------------------------------------- copy-synthesis
def test_copy_synthesis_hands_the_vocoder_a_hifigan_layout_mel_and_griffin_lim_keeps_the_spectrum(clean):
    audio = AudioConfig()
    seen = []

    def vocoder(mel: torch.Tensor) -> torch.Tensor:  # a stand-in with a real vocoder's contract
        seen.append(tuple(mel.shape))
        return torch.zeros(mel.shape[0], 1, mel.shape[2] * audio.hop_length)

    out = copy_synthesis([clean], audio, vocoder)[0]
    frames = seen[0][2]
    assert seen == [(1, audio.n_mels, frames)] and out.shape == (frames * audio.hop_length,)
    resynthesised = copy_synthesis([clean], audio, griffin_lim_iterations=16)[0]
    noise = (0.1 * np.random.default_rng(0).standard_normal(len(clean))).astype(np.float32)
    assert mel_cepstral_distortion(clean, resynthesised) < mel_cepstral_distortion(clean, noise) / 2


# ---------------------------------------------------------------------------- missing extras
def test_missing_extras_raise_with_the_pip_command(monkeypatch, fresh_models, clean):
    monkeypatch.setitem(sys.modules, "speechmos", None)  # `import speechmos` now raises ImportError
    with pytest.raises(MissingExtraError, match="pip install speechmos onnxruntime") as caught:
        dnsmos([clean], SAMPLE_RATE)
    assert isinstance(caught.value, ProsodyVAEError) and isinstance(caught.value, ImportError)
    monkeypatch.setitem(sys.modules, "resemblyzer", None)
    with pytest.raises(MissingExtraError, match="pip install --no-deps resemblyzer webrtcvad-wheels"):
        speaker_similarity([clean], [clean], SAMPLE_RATE)


@pytest.mark.slow
def test_meter_without_the_extras_logs_one_line_each_and_still_measures(monkeypatch, fresh_models):
    monkeypatch.setitem(sys.modules, "speechmos", None)
    monkeypatch.setitem(sys.modules, "resemblyzer", None)
    lines: list[str] = []
    meter = QualityMeter(AudioConfig(), log=lines.append)
    texts = [SHORT_A, SHORT_B, SHORT_A]
    references = [speak(t, v, r, p) for t, (v, r, p) in zip(texts, [("en-us+m1", 130, 30), ("en-us+f3", 230, 70),
                                                                    ("en+m3", 180, 50)])]
    for _ in range(2):
        result = meter.measure(references, texts, references, reference_texts=texts)
    assert len(lines) == 2 and set(meter.skipped) == {"DNSMOS", "speaker similarity"}
    assert DNSMOS_INSTALL in lines[0] and SPEAKER_INSTALL in lines[1]
    assert result.dnsmos_output is result.dnsmos_reference is result.dnsmos_copy_synthesis is None
    assert result.speaker_similarity is None
    assert result.voiced_fraction_output == result.voiced_fraction_reference > 0.3
    assert result.correlations.f0_mean == pytest.approx(1.0)
    table = "\n".join(quality_table({"self": result}))
    assert "| self: outputs | 3 | — | — | — |" in table


# ---------------------------------------------------------------------------- one condition, end to end
@needs_dnsmos
@needs_speaker
@pytest.mark.slow
def test_meter_on_griffin_lim_copies_matches_copy_synthesis_and_the_reference_speakers():
    """Outputs that are the references' own Griffin-Lim copies: a perfect acoustic model. (Voices
    above 100 Hz: Griffin-Lim of a ~75 Hz voice comes out without a pitch pyin can find.)"""
    texts = [TEXT_A, TEXT_B, TEXT_A]
    # 2.2-2.8 s each: DNSMOS repeats a clip up to 9 s and scores one window per further second
    references = [speak(t, v, r, p) for t, (v, r, p) in zip(texts, [("en-us", 150, 60), ("en-us+f3", 175, 70),
                                                                    ("en+m3", 160, 50)])]
    assert all(2.25 < len(w) / SAMPLE_RATE < 2.75 for w in references)
    audio = AudioConfig()
    meter = QualityMeter(audio, griffin_lim_iterations=16, log=pytest.fail)
    outputs = [meter.copy_synthesis(w) for w in references]  # the meter reuses them as the copy-synthesis
    result = meter.measure(outputs, texts, references, reference_texts=texts)
    assert result.n_outputs == result.n_references == 3
    assert result.dnsmos_copy_synthesis == result.dnsmos_output
    other_voice = float(np.mean(speaker_similarity(references, references[1:] + references[:1], SAMPLE_RATE)))
    assert result.speaker_similarity > other_voice
    assert result.correlations.f0_mean > 0.9 and result.correlations.rate > 0.9
