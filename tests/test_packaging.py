"""The package as pip installs it: recipes found by name, and a wheel that runs the demo with no
source checkout in sight."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prosody_vae.cli import main
from prosody_vae.training.config import load_config, recipe_config
from prosody_vae.plugin.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_recipes_are_found_by_name_in_a_checkout():
    assert recipe_config("demo") == REPO / "recipes" / "demo" / "config.toml"
    assert load_config(recipe_config("ljspeech")).model.latent_dim == 128
    every_recipe = ", ".join(sorted(path.parent.name for path in (REPO / "recipes").glob("*/config.toml")))
    assert every_recipe.startswith("demo, ljspeech")
    with pytest.raises(ConfigError, match=rf"no recipe named 'nope' in .*recipes \(recipes: {every_recipe}\)"):
        recipe_config("nope")
    with pytest.raises(ConfigError, match="no recipe named '../recipes/demo'"):
        recipe_config("../recipes/demo")


def test_train_takes_a_config_file_or_a_recipe_name(tmp_path, capsys):
    assert main(["train", "--recipe", "nope", "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "prosody-vae train: error: no recipe named 'nope'" in capsys.readouterr().err
    for both_or_neither in (["--recipe", "demo", "--config", "x.toml"], []):
        with pytest.raises(SystemExit):
            main(["train", *both_or_neither, "--data", str(tmp_path), "--out", str(tmp_path / "run")])
        assert "--config" in capsys.readouterr().err


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_runs_the_demo_from_an_unrelated_folder(tmp_path):
    # Built from a copy of what the wheel is made of: the build's own build/ and egg-info folders
    # go there, and nothing stale from the checkout's build/ can reach the wheel.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # no checkout on the path
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("prosody_vae", "recipes"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "wheels", source],
        env=env)
    (wheel,) = (tmp_path / "wheels").glob("prosody_vae-*.whl")

    # torch and the other dependencies come from the system site-packages: nothing is downloaded
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", venv], env=env)
    run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", wheel], env=env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([venv / "bin" / "python", "-c", "import prosody_vae.training.config as c; "
                 "print(c.__file__); print(c.recipe_config('demo'))"], cwd=elsewhere, env=env).stdout.split()
    site_packages = venv.resolve() / "lib"
    assert all(Path(path).resolve().is_relative_to(site_packages) for path in where), where
    assert Path(where[1]).parts[-4:] == ("prosody_vae", "recipes", "demo", "config.toml")

    cli = venv / "bin" / "prosody-vae"
    assert "--max-decoder-steps" in run([cli, "demo", "--help"], cwd=elsewhere, env=env).stdout
    # the demo recipe holds out 20 utterances, so 22 leave 2 to train on
    run([cli, "demo", "--out", "demo", "--n", "22", "--max-steps", "2", "--max-decoder-steps", "8"],
        cwd=elsewhere, env=env, timeout=600)
    out = elsewhere / "demo"
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["step"] == 2
    conditions = {row["condition"] for row in report["synthesis"]}
    # four prosody conditions (plus the cross-voice pair where this tiny corpus allows), three sentences each
    assert {"transfer_slow_low", "transfer_fast_high", "prior_sample", "prior_mean"} <= conditions
    assert len(report["synthesis"]) == 3 * len(conditions)
    assert all((out / row["wav"]).is_file() for row in report["synthesis"])
    assert len(list((out / "wavs").glob("reference_*.wav"))) == 2
    assert "dual ascent at C = 10.0 nats" in (out / "report.md").read_text()  # the demo recipe's capacity
    assert (out / "plots" / "training.png").is_file()
