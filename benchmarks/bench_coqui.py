"""CPU speed and memory of the reference implementation: Coqui TTS Tacotron2 + Capacitron.

Why this exists: our speed is compared with Coqui TTS 0.28.0's Tacotron2 with Capacitron at its
LJSpeech recipe (`recipes/ljspeech/tacotron2-Capacitron`: r = 2, Dynamic Convolution Attention,
"V+T" posterior with text summary embeddings, 128-d latent, CapacitronOptimizer). Published
reference figures were taken on another 2-core machine, and this machine's speed drifts by +-15%
over a day, so ratios are only meaningful when both models are measured here, in the same session:

    /tmp/coquienv/bin/python benchmarks/bench_coqui.py          # one JSON object
    python benchmarks/bench_train.py; python benchmarks/bench_reference.py

It needs `coqui-tts` in a virtual environment that reuses this machine's torch (see
benchmarks/coqui_requirements.txt). The inputs and timing conventions are those of bench_train.py
and bench_reference.py:

- train: seconds per step, as Coqui's trainer does it: forward, TacotronLoss, the beta loss's
  backward and SGD step (`before_backward_pass`), backward, Capacitron gradient clipping,
  RAdam step. Peak RSS of the process after training.
- infer: milliseconds per decoder step at batch 1, free-running: the stop threshold is set out of
  reach and a 1-step call's time is subtracted, so text encoding does not count; the postnet does.
  Coqui's `Decoder.inference` tests the stop token with a Python `if`, so it cannot run a batch
  of more than one item; the batch-8 attempt's error is reported instead of a figure.
- reference: the model's own Capacitron VAE layer (reference encoder + text-summary LSTM over
  the model's 512-d embeddings + posterior MLP, loss KL + mean z^2) forward + backward at batch 16,
  400 frames, with inputs drawn as bench_reference.py draws them; and the ReferenceEncoder module
  alone (no text summary, MLP or KL): 76-86 ms here, close to the 85 ms quoted for
  Coqui elsewhere, whereas the full V+T step takes 135-160 ms, so that figure may leave the text summary out.

Coqui's `TTS/__init__.py` refuses to import without torchaudio and (for torch >= 2.9) torchcodec,
and one module on Tacotron2's import path (the speaker encoder, unused here) imports torchaudio at
the top. Neither is installed, so the package is entered without its `__init__` and torchaudio is
a placeholder that fails on any use. Each figure is the median of `--runs` after `--warmup`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import types

import torch

from bench_train import peak_rss_mib, timed  # this folder is on sys.path when run as a script


def import_coqui_without_torchaudio() -> None:
    spec = importlib.util.find_spec("TTS")
    if spec is None:
        sys.exit("coqui-tts is not installed: see benchmarks/coqui_requirements.txt")
    package = types.ModuleType("TTS")  # skips TTS/__init__.py and its torchaudio/torchcodec gate
    package.__path__ = list(spec.submodule_search_locations)
    package.__version__ = importlib.metadata.version("coqui-tts")
    sys.modules["TTS"] = package
    if importlib.util.find_spec("torchaudio") is None:
        placeholder = types.ModuleType("torchaudio")

        def unavailable(name: str):  # AttributeError so hasattr() probes still work
            raise AttributeError(f"torchaudio is not installed (placeholder for bench_coqui.py): torchaudio.{name}")

        placeholder.__getattr__ = unavailable
        sys.modules["torchaudio"] = placeholder


def build_model(latent_dim: int):
    from TTS.tts.configs.shared_configs import CapacitronVAEConfig
    from TTS.tts.configs.tacotron2_config import Tacotron2Config
    from TTS.tts.models.tacotron2 import Tacotron2
    from TTS.tts.utils.text.characters import IPAPhonemes

    config = Tacotron2Config(  # the recipe's model and optimiser fields; data, audio and logging left out
        capacitron_vae=CapacitronVAEConfig(capacitron_VAE_loss_alpha=1.0, capacitron_capacity=50,
                                           capacitron_VAE_embedding_dim=latent_dim,
                                           capacitron_use_text_summary_embeddings=True),
        use_capacitron_vae=True, r=2, attention_type="dynamic_convolution", ga_alpha=0.0,
        optimizer="CapacitronOptimizer",
        optimizer_params={"RAdam": {"betas": [0.9, 0.998], "weight_decay": 1e-6}, "SGD": {"lr": 1e-5, "momentum": 0.9}},
        grad_clip=0.0, double_decoder_consistency=False,
        stopnet_pos_weight=15, mixed_precision=False, seq_len_norm=True, lr=1e-3, loss_masking=False,
        decoder_loss_alpha=1.0, postnet_loss_alpha=1.0, postnet_diff_spec_alpha=0.0, decoder_diff_spec_alpha=0.0,
        decoder_ssim_alpha=0.0, postnet_ssim_alpha=0.0)
    # The recipe's phoneme tokenizer uses the default IPA phoneme set. The model builds its tokenizer
    # from the config and would need espeak to phonemise; only the symbol count matters here, so the
    # same set is named explicitly and phonemisation is switched off.
    _, config = IPAPhonemes().init_from_config(config)
    config.characters.characters_class = "TTS.tts.utils.text.characters.IPAPhonemes"
    config.use_phonemes = False
    return Tacotron2(config)


def bench_train(model, batch_size: int, chars: int, frames: int, warmup: int, runs: int) -> dict:
    config = model.config
    stop_targets = torch.zeros(batch_size, frames)
    stop_targets[:, -config.r:] = 1.0  # as Coqui's data loader: 1 on the last frame, then per r-frame group
    stop_targets = (stop_targets.view(batch_size, frames // config.r, config.r).sum(2) > 0).float()
    batch = {"text_input": torch.randint(3, config.num_chars, (batch_size, chars)),
             "text_lengths": torch.full((batch_size,), chars),
             "mel_input": torch.randn(batch_size, frames, config.audio.num_mels) - 5.0,  # (B, T, n_mels)
             "mel_lengths": torch.full((batch_size,), frames),
             "stop_targets": stop_targets, "stop_target_lengths": torch.full((batch_size,), frames / config.r),
             "speaker_ids": None, "d_vectors": None}
    criterion, optimizer = model.get_criterion(), model.get_optimizer()
    model.train()
    rss_before = peak_rss_mib()  # Coqui imports librosa, numba and more: a larger baseline than ours

    def step() -> None:  # the order of trainer.Trainer.optimize for this model
        _, loss_dict = model.train_step(batch, criterion)
        model.before_backward_pass(loss_dict, [optimizer])  # beta loss backward + SGD step on beta
        loss_dict["loss"].backward()
        model.before_gradient_clipping()  # clip 5.0 on all but beta
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = timed(step, warmup, runs)
    median = statistics.median(times)
    return {"step_s_median": median, "step_s_all": times, "mel_frames_per_s": batch_size * frames / median,
            "rss_before_train_mib": rss_before, "peak_rss_mib_after_train": peak_rss_mib()}


def bench_infer(model, batch_size: int, chars: int, steps: int, warmup: int, runs: int) -> dict:
    model.eval()
    decoder = model.decoder
    text = torch.randint(3, model.config.num_chars, (batch_size, chars))
    stop_threshold, max_steps = decoder.stop_threshold, decoder.max_decoder_steps
    decoder.stop_threshold = 2.0  # above any sigmoid output: run every step

    def decode(n: int) -> None:
        decoder.max_decoder_steps = n
        model.inference(text, aux_input={"style_mel": None, "style_text": None})

    try:
        times = timed(lambda: decode(steps), warmup, runs)
        setup = timed(lambda: decode(1), warmup, runs)
    except RuntimeError as error:
        return {"batch": batch_size, "unsupported": f"{type(error).__name__}: {error}"}
    finally:
        decoder.stop_threshold, decoder.max_decoder_steps = stop_threshold, max_steps
    per_step = (statistics.median(times) - statistics.median(setup)) / (steps - 1)
    audio_seconds_per_step = decoder.r * 256 / 22050
    return {"batch": batch_size, "ms_per_decoder_step": per_step * 1e3,
            "mel_frames_per_s": batch_size * decoder.r / per_step,
            "real_time_factor": per_step / audio_seconds_per_step}


def bench_reference(model, batch: int, frames: int, text_len: int, warmup: int, runs: int) -> dict:
    torch.manual_seed(0)  # the same draws as bench_reference.py
    n_mels = model.config.audio.num_mels
    mel = torch.randn(batch, frames, n_mels)  # (B, T, n_mels)
    lengths = torch.randint(frames // 2, frames + 1, (batch,))
    lengths[0] = frames
    text = torch.randint(1, model.config.num_chars, (batch, text_len))
    text_lengths = torch.randint(text_len // 2, text_len + 1, (batch,))
    vae, embedding = model.capacitron_vae_layer, model.embedding
    modules = torch.nn.ModuleList([vae, embedding]).train()

    def step(with_text: bool) -> float:
        modules.zero_grad(set_to_none=True)
        start = time.perf_counter()
        if with_text:
            z, posterior, prior, _ = vae([mel, lengths], [embedding(text), text_lengths])  # z: (B, 1, latent)
            kl = torch.distributions.kl_divergence(posterior, prior)  # (B,)
            (kl.mean() + z.square().mean()).backward()
        else:  # the ReferenceEncoder module alone, for figures quoted without the text summary
            vae.encoder(mel, lengths).square().mean().backward()
        return time.perf_counter() - start

    result = {"variant": "V+T", "batch": batch, "frames": frames, "text_len": text_len,
              "parameters": sum(p.numel() for p in modules.parameters())}
    for with_text, key in ((True, "median_ms"), (False, "reference_encoder_only_median_ms")):
        for _ in range(warmup):
            step(with_text)
        result[key] = statistics.median(1e3 * step(with_text) for _ in range(runs))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--chars", type=int, default=60)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--latent-dim", type=int, default=128)
    parser.add_argument("--infer-steps", type=int, default=200)
    parser.add_argument("--text-len", type=int, default=100, help="characters fed to the text summary (reference)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="apply our trainer's glibc malloc settings (prosody_vae.training.cpu_memory) to Coqui too")
    args = parser.parse_args()
    malloc_tuned = False
    if args.keep_freed_memory:
        from prosody_vae.training.cpu_memory import keep_freed_memory
        malloc_tuned = keep_freed_memory()

    import_coqui_without_torchaudio()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(args.latent_dim)
    result = {"implementation": f"coqui-tts {sys.modules['TTS'].__version__} Tacotron2 + Capacitron",
              "r": model.config.r, "attention": model.config.attention_type, "posterior": "V+T",
              "latent_dim": args.latent_dim, "num_chars": model.config.num_chars,
              "parameters": sum(p.numel() for p in model.parameters()),
              "threads": threads, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "batch": args.batch, "chars": args.chars, "frames": args.frames, "runs": args.runs,
              "keep_freed_memory": malloc_tuned}
    if not args.skip_train:
        result["train"] = bench_train(model, args.batch, args.chars, args.frames, args.warmup, args.runs)
    result["infer"] = [bench_infer(model, b, args.chars, args.infer_steps, args.warmup, args.runs) for b in (1, 8)]
    result["reference"] = bench_reference(model, args.batch, args.frames, args.text_len, args.warmup, args.runs)
    result["load_average_1min"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
