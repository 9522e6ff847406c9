"""Deployment export of the whole synthesiser: three torch.export programs and a host-side loop.

    from prosody_vae.inference.export_program import ExportedSynthesizer
    ExportedSynthesizer.from_model(model).save("synth/")      # text.pt2, step.pt2, postnet.pt2, synth.json
    synth = ExportedSynthesizer.load("synth/")                 # the programs run on torch alone
    out = synth.infer(text, text_lengths, z, generator=g)      # an InferenceOutput, as model.infer returns

Free-running Tacotron decoding is a loop whose length depends on the data (each item's stop
token), so it is not one graph. The graph boundary is drawn around the parts without data-dependent
control flow, and the host keeps the loop (`decoder.run_free`, as eager inference), the stop
decisions and the random draws:

- text program: text (B, L), text_lengths (B,), z (B, Z) [, speaker_ids (B,)] -> the utterance
  tensors the decoder reads every step: memory (B, L, D), mask (B, L) bool and, for "location"
  and "forward" attention, the attention keys (B, L, A), computed once per utterance as in eager
  mode (the step program hands them to `attention.start` as precomputed keys); a model with a
  pitch range head also returns its ln spread (B,) last, which the host applies to the F0.
- step program: previous frame (B, n_mels), state (the tensors of `decoder.DecoderState`),
  utterance, prenet noise (one (B, prenet_dims[i]) uniform draw per prenet layer; none when
  prenet dropout is off at inference) -> out (B, OutputLayout.size), new state. It is the
  decoder's own `DecoderPass.infer_step` on plain weights.
- postnet program: frames (B, T, n_mels), mel_lengths (B,) -> mel_postnet (B, T, n_mels),
  pad_value beyond each length.

Batch, tokens and frames are dynamic dimensions (`torch.export.Dim`) in all three programs, so one
export serves any batch and text length; items of a batch stop on their own, as in eager mode.
The text and postnet programs are traced non-strict, the step strict (TorchDynamo; see
`_export_programs`). The text encoder's BiLSTM is a `scan` (a torch 2.13 prototype), as nn.LSTM
would be unrolled over the example's token count.

Equal to eager `ProsodyTacotron.infer` up to float rounding: the host draws the prenet noise with
`layers.dropout_noise`, as eager mode does (one generator, or one per item), so the same generator
gives the same mel. The programs are traced on the plain path (speedups.py): the fast path's
oneDNN-packed weights are private ops that torch.export does not trace, so rounding differs from
an eager run on the fast path. One eager construct is rewritten with the same values: the packed
BiLSTM runs unpacked, the forward direction over the padded sequence (it is causal and padding
comes last), the backward one over each item's valid span reversed in place.

Limits: eval mode, float32 on CPU (no autocast); the programs hold a copy of the weights taken at
export; the step is re-entered from Python once per r frames, so the host loop's overhead stays.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.export import Dim

from ..model.decoder import DecoderPass, DecoderState, OutputLayout, SplitLSTMCell, StepWeights, run_free
from ..model.inputs import check_speaker_ids, check_synthesis_args, check_text
from ..model.layers import Generators, dropout_noise
from ..model.tacotron import InferenceOutput, ProsodyTacotron, TacotronConfig, inference_output
from ..plugin.errors import CheckpointError, ConfigError
from ..plugin.masked_norm import length_mask
from ..plugin.reference import condition_on_z
from ..plugin.speedups import fast_path

STATE_NAMES = DecoderState._fields
PROGRAM_FILES = {"text": "text.pt2", "step": "step.pt2", "postnet": "postnet.pt2"}
SPEC_FILE = "synth.json"
FORMAT_VERSION = 1


def _unpacked_bilstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One-layer BiLSTM over x (B, L, C) equal to it on packed sequences: (B, L, 2H), zero at padding.

    Both directions run as one forward-in-time `scan` (torch.export keeps its length dynamic, where
    nn.LSTM is unrolled over the example's length); the backward direction reads each valid span
    reversed in place, which is what packing gives it."""
    try:
        from torch._higher_order_ops.scan import scan  # a prototype: torch 2.13 has no public scan
    except ImportError as error:
        raise ConfigError(f"exporting the synthesiser needs torch's scan operator (torch 2.13 has it); "
                          f"this is torch {torch.__version__}") from error
    positions = torch.arange(x.shape[1], device=x.device)[None]  # (1, L)
    # reverses each valid span and keeps padding where it is: a permutation that is its own inverse
    span_reversed = torch.where(mask, lengths[:, None] - 1 - positions, positions)[:, :, None]  # (B, L, 1)
    inputs = torch.stack([x, x.gather(1, span_reversed.expand_as(x))], dim=2)  # (B, L, 2, C)
    weights = {name: torch.stack([getattr(lstm, f"{name}_l0"), getattr(lstm, f"{name}_l0_reverse")])
               for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}  # (2, ...) per direction
    input_gates = (torch.einsum("bldc,dgc->bldg", inputs, weights["weight_ih"])
                   + weights["bias_ih"] + weights["bias_hh"])  # (B, L, 2, 4H)
    recurrent_weight = weights["weight_hh"]  # (2, 4H, H)

    def cell(carry: tuple[torch.Tensor, torch.Tensor], gates: torch.Tensor):  # gates (B, 2, 4H)
        h, c = carry  # (B, 2, H)
        gates = gates + torch.einsum("bdh,dgh->bdg", h, recurrent_weight)
        h, c = SplitLSTMCell.cell(rearrange(gates, "b d g -> (b d) g"), rearrange(c, "b d h -> (b d) h"))
        h, c = (rearrange(t, "(b d) h -> b d h", d=2) for t in (h, c))
        return (h, c), h.clone()  # scan's outputs may not alias its carry

    zeros = x.new_zeros(x.shape[0], 2, lstm.hidden_size)
    _, hidden = scan(cell, (zeros, zeros.clone()), input_gates, dim=1)  # (B, L, 2, H)
    forward, backward = hidden.unbind(dim=2)
    backward = backward.gather(1, span_reversed.expand_as(backward))
    return torch.where(mask[:, :, None], torch.cat([forward, backward], dim=2), 0.0)


