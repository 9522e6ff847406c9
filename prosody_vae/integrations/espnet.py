"""ESPnet2: its Tacotron2, TTSTask trainer and Text2Speech, with our prosody latent.

    python -m prosody_vae.integrations.espnet --tts prosody_tacotron2 --tts_conf '{"prosody_capacity": 10}' ...
        # = espnet2.bin.tts_train with the model registered; every ESPnet option works
    from prosody_vae.integrations.espnet import ProsodyText2Speech
    tts = ProsodyText2Speech(train_config="exp/config.yaml", model_file="exp/valid.loss.best.pth")
    out = tts("Hello.", speech=reference_wav)                      # transfer (ESPnet's own call)
    out = tts("Hello.", mode="sample", temperature=0.7, seed=3)      # a prior draw, repeatable

What changes against ESPnet's Tacotron2 with `use_gst` (espnet2/tts/tacotron2/tacotron2.py):
- The `gst` slot holds `ProsodyStyle`: our VariationalReferenceEncoder (reading the reference's
  normalised features with their lengths, not the padded batch) and a `DualAscent` controller;
  z (B, Z) enters where ESPnet adds the style embedding, through a bias-free projection to
  eunits, so z = 0 (the prior mean) adds nothing.
- `forward` adds kl_alpha * beta * (KL - C) / (mean frames * odim) to ESPnet's loss (KL in nats
  per utterance; the per-element normalisation of ESPnet's masked L1) and takes beta's dual step
  on the batch KL (averaged over ranks under DDP), inside forward, as ESPnet's one-optimizer
  trainer needs. Reported: prosody_kl, prosody_kl_term, prosody_beta. The controller's state
  lives in the state_dict (nn.Module extra state, one float64 vector so that ESPnet's n-best
  averaging can add and divide it): ESPnet's checkpoints and `--resume` carry it exactly.
- `inference` takes `prosody_mode` ("mean" / "sample"), `temperature`, `seed` and
  `prosody_source` ("reference" / "prior") from ESPnet's decode_conf. ESPnet's Text2Speech
  requires a reference for a style model; `ProsodyText2Speech` makes it optional (the prior).

`use_gst` stays True on the model: ESPnet reads it as "inference takes reference speech".

Import. espnet2's task module imports torchaudio at the top of a speech-enhancement file it
never runs for TTS; when torchaudio does not load (the registry's wheels are CUDA builds), the
placeholder of integrations/torchaudio_gate.py stands in.
"""

# no `from __future__ import annotations`: typeguard checks ESPnet's annotations at run time
import importlib.util
import inspect
import json
import math
from pathlib import Path
from typing import Optional, Union

from .torchaudio_gate import stand_in_for_torchaudio


def _import_espnet() -> None:
    if importlib.util.find_spec("espnet2") is None:
        raise ImportError("prosody_vae.integrations.espnet needs ESPnet: see the `espnet` extra in pyproject.toml")
    stand_in_for_torchaudio("prosody_vae.integrations.espnet")


_import_espnet()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from espnet2.bin.tts_inference import Text2Speech  # noqa: E402
from espnet2.tasks.tts import TTSTask, tts_choices  # noqa: E402
from espnet2.torch_utils.device_funcs import force_gatherable  # noqa: E402
from espnet2.torch_utils.set_all_random_seed import set_all_random_seed  # noqa: E402
from espnet2.tts.tacotron2.tacotron2 import Tacotron2  # noqa: E402

from ..plugin.capacity import DualAscent  # noqa: E402
from ..plugin.errors import ConfigError  # noqa: E402
from ..plugin.reference import CAPACITRON_CHANNELS, Posterior  # noqa: E402
from .latent import HostLatent, Mode  # noqa: E402

NAME = "prosody_tacotron2"  # --tts NAME


