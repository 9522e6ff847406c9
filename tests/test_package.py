"""The package as a user meets it: import, public API, plugin independence, CLI errors."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import prosody_vae

PACKAGE = Path(prosody_vae.__file__).parent


def test_import_is_fast_and_lazy():
    code = "import sys, prosody_vae; print(prosody_vae.__version__); print('torch' in sys.modules)"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    elapsed = time.perf_counter() - start
    assert out == [prosody_vae.__version__, "False"], "importing the package must not import torch"
    assert elapsed < 2.0


def test_every_public_name_resolves():
    for name in prosody_vae.__all__:
        assert getattr(prosody_vae, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        prosody_vae.Nope


PLUGIN = PACKAGE / "plugin"
PLUGIN_FILES = ("__init__.py", "capacity.py", "errors.py", "masked_norm.py", "pretrained.py", "reference.py",
                "speedups.py")


def test_the_plugin_folder_holds_exactly_the_files_a_user_copies():
    assert tuple(sorted(p.name for p in PLUGIN.glob("*.py"))) == PLUGIN_FILES


@pytest.mark.parametrize("module", PLUGIN_FILES)
def test_plugin_files_import_only_torch_einops_the_stdlib_and_each_other(module):
    """The plugin is the files a user copies into their own TTS model (README, "Use it in your own
    TTS model"): each may import torch, einops, the stdlib, and the others relatively; pretrained.py
    also safetensors, inside its functions, so a copy without safetensors still imports."""
    plugin_modules = {name.removesuffix(".py") for name in PLUGIN_FILES}
    for node in ast.walk(ast.parse((PLUGIN / module).read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            assert node.level == 1 and node.module in plugin_modules, \
                f"{module} imports {'.' * node.level}{node.module or ''}"
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]:
                root = name.split(".")[0]
                at_call_time = module == "pretrained.py" and root == "safetensors" and node.col_offset > 0
                assert root in {"torch", "einops"} or root in sys.stdlib_module_names or at_call_time, \
                    f"{module} imports {name}"


COPIED_PLUGIN_SCRIPT = """
import sys
sys.modules["prosody_vae"] = None  # the copy must not reach the package it came from

import torch
from myplugin import DualAscent, VariationalReferenceEncoder, ZConditioner
from myplugin.speedups import fast_path

torch.manual_seed(0)
encoder = VariationalReferenceEncoder(n_mels=20, latent_dim=4, conv_channels=(4, 8), gru_dim=8, mlp_dim=8)
conditioner = ZConditioner(memory_dim=6, latent_dim=4)
controller = DualAscent(capacity=1.0, beta_init=1.0, lr=0.1)
optimizer = torch.optim.Adam([*encoder.parameters(), *conditioner.parameters()], lr=1e-2)
mel, lengths, memory = torch.randn(3, 30, 20), torch.tensor([30, 12, 1]), torch.randn(3, 5, 6)
for fast in (True, False):
    with fast_path(fast):
        posterior = encoder(mel, lengths)
        loss = conditioner(memory, posterior.z).square().mean() + controller.loss(posterior.kl.mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        controller.update(posterior.kl.mean().detach())
mean = encoder.eval()(mel, lengths, mode="mean").mean
assert mean.shape == (3, 4) and torch.isfinite(mean).all() and controller.step == 2
print("trained and encoded")
"""


def test_copied_plugin_files_train_and_encode_on_their_own(tmp_path):
    """The plugin folder alone, copied into a user's project, trains a step on each path and encodes."""
    shutil.copytree(PLUGIN, tmp_path / "myplugin", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "host.py").write_text(COPIED_PLUGIN_SCRIPT)
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "host.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "trained and encoded", result.stderr


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prosody_vae", *args], capture_output=True, text=True)


def test_cli_version_and_help():
    assert run_cli("--version").stdout.strip() == f"prosody_vae {prosody_vae.__version__}"
    assert "make-corpus" in run_cli("--help").stdout


def test_cli_error_is_one_line_and_nonzero(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("not a corpus")
    result = run_cli("make-corpus", "--out", str(tmp_path / "out"), "--n", "2")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prosody-vae make-corpus: error:"), result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "out" / "precious.txt").read_text() == "not a corpus"


def test_cli_debug_shows_traceback(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("x")
    result = run_cli("--debug", "make-corpus", "--out", str(tmp_path / "out"), "--n", "2")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_cli_rejects_bad_arguments():
    result = run_cli("make-corpus", "--out", "x", "--n", "-3")
    assert result.returncode == 2 and "expected a positive integer" in result.stderr
