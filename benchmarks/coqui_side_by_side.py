"""Coqui's own Capacitron against ours inside Coqui: same data, same steps, Coqui's own Trainer.

    python benchmarks/coqui_side_by_side.py --data LJSPEECH_FOLDER --steps 60 --out side.json

Run in an environment with the `coqui` extra (pip install 'prosody_vae[coqui]'). Both models are
Coqui 0.28's Tacotron2 at the same config (r = `--reduction-factor`, batch `--batch-size`, C = `--capacity` nats):
- "coqui": its Capacitron (`use_capacitron_vae`, the "V+T" posterior its recipe uses, softplus
  beta, CapacitronOptimizer, TacotronLoss's KL term);
- "ours": `prosody_vae.integrations.coqui.ProsodyTacotron2` (posterior "V", dual ascent).
Per model: KL (nats per utterance) and beta after every step, seconds per step (the fit's wall
time over its steps, the first step excluded), and whether a `style_wav` given to Coqui's own
`Synthesizer.tts` (ours: `ProsodySynthesizer.tts`, the same call) reaches the reference encoder,
found by a forward hook on it. Prints and writes one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from prosody_vae.integrations.coqui import ProsodySynthesizer, ProsodyTacotron2, ProsodyTacotron2Config, ProsodyVAEArgs
from TTS.config.shared_configs import BaseDatasetConfig
from TTS.tts.configs.shared_configs import CapacitronVAEConfig
from TTS.tts.configs.tacotron2_config import Tacotron2Config
from TTS.tts.datasets import load_tts_samples
from TTS.tts.models.tacotron2 import Tacotron2
from TTS.utils.synthesizer import Synthesizer
from trainer import Trainer, TrainerArgs


def config_for(kind: str, data: Path, out: Path, args) -> Tacotron2Config:
    dataset = BaseDatasetConfig(formatter="ljspeech", meta_file_train="metadata.csv", path=str(data))
    common = dict(r=args.reduction_factor, attention_type=args.attention, batch_size=args.batch_size,
                  eval_batch_size=args.batch_size, num_loader_workers=0,
                  num_eval_loader_workers=0, run_eval=False, print_step=25, save_step=10**9,
                  output_path=str(out), datasets=[dataset], text_cleaner="basic_cleaners", use_phonemes=False,
                  test_sentences=[], mixed_precision=False, eval_split_size=0.05, max_decoder_steps=200,
                  # Coqui's default Noam warm-up (4,000 steps) would leave a short run at lr ~1e-6
                  lr=args.lr, lr_scheduler=None)
    if kind == "coqui":
        # as Coqui's recipe (recipes/ljspeech/tacotron2-Capacitron): RAdam for the model, SGD for beta
        config = Tacotron2Config(use_capacitron_vae=True, capacitron_vae=CapacitronVAEConfig(
            capacitron_capacity=args.capacity), optimizer="CapacitronOptimizer",
            optimizer_params={"RAdam": {"betas": [0.9, 0.998], "weight_decay": 1e-6},
                              "SGD": {"lr": 1e-5, "momentum": 0.9}}, **common)
    else:
        config = ProsodyTacotron2Config(prosody_vae=ProsodyVAEArgs(capacity=args.capacity), **common)
    config.audio.sample_rate = 22050
    return config


def train(kind: str, args) -> dict:
    out = args.work / kind
    config = config_for(kind, args.data, out, args)
    torch.manual_seed(0)
    model = ProsodyTacotron2.init_from_config(config) if kind == "ours" else Tacotron2(config)
    trace, stamps = [], []
    inner = model.train_step

    def recorded(batch, criterion, optimizer_idx=None):
        outputs, loss_dict = inner(batch, criterion, optimizer_idx)
        if model.training:
            kl = loss_dict["prosody_kl"] if kind == "ours" else loss_dict["capacitron_vae_kl_term"]
            beta = loss_dict["prosody_beta"] if kind == "ours" else loss_dict["capacitron_beta"]
            trace.append({"kl": float(kl), "beta": float(beta), "loss": float(loss_dict["loss"])})
            stamps.append(time.perf_counter())
        return outputs, loss_dict

    model.train_step = recorded
    train_samples, eval_samples = load_tts_samples(config, eval_split=True, eval_split_size=config.eval_split_size)
    # Coqui's fit runs whole epochs (and exits the process on any exception): enough of them for --steps
    config.epochs = math.ceil(args.steps / max(1, len(train_samples) // args.batch_size))
    trainer = Trainer(TrainerArgs(), config, str(out), model=model, train_samples=train_samples,
                      eval_samples=eval_samples)
    trainer.fit()
    checkpoint = Path(trainer.output_path) / "stopped.pth"
    torch.save({"model": model.state_dict(), "config": config.to_dict()}, checkpoint)
    config.save_json(str(Path(trainer.output_path) / "config.json"))
    reaches = style_wav_reaches(kind, checkpoint, Path(trainer.output_path) / "config.json", args)
    tail = trace[len(trace) // 2:]
    return {"steps": len(trace), "seconds_per_step": statistics.median(b - a for a, b in zip(stamps, stamps[1:])),
            "kl_last_half_mean": statistics.fmean(t["kl"] for t in tail),
            "kl_within_15pct_of_C": abs(statistics.fmean(t["kl"] for t in tail) - args.capacity) <= 0.15 * args.capacity,
            "beta": {"first": trace[0]["beta"], "min": min(t["beta"] for t in trace), "last": trace[-1]["beta"]},
            "nan_steps": sum(not torch.isfinite(torch.tensor(t["loss"])) for t in trace),
            "style_wav_reaches_model": reaches, "trace": trace}


def style_wav_reaches(kind: str, checkpoint: Path, config_path: Path, args) -> bool:
    synthesizer = (ProsodySynthesizer if kind == "ours" else Synthesizer)(
        tts_checkpoint=str(checkpoint), tts_config_path=str(config_path))
    calls = []  # both layers hold their reference encoder as .encoder
    synthesizer.tts_model.capacitron_vae_layer.encoder.register_forward_hook(lambda module, inputs, output: calls.append(1))
    reference = sorted((args.data / "wavs").glob("*.wav"))[0]
    kwargs = {} if kind == "ours" else {"style_text": "a transcript"}
    synthesizer.tts("The quick brown fox.", style_wav=str(reference), **kwargs)
    return bool(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--capacity", type=float, default=10.0)
    parser.add_argument("--attention", default="dynamic_convolution",
                        help="Coqui's attention_type; its Capacitron recipes use dynamic_convolution")
    parser.add_argument("--reduction-factor", type=int, default=2,
                        help="the decoder's r (Coqui's Trainer reads sys.argv too: no --r)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--work", type=Path, default=Path("coqui_side_by_side"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = {"data": str(args.data), "steps": args.steps, "capacity": args.capacity, "batch_size": args.batch_size,
              "reduction_factor": args.reduction_factor,
              "threads": torch.get_num_threads()}
    for kind in ("coqui", "ours"):
        result[kind] = train(kind, args)
        summary = {k: v for k, v in result[kind].items() if k != "trace"}
        print(kind, json.dumps(summary), flush=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
