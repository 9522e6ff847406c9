"""ONNX export of the reference encoder: onnxruntime reproduces eager posteriors at any batch and length."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prosody_vae.plugin.errors import ReferenceInputError
from prosody_vae.plugin.reference import VariationalReferenceEncoder

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from prosody_vae.inference.export_onnx import OnnxReferenceEncoder, export_reference_encoder_onnx  # noqa: E402


def trained_like_encoder(text_summary_dim: int = 0) -> VariationalReferenceEncoder:
    """Small encoder whose BatchNorm running statistics are not the identity, as after training."""
    torch.manual_seed(0)
    encoder = VariationalReferenceEncoder(n_mels=20, latent_dim=6, text_summary_dim=text_summary_dim,
                                          conv_channels=(4, 8, 8), gru_dim=12, mlp_dim=10)
    with torch.no_grad():
        for norm in encoder.reference.norms:
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    return encoder.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    encoder = trained_like_encoder()
    path = export_reference_encoder_onnx(encoder, tmp_path_factory.mktemp("onnx") / "ref.onnx")
    return encoder, OnnxReferenceEncoder(path)


@pytest.mark.parametrize("batch, frames", [(1, 9), (3, 131)])  # neither is the export example (2, 48)
def test_onnx_matches_eager_posterior_at_other_batch_and_length(exported, batch, frames):
    encoder, onnx_encoder = exported
    generator = torch.Generator().manual_seed(batch)
    mel = torch.randn(batch, frames, 20, generator=generator)
    lengths = torch.randint(1, frames + 1, (batch,), generator=generator)
    lengths[0] = frames
    mean, std = onnx_encoder(mel, lengths)
    with torch.no_grad():
        posterior = encoder(mel, lengths, mode="mean")
    np.testing.assert_allclose(mean, posterior.mean.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(std, posterior.std.numpy(), atol=1e-4, rtol=1e-4)


def test_onnx_graph_masks_padding_by_length(exported):
    _, onnx_encoder = exported
    mel = torch.randn(1, 40, 20)
    padded = torch.cat([mel, torch.full((1, 25, 20), 7.0)], dim=1)  # loud garbage past the length
    lengths = torch.tensor([40])
    np.testing.assert_allclose(onnx_encoder(padded, lengths)[0], onnx_encoder(mel, lengths)[0], atol=1e-5)


def test_export_leaves_the_encoder_in_its_mode(tmp_path):
    encoder = trained_like_encoder().train()
    export_reference_encoder_onnx(encoder, tmp_path / "ref.onnx")
    assert encoder.training and all(norm.training for norm in encoder.reference.norms)


def test_text_summary_encoder_takes_its_input(tmp_path):
    encoder = trained_like_encoder(text_summary_dim=5)
    onnx_encoder = OnnxReferenceEncoder(export_reference_encoder_onnx(encoder, tmp_path / "ref_t.onnx"))
    mel, lengths, summary = torch.randn(2, 30, 20), torch.tensor([30, 11]), torch.randn(2, 5)
    with torch.no_grad():
        expected = encoder(mel, lengths, text_summary=summary, mode="mean").mean.numpy()
    np.testing.assert_allclose(onnx_encoder(mel, lengths, text_summary=summary)[0], expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ReferenceInputError, match="text_summary"):
        onnx_encoder(mel, lengths)