class ProsodyStyle(HostLatent):
    """Fills ESPnet's `gst` slot: features (B, T_feats, odim) -> style embedding (B, eunits)."""

    def __init__(self, odim: int, eunits: int, **latent) -> None:
        super().__init__(odim, **latent)
        self.projection = torch.nn.Linear(self.latent_dim, eunits, bias=False)
        # set by the model around ESPnet's own _forward / inference, which call this module
        self.lengths: Optional[torch.Tensor] = None
        self.from_prior = False
        self.last_posterior: Optional[Posterior] = None

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.from_prior:
            z, self.last_posterior = self.prior(feats.shape[0]), None
        else:
            self.last_posterior = self.posterior(feats, self.lengths)
            z = self.last_posterior.z
        return self.projection(z)  # (B, eunits)

    # ESPnet averages its n best checkpoints key by key (a + b, then / n), which a dict of
    # controller state cannot take: the state is one float64 vector (exact for beta and counts)
    _PACKED = ("beta", "step", "skipped_updates", "ema_mean", "ema_count", "momentum")

    def get_extra_state(self) -> torch.Tensor:
        state = self.controller.state_dict()
        momentum = state["optimizer"]["state"].get(0, {}).get("momentum_buffer")
        return torch.tensor([float(state["beta"]), state["step"], state["skipped_updates"], state["ema_mean"],
                             state["ema_count"], math.nan if momentum is None else float(momentum)],
                            dtype=torch.float64)

    def set_extra_state(self, packed: torch.Tensor) -> None:
        values = dict(zip(self._PACKED, packed.tolist()))
        state = self.controller.state_dict()  # this controller's own, for the optimizer's settings
        state.update(beta=torch.tensor(values["beta"], dtype=torch.float64), ema_mean=values["ema_mean"],
                     **{name: round(values[name]) for name in ("step", "skipped_updates", "ema_count")})
        state["optimizer"]["state"] = ({} if math.isnan(values["momentum"]) else
                                       {0: {"momentum_buffer": torch.tensor(values["momentum"], dtype=torch.float64)}})
        self.controller.load_state_dict(state)


