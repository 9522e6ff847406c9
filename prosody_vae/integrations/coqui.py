"""Coqui TTS: its Tacotron2, config, data, trainer and synthesiser, with our prosody latent.

    from prosody_vae.integrations.coqui import ProsodySynthesizer, ProsodyTacotron2, ProsodyTacotron2Config
    config = ProsodyTacotron2Config(prosody_vae=ProsodyVAEArgs(capacity=10.0))  # the switch
    model = ProsodyTacotron2.init_from_config(config)
    Trainer(TrainerArgs(), config, out, model=model, train_samples=..., eval_samples=...).fit()
    synth = ProsodySynthesizer(tts_checkpoint="run/best_model.pth", tts_config_path="run/config.json")
    wav = synth.tts("Hello.", style_wav="slow.wav")          # Coqui's own call; the reference arrives
    wav = synth.tts("Hello.", mode="sample", temperature=0.7, seed=3)   # a prior draw, repeatable

What changes against Coqui's own Capacitron (TTS/tts/layers/tacotron/capacitron_layers.py):
- The `capacitron_vae_layer` slot holds `ProsodyLayer`: our VariationalReferenceEncoder (posterior
  "V": no transcript of the reference is needed) and a `DualAscent` controller, whose beta enters
  linearly and is projected onto [0, beta_max], so it cannot be trapped at 0 as Capacitron's
  softplus beta can. The controller's state (beta, its step) travels in the model's state_dict
  (nn.Module extra state), so Coqui's own checkpoints and `--continue_path` resume it exactly.
- The KL term is added in `train_step`: beta * (KL - C) / (mean frames * num_mels), KL in nats per
  utterance (plugin/capacity.py), the normalisation of prosody_vae.training.losses; beta is
  updated on the batch's KL by the controller, never by Coqui's optimizer (a plain optimizer from
  the config replaces CapacitronOptimizer), and a non-finite KL skips that update.
- With `pace_weight` > 0, a linear readout from the posterior mean to the utterance's log frames
  per character (centred per batch) adds its weighted squared error to the loss, so z keeps the
  pace (see ProsodyVAEArgs.pace_weight for why Coqui's decoder needs this).
- Inference takes the posterior mean of a reference (`style_wav`, or `reference_wav`), or with
  none the prior: its mean (z = 0) or, with mode="sample", a draw scaled by `temperature` from
  `seed`. Coqui 0.28's Synthesizer.tts accepts style_wav and drops it before the model; our
  `ProsodySynthesizer.tts` hands it on.

Import. Coqui's TTS/__init__.py refuses to import without torchaudio and torchcodec, and the
registry's torchaudio wheels are CUDA builds that need a matching torch. Neither is used by this
path (one module on Tacotron2's import chain, the speaker encoder, imports torchaudio at its top
and is not run), so when torchaudio is not importable the package is entered without that gate,
with the placeholder of integrations/torchaudio_gate.py. With a working torchaudio, Coqui is
imported normally.
"""

# no `from __future__ import annotations`: Coqpit reads the config fields' types at run time
import importlib.metadata
import importlib.util
import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .torchaudio_gate import stand_in_for_torchaudio


def _import_coqui() -> None:
    if "TTS" in sys.modules:
        return
    spec = importlib.util.find_spec("TTS")
    if spec is None:
        raise ImportError("prosody_vae.integrations.coqui needs Coqui TTS: pip install 'prosody_vae[coqui]'")
    torchaudio_works = stand_in_for_torchaudio("prosody_vae.integrations.coqui")
    if torchaudio_works and importlib.util.find_spec("torchcodec") is not None:
        import TTS  # noqa: F401
        return
    package = types.ModuleType("TTS")  # TTS/__init__.py only checks versions; its gate is skipped
    package.__path__ = list(spec.submodule_search_locations)
    package.__version__ = importlib.metadata.version("coqui-tts")
    sys.modules["TTS"] = package


_import_coqui()

import torch  # noqa: E402
from coqpit import Coqpit  # noqa: E402
from TTS.tts.configs.tacotron2_config import Tacotron2Config  # noqa: E402
from TTS.tts.layers.losses import TacotronLoss  # noqa: E402
from TTS.tts.models.base_tts import BaseTTS  # noqa: E402
from TTS.tts.models.tacotron2 import Tacotron2  # noqa: E402
from TTS.utils.synthesizer import Synthesizer  # noqa: E402
from trainer.trainer_utils import get_optimizer, get_scheduler  # noqa: E402

