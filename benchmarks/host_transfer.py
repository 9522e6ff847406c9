"""Inside a host's own pipeline: train, resume, and transfer speaking rate from two references.

    python benchmarks/host_transfer.py --host coqui --data LJSPEECH_FOLDER --steps 540 --reduction-factor 5 --out c.json
    python benchmarks/host_transfer.py --host espnet --data LJSPEECH_FOLDER --steps 300 --out e.json

LJSPEECH_FOLDER is an LJSpeech-layout folder (metadata.csv, wavs/) from the built-in corpus, with
its factors.csv beside (make-corpus writes it; each utterance's espeak-ng rate in words/min). Run
in an environment with the host's extra (see pyproject.toml).

1. The host's own trainer trains our adapter's model for half of `--steps` and checkpoints;
   a second trainer resumes the run for the other half: Coqui's `trainer.Trainer` with
   `continue_path` (epochs raised in the run's config.json), ESPnet's TTSTask
   (`python -m prosody_vae.integrations.espnet`, a mid-size Tacotron2) with `--resume true`.
   Per training step: KL (nats per utterance), beta, loss. `--extend RUN` instead resumes a Coqui
   run this script trained for about `--steps` more, the same way.
2. The slowest and the fastest reference in factors.csv (among utterances of 5-8 words) each
   transfer onto `SENTENCES` through the host's own inference entry point (Coqui's
   Synthesizer.tts with style_wav, via ProsodySynthesizer; ESPnet's own Text2Speech with speech);
   per output its duration, whether it stopped before the decoder's cap, its attention's focus
   rate, how far along the text it reached, and when it reached the last character
   (`text_seconds`: the speech's own pace, which a late or early stop does not move). The wavs
   are written under --work.
Prints and writes one JSON object: KL over the last third of the steps against C, beta's
trajectory, non-finite steps, the resume's controller continuity, the durations, and whether the
slow reference's output was longer (`slow_longer_all`) and read the text slower (`slow_reads_slower_all`).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

SENTENCES = ["The quick brown fox jumped over the lazy dog.", "Where did you put the old map of the city?",
             "Seven green bottles stood on the kitchen table."]


def factor_rows(data: Path) -> list[dict]:
    """factors.csv's rows (one per utterance, make-corpus's factors) whose wav is in the folder."""
    factors = data / "factors.csv"
    if not factors.exists():
        raise SystemExit(f"{factors}: missing; --data must be a make-corpus folder (or a copy with its factors.csv)")
    return [r for r in csv.DictReader(factors.open()) if (data / "wavs" / f"{r['id']}.wav").exists()]


def reference_candidates(data: Path) -> list[dict]:
    """The corpus's 5-8 word utterances, slowest espeak-ng rate first."""
    return sorted((r for r in factor_rows(data) if 5 <= int(r["n_words"]) <= 8), key=lambda r: int(r["rate"]))


def contrasting_references(data: Path) -> dict[str, dict]:
    """The slowest and fastest espeak-ng rate among the corpus's 5-8 word utterances."""
    rows = reference_candidates(data)
    slow, fast = rows[0], max(rows, key=lambda r: int(r["rate"]))  # the first of tied fastest, as before
    return {name: {"id": r["id"], "wpm": int(r["rate"]), "seconds": float(r["duration_s"]), "voice": r["voice"],
                   "wav": str(data / "wavs" / f"{r['id']}.wav")} for name, r in (("slow", slow), ("fast", fast))}


def text_seconds(attention: torch.Tensor, step_seconds: float) -> float | None:
    """When the attention (T_dec, T_in) first rests on the last character, at `step_seconds` of
    audio per decoder step: the time the text took, which a late or early stop (or a host's
    silence after it) does not change; None if the attention never got there."""
    on_last = (attention.argmax(-1) == attention.shape[1] - 1).nonzero()
    return (int(on_last[0]) + 1) * step_seconds if len(on_last) else None


def reads_slower(row: dict) -> bool:
    """The slow reference's output took longer over the text itself (False if either never got to its end)."""
    slow, fast = row["slow"]["text_seconds"], row["fast"]["text_seconds"]
    return slow is not None and fast is not None and slow > fast


