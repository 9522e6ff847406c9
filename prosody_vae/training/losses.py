"""Training losses of ProsodyTacotron, each term kept apart for logging.

    total = L1(decoder mel) + L1(postnet mel) + stop BCE + w_ga(step) * guided attention + KL term
            [+ w_f0 * L1(log-F0, voiced frames) + w_v * voicing BCE (valid frames), with a pitch head]

Normalisation. Both L1 terms are means over the valid (frame, mel bin) elements of the batch.
The KL term is `alpha * controller.loss(kl_per_dim) / (T_valid_mean * n_mels)`, where
T_valid_mean = mean(mel_lengths) is the mean count of valid frames per utterance (frames, not
decoder steps, not the padded length). Why that T: the masked L1 equals
sum_b sum_{t < T_b, f} |err| / (sum_b T_b * n_mels), so multiplying the whole loss by
T_valid_mean * n_mels gives the per-utterance summed objective of the Capacitron paper,
mean_b [sum_{t, f} |err_b|] + beta * (KL - C), averaged over the batch. With alpha = 1 the two
optimise the same thing. KL is in nats per utterance, summed over latent dimensions, averaged over
the batch; the controller receives kl_per_dim (B, D) so that FreeBits can act per dimension.

Stop token: the target is 1 from the decoder step that holds the item's last valid frame onwards;
steps after that one are padding and masked out, so each item contributes its valid steps, of which
exactly one is positive (hence `stop_pos_weight`).

Pitch head: the log-F0 error is |predicted - target| in natural-log units (0.01 ~ 17 cents),
averaged over the frames that are voiced in the target; the voicing term is a BCE over valid
frames. Both are per-frame means, like the L1 terms, so their weights compare with the mel's.

Guided attention (Tachibana et al. 2018): W[t, n] = 1 - exp(-(n / (N - 1) - t / (T - 1))^2 / (2 g^2))
for N valid tokens and T valid decoder steps (so the first step faces the first token and the last
step the last token). The loss is sum(A * W) over valid cells divided by the number of valid decoder
steps: the expected off-diagonal penalty per step under the alignment, in [0, 1), independent of
text length. Its weight fades linearly to 0 (`guided_attention_weight`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F

from ..model.pitch_range import pitch_range_loss
from ..model.speaker_adversary import confusion_loss
from ..model.tacotron import TacotronOutput, decoder_steps
from ..plugin.errors import ConfigError
from ..plugin.masked_norm import length_mask

if TYPE_CHECKING:  # data.py pulls in the audio stack; only its type is needed here
    from ..plugin.capacity import KLController
    from ..data.ljspeech import Batch


@dataclass
class LossConfig:
    """Weights and schedules of the loss terms (normalisation: see the module docstring)."""

    stop_pos_weight: float = 10.0  # BCE weight of the one positive step per item
    guided_attention_weight: float = 2.0
    guided_attention_sigma: float = 0.2  # g in W
    guided_attention_fade_start: int = 0  # step at which the weight starts to fall
    guided_attention_fade_steps: Optional[int] = 10_000  # steps from full weight to 0; None: never fades
    kl_alpha: float = 1.0  # scale on the controller's KL loss, on top of the normalisation above
    f0_weight: float = 1.0  # pitch head: L1 on log-F0 over voiced frames
    voicing_weight: float = 1.0  # pitch head: BCE of the voicing logit over valid frames
    pitch_range_weight: float = 1.0  # pitch range head: L1 on the utterance's ln F0 spread (model/pitch_range.py)
    speaker_adversary_weight: float = 1.0  # model.speaker_adversary: its classifier's loss plus z's confusion loss

    def __post_init__(self) -> None:
        for name in ("stop_pos_weight", "guided_attention_weight", "kl_alpha", "guided_attention_fade_start",
                     "f0_weight", "voicing_weight", "pitch_range_weight", "speaker_adversary_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"LossConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.guided_attention_sigma > 0:
            raise ConfigError(f"LossConfig.guided_attention_sigma must be > 0, got {self.guided_attention_sigma}")
        if self.guided_attention_fade_steps is not None and self.guided_attention_fade_steps < 1:
            raise ConfigError(f"LossConfig.guided_attention_fade_steps must be >= 1 or None, "
                              f"got {self.guided_attention_fade_steps}")


@dataclass
class LossTerms:
    """Scalar tensors; `total` carries the graph. kl is in nats (batch mean), kl_term is what enters total."""

    mel_l1: torch.Tensor
    postnet_l1: torch.Tensor
    stop: torch.Tensor
    guided_attention: torch.Tensor  # unweighted
    guided_attention_weight: float
    kl: torch.Tensor
    kl_term: torch.Tensor
    total: torch.Tensor
    f0: torch.Tensor | float = 0.0  # pitch head: mean |log-F0 error| on voiced frames (0 without one)
    voicing: torch.Tensor | float = 0.0  # pitch head: voicing BCE (0 without one)
    speaker_adversary: torch.Tensor | float = 0.0  # the speaker classifier's cross-entropy (0 without one)
    pitch_range: torch.Tensor | float = 0.0  # pitch range head: mean |ln spread error| (0 without one)

    def as_floats(self) -> dict[str, float]:
        return {f.name: float(torch.as_tensor(getattr(self, f.name)).detach()) for f in fields(self)}


def masked_l1(pred: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over valid frames and all mel bins; pred, target (B, T, n_mels)."""
    valid = length_mask(lengths, pred.shape[1])[:, :, None]  # (B, T, 1)
    # where, not multiply: padding may hold anything (even NaN) and must not reach the sum
    error = torch.where(valid, (pred - target).abs(), 0.0)
    return error.sum() / (valid.sum() * pred.shape[2])