from ..plugin.capacity import DualAscent  # noqa: E402
from ..plugin.reference import CAPACITRON_CHANNELS, Posterior  # noqa: E402
from .latent import HostLatent, Mode  # noqa: E402


@dataclass
class ProsodyVAEArgs(Coqpit):
    """The prosody latent inside a Coqui config (saved in its config.json). Dual ascent as in the
    demo recipe: C nats per utterance, beta's own SGD step `beta_lr`."""

    latent_dim: int = 16
    capacity: float = 10.0
    beta_init: float = 1.0
    beta_lr: float = 0.05
    beta_momentum: float = 0.0
    kl_alpha: float = 1.0
    conv_channels: list[int] = field(default_factory=lambda: list(CAPACITRON_CHANNELS))
    gru_dim: int = 128
    mlp_dim: int = 128
    # weight of the pace readout (0: off). Coqui's teacher-forced decoder reads the pace from its
    # own previous frames, so carrying rate barely lowers its L1 and the KL budget goes to pitch and
    # level instead (benchmarks/coqui_latent_probe.py). A linear readout from the posterior mean to
    # the utterance's log frames per character makes z keep the pace (measured: rate R^2 0.73
    # against 0.16-0.19 without), though the decoder still reads the text at one pace whatever z
    # says (examples/README.md). Training transcripts give the target; inference reads none.
    pace_weight: float = 0.0
    # share of teacher-forced decoder input frames replaced by the go frame (zeros) in training (0:
    # off). Bowman et al.'s word dropout (2016), for frames: a decoder that cannot always read the
    # pace off its previous frames has to take it from z. Off at inference. Measured at 0.5 with
    # pace_weight 2: z held pace and pitch, every output stopped, yet the text was still read at
    # one pace (examples/README.md).
    decoder_input_dropout: float = 0.0

    def check_values(self) -> None:
        if not self.pace_weight >= 0:
            raise ValueError(f"prosody_vae.pace_weight must be >= 0, got {self.pace_weight}")
        if not 0 <= self.decoder_input_dropout < 1:
            raise ValueError(f"prosody_vae.decoder_input_dropout must be in [0, 1), got {self.decoder_input_dropout}")


@dataclass
class ProsodyTacotron2Config(Tacotron2Config):
    """Coqui's Tacotron2Config with the prosody latent switched on. Coqui's own Capacitron stays
    off (`use_capacitron_vae` False: its loss, optimizer and style path are not used)."""

    model: str = "prosody_tacotron2"
    prosody_vae: ProsodyVAEArgs = field(default_factory=ProsodyVAEArgs)
    # the width of the guided-attention loss's diagonal band (weighted by Coqui's `ga_alpha`), which
    # Coqui's Tacotron2 hard-codes at 0.4; a narrower band (ESPnet's recipes: 0.4, ours: 0.2) pulls
    # location-sensitive attention onto the text sooner on a small corpus
    ga_sigma: float = 0.4


class ProsodyLayer(HostLatent):
    """Fills Coqui's `capacitron_vae_layer` slot: (reference_mel_info, text_info, speaker) ->
    (z (B, 1, Z), posterior, None, beta), as Coqui's CapacitronVAE answers."""

    def __init__(self, n_mels: int, args: ProsodyVAEArgs) -> None:
        super().__init__(n_mels, latent_dim=args.latent_dim, capacity=args.capacity, beta_init=args.beta_init,
                         beta_lr=args.beta_lr, beta_momentum=args.beta_momentum, kl_alpha=args.kl_alpha,
                         conv_channels=tuple(args.conv_channels), gru_dim=args.gru_dim, mlp_dim=args.mlp_dim)
        args.check_values()
        self.pace_weight = args.pace_weight
        # no bias: the readout is fitted to pace differences within a batch (pace_loss)
        self.pace_head = torch.nn.Linear(args.latent_dim, 1, bias=False) if args.pace_weight > 0 else None

    def pace_loss(self, posterior: Posterior, mel_lengths: torch.Tensor, text_lengths: torch.Tensor) -> torch.Tensor:
        """pace_weight * the squared error of the readout's batch-centred log frames per character."""
        pace = torch.log(mel_lengths.float() / text_lengths.float())  # (B,)
        predicted = self.pace_head(posterior.mean).squeeze(-1)  # (B,)
        error = (predicted - predicted.mean()) - (pace - pace.mean())
        return self.pace_weight * error.pow(2).mean()

    def forward(self, reference_mel_info, text_info=None, speaker_embedding=None):
        if reference_mel_info is None:  # no reference: the prior
            return self.prior()[:, None], None, None, self.controller.beta
        mel, lengths = reference_mel_info  # (B, T, n_mels), (B,)
        posterior = self.posterior(mel, lengths)
        return posterior.z[:, None], posterior, None, self.controller.beta  # z: (B, 1, Z)


