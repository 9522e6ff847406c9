"""`prosody-vae serve`: an HTTP API and a web page for interactive prosody control.

    app = build_app(Synthesizer.from_checkpoint("best.pt", vocoder="auto"), ServeConfig(max_batch=8))
    serve("best.pt", host="127.0.0.1", port=8000)   # what the CLI runs (uvicorn)

Needs the `serve` extra (FastAPI, uvicorn, python-multipart): pip install "prosody_vae[serve]".
"""

from __future__ import annotations

from typing import Optional

import torch

from ..inference.synthesizer import Synthesizer
from ..plugin.errors import ConfigError
from .engine import ServeConfig

__all__ = ["ServeConfig", "build_app", "create_app", "serve"]


def __getattr__(name: str):
    if name in ("build_app", "create_app"):  # FastAPI is imported only when an app is wanted
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'prosody_vae.serve' has no attribute {name!r}")


def serve(checkpoint, host: str = "127.0.0.1", port: int = 8000, config: Optional[ServeConfig] = None,
          device: str = "cpu", precision: str = "fp32", vocoder: Optional[str] = "auto",
          max_reference_seconds: Optional[float] = 30.0, log_level: str = "info") -> None:
    """Load the checkpoint once, warm the model up, and serve until interrupted."""
    try:
        import uvicorn

        from .app import build_app
    except ImportError as exc:
        raise ConfigError(f"`prosody-vae serve` needs the serve extra ({exc.name} is missing): "
                          "pip install \"prosody_vae[serve]\"") from None
    config = config or ServeConfig()
    torch.set_num_threads(config.threads)
    synth = Synthesizer.from_checkpoint(checkpoint, device=device, precision=precision, vocoder=vocoder,
                                        max_reference_seconds=max_reference_seconds)
    app = build_app(synth, config)
    print(f"serving {checkpoint} on http://{host}:{port}/ (API description: /docs)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