def pitch_losses(log_f0: torch.Tensor, voicing_logits: torch.Tensor, batch: "Batch") -> tuple[torch.Tensor, torch.Tensor]:
    """(L1 of log-F0 over voiced target frames, voicing BCE over valid frames); predictions (B, T)."""
    if batch.log_f0 is None or batch.voiced is None:
        raise ConfigError("this model has a pitch head, but the batch carries no log_f0/voiced targets "
                          "(batches from data.collate_batch carry them)")
    valid = length_mask(batch.mel_lengths, log_f0.shape[1])
    voiced = batch.voiced & valid
    f0 = torch.where(voiced, (log_f0 - batch.log_f0).abs(), 0.0).sum() / voiced.sum().clamp(min=1)
    bce = F.binary_cross_entropy_with_logits(voicing_logits, voiced.to(voicing_logits.dtype), reduction="none")
    return f0, torch.where(valid, bce, 0.0).sum() / valid.sum()


def stop_targets(mel_lengths: torch.Tensor, n_steps: int, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets (B, n_steps) float, mask (B, n_steps) bool): 1 from the step holding the last
    valid frame onwards; the mask keeps steps up to and including that step."""
    valid_steps = decoder_steps(mel_lengths, r)  # (B,)
    steps = torch.arange(n_steps, device=mel_lengths.device)[None]  # (1, n_steps)
    return (steps >= valid_steps[:, None] - 1).float(), length_mask(valid_steps, n_steps)


def stop_loss(logits: torch.Tensor, mel_lengths: torch.Tensor, r: int, pos_weight: float) -> torch.Tensor:
    """Masked BCE over valid decoder steps; logits (B, T_r)."""
    targets, mask = stop_targets(mel_lengths, logits.shape[1], r)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none",
                                             pos_weight=logits.new_tensor(pos_weight))
    return torch.where(mask, bce, 0.0).sum() / mask.sum()


def guided_attention_penalty(text_lengths: torch.Tensor, decoder_lengths: torch.Tensor, n_steps: int,
                             n_tokens: int, g: float) -> torch.Tensor:
    """W (B, n_steps, n_tokens) of the module docstring, zero outside each item's valid cells."""
    steps = torch.arange(n_steps, device=text_lengths.device)[None, :, None]  # (1, T, 1)
    tokens = torch.arange(n_tokens, device=text_lengths.device)[None, None, :]  # (1, 1, N)
    step_position = steps / (decoder_lengths[:, None, None] - 1).clamp(min=1)
    token_position = tokens / (text_lengths[:, None, None] - 1).clamp(min=1)
    penalty = 1.0 - torch.exp(-(token_position - step_position).square() / (2.0 * g * g))
    valid = length_mask(decoder_lengths, n_steps)[:, :, None] & length_mask(text_lengths, n_tokens)[:, None, :]
    return torch.where(valid, penalty, 0.0)