# ------------------------------------------------------------------------------------ Coqui
def coqui_config(args, out: Path, epochs: int):
    from prosody_vae.integrations.coqui import ProsodyTacotron2Config, ProsodyVAEArgs
    from TTS.config.shared_configs import BaseDatasetConfig

    dataset = BaseDatasetConfig(formatter="ljspeech", meta_file_train="metadata.csv", path=str(args.data))
    config = ProsodyTacotron2Config(
        r=args.reduction_factor, attention_type=args.attention, batch_size=args.batch_size,
        eval_batch_size=args.batch_size, num_loader_workers=0,
        num_eval_loader_workers=0, run_eval=False, epochs=epochs, print_step=25, save_step=10**9,
        save_checkpoints=True, output_path=str(out), datasets=[dataset], text_cleaner="basic_cleaners",
        use_phonemes=False, test_sentences=[], mixed_precision=False, eval_split_size=0.05,
        max_decoder_steps=args.max_decoder_steps, prenet_dropout_at_inference=False,
        # Coqui's default 0.2 under-weights the one stop frame per utterance, so a short run never
        # learns to stop; Coqui's own LJSpeech recipes train with 15
        stopnet_pos_weight=args.stopnet_pos_weight, ga_sigma=args.ga_sigma,
        # Coqui's default Noam warm-up (4,000 steps) would leave a short run at lr ~1e-6
        lr=args.lr, lr_scheduler=None,
        # forward attention's transition agent reads the context vector, z included, so z can set
        # the pace at which attention leaves each token (Zhang et al. 2018)
        use_forward_attn=args.forward_attention, transition_agent=args.forward_attention,
        forward_attn_mask=args.forward_attention,
        prosody_vae=ProsodyVAEArgs(capacity=args.capacity, beta_lr=args.beta_lr, pace_weight=args.pace_weight,
                                   decoder_input_dropout=args.decoder_input_dropout))
    config.audio.sample_rate = 22050
    return config


def coqui_fit(args, runs: Path, trace: list[dict], epochs: int, continue_path: str = ""):
    """Coqui's own Trainer for `epochs` (from `continue_path`'s last checkpoint, if given), recording
    each training step's KL, beta and loss; returns the trainer and the checkpoint a resume restored."""
    from prosody_vae.integrations.coqui import ProsodyTacotron2
    from TTS.tts.datasets import load_tts_samples
    from trainer import Trainer, TrainerArgs

    logging.getLogger("TTS").setLevel(logging.WARNING)
    torch.manual_seed(0)
    config = coqui_config(args, runs, epochs)
    if continue_path:  # Coqui resumes with the run folder's config.json: build the model it describes
        config.load_json(str(Path(continue_path) / "config.json"))
    train_samples, eval_samples = load_tts_samples(config, eval_split=True, eval_split_size=config.eval_split_size)
    model = ProsodyTacotron2.init_from_config(config)
    inner = model.train_step

    def recorded(batch, criterion, optimizer_idx=None):
        outputs, loss_dict = inner(batch, criterion, optimizer_idx)
        if model.training:
            trace.append({"kl": float(loss_dict["prosody_kl"]), "beta": float(loss_dict["prosody_beta"]),
                          "loss": float(loss_dict["loss"]), "t": time.perf_counter()})
        return outputs, loss_dict

    model.train_step = recorded
    trainer = Trainer(TrainerArgs(continue_path=continue_path), config, str(runs), model=model,
                      train_samples=train_samples, eval_samples=eval_samples)
    # read what the resume restored now: Coqui deletes a superseded best_model_*.pth during fit
    restored = (torch.load(trainer.args.restore_path, map_location="cpu", weights_only=False)
                if continue_path else None)
    trainer.fit()
    return trainer, restored


def raise_epochs(args, run: Path, epochs: int) -> None:
    """Coqui resumes with the run folder's config.json (and re-runs the epoch its last checkpoint was
    saved in): raise its epoch count there, as a user extending a run does."""
    saved_config = coqui_config(args, run.parent, epochs)
    saved_config.load_json(str(run / "config.json"))
    saved_config.epochs = epochs
    saved_config.save_json(str(run / "config.json"))


