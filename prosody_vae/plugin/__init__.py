"""The plugin: what a user copies into their own TTS model, and nothing else of the package.

    from prosody_vae.plugin import VariationalReferenceEncoder, DualAscent, ZConditioner

reference.py (the variational reference encoder, its posterior, z conditioning), capacity.py (the
KL controllers, dual ascent among them), pretrained.py (save_pretrained / from_pretrained: a
config.json + model.safetensors folder), masked_norm.py (BatchNorm over valid frames),
speedups.py (the switch between plain PyTorch and the fused CPU forms) and errors.py. These files
import torch, einops, the standard library and each other (pretrained.py also safetensors), so
the folder works on its own.
"""

from .capacity import (GECO, CapacityAnnealing, ControllerConfig, DualAscent, FixedBeta, FreeBits, KLAnnealing,
                       KLController, build_controller)
from .errors import ProsodyVAEError
from .pretrained import from_pretrained, save_pretrained
from .reference import (MeanEncoder, Posterior, ReferenceEncoder, VariationalReferenceEncoder, ZConditioner,
                        condition_on_z)

__all__ = ["GECO", "CapacityAnnealing", "ControllerConfig", "DualAscent", "FixedBeta", "FreeBits", "KLAnnealing",
           "KLController", "build_controller", "ProsodyVAEError", "from_pretrained", "save_pretrained", "MeanEncoder",
           "Posterior", "ReferenceEncoder", "VariationalReferenceEncoder", "ZConditioner", "condition_on_z"]