class _TextProgram(nn.Module):
    """(text, text_lengths, z, speaker_ids tuple) -> utterance (memory, mask[, keys]); eval mode."""

    def __init__(self, model: ProsodyTacotron, keys: Optional[nn.Linear]) -> None:
        super().__init__()
        self.embedding, self.encoder, self.speaker_embedding = model.embedding, model.encoder, model.speaker_embedding
        self.keys = keys
        self.pitch_range_head = model.pitch_range_head

    def forward(self, text: torch.Tensor, lengths: torch.Tensor, z: torch.Tensor,
                speaker_ids: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        mask = length_mask(lengths, text.shape[1])  # (B, L)
        x = torch.where(mask[:, None], rearrange(self.embedding(text), "b l e -> b e l"), 0.0)
        for conv, norm in zip(self.encoder.convs, self.encoder.norms):
            x = F.relu(norm(conv(x), mask))  # (B, C, L)
        memory = condition_on_z(_unpacked_bilstm(self.encoder.lstm, rearrange(x, "b c l -> b l c"), lengths, mask), z)
        if speaker_ids:
            memory = condition_on_z(memory, self.speaker_embedding(speaker_ids[0]))  # (B, L, E + Z + S)
        utterance = (memory, mask) if self.keys is None else (memory, mask, self.keys(memory))
        return utterance if self.pitch_range_head is None else (*utterance, self.pitch_range_head(memory, mask))


def _split_text_outputs(config: TacotronConfig, outputs: tuple[torch.Tensor, ...]
                        ) -> tuple[tuple[torch.Tensor, ...], Optional[torch.Tensor]]:
    """The text program's outputs as (the utterance the step reads, the pitch range head's ln spread or None)."""
    return (tuple(outputs[:-1]), outputs[-1]) if config.pitch_range_head else (tuple(outputs), None)


class _StepProgram(nn.Module):
    """One free-running decoder step: the decoder's own `DecoderPass.infer_step` on plain weights."""

    def __init__(self, model: ProsodyTacotron) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(self, frame: torch.Tensor, state: tuple[torch.Tensor, ...], utterance: tuple[torch.Tensor, ...],
                prenet_noise: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        memory, mask, *keys = utterance  # keys: location-sensitive attention's, precomputed once
        decoding = DecoderPass(self.decoder, memory, mask, StepWeights.plain(self.decoder),
                               keys=keys[0] if keys else None, state=DecoderState(*state))
        out = decoding.infer_step(frame, noise=prenet_noise or None)  # (B, OutputLayout.size)
        return out, tuple(decoding.state)


class _PostnetProgram(nn.Module):
    """frames (B, T, n_mels), lengths (B,) -> mel_postnet, pad_value beyond each length (`add_postnet`)."""

    def __init__(self, model: ProsodyTacotron) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model.add_postnet(frames, length_mask(lengths, frames.shape[1]))[1]


def prenet_noise(config: TacotronConfig, batch: int, generator: Generators = None) -> tuple[torch.Tensor, ...]:
    """One step's prenet dropout draws on the CPU, made as eager `Prenet.forward` makes them, so a
    generator advances as in `model.infer`; none when prenet dropout is off at inference."""
    if not (config.prenet_dropout_at_inference and config.prenet_dropout > 0.0):
        return ()
    return tuple(dropout_noise((batch, dim), generator).cpu() for dim in config.prenet_dims)


@torch.no_grad()
@fast_path(False)  # the fast path's packed weights are private ops torch.export cannot trace
def _export_programs(model: ProsodyTacotron) -> dict[str, torch.export.ExportedProgram]:
    config = model.config
    model = copy.deepcopy(model).to("cpu", torch.float32).eval().requires_grad_(False)
    keys = getattr(model.decoder.attention, "keys", None)  # applied by the text program, once per utterance
    batch, tokens, frames = Dim("batch"), Dim("tokens"), Dim("frames")
    n_batch, n_tokens = 2, 7  # distinct sizes, so no two dynamic dimensions are taken as equal
    text = torch.randint(1, config.n_symbols, (n_batch, n_tokens))
    lengths = torch.tensor([n_tokens, n_tokens - 3])
    speaker = (torch.zeros(n_batch, dtype=torch.long),) if config.n_speakers else ()
    text_args = (text, lengths, torch.randn(n_batch, config.latent_dim), speaker)
    per_item = {0: batch}
    per_token = {0: batch, 1: tokens}
    programs = {"text": torch.export.export(
        _TextProgram(model, keys), text_args, strict=False,
        dynamic_shapes=(per_token, per_item, per_item, tuple(per_item for _ in speaker)))}
    utterance, _ = _split_text_outputs(config, programs["text"].module()(*text_args))
    state = tuple(DecoderState.initial(config, n_batch, n_tokens, utterance[0].shape[2]))
    noise = prenet_noise(config, n_batch)
    step_args = (torch.randn(n_batch, OutputLayout.of(config).input_size), state, utterance, noise)
    # strict (TorchDynamo) tracing: the non-strict tracer turns attention's `len(windows)` into a
    # constant and so fixes the batch size
    programs["step"] = torch.export.export(
        _StepProgram(model), step_args, strict=True,
        dynamic_shapes=(per_item, (per_item,) * 5 + (per_token,) * 2, (per_token,) * len(utterance),
                        (per_item,) * len(noise)))
    n_frames = 5 * config.reduction_factor
    postnet_args = (torch.randn(n_batch, n_frames, config.n_mels), torch.tensor([n_frames, n_frames - 3]))
    programs["postnet"] = torch.export.export(_PostnetProgram(model), postnet_args, strict=False,
                                              dynamic_shapes=({0: batch, 1: frames}, per_item))
    return programs


class ExportedSynthesizer:
    """Free-running synthesis from the three exported programs; see the module docstring."""

    def __init__(self, config: TacotronConfig, programs: dict[str, torch.export.ExportedProgram]) -> None:
        self.config, self.programs = config, programs
        self.text_program, self.step, self.postnet = (programs[name].module() for name in ("text", "step", "postnet"))

    @classmethod
    def from_model(cls, model: ProsodyTacotron) -> "ExportedSynthesizer":
        """Export `model` (not modified; its eval-mode behaviour is what is exported)."""
        if not isinstance(model, ProsodyTacotron):
            raise ConfigError(f"expected a ProsodyTacotron, got {type(model).__name__}")
        return cls(model.config, _export_programs(model))

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, program in self.programs.items():
            torch.export.save(program, directory / PROGRAM_FILES[name])
        spec = {"format_version": FORMAT_VERSION, "torch_version": torch.__version__, "tacotron": self.config.to_dict()}
        (directory / SPEC_FILE).write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ExportedSynthesizer":
        directory = Path(directory)
        missing = [name for name in (SPEC_FILE, *PROGRAM_FILES.values()) if not (directory / name).is_file()]
        if missing:
            raise CheckpointError(f"{directory}: not an exported synthesiser, missing {missing}")
        try:
            spec = json.loads((directory / SPEC_FILE).read_text(encoding="utf-8"))
            version, config = spec["format_version"], TacotronConfig.from_dict(spec["tacotron"])
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{directory / SPEC_FILE}: unreadable spec ({error})") from error
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{directory / SPEC_FILE}: format_version {version}, this code reads "
                                  f"{FORMAT_VERSION}; export the model again")
        return cls(config, {name: torch.export.load(directory / file) for name, file in PROGRAM_FILES.items()})

    @torch.no_grad()
    def infer(self, text: torch.Tensor, text_lengths: torch.Tensor, z: Optional[torch.Tensor] = None,
              speaker_ids: Optional[torch.Tensor] = None, max_decoder_steps: Optional[int] = None,
              generator: Generators = None) -> InferenceOutput:
        """As `ProsodyTacotron.infer`: z (B, latent_dim), None for the prior mean; the same generator(s)
        draw the same prenet noise. Tensors on CPU."""
        config = self.config
        text_lengths = check_text(text, text_lengths, config.n_symbols)
        batch, n_tokens = text.shape
        max_steps = check_synthesis_args(config, batch, z, max_decoder_steps)
        check_speaker_ids(speaker_ids, batch, config.n_speakers)
        z = torch.zeros(batch, config.latent_dim) if z is None else z
        speaker = () if speaker_ids is None else (speaker_ids,)
        utterance, spread = _split_text_outputs(config, self.text_program(text, text_lengths, z.float(), speaker))
        state = tuple(DecoderState.initial(config, batch, n_tokens, utterance[0].shape[2]))

        def step(frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal state
            out, state = self.step(frame, state, utterance, prenet_noise(config, batch, generator))
            return out, state[STATE_NAMES.index("alignment")]

        layout = OutputLayout.of(config)
        out, alignments, stop_steps, hit_max = run_free(step, torch.zeros(batch, layout.input_size), layout, max_steps,
                                                        config.stop_threshold, text_lengths, config.stop_gate_tokens)
        mel_postnet = self.postnet(layout.frames(out), stop_steps * config.reduction_factor)
        return inference_output(config, out, mel_postnet, alignments, stop_steps, hit_max, max_steps, stacklevel=4,
                                log_pitch_spread=spread)
