"""save_pretrained / from_pretrained: an encoder and its controller move between pipelines as a
config.json + model.safetensors folder and encode identically."""

import hashlib
import json

import pytest
import torch

from prosody_vae.plugin import ControllerConfig, VariationalReferenceEncoder, build_controller
from prosody_vae.plugin.errors import CheckpointError
from prosody_vae.plugin.pretrained import from_pretrained, save_pretrained


def trained_encoder(**kwargs) -> VariationalReferenceEncoder:
    """A tiny encoder whose weights and BatchNorm statistics have moved off their initial values."""
    torch.manual_seed(0)
    encoder = VariationalReferenceEncoder(n_mels=8, latent_dim=4, conv_channels=(4, 8), gru_dim=8, mlp_dim=8, **kwargs)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    for _ in range(3):
        extra = {"speaker": torch.randn(2, encoder.speaker_dim)} if encoder.speaker_dim else {}
        posterior = encoder(torch.randn(2, 20, 8), torch.tensor([20, 13]), **extra)
        optimizer.zero_grad()
        posterior.kl.mean().backward()
        optimizer.step()
    return encoder.eval()


@pytest.mark.parametrize("variant", [{}, {"text_summary_dim": 5, "text_dropout": 0.2}, {"speaker_dim": 3}])
def test_a_saved_encoder_loads_and_encodes_identically(tmp_path, variant):
    encoder = trained_encoder(**variant)
    controller_config = ControllerConfig(kind="dual_ascent", capacity=2.0, lr=0.1, momentum=0.5)
    controller = build_controller(controller_config)
    for kl in (5.0, 4.0, 3.0):
        controller.update(kl)
    save_pretrained(encoder, tmp_path / "enc", controller=controller, controller_config=controller_config)
    loaded, loaded_controller = from_pretrained(tmp_path / "enc")

    mel, lengths = torch.randn(3, 30, 8), torch.tensor([30, 7, 1])
    extra = {"speaker": torch.randn(3, 3)} if variant.get("speaker_dim") else {}
    if variant.get("text_summary_dim"):
        extra["text_summary"] = torch.randn(3, 5)
    with torch.no_grad():
        want, got = encoder(mel, lengths, mode="mean", **extra), loaded(mel, lengths, mode="mean", **extra)
    assert torch.equal(want.mean, got.mean) and torch.equal(want.std, got.std)
    assert not loaded.training
    assert loaded_controller.beta == controller.beta != 1.0
    assert loaded_controller.step == controller.step == 3
    assert json.loads((tmp_path / "enc" / "config.json").read_text())["encoder"]["latent_dim"] == 4


def test_the_controller_is_optional_and_the_folder_is_not_pickled(tmp_path):
    from safetensors.torch import load_file

    save_pretrained(trained_encoder(), tmp_path / "enc")
    encoder, controller = from_pretrained(tmp_path / "enc")
    assert controller is None
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["config.json", "model.safetensors"]
    assert "reference.norms.0.running_mean" in load_file(str(tmp_path / "enc" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="controller and controller_config together"):
        save_pretrained(encoder, tmp_path / "x", controller=build_controller(ControllerConfig(capacity=1.0)))


def test_bad_folders_are_refused_naming_the_file_and_field(tmp_path):
    folder = save_pretrained(trained_encoder(), tmp_path / "enc")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    with pytest.raises(CheckpointError, match=r"nothing[/\\]model.safetensors: missing"):
        (tmp_path / "nothing").mkdir()
        (tmp_path / "nothing" / "config.json").write_text("{}")
        from_pretrained(tmp_path / "nothing")
    config_path.write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(CheckpointError, match=r"config.json: field 'format_version' is 99"):
        from_pretrained(folder)
    config_path.write_text(json.dumps({**config, "encoder": {**config["encoder"], "latent_dim": 6}}))
    with pytest.raises(CheckpointError, match=r"model.safetensors: weights do not fit"):
        from_pretrained(folder)
    config_path.write_text(json.dumps(config))
    other = save_pretrained(VariationalReferenceEncoder(n_mels=8, latent_dim=4, conv_channels=(4, 8), gru_dim=8,
                                                        mlp_dim=8), tmp_path / "other")
    (folder / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"model.safetensors: not the weights .*config.json was saved with"):
        from_pretrained(folder)  # new weights beside an old config: what a save cut between its files leaves
    (folder / "model.safetensors").write_bytes(b"not a tensor file")
    config_path.write_text(json.dumps({**config, "weights_sha256": hashlib.sha256(b"not a tensor file").hexdigest()}))
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a readable safetensors file"):
        from_pretrained(folder)


def test_an_interrupted_save_leaves_the_previous_folder_loadable(tmp_path, monkeypatch):
    import safetensors.torch

    first = trained_encoder()
    folder = save_pretrained(first, tmp_path / "enc")

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(VariationalReferenceEncoder(n_mels=8, latent_dim=4, conv_channels=(4, 8), gru_dim=8, mlp_dim=8),
                        folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no temporaries
    loaded, _ = from_pretrained(folder)
    mel = torch.randn(1, 10, 8)
    with torch.no_grad():
        assert torch.equal(loaded(mel, torch.tensor([10]), mode="mean").mean, first(mel, torch.tensor([10]), mode="mean").mean)
