"""A trained run's reference encoder and controller through save_pretrained / from_pretrained.

    python benchmarks/pretrained_roundtrip.py --checkpoint RUN/checkpoints/best.pt --out encoder_folder

Prints the largest difference in posterior mean and std over four random references of 17-300
frames (0.0 when the folder loads the encoder exactly) and beta before and after.
"""

import argparse
from pathlib import Path

import torch

from prosody_vae import from_pretrained, save_pretrained
from prosody_vae.plugin import build_controller
from prosody_vae.training.checkpoint import load_model_and_state

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--checkpoint", type=Path, required=True)
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()

model, config, state = load_model_and_state(args.checkpoint)
controller = build_controller(config.controller)
controller.load_state_dict(state["controller"])
encoder = model.reference_encoder.eval()
save_pretrained(encoder, args.out, controller=controller, controller_config=config.controller)
loaded, loaded_controller = from_pretrained(args.out)

torch.manual_seed(1)
features, lengths = torch.randn(4, 300, encoder.n_mels), torch.tensor([300, 211, 90, 17])  # (B, T, n_mels)
with torch.no_grad():
    saved, reloaded = encoder(features, lengths, mode="mean"), loaded(features, lengths, mode="mean")
print(f"n_mels {encoder.n_mels}  latent_dim {encoder.latent_dim}  "
      f"max |mean diff| {(saved.mean - reloaded.mean).abs().max().item()}  "
      f"max |std diff| {(saved.std - reloaded.std).abs().max().item()}  "
      f"beta {controller.beta:.3f} -> {loaded_controller.beta:.3f}")
