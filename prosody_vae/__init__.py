"""prosody_vae: controllable prosody for TTS with a variational reference encoder.

The public API is re-exported here lazily (PEP 562), so `import prosody_vae` stays fast and does
not import torch until a torch-backed name is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    # errors
    "ProsodyVAEError": "errors",
    "ConfigError": "errors",
    "AudioError": "errors",
    "TextError": "errors",
    "DataError": "errors",
    "ReferenceInputError": "errors",
    "CheckpointError": "errors",
    "CorpusError": "errors",
    "RunLockedError": "errors",
    "ControlError": "errors",
    # audio
    "AudioConfig": "audio",
    "MelSpectrogram": "audio",
    "load_wav": "audio",
    "save_wav": "audio",
    "griffin_lim": "audio",
    # text
    "TextProcessor": "text",
    "normalize_text": "text",
    # data
    "Utterance": "data",
    "read_metadata": "data",
    "split_train_val": "data",
    "MelCache": "data",
    "TTSDataset": "data",
    "collate_batch": "data",
    "BucketBatchSampler": "data",
    # corpus
    "CorpusConfig": "corpus",
    "make_corpus": "corpus",
    # the plugin
    "ReferenceEncoder": "reference",
    "VariationalReferenceEncoder": "reference",
    "Posterior": "reference",
    "MeanEncoder": "reference",
    "condition_on_z": "reference",
    "ZConditioner": "reference",
    "FixedBeta": "capacity",
    "KLAnnealing": "capacity",
    "CapacityAnnealing": "capacity",
    "DualAscent": "capacity",
    "GECO": "capacity",
    "FreeBits": "capacity",
    "ControllerConfig": "capacity",
    "build_controller": "capacity",
    # the model
    "TacotronConfig": "tacotron",
    "ProsodyTacotron": "tacotron",
    "TacotronOutput": "tacotron",
    "InferenceOutput": "tacotron",
    "LossConfig": "losses",
    "LossTerms": "losses",
    "TacotronLoss": "losses",
    "TrainingError": "errors",
    # training
    "TrainConfig": "config",
    "load_config": "config",
    "train": "trainer",
    "TrainResult": "trainer",
    "keep_freed_memory": "cpu_memory",
    "load_model": "checkpoint",
    # inference and evaluation
    "Synthesizer": "infer",
    "SynthesisResult": "infer",
    "Calibration": "controls",
    "calibrate_checkpoint": "controls",
    "KNOBS": "controls",
    "ModelCard": "model_card",
    "model_card": "model_card",
    "GlobalVariance": "postfilter",
    "reduce_precision": "quantize",
    "SpeakerTable": "speakers",
    "reference_features": "prosody_reference",
    "UnknownSpeakerError": "speakers",
    "speaker_probe": "speaker_leakage",
    "cross_speaker_transfer": "speaker_leakage",
    # deployment
    "export_reference_encoder_onnx": "export",
    "OnnxReferenceEncoder": "export",
    "ExportedSynthesizer": "export_synth",
    "ServeConfig": "serve",
    "mel_cepstral_distortion": "metrics",
    "f0_track": "metrics",
    "compare_f0": "metrics",
    "prosody_summary": "metrics",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prosody_vae' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # cache: later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # let type checkers and IDEs see the real names
    from .audio import AudioConfig, MelSpectrogram, griffin_lim, load_wav, save_wav
    from .capacity import (GECO, CapacityAnnealing, ControllerConfig, DualAscent, FixedBeta, FreeBits,
                           KLAnnealing, build_controller)
    from .corpus import CorpusConfig, make_corpus
    from .data import (BucketBatchSampler, MelCache, TTSDataset, Utterance, collate_batch,
                       read_metadata, split_train_val)
    from .checkpoint import load_model
    from .config import TrainConfig, load_config
    from .errors import (AudioError, CheckpointError, ConfigError, ControlError, CorpusError, DataError,
                         ProsodyVAEError, ReferenceInputError, RunLockedError, TextError, TrainingError)
    from .trainer import TrainResult, train
    from .reference import (MeanEncoder, Posterior, ReferenceEncoder, VariationalReferenceEncoder, ZConditioner,
                            condition_on_z)
    from .cpu_memory import keep_freed_memory
    from .export import OnnxReferenceEncoder, export_reference_encoder_onnx
    from .export_synth import ExportedSynthesizer
    from .serve import ServeConfig
    from .infer import SynthesisResult, Synthesizer
    from .controls import KNOBS, Calibration, calibrate_checkpoint
    from .model_card import ModelCard, model_card
    from .postfilter import GlobalVariance
    from .quantize import reduce_precision
    from .speaker_leakage import cross_speaker_transfer, speaker_probe
    from .prosody_reference import reference_features
    from .speakers import SpeakerTable, UnknownSpeakerError
    from .losses import LossConfig, LossTerms, TacotronLoss
    from .metrics import compare_f0, f0_track, mel_cepstral_distortion, prosody_summary
    from .tacotron import InferenceOutput, ProsodyTacotron, TacotronConfig, TacotronOutput
    from .text import TextProcessor, normalize_text
