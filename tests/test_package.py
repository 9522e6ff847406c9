"""The package as a user meets it: import, public API, plugin independence, CLI errors."""

from __future__ import annotations

import ast
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


@pytest.mark.parametrize("module", ["reference.py", "capacity.py"])
def test_plugin_modules_import_nothing_but_errors_from_the_package(module):
    """The plugin is two files a user copies: they may use torch, einops, the stdlib and errors."""
    allowed_roots = {"torch", "einops", "math", "dataclasses", "typing", "copy", "inspect", "abc",
                     "__future__", "collections", "functools"}
    tree = ast.parse((PACKAGE / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            name = ("." * node.level) + (node.module or "")
            if node.level or name.startswith("prosody_vae"):
                assert name in (".errors", "prosody_vae.errors"), f"{module} imports {name}"
            else:
                assert name.split(".")[0] in allowed_roots, f"{module} imports {name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] in allowed_roots, f"{module} imports {alias.name}"


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