class ProsodyTacotron2(Tacotron2):
    """Coqui's Tacotron2 whose prosody embedding is our variational reference encoder."""

    def __init__(self, config: ProsodyTacotron2Config) -> None:
        if not isinstance(config.prosody_vae, ProsodyVAEArgs):
            raise TypeError(f"config.prosody_vae must be a ProsodyVAEArgs, got {type(config.prosody_vae).__name__}")
        args = config.prosody_vae
        # Tacotron2.__init__ sizes the decoder for a Capacitron embedding and routes forward and
        # inference through `capacitron_vae_layer` only while `use_capacitron_vae` is on. The config
        # keeps Coqui's own Capacitron off and unchanged (its loss, optimizer and style path never
        # run, and config.json reloads: Coqui's CapacitronVAEConfig refuses a latent under 16)
        sizes = types.SimpleNamespace(capacitron_VAE_embedding_dim=args.latent_dim,
                                      capacitron_use_text_summary_embeddings=False,
                                      capacitron_use_speaker_embedding=False)
        own = config.capacitron_vae
        config.use_capacitron_vae, config.capacitron_vae = True, sizes
        try:
            super().__init__(config)
        finally:
            config.use_capacitron_vae, config.capacitron_vae = False, own
        # the tokenizer's set-up may have copied the config
        self.config.use_capacitron_vae, self.config.capacitron_vae = False, own
        self.use_capacitron_vae, self.capacitron_vae = True, sizes
        self.capacitron_vae_layer = ProsodyLayer(self.decoder_output_dim, args)
        if args.decoder_input_dropout > 0:
            self.decoder.register_forward_pre_hook(self._drop_decoder_inputs)

    def _drop_decoder_inputs(self, decoder: torch.nn.Module, inputs: tuple) -> Optional[tuple]:
        """Coqui's Decoder.forward(encoder_outputs, memories (B, T, n_mels), mask) is the teacher-
        forced pass (inference goes through Decoder.inference): zero a share of its input frames."""
        if not decoder.training:
            return None
        encoder_outputs, memories, mask = inputs
        keep = torch.rand(memories.shape[:2], device=memories.device) >= self.config.prosody_vae.decoder_input_dropout
        return encoder_outputs, memories * keep[..., None], mask  # (B, T, n_mels)

    @classmethod
    def init_from_config(cls, config: ProsodyTacotron2Config, samples=None) -> "ProsodyTacotron2":
        return cls(config)  # Coqui 0.28's models build their own AudioProcessor and tokenizer

    @property
    def controller(self) -> DualAscent:
        return self.capacitron_vae_layer.controller

    # ----------------------------------------------------------------------------- training
    def get_criterion(self) -> torch.nn.Module:
        # the config's use_capacitron_vae is off: Coqui's mel, stop and attention losses only
        return TacotronLoss(self.config, ga_sigma=self.config.ga_sigma)

    def get_optimizer(self) -> torch.optim.Optimizer:
        return get_optimizer(self.config.optimizer, self.config.optimizer_params, self.config.lr, self)

    def get_scheduler(self, optimizer):
        return get_scheduler(self.config.lr_scheduler, self.config.lr_scheduler_params, optimizer[0])

    def before_backward_pass(self, loss_dict, optimizer) -> None:
        pass  # beta has no loss to backpropagate: the controller updates it in train_step

    def before_gradient_clipping(self) -> None:
        pass  # the trainer's own clipping covers every parameter (beta is not one)

    def train_step(self, batch: dict[str, Any], criterion: torch.nn.Module, optimizer_idx: Optional[int] = None):
        outputs, loss_dict = super().train_step(batch, criterion, optimizer_idx)
        posterior: Posterior = outputs["capacitron_vae_outputs"][0]
        layer = self.capacitron_vae_layer
        kl_term = layer.kl_term(posterior, batch["mel_lengths"].float().mean() * self.decoder_output_dim)
        kl = posterior.kl.mean()
        loss_dict["loss"] = loss_dict["loss"] + kl_term
        if layer.pace_head is not None:
            pace_loss = layer.pace_loss(posterior, batch["mel_lengths"], batch["text_lengths"])
            loss_dict["loss"] = loss_dict["loss"] + pace_loss
            loss_dict["prosody_pace_loss"] = pace_loss.detach()
        loss_dict.update(prosody_kl=kl.detach(), prosody_kl_term=kl_term.detach(),
                         prosody_beta=torch.tensor(self.controller.beta))
        layer.dual_step(kl)  # a no-op in eval mode, where Coqui's eval_step runs this train_step
        return outputs, loss_dict

    # ---------------------------------------------------------------------------- inference
    @torch.inference_mode()
    def inference(self, text, aux_input: Optional[dict[str, Any]] = None):
        """Coqui's inference; aux_input may carry "style_mel" (1, T, num_mels), and "prosody_mode",
        "temperature", "seed" for how z is drawn."""
        aux_input = dict(aux_input or {})
        aux_input.setdefault("style_mel", None)
        aux_input["style_text"] = None  # our posterior reads no transcript
        with self.capacitron_vae_layer.drawing(aux_input.get("prosody_mode", "mean"),
                                               aux_input.get("temperature", 1.0), aux_input.get("seed")):
            return super().inference(text, aux_input)

    def reference_mel(self, wav_path: str | Path) -> torch.Tensor:
        """(1, T, num_mels): a recording in the training mels' own domain (Coqui's AudioProcessor)."""
        mel = self.ap.melspectrogram(self.ap.load_wav(str(wav_path), sr=self.ap.sample_rate))  # (num_mels, T)
        return torch.tensor(mel, dtype=torch.float32, device=self.device).T[None]

    def synthesize(self, text: str, *args, style_wav=None, reference_wav=None, style_text=None,
                   mode: Mode = "mean", temperature: float = 1.0, seed: Optional[int] = None, **kwargs):
        reference = reference_wav if reference_wav is not None else style_wav
        extra = {"style_mel": None if reference is None else self.reference_mel(reference),
                 "prosody_mode": mode, "temperature": temperature, "seed": seed}
        kwargs.pop("extra_aux_input", None)
        # BaseTacotron.synthesize rebuilds the aux input from Capacitron's config: go past it
        return BaseTTS.synthesize(self, text, *args, extra_aux_input=extra, **kwargs)


