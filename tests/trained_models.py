"""Models trained once per test session, from the demo recipe on a built-in one-voice corpus.

    corpus = make_transfer_corpus(root)                      # 240 espeak-ng utterances, one voice
    runs = train_demo_models(corpus)                         # {"demo": last.pt, "collapsed": last.pt}
    calibrated = calibrate_copy(runs["demo"], corpus, out)   # the knobs, in a copy of the demo model

tests/conftest.py wraps these in session fixtures, so the transfer tests, the server's knob tests
and the browser test share one corpus and one training (a few minutes on two cores). The corpus
has one voice, so rate and pitch are the only things that differ between its utterances.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo" / "config.toml"
STEPS = 300
N_UTTERANCES = 240
# The KL term is beta * KL / (T * n_mels) next to a per-element L1 (README, "Units"), so with
# T ~ 300 frames beta = 1e5 costs ~4 per nat: the posterior collapses (KL < 0.01 nats in a trial).
COLLAPSING_BETA = 1e5


def make_transfer_corpus(out: Path) -> Path:
    from prosody_vae.data.corpus import CorpusConfig, make_corpus

    make_corpus(out, CorpusConfig(n=N_UTTERANCES, voices=("en-us",), rate=(100, 280), pitch=(10, 90), workers=2))
    return out


def demo_config(steps: int = STEPS):
    from prosody_vae.training.config import load_config

    demo = load_config(RECIPE)
    return dataclasses.replace(demo, max_steps=steps, threads=1, val_every=steps, checkpoint_every=steps,
                               data=dataclasses.replace(demo.data, n_val=8))


def train_demo_models(corpus: Path, steps: int = STEPS) -> dict[str, Path]:
    """The demo recipe and its C = 0 control (a posterior collapsed by a huge fixed beta), trained
    at once in two one-thread processes; {"demo", "collapsed"} -> its last checkpoint."""
    from prosody_vae.plugin.capacity import ControllerConfig
    from prosody_vae.training.trainer import train

    demo = demo_config(steps)
    collapsing = ControllerConfig(kind="fixed", beta=COLLAPSING_BETA)
    configs = {"demo": demo, "collapsed": dataclasses.replace(demo, controller=collapsing)}
    runs = {name: corpus.parent / f"run_{name}" for name in configs}
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = {name: pool.submit(train, configs[name], corpus, runs[name]) for name in configs}
        finished = {name: result.result() for name, result in results.items()}
    assert all(r.step == steps for r in finished.values()), {name: r.step for name, r in finished.items()}
    return {name: runs[name] / "checkpoints" / "last.pt" for name in configs}


def calibrate_copy(checkpoint: Path, corpus: Path, out: Path) -> Path:
    """A copy of `checkpoint` with its knobs calibrated on `corpus` (the original is untouched)."""
    from prosody_vae.inference.calibrate import calibrate_checkpoint

    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, out)
    calibrate_checkpoint(out, corpus, cache_dir=out.parent / "mel_cache")
    return out