class ProsodyTacotron2(Tacotron2):
    """ESPnet2's Tacotron2 whose style embedding is our variational reference encoder.

    tts_conf takes every Tacotron2 option except the GST ones, and the prosody_* options below."""

    def __init__(self, idim: int, odim: int, prosody_latent_dim: int = 16, prosody_capacity: float = 10.0,
                 prosody_beta_init: float = 1.0, prosody_beta_lr: float = 0.05, prosody_beta_momentum: float = 0.0,
                 prosody_kl_alpha: float = 1.0, prosody_conv_channels: tuple = CAPACITRON_CHANNELS,
                 prosody_gru_dim: int = 128, prosody_mlp_dim: int = 128, **tacotron2) -> None:
        gst = sorted(key for key in tacotron2 if key.startswith("gst_") or key == "use_gst")
        if gst:
            raise ConfigError(f"tts_conf: {', '.join(gst)}: {NAME} puts its prosody latent in the GST slot; "
                              "remove the GST options", field=gst[0])
        super().__init__(idim, odim, **tacotron2)
        eunits = tacotron2.get("eunits", inspect.signature(Tacotron2.__init__).parameters["eunits"].default)
        self.gst = ProsodyStyle(odim, eunits, latent_dim=prosody_latent_dim, capacity=prosody_capacity,
                                beta_init=prosody_beta_init, beta_lr=prosody_beta_lr,
                                beta_momentum=prosody_beta_momentum, kl_alpha=prosody_kl_alpha,
                                conv_channels=tuple(prosody_conv_channels), gru_dim=prosody_gru_dim,
                                mlp_dim=prosody_mlp_dim)
        self.use_gst = True

    @property
    def controller(self) -> DualAscent:
        return self.gst.controller

    def forward(self, text: torch.Tensor, text_lengths: torch.Tensor, feats: torch.Tensor,
                feats_lengths: torch.Tensor, spembs: Optional[torch.Tensor] = None,
                sids: Optional[torch.Tensor] = None, lids: Optional[torch.Tensor] = None,
                joint_training: bool = False):
        """ESPnet's loss plus the KL term; feats (B, T_feats, odim), feats_lengths (B,)."""
        self.gst.lengths = feats_lengths
        try:  # joint_training=True: ESPnet hands back the loss before gathering it
            loss, stats, after_outs = super().forward(text, text_lengths, feats, feats_lengths, spembs=spembs,
                                                      sids=sids, lids=lids, joint_training=True)
        finally:
            self.gst.lengths = None
        posterior = self.gst.last_posterior
        kl = posterior.kl.mean()
        kl_term = self.gst.kl_term(posterior, feats_lengths.float().mean() * self.odim)
        loss = loss + kl_term
        stats.update(prosody_kl=kl.item(), prosody_kl_term=kl_term.item(), prosody_beta=self.controller.beta)
        self.gst.dual_step(kl)  # after the report: beta as this step trained with it
        if joint_training:
            return loss, stats, after_outs
        stats.update(loss=loss.item())
        return force_gatherable((loss, stats, text.size(0)), loss.device)

    def inference(self, text: torch.Tensor, feats: Optional[torch.Tensor] = None, *,
                  prosody_mode: Mode = "mean", temperature: float = 1.0, seed: Optional[int] = None,
                  prosody_source: str = "reference", **decode):
        """ESPnet's inference; feats (T_feats, odim) is the reference, z drawn as the prosody_* say."""
        if prosody_source not in ("reference", "prior"):
            raise ConfigError(f"prosody_source must be 'reference' or 'prior', got {prosody_source!r}",
                              field="prosody_source")
        prior = prosody_source == "prior" or feats is None
        if prior and decode.get("use_teacher_forcing"):
            raise ConfigError("use_teacher_forcing needs reference feats, not the prior", field="use_teacher_forcing")
        with self.gst.drawing(prosody_mode, temperature, seed):
            self.gst.from_prior = prior
            try:  # ESPnet's inference reads the slot from its feats: a one-frame placeholder for the prior
                return super().inference(text, feats=text.new_zeros((1, self.odim), dtype=torch.float32)
                                         if prior else feats, **decode)
            finally:
                self.gst.from_prior = False


class ProsodyText2Speech(Text2Speech):
    """ESPnet's Text2Speech for a ProsodyTacotron2 model; the reference is optional, and a `seed`
    repeats the whole output (z and the prenet's inference-time dropout)."""

    def __call__(self, text, speech: Union[torch.Tensor, np.ndarray, None] = None, *, mode: Mode = "mean",
                 temperature: float = 1.0, seed: Optional[int] = None, decode_conf: Optional[dict] = None,
                 **kwargs):
        decode_conf = {**(decode_conf or {}), "prosody_mode": mode, "temperature": temperature, "seed": seed}
        if speech is None:  # ESPnet demands speech of a style model: hand it a silent stand-in, unread
            decode_conf["prosody_source"] = "prior"
            speech = (torch.zeros(4096) if self.feats_extract is not None
                      else torch.zeros(1, self.model.tts.odim))
        if seed is not None:  # ESPnet's prenet keeps its dropout on at inference: fix that draw too
            set_all_random_seed(int(seed))
        return super().__call__(text, speech=speech, decode_conf=decode_conf, **kwargs)


def register() -> None:
    """Make `--tts prosody_tacotron2` known to ESPnet's TTSTask (done on import)."""
    tts_choices.classes[NAME] = ProsodyTacotron2


register()