class ProsodySynthesizer(Synthesizer):
    """Coqui's Synthesizer for a ProsodyTacotron2 checkpoint; `tts(style_wav=...)` reaches the model."""

    def _load_tts(self, tts_checkpoint: Path, tts_config_path: Optional[Path] = None, *, use_cuda: bool) -> None:
        checkpoint_dir = tts_checkpoint if tts_checkpoint.is_dir() else tts_checkpoint.parent
        config_path = tts_config_path or checkpoint_dir / "config.json"
        self.tts_config = load_config(config_path)
        self.output_sample_rate = self.tts_config.audio.get("output_sample_rate", self.tts_config.audio["sample_rate"])
        self.tts_model = ProsodyTacotron2.init_from_config(self.tts_config)
        self.tts_model.load_checkpoint(self.tts_config, checkpoint_path=str(tts_checkpoint), eval=True)
        if use_cuda:
            self.tts_model.cuda()

    def tts(self, text: str = "", *args, style_wav=None, style_text=None, **kwargs):
        if style_wav is not None:
            kwargs["reference_wav"] = style_wav
        return super().tts(text, *args, **kwargs)


def load_config(path: str | Path) -> ProsodyTacotron2Config:
    """A ProsodyTacotron2Config from the config.json Coqui's trainer wrote into a run folder."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable Coqui config ({error})") from error
    if values.get("model") != ProsodyTacotron2Config.model:
        raise ValueError(f"{path}: field 'model' is {values.get('model')!r}, not {ProsodyTacotron2Config.model!r}")
    config = ProsodyTacotron2Config()
    config.from_dict(values)
    return config


__all__ = ["ProsodyVAEArgs", "ProsodyTacotron2Config", "ProsodyLayer", "ProsodyTacotron2", "ProsodySynthesizer",
           "load_config"]
