"""An adversarial speaker classifier on the posterior mean, and the confusion loss it sets z.

    guess, confusion_logits = SpeakerAdversary(latent_dim, hidden_dim, n_speakers)(posterior.mean)
    loss = cross_entropy(guess, speaker_ids) + confusion_loss(confusion_logits)    # losses.py adds them

The classifier learns to tell the speaker from z (it sees z detached, so this trains it alone).
The reference encoder is trained, through a frozen copy of the same classifier, to make its
guess uniform: z is pushed to hold nothing the classifier can read the speaker from. This is the
domain-confusion form of the adversary (Tzeng et al. 2015) rather than a gradient reversal
(Daft-Exprt): measured on the demo recipe, a reversal taught the encoder to make the classifier
confidently wrong, which a linear probe then read the speaker from with 98% accuracy.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


class SpeakerAdversary(nn.Module):
    def __init__(self, latent_dim: int, hidden_dim: int, n_speakers: int) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, n_speakers))

    def forward(self, z_mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, latent_dim) -> the classifier's logits on detached z (B, n_speakers), and its logits
        with frozen weights on z itself (B, n_speakers), whose gradient reaches only z."""
        frozen = {name: p.detach() for name, p in self.classifier.named_parameters()}
        return self.classifier(z_mean.detach()), functional_call(self.classifier, frozen, (z_mean,))


def confusion_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, n_speakers) logits against the uniform guess; ln(n_speakers) at best."""
    return -torch.log_softmax(logits.float(), dim=1).mean(dim=1).mean()