def prepare_ljspeech(folder: Union[str, Path], out: Union[str, Path], valid_fraction: float = 0.05) -> dict:
    """An LJSpeech-layout folder (metadata.csv `id|text|normalised text`, wavs/) as ESPnet's Kaldi-style
    data: out/{train,valid}/{wav.scp,text} and out/tokens.txt (characters, ESPnet's token_type
    "char" with <blank>, <unk>, <space> and <sos/eos>). Returns the paths."""
    folder, out = Path(folder), Path(out)
    metadata = folder / "metadata.csv"
    rows = []
    for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split("|")
        if len(fields) < 2 or not fields[0]:
            raise ConfigError(f"{metadata}:{number}: expected 'id|text[|normalised text]', got {line!r}")
        wav = folder / "wavs" / f"{fields[0]}.wav"
        if not wav.exists():
            raise ConfigError(f"{metadata}:{number}: {wav} does not exist")
        rows.append((fields[0], wav.resolve(), fields[-1].strip()))
    n_valid = max(1, round(valid_fraction * len(rows)))
    if len(rows) <= n_valid:
        raise ConfigError(f"{metadata}: {len(rows)} utterances, too few for a validation split")
    splits = {"train": rows[:-n_valid], "valid": rows[-n_valid:]}
    for split, items in splits.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        (out / split / "wav.scp").write_text("".join(f"{i} {w}\n" for i, w, _ in items), encoding="utf-8")
        (out / split / "text").write_text("".join(f"{i} {t}\n" for i, _, t in items), encoding="utf-8")
    characters = sorted({c for _, _, text in rows for c in text} - {" "})
    tokens = ["<blank>", "<unk>", "<space>", *characters, "<sos/eos>"]
    (out / "tokens.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return {"train": out / "train", "valid": out / "valid", "token_list": out / "tokens.txt"}


def task_args(prepared: dict, output_dir: Union[str, Path], tts_conf: dict, stats_dir: Union[str, Path, None] = None,
              sample_rate: int = 22050) -> list:
    """The options ESPnet's tts.sh passes to its trainer for a char recipe on `prepare_ljspeech`
    data: with no stats_dir, its statistics pass (--collect_stats, writing output_dir); with one,
    training on those statistics (global MVN, length-sorted batches). Append optimizer, epochs,
    batch size and the like as for espnet2.bin.tts_train."""
    fbank = {"n_fft": 1024, "hop_length": 256, "win_length": 1024, "fs": sample_rate, "fmin": 0, "fmax": 8000,
             "n_mels": 80}  # LJSpeech tts1's fbank
    args = ["--use_preprocessor", "true", "--token_type", "char", "--token_list", str(prepared["token_list"]),
            "--cleaner", "none", "--g2p", "none", "--tts", NAME, "--tts_conf", json.dumps(tts_conf),
            "--feats_extract", "fbank", "--feats_extract_conf", json.dumps(fbank), "--output_dir", str(output_dir)]
    for split in ("train", "valid"):
        folder = prepared[split]
        args += [f"--{split}_data_path_and_name_and_type", f"{folder}/text,text,text",
                 f"--{split}_data_path_and_name_and_type", f"{folder}/wav.scp,speech,sound"]
        shapes = ([f"{folder}/wav.scp"] if stats_dir is None  # the statistics pass reads keys only
                  else [f"{stats_dir}/{split}/text_shape", f"{stats_dir}/{split}/speech_shape"])
        args += [item for shape in shapes for item in (f"--{split}_shape_file", shape)]
    if stats_dir is None:
        return args + ["--collect_stats", "true", "--normalize", "none", "--batch_type", "unsorted"]
    # ESPnet's encoder packs its batch: batches must be sorted by text length, as "sorted" does
    return args + ["--normalize", "global_mvn", "--normalize_conf", f"stats_file={stats_dir}/train/feats_stats.npz",
                   "--batch_type", "sorted"]


def main(argv: Optional[list] = None) -> None:
    """ESPnet's own TTS training entry point (espnet2.bin.tts_train) with the model registered."""
    TTSTask.main(cmd=argv)


__all__ = ["NAME", "ProsodyStyle", "ProsodyTacotron2", "ProsodyText2Speech", "prepare_ljspeech", "register", "task_args",
           "main"]

if __name__ == "__main__":
    main()
