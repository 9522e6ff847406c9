"""prosody_vae: controllable prosody for TTS with a variational reference encoder.

The public API is re-exported here lazily (PEP 562), so `import prosody_vae` stays fast and does
not import torch until a torch-backed name is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .version import __version__

# public name -> submodule that defines it
_EXPORTS = {
    # errors
    "ProsodyVAEError": "plugin.errors",
    "ConfigError": "plugin.errors",
    "AudioError": "plugin.errors",
    "TextError": "plugin.errors",
    "DataError": "plugin.errors",
    "ReferenceInputError": "plugin.errors",
    "CheckpointError": "plugin.errors",
    "CorpusError": "plugin.errors",
    "RunLockedError": "plugin.errors",
    "ControlError": "plugin.errors",
    # audio
    "AudioConfig": "audio.mel",
    "MelSpectrogram": "audio.mel",
    "load_wav": "audio.mel",
    "save_wav": "audio.mel",
    "griffin_lim": "audio.mel",
    # text
    "TextProcessor": "data.text",
    "normalize_text": "data.text",
    # data
    "Utterance": "data.ljspeech",
    "read_metadata": "data.ljspeech",
    "split_train_val": "data.ljspeech",
    "MelCache": "data.ljspeech",
    "TTSDataset": "data.ljspeech",
    "collate_batch": "data.ljspeech",
    "BucketBatchSampler": "data.ljspeech",
    # corpus
    "CorpusConfig": "data.corpus",
    "make_corpus": "data.corpus",
    # the plugin
    "ReferenceEncoder": "plugin.reference",
    "VariationalReferenceEncoder": "plugin.reference",
    "Posterior": "plugin.reference",
    "MeanEncoder": "plugin.reference",
    "condition_on_z": "plugin.reference",
    "ZConditioner": "plugin.reference",
    "FixedBeta": "plugin.capacity",
    "KLAnnealing": "plugin.capacity",
    "CapacityAnnealing": "plugin.capacity",
    "DualAscent": "plugin.capacity",
    "GECO": "plugin.capacity",
    "FreeBits": "plugin.capacity",
    "ControllerConfig": "plugin.capacity",
    "save_pretrained": "plugin.pretrained",
    "from_pretrained": "plugin.pretrained",
    "build_controller": "plugin.capacity",
    # the model
    "TacotronConfig": "model.tacotron",
    "ProsodyTacotron": "model.tacotron",
    "TacotronOutput": "model.tacotron",
    "InferenceOutput": "model.tacotron",
    "LossConfig": "training.losses",
    "LossTerms": "training.losses",
    "TacotronLoss": "training.losses",
    "TrainingError": "plugin.errors",
    # training
    "TrainConfig": "training.config",
    "load_config": "training.config",
    "train": "training.trainer",
    "TrainResult": "training.trainer",
    "keep_freed_memory": "training.cpu_memory",
    "load_model": "training.checkpoint",
    # inference and evaluation
    "Synthesizer": "inference.synthesizer",
    "SynthesisResult": "inference.synthesizer",
    "Calibration": "inference.knobs",
    "Enrolment": "inference.enrolment",
    "calibrate_checkpoint": "inference.calibrate",
    "KNOBS": "inference.knobs",
    "ModelCard": "inference.model_card",
    "model_card": "inference.synthesizer",
    "GlobalVariance": "audio.postfilter",
    "reduce_precision": "inference.quantize",
    "SpeakerTable": "data.speakers",
    "reference_features": "audio.prosody_tracks",
    "UnknownSpeakerError": "data.speakers",
    "speaker_probe": "evaluation.speaker_leakage",
    "cross_speaker_transfer": "evaluation.speaker_leakage",
    # deployment
    "export_reference_encoder_onnx": "inference.export_onnx",
    "OnnxReferenceEncoder": "inference.export_onnx",
    "ExportedSynthesizer": "inference.export_program",
    "ServeConfig": "serve",
    "mel_cepstral_distortion": "evaluation.metrics",
    "f0_track": "evaluation.metrics",
    "compare_f0": "evaluation.metrics",
    "prosody_summary": "evaluation.metrics",
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
    from .audio.mel import AudioConfig, MelSpectrogram, griffin_lim, load_wav, save_wav
    from .plugin.capacity import (GECO, CapacityAnnealing, ControllerConfig, DualAscent, FixedBeta, FreeBits,
                           KLAnnealing, build_controller)
    from .data.corpus import CorpusConfig, make_corpus
    from .data.ljspeech import (BucketBatchSampler, MelCache, TTSDataset, Utterance, collate_batch,
                       read_metadata, split_train_val)
    from .training.checkpoint import load_model
    from .training.config import TrainConfig, load_config
    from .plugin.errors import (AudioError, CheckpointError, ConfigError, ControlError, CorpusError, DataError,
                         ProsodyVAEError, ReferenceInputError, RunLockedError, TextError, TrainingError)
    from .training.trainer import TrainResult, train
    from .plugin.reference import (MeanEncoder, Posterior, ReferenceEncoder, VariationalReferenceEncoder, ZConditioner,
                            condition_on_z)
    from .training.cpu_memory import keep_freed_memory
    from .inference.export_onnx import OnnxReferenceEncoder, export_reference_encoder_onnx
    from .inference.export_program import ExportedSynthesizer
    from .serve import ServeConfig
    from .inference.synthesizer import SynthesisResult, Synthesizer
    from .inference.calibrate import calibrate_checkpoint
    from .inference.enrolment import Enrolment
    from .inference.knobs import KNOBS, Calibration
    from .inference.model_card import ModelCard
    from .inference.synthesizer import model_card
    from .audio.postfilter import GlobalVariance
    from .inference.quantize import reduce_precision
    from .evaluation.speaker_leakage import cross_speaker_transfer, speaker_probe
    from .audio.prosody_tracks import reference_features
    from .data.speakers import SpeakerTable, UnknownSpeakerError
    from .training.losses import LossConfig, LossTerms, TacotronLoss
    from .evaluation.metrics import compare_f0, f0_track, mel_cepstral_distortion, prosody_summary
    from .model.tacotron import InferenceOutput, ProsodyTacotron, TacotronConfig, TacotronOutput
    from .data.text import TextProcessor, normalize_text