def coqui_resume(args, run: Path, trace: list[dict], epochs: int, before: dict) -> dict:
    """Resume `run` up to `epochs` and save its last weights as final.pth (Coqui keeps only the best
    epoch's); returns the resume's continuity record."""
    raise_epochs(args, run, epochs)
    resumed, restored = coqui_fit(args, run.parent, trace, epochs, continue_path=str(run))
    saved = restored["model"]["capacitron_vae_layer._extra_state"]["controller"]
    checkpoint = run / "final.pth"
    torch.save({"model": resumed.model.state_dict(), "config": resumed.config.to_dict(),
                "step": resumed.total_steps_done}, checkpoint)
    return {"run": str(run), "checkpoint": str(checkpoint), "config": str(run / "config.json"),
            "resume": {"first_fit_steps": before["steps"], "restored_from": resumed.args.restore_path,
                       "restored_trainer_step": restored["step"], "controller_step_saved": int(saved["step"]),
                       "controller_step_before": before["step"], "beta_saved": float(saved["beta"]),
                       "beta_before": before["beta"], "controller_step_after": resumed.model.controller.step,
                       "steps_after_resume": len(trace) - before["steps"]}}


def coqui_train(args, trace: list[dict]) -> dict:
    import prosody_vae.integrations.coqui  # noqa: F401  (before TTS: it gates the optional torchaudio)
    from TTS.tts.datasets import load_tts_samples

    runs = args.work / "coqui"
    probe = coqui_config(args, runs, epochs=1)
    train_samples, _ = load_tts_samples(probe, eval_split=True, eval_split_size=probe.eval_split_size)
    steps_per_epoch = len(train_samples) // args.batch_size  # Coqui's loader drops no last batch, but near enough
    total_epochs = max(2, math.ceil(args.steps / steps_per_epoch))
    first, _ = coqui_fit(args, runs, trace, total_epochs // 2)
    before = dict(step=first.model.controller.step, beta=first.model.controller.beta, steps=len(trace))
    return coqui_resume(args, Path(first.output_path), trace, total_epochs, before)


def coqui_extend(args, run: Path, trace: list[dict]) -> dict:
    """Train a run this script trained for about `--steps` more, from its last checkpoint."""
    config = json.loads((run / "config.json").read_text())
    from trainer.io import get_last_checkpoint

    last = torch.load(get_last_checkpoint(str(run))[0], map_location="cpu", weights_only=False)
    steps_per_epoch = max(1, last["step"] // max(1, last["epoch"]))
    epochs = config["epochs"] + math.ceil(args.steps / steps_per_epoch)
    controller = last["model"]["capacitron_vae_layer._extra_state"]["controller"]
    return coqui_resume(args, run, trace, epochs, {"step": int(controller["step"]), "beta": float(controller["beta"]),
                                                   "steps": 0})


def coqui_transfer(trained: dict, references: dict, work: Path) -> list[dict]:
    from prosody_vae.integrations.coqui import ProsodySynthesizer

    synth = ProsodySynthesizer(tts_checkpoint=trained["checkpoint"], tts_config_path=trained["config"])
    cap = synth.tts_model.decoder.max_decoder_steps * synth.tts_model.decoder.r
    rows = []
    for index, sentence in enumerate(SENTENCES):
        row = {"sentence": sentence}
        for name, reference in references.items():
            np.random.seed(0)  # Griffin-Lim's random initial phase
            wav = np.asarray(synth.tts(sentence, style_wav=reference["wav"]), dtype=np.float32)
            frames = round(len(wav) / synth.tts_model.ap.hop_length)
            sf.write(work / f"coqui_{index}_{name}.wav", wav, synth.output_sample_rate)
            # the same decode once more through the model, for its attention (T_dec, T_in): did it
            # walk the whole text, and how sharply (Coqui's own alignment score)
            model = synth.tts_model
            ids = torch.tensor(model.tokenizer.text_to_ids(sentence))[None]
            attention = model.inference(ids, {"style_mel": model.reference_mel(reference["wav"])})["alignments"][0]
            step_seconds = model.decoder.r * model.ap.hop_length / synth.output_sample_rate
            row[name] = {"seconds": len(wav) / synth.output_sample_rate, "stopped": frames < cap,
                         "text_seconds": text_seconds(attention, step_seconds),
                         "focus_rate": float(attention.max(-1).values.mean()),
                         "tokens_reached": f"{int(attention.argmax(-1).max()) + 1}/{attention.shape[1]}"}
        row["slow_longer"] = row["slow"]["seconds"] > row["fast"]["seconds"]
        row["slow_reads_slower"] = reads_slower(row)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------- ESPnet2
# a mid-size Tacotron2 for a CPU, with the demo recipe's sharper guided attention (sigma 0.2, weight 2)
ESPNET_TTS_CONF = {"embed_dim": 256, "eunits": 256, "econv_chans": 256, "adim": 128, "dunits": 512,
                   "prenet_units": 128, "postnet_chans": 256, "guided_attn_loss_sigma": 0.2,
                   "guided_attn_loss_lambda": 2.0}


def espnet_train(args, trace: list[dict]) -> dict:
    from prosody_vae.integrations import espnet

    inner = espnet.ProsodyTacotron2.forward

    def recorded(model, *args, **kwargs):
        loss, stats, weight = inner(model, *args, **kwargs)
        if model.training:
            trace.append({"kl": float(stats["prosody_kl"]), "beta": float(stats["prosody_beta"]),
                          "loss": float(loss), "t": time.perf_counter()})
        return loss, stats, weight

    espnet.ProsodyTacotron2.forward = recorded
    root = args.work / "espnet"
    prepared = espnet.prepare_ljspeech(args.data, root / "data")
    conf = {**ESPNET_TTS_CONF, "reduction_factor": args.reduction_factor, "prosody_capacity": args.capacity,
            "prosody_beta_lr": args.beta_lr}
    espnet.main(espnet.task_args(prepared, root / "stats", conf) + ["--ngpu", "0", "--num_workers", "0"])
    n_train = len((prepared["train"] / "text").read_text().splitlines())
    total_epochs = max(2, math.ceil(args.steps / (n_train // args.batch_size)))
    exp = root / "exp"

    def fit(epochs: int) -> None:
        espnet.main(espnet.task_args(prepared, exp, conf, stats_dir=root / "stats") + [
            "--ngpu", "0", "--num_workers", "0", "--batch_size", str(args.batch_size), "--optim", "adam",
            "--optim_conf", f"lr={args.lr}", "--seed", "0", "--max_epoch", str(epochs), "--keep_nbest_models", "1",
            "--use_tensorboard", "false", "--use_matplotlib", "false", "--resume", "true"])

    fit(total_epochs // 2)
    saved = torch.load(exp / "checkpoint.pth", map_location="cpu", weights_only=False)
    packed = saved["model"]["tts.gst._extra_state"].tolist()  # beta, step, ...
    before = len(trace)
    fit(total_epochs)
    after = torch.load(exp / "checkpoint.pth", map_location="cpu", weights_only=False)
    return {"run": str(exp), "checkpoint": str(exp / f"{total_epochs}epoch.pth"), "config": str(exp / "config.yaml"),
            "resume": {"first_fit_steps": before, "controller_step_saved": int(packed[1]), "beta_saved": packed[0],
                       "beta_first_step_after_resume": trace[before]["beta"] if len(trace) > before else None,
                       "controller_step_after": int(after["model"]["tts.gst._extra_state"][1]),
                       "steps_after_resume": len(trace) - before}}


def espnet_transfer(trained: dict, references: dict, work: Path) -> list[dict]:
    from prosody_vae.integrations.espnet import NAME  # noqa: F401  (registers the model before ESPnet loads it)
    from espnet2.bin.tts_inference import Text2Speech

    tts = Text2Speech(train_config=trained["config"], model_file=trained["checkpoint"])  # ESPnet's own
    rows = []
    for index, sentence in enumerate(SENTENCES):
        row = {"sentence": sentence}
        for name, reference in references.items():
            speech = torch.tensor(sf.read(reference["wav"], dtype="float32")[0])
            output = tts(sentence, speech=speech)
            # ESPnet's decoder gives up after maxlenratio x (input tokens) steps of r frames
            cap = int(tts.decode_conf["maxlenratio"] * len(output["duration"])) * tts.model.tts.reduction_factor
            sf.write(work / f"espnet_{index}_{name}.wav", output["wav"].numpy(), tts.fs)
            # did the attention walk the whole text? ESPnet's focus rate, and the last token it reached
            reached = int(output["att_w"].argmax(-1).max()) + 1
            seconds = len(output["wav"]) / tts.fs
            row[name] = {"seconds": seconds, "stopped": len(output["feat_gen"]) < cap,
                         "text_seconds": text_seconds(output["att_w"], seconds / output["att_w"].shape[0]),
                         "focus_rate": float(output["focus_rate"]),
                         "tokens_reached": f"{reached}/{output['att_w'].shape[1]}"}
        row["slow_longer"] = row["slow"]["seconds"] > row["fast"]["seconds"]
        row["slow_reads_slower"] = reads_slower(row)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", choices=["coqui", "espnet"], required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--attention", default="dynamic_convolution",
                        help="Coqui's attention_type; its Capacitron recipes use dynamic_convolution")
    parser.add_argument("--reduction-factor", type=int, default=2,
                        help="the decoder's r (Coqui's Trainer reads sys.argv too: no --r)")
    parser.add_argument("--capacity", type=float, default=10.0)
    parser.add_argument("--beta-lr", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-decoder-steps", type=int, default=300)
    parser.add_argument("--stopnet-pos-weight", type=float, default=15.0,
                        help="Coqui's weight on the stop frame in its stopnet loss (Coqui's recipes: 15)")
    parser.add_argument("--ga-sigma", type=float, default=0.4,
                        help="Coqui: the guided-attention band's width (Coqui hard-codes 0.4)")
    parser.add_argument("--forward-attention", action="store_true",
                        help="Coqui: forward attention with its transition agent (and its inference mask)")
    parser.add_argument("--pace-weight", type=float, default=0.0,
                        help="Coqui: weight of the pace readout from z (ProsodyVAEArgs.pace_weight; 0 = off)")
    parser.add_argument("--decoder-input-dropout", type=float, default=0.0,
                        help="Coqui: share of teacher-forced decoder input frames zeroed in training "
                             "(ProsodyVAEArgs.decoder_input_dropout; 0 = off)")
    parser.add_argument("--transfer-from", type=Path,
                        help="Coqui: a run folder this script trained (final.pth, config.json); transfer only")
    parser.add_argument("--extend", type=Path,
                        help="Coqui: a run folder this script trained; train it about --steps more, then transfer")
    parser.add_argument("--work", type=Path, default=Path("host_transfer"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    for option, value in (("--transfer-from", args.transfer_from), ("--extend", args.extend)):
        if value is not None and args.host != "coqui":
            parser.error(f"{option}: Coqui runs only")
    args.work.mkdir(parents=True, exist_ok=True)
    references = contrasting_references(args.data)
    if args.transfer_from is not None:  # a Coqui run this script trained: its transfer again, nothing else
        run = args.transfer_from
        trained = {"checkpoint": str(run / "final.pth"), "config": str(run / "config.json")}
        transfer = coqui_transfer(trained, references, args.work)
        result = {**trained, "references": references, "transfer": transfer,
                  "slow_longer_all": all(row["slow_longer"] for row in transfer),
                  "slow_reads_slower_all": all(row["slow_reads_slower"] for row in transfer)}
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return
    trace: list[dict] = []
    if args.extend is not None:
        trained = coqui_extend(args, args.extend, trace)
    else:
        trained = (coqui_train if args.host == "coqui" else espnet_train)(args, trace)
    tail = trace[-max(1, len(trace) // 3):]
    kl_tail = statistics.fmean(t["kl"] for t in tail)
    transfer = (coqui_transfer if args.host == "coqui" else espnet_transfer)(trained, references, args.work)
    result = {
        "host": args.host, "data": str(args.data), "steps": len(trace), "capacity": args.capacity,
        "threads": torch.get_num_threads(),
        "seconds_per_step": statistics.median(b["t"] - a["t"] for a, b in zip(trace, trace[1:])),
        "kl_last_third_mean": kl_tail, "kl_last_third_std": statistics.pstdev(t["kl"] for t in tail),
        "kl_within_15pct_of_C": abs(kl_tail - args.capacity) <= 0.15 * args.capacity,
        "beta": {"first": trace[0]["beta"], "min": min(t["beta"] for t in trace), "last": trace[-1]["beta"]},
        "non_finite_steps": sum(not (math.isfinite(t["loss"]) and math.isfinite(t["kl"])) for t in trace),
        **trained, "references": references, "transfer": transfer,
        "slow_longer_all": all(row["slow_longer"] for row in transfer),
        "slow_reads_slower_all": all(row["slow_reads_slower"] for row in transfer),
        "trace": [{k: v for k, v in t.items() if k != "t"} for t in trace]}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "trace"}, indent=1))


if __name__ == "__main__":
    main()