def guided_attention_loss(alignments: torch.Tensor, text_lengths: torch.Tensor, decoder_lengths: torch.Tensor,
                          g: float = 0.2) -> torch.Tensor:
    """Attention-weighted penalty per valid decoder step; alignments (B, T_r, L)."""
    penalty = guided_attention_penalty(text_lengths, decoder_lengths, alignments.shape[1], alignments.shape[2], g)
    # penalty is 0 outside valid cells; where keeps non-finite padding out of the sum
    return torch.where(penalty > 0, alignments * penalty, 0.0).sum() / decoder_lengths.sum()


def guided_attention_weight(step: int, weight: float, fade_start: int = 0, fade_steps: Optional[int] = None) -> float:
    """weight until fade_start, then linearly down to 0 over fade_steps (constant if fade_steps is None)."""
    if fade_steps is None:
        return weight
    return weight * min(1.0, max(0.0, 1.0 - (step - fade_start) / fade_steps))


def alignment_diagonal_score(alignments: torch.Tensor, text_lengths: torch.Tensor,
                             decoder_lengths: torch.Tensor) -> torch.Tensor:
    """Mean over valid decoder steps (all items pooled) of the step's peak attention weight on a
    valid token. Near 1: each step attends sharply (a clean alignment); 1 / N: uniform attention."""
    on_text = length_mask(text_lengths, alignments.shape[2])[:, None, :]  # (B, 1, L)
    peaks = torch.where(on_text, alignments, 0.0).amax(dim=2)  # (B, T_r)
    valid = length_mask(decoder_lengths, alignments.shape[1])
    return torch.where(valid, peaks, 0.0).sum() / valid.sum()


class TacotronLoss:
    """Computes `LossTerms` from a teacher-forced `TacotronOutput` and its batch."""

    def __init__(self, config: Optional[LossConfig] = None) -> None:
        self.config = config or LossConfig()

    def __call__(self, output: TacotronOutput, batch: "Batch", controller: Optional["KLController"],
                 step: int) -> LossTerms:
        """controller None trains without a KL term (kl is still reported); step drives the fade."""
        cfg = self.config
        n_frames, n_steps = output.mel_decoder.shape[1], output.stop_logits.shape[1]
        if n_steps == 0 or n_frames % n_steps:
            raise ConfigError(f"output has {n_frames} frames for {n_steps} decoder steps: not a whole reduction factor")
        r = n_frames // n_steps
        mel, mel_lengths = batch.mel, batch.mel_lengths
        steps = decoder_steps(mel_lengths, r)
        mel_l1 = masked_l1(output.mel_decoder, mel, mel_lengths)
        postnet_l1 = masked_l1(output.mel_postnet, mel, mel_lengths)
        stop = stop_loss(output.stop_logits, mel_lengths, r, cfg.stop_pos_weight)
        guided = guided_attention_loss(output.alignments, batch.text_lengths, steps, cfg.guided_attention_sigma)
        guided_weight = guided_attention_weight(step, cfg.guided_attention_weight, cfg.guided_attention_fade_start,
                                                cfg.guided_attention_fade_steps)
        posterior = output.posterior
        kl = posterior.kl.mean()
        if controller is None:
            kl_term = torch.zeros_like(kl)
        else:
            elements_per_utterance = mel_lengths.float().mean() * mel.shape[2]  # T_valid_mean * n_mels
            kl_term = cfg.kl_alpha * controller.loss(posterior.kl_per_dim) / elements_per_utterance
        total = mel_l1 + postnet_l1 + stop + guided_weight * guided + kl_term
        f0 = voicing = adversary = 0.0
        if output.log_f0 is not None:
            f0, voicing = pitch_losses(output.log_f0, output.voicing_logits, batch)
            total = total + cfg.f0_weight * f0 + cfg.voicing_weight * voicing
        pitch_range = 0.0
        if output.log_pitch_spread is not None:
            pitch_range = pitch_range_loss(output.log_pitch_spread, batch.log_f0, batch.voiced & length_mask(
                mel_lengths, batch.voiced.shape[1]))
            total = total + cfg.pitch_range_weight * pitch_range
        if output.speaker_logits is not None:
            guess, confusion_logits = output.speaker_logits
            adversary = F.cross_entropy(guess.float(), batch.speaker_ids)  # trains the classifier
            total = total + cfg.speaker_adversary_weight * (adversary + confusion_loss(confusion_logits))  # and z
        return LossTerms(mel_l1, postnet_l1, stop, guided, guided_weight, kl, kl_term, total, f0, voicing, adversary,
                         pitch_range)
