"""Deployment export of the reference encoder: posterior mean and std as an ONNX graph.

    from prosody_vae.inference.export_onnx import export_reference_encoder_onnx, OnnxReferenceEncoder
    export_reference_encoder_onnx(model.reference_encoder, "ref.onnx")
    mean, std = OnnxReferenceEncoder("ref.onnx")(mel, mel_lengths)   # numpy (B, T, n_mels), (B,)

The graph takes `mel` (B, T, n_mels) float32 and `mel_lengths` (B,) int64, both axes dynamic,
(plus `text_summary` (B, D) for a "V+T" encoder and `speaker` (B, S) for "V+T+S") and returns the
posterior `mean` and `std` (B, latent_dim): z = mean is the transfer choice, mean + t * std * eps a
sample. Masking by length is part of the graph (padding never changes the posterior, as in eager
mode), and the GRU becomes an ONNX GRU op, so one file serves any batch and reference length.
Inputs are not checked inside the graph: validate them first (e.g. `Synthesizer.reference_mel`).

Why the TorchScript-based exporter (`dynamo=False`): torch 2.13's default torch.export-based
exporter unrolls the GRU over the example's frame count, fixing the time axis, and needs the
extra `onnxscript` package. The TorchScript exporter is deprecated but keeps the time axis
dynamic; its deprecation warnings are silenced here so callers see only real problems.

The whole synthesiser exports too, as torch.export programs and a host loop (inference/export_program.py:
free-running decoding stops per item on data, so the decoder step is the graph and the host drives
the loop). For CPU serving, `Synthesizer(precision="int8")` (quantize.py) is the fastest path.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..plugin.errors import ConfigError, ReferenceInputError
from ..plugin.reference import MeanEncoder, VariationalReferenceEncoder

OPSET = 17


def _example_inputs(encoder: VariationalReferenceEncoder) -> tuple[torch.Tensor, ...]:
    """Two references of different lengths, so no shape or length is specialised as a constant."""
    mel = torch.randn(2, 48, encoder.n_mels)
    inputs = [mel, torch.tensor([48, 29])]
    if encoder.text_summary_dim:
        inputs.append(torch.randn(2, encoder.text_summary_dim))
    if encoder.speaker_dim:
        inputs.append(torch.randn(2, encoder.speaker_dim))
    return tuple(inputs)


def _input_names(encoder: VariationalReferenceEncoder) -> list[str]:
    return (["mel", "mel_lengths"] + (["text_summary"] if encoder.text_summary_dim else [])
            + (["speaker"] if encoder.speaker_dim else []))


def export_reference_encoder_onnx(encoder: VariationalReferenceEncoder, path: str | os.PathLike) -> Path:
    """Write `encoder`'s posterior (mean, std) as ONNX to `path`; the encoder itself is not modified.
    A "V+T" encoder's graph takes a text summary input (its learned no-transcript vector is
    `encoder.no_text`, to pass when the transcript is unknown)."""
    if not isinstance(encoder, VariationalReferenceEncoder):
        raise ConfigError(f"expected a VariationalReferenceEncoder, got {type(encoder).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: the directory {path.parent} does not exist")
    # a CPU float32 copy in eval mode: the exporter restores train/eval flags on the module it gets,
    # and BatchNorm must use its running statistics
    module = MeanEncoder(copy.deepcopy(encoder).to("cpu", torch.float32)).eval()
    names = _input_names(encoder)
    batch_axis = {0: "batch"}
    dynamic_axes = {"mel": {0: "batch", 1: "frames"}, "mean": batch_axis, "std": batch_axis,
                    **{name: batch_axis for name in names[1:]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # "batch size other than 1 with GRU": no initial state is an input, so the warning does not apply
        warnings.filterwarnings("ignore", message=".*GRU.*")
        warnings.filterwarnings("ignore", message=".*aten::index.*")  # lengths - 1 >= 0 after validation
        # nn.GRU's own input-size checks; the graph is tested at other batches and lengths
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, _example_inputs(encoder), str(path), dynamo=False, opset_version=OPSET,
                          input_names=names, output_names=["mean", "std"], dynamic_axes=dynamic_axes)
    return path


class OnnxReferenceEncoder:
    """An exported reference encoder run by onnxruntime (CPU): numpy or tensors in, numpy (mean, std) out."""

    def __init__(self, path: str | os.PathLike, threads: Optional[int] = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError("running an ONNX export needs onnxruntime: pip install 'prosody_vae[export]'") from None
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, mel, mel_lengths, text_summary=None, speaker=None) -> tuple[np.ndarray, np.ndarray]:
        given = {"mel": mel, "mel_lengths": mel_lengths, "text_summary": text_summary, "speaker": speaker}
        missing = [name for name in self.input_names if given[name] is None]
        if missing:
            raise ReferenceInputError(f"this ONNX reference encoder needs {missing}")
        extra = [name for name, value in given.items() if value is not None and name not in self.input_names]
        if extra:
            raise ReferenceInputError(f"this ONNX reference encoder takes no {extra}")
        feeds = {name: np.asarray(given[name], dtype=np.int64 if name == "mel_lengths" else np.float32)
                 for name in self.input_names}
        mean, std = self.session.run(["mean", "std"], feeds)
        return mean, std
