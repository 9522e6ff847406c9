"""Behavioural tests of the variational reference encoder plugin (prosody_vae/plugin/reference.py)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from prosody_vae.plugin.errors import ConfigError, ReferenceInputError
from prosody_vae.plugin.reference import (MeanEncoder, Posterior, ReferenceEncoder, VariationalReferenceEncoder,
                                   ZConditioner, condition_on_z)
from prosody_vae.plugin.speedups import fast_path

N_MELS = 20
SMALL = dict(n_mels=N_MELS, latent_dim=8, conv_channels=(4, 8, 8), gru_dim=16, mlp_dim=16)
VARIANTS = {"V": (0, 0), "V+T": (6, 0), "V+T+S": (6, 5)}  # name -> (text_summary_dim, speaker_dim)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def small_encoder(seed: int = 0, **overrides) -> VariationalReferenceEncoder:
    torch.manual_seed(seed)
    return VariationalReferenceEncoder(**{**SMALL, **overrides})


def conditions(batch: int, text_dim: int, speaker_dim: int, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(text_summary=torch.randn(batch, text_dim, generator=g) if text_dim else None,
                speaker=torch.randn(batch, speaker_dim, generator=g) if speaker_dim else None)


def mels(lengths: list[int], n_mels: int = N_MELS, n_frames: int | None = None, seed: int = 2):
    """A padded batch whose padding holds large garbage, and its lengths."""
    g = torch.Generator().manual_seed(seed)
    n_frames = n_frames or max(lengths)
    mel = 1e3 * torch.randn(len(lengths), n_frames, n_mels, generator=g)
    for i, length in enumerate(lengths):
        mel[i, :length] = torch.randn(length, n_mels, generator=g)
    return mel, torch.tensor(lengths)


@pytest.fixture(params=[False, True], ids=["plain", "fast"])
def either_path(request):
    """The test runs twice: on plain PyTorch and on the speed-ups (prosody_vae/plugin/speedups.py)."""
    with fast_path(request.param):
        yield request.param


@pytest.mark.parametrize("variant", VARIANTS)
def test_posterior_shapes_per_variant(variant):
    text_dim, speaker_dim = VARIANTS[variant]
    enc = small_encoder(text_summary_dim=text_dim, speaker_dim=speaker_dim)
    mel, lengths = mels([30, 11, 4])
    post = enc(mel, lengths, **conditions(3, text_dim, speaker_dim))
    assert isinstance(post, Posterior)
    for field in (post.z, post.mean, post.std, post.kl_per_dim):
        assert field.shape == (3, 8)
    assert post.kl.shape == (3,)
    assert (post.std > 0).all()
    torch.testing.assert_close(post.kl_per_dim.sum(dim=1), post.kl)


def test_reference_encoder_alone_returns_summary():
    ref = ReferenceEncoder(n_mels=N_MELS, conv_channels=(4, 8), gru_dim=12)
    mel, lengths = mels([9, 3])
    assert ref(mel, lengths).shape == (2, 12) == (2, ref.out_dim)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_live_on_the_input_device_and_dtype(device, dtype):
    enc = small_encoder(text_summary_dim=6).to(device=device, dtype=dtype)
    mel, lengths = mels([12, 5])
    post = enc(mel.to(device, dtype), lengths, text_summary=torch.randn(2, 6, device=device, dtype=dtype),
               generator=torch.Generator().manual_seed(0))  # a CPU generator also serves a GPU model
    for field in (post.z, post.mean, post.std, post.kl, post.kl_per_dim):
        assert field.device.type == device and field.dtype == dtype
    prior = enc.sample_prior(3)
    assert prior.device.type == device and prior.dtype == dtype


@pytest.mark.parametrize("garbage", ["large", "nan"])
def test_padding_garbage_leaves_the_posterior_unchanged(garbage, either_path):
    """Eval mode, Capacitron sizes: each item in a garbage-padded batch == the item alone."""
    torch.manual_seed(0)
    enc = VariationalReferenceEncoder(n_mels=80, latent_dim=16).eval()
    lengths = [37, 5, 1, 64, 2]
    mel, lengths_t = mels(lengths, n_mels=80, n_frames=90)
    if garbage == "nan":
        for i, length in enumerate(lengths):
            mel[i, length:] = float("nan")
    batched = enc(mel, lengths_t, mode="mean")
    for i, length in enumerate(lengths):
        alone = enc(mel[i:i + 1, :length], torch.tensor([length]), mode="mean")
        torch.testing.assert_close(batched.mean[i:i + 1], alone.mean, atol=1e-5, rtol=0)
        torch.testing.assert_close(batched.std[i:i + 1], alone.std, atol=1e-5, rtol=0)


def test_training_batchnorm_statistics_ignore_padding(either_path):
    """Train mode: more garbage padding changes neither the posterior nor BatchNorm's running stats."""
    lengths = [23, 9, 2]
    short_pad, lengths_t = mels(lengths, n_frames=23)
    long_pad = torch.cat([short_pad, 1e3 * torch.randn(3, 41, N_MELS)], dim=1)
    outputs, running = [], []
    for mel in (short_pad, long_pad):
        enc = small_encoder().train()
        outputs.append(enc(mel, lengths_t, mode="mean").mean)
        running.append(torch.cat([enc.reference.norms[0].running_mean, enc.reference.norms[0].running_var]))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(running[0], running[1], atol=1e-5, rtol=0)
    assert not torch.allclose(running[0], torch.cat([torch.zeros(4), torch.ones(4)]))  # stats did update


@pytest.mark.parametrize("training", [True, False])
def test_both_paths_compute_the_same_encoder(training):
    """V+T+S with text dropout, float64, a padded batch: the plain and the fast path give the same
    posterior, gradient of every parameter and buffers (BatchNorm's running statistics), and an
    encoder built on either path has the same state_dict keys, so a checkpoint loads on both."""
    mel, lengths = mels([23, 9, 2, 1, 17])
    cond = {name: value.double() for name, value in conditions(5, 6, 5).items()}
    results, state_keys = [], []
    for fast in (False, True):
        with fast_path(fast):
            enc = small_encoder(text_summary_dim=6, speaker_dim=5, text_dropout=0.5).double().train(training)
            g = torch.Generator().manual_seed(3)
            with torch.no_grad():
                for norm in enc.reference.norms:  # gamma and beta away from their initial 1 and 0
                    norm.weight.uniform_(0.5, 2.0, generator=g)
                    norm.bias.uniform_(-1.0, 1.0, generator=g)
            first_conv_calls = []
            enc.reference.convs[0].register_forward_hook(lambda *_: first_conv_calls.append(1))
            torch.manual_seed(4)  # the text dropout draw
            post = enc(mel.double(), lengths, **cond, generator=torch.Generator().manual_seed(5))
            (post.z.square().sum() + post.kl.sum()).backward()
        assert bool(first_conv_calls) != fast  # the fast path folds the first conv: the path really taken
        state_keys.append(list(enc.state_dict()))
        results.append({"z": post.z, "mean": post.mean, "std": post.std, "kl": post.kl, **dict(enc.named_buffers()),
                        **{f"{name}.grad": p.grad for name, p in enc.named_parameters() if p.grad is not None}})
    plain, fast = results
    assert state_keys[0] == state_keys[1] and plain.keys() == fast.keys()
    assert plain["reference.convs.0.weight.grad"].abs().sum() > 0
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], rtol=1e-9, atol=1e-10,
                                   msg=lambda message: f"{name}: {message}")


def test_kl_matches_monte_carlo_estimate():
    """Closed-form KL == E_q[log q(z) - log p(z)], estimated from the encoder's own samples."""
    enc = small_encoder(latent_dim=32).eval()
    with torch.no_grad():
        enc.head[-1].bias[:32] += 0.8  # move the posterior mean away from 0 so the KL is sizeable
        mel, lengths = mels([10])
        n = 20000
        post = enc(mel.expand(n, -1, -1), lengths.expand(n), generator=torch.Generator().manual_seed(3))
    normal = lambda x, mu, sd: -0.5 * ((x - mu) / sd) ** 2 - torch.log(sd) - 0.5 * math.log(2 * math.pi)
    log_ratio = (normal(post.z, post.mean, post.std) - normal(post.z, 0.0, torch.tensor(1.0))).sum(dim=1)
    assert post.kl[0] > 5.0
    assert log_ratio.mean().item() == pytest.approx(post.kl[0].item(), rel=0.02)


def test_standard_normal_posterior_has_zero_kl():
    enc = small_encoder().eval()
    with torch.no_grad():
        enc.head[-1].weight.zero_()
        enc.head[-1].bias.zero_()
        # softplus(raw) + floor == 1  ->  raw = log(expm1(1 - floor))
        enc.head[-1].bias[8:] = math.log(math.expm1(1.0 - enc.std_floor))
    post = enc(*mels([14, 3]), mode="mean")
    torch.testing.assert_close(post.std, torch.ones(2, 8))
    assert post.kl.abs().max() < 1e-5


def test_mean_mode_is_deterministic_and_returns_the_mean():
    enc = small_encoder().eval()
    mel, lengths = mels([15, 7])
    first = enc(mel, lengths, mode="mean")
    second = enc(mel, lengths, mode="mean", generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(first.z, second.z, rtol=0, atol=0)
    torch.testing.assert_close(first.z, first.mean, rtol=0, atol=0)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampling_is_reparameterised_and_seeded(temperature):
    enc = small_encoder().eval()
    mel, lengths = mels([15, 7])
    draw = lambda seed: enc(mel, lengths, temperature=temperature, generator=torch.Generator().manual_seed(seed))
    a, b, c = draw(4), draw(4), draw(5)
    torch.testing.assert_close(a.z, b.z, rtol=0, atol=0)
    assert not torch.allclose(a.z, c.z)
    eps = torch.randn(2, 8, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a.z, a.mean + temperature * a.std * eps)


def test_temperature_zero_sample_equals_mean():
    enc = small_encoder()
    post = enc(*mels([8, 6]), mode="sample", temperature=0.0)
    torch.testing.assert_close(post.z, post.mean, rtol=0, atol=0)


@pytest.mark.parametrize("temperature", [0.3, 1.0])
def test_sample_prior_statistics_and_seeding(temperature):
    enc = small_encoder(latent_dim=16)
    samples = enc.sample_prior(20000, temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (20000, 16)
    assert samples.mean(dim=0).abs().max() < 0.05 * temperature
    torch.testing.assert_close(samples.std(dim=0), torch.full((16,), temperature), rtol=0.03, atol=0)
    again = enc.sample_prior(20000, temperature=temperature, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(samples, again, rtol=0, atol=0)
    assert (enc.sample_prior(4, temperature=0.0) == 0).all()


def test_short_references_down_to_one_frame_are_encoded(either_path):
    """Documented choice: no error and no padding needed; every length >= min_frames == 1 works."""
    assert ReferenceEncoder.min_frames == 1
    enc = VariationalReferenceEncoder(n_mels=N_MELS, latent_dim=8).eval()  # all 6 stride-2 convs
    for length in (1, 2, 3, 64, 65):
        post = enc(*mels([length]), mode="mean")
        assert torch.isfinite(post.mean).all() and torch.isfinite(post.std).all()
    # a 1-frame reference batched with a long one still equals itself alone
    mel, lengths = mels([200, 1])
    batched = enc(mel, lengths, mode="mean")
    alone = enc(mel[1:, :1], torch.tensor([1]), mode="mean")
    torch.testing.assert_close(batched.mean[1:], alone.mean, atol=1e-5, rtol=0)


BAD_CALLS = {
    "mel not 3-D": (dict(mel=torch.randn(10, N_MELS)), "mel must be"),
    "wrong n_mels": (dict(mel=torch.randn(2, 10, N_MELS + 1)), "n_mels=20"),
    "integer mel": (dict(mel=torch.zeros(2, 10, N_MELS, dtype=torch.long)), "floating"),
    "empty mel": (dict(mel=torch.randn(2, 0, N_MELS), mel_lengths=torch.tensor([1, 1])), "at least one"),
    "float lengths": (dict(mel_lengths=torch.tensor([10.0, 5.0])), "mel_lengths"),
    "lengths wrong shape": (dict(mel_lengths=torch.tensor([10])), "mel_lengths"),
    "length zero": (dict(mel_lengths=torch.tensor([10, 0])), r"mel_lengths\[1\] = 0"),
    "length beyond T": (dict(mel_lengths=torch.tensor([11, 5])), r"mel_lengths\[0\] = 11"),
    "nan in valid frame": (dict(mel=torch.randn(2, 10, N_MELS).index_put_(
        (torch.tensor(1), torch.tensor(3)), torch.tensor(float("nan")))), r"mel\[1\].*frame 3"),
    "unknown mode": (dict(mode="median"), "mode"),
    "negative temperature": (dict(temperature=-0.1), "temperature"),
    "nan temperature": (dict(temperature=float("nan")), "temperature"),
    "text summary on V": (dict(text_summary=torch.randn(2, 6)), "text_summary was given"),
    "speaker on V": (dict(speaker=torch.randn(2, 5)), "speaker was given"),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_inputs_raise_reference_input_error(case):
    overrides, message = BAD_CALLS[case]
    call = dict(mel=torch.randn(2, 10, N_MELS), mel_lengths=torch.tensor([10, 5]))
    with pytest.raises(ReferenceInputError, match=message):
        small_encoder()(**{**call, **overrides})


@pytest.mark.parametrize("overrides, message", [
    (dict(speaker=None), "speaker is required"),
    (dict(text_summary=torch.randn(2, 7)), r"text_summary must be .*\(2, 6\)"),
    (dict(speaker=torch.randn(3, 5)), r"speaker must be .*\(2, 5\)"),
])
def test_bad_conditioning_on_v_t_s_model(overrides, message):
    enc = small_encoder(text_summary_dim=6, speaker_dim=5)
    call = dict(mel=torch.randn(2, 10, N_MELS), mel_lengths=torch.tensor([10, 5]), **conditions(2, 6, 5))
    with pytest.raises(ReferenceInputError, match=message):
        enc(**{**call, **overrides})


@pytest.mark.parametrize("overrides", [dict(text_dropout=0.5), dict(text_summary_dim=4, text_dropout=1.5),
                                       dict(latent_dim=0), dict(conv_channels=()), dict(std_floor=0.0)])
def test_bad_config_raises_config_error(overrides):
    with pytest.raises(ConfigError):
        small_encoder(**overrides)


@pytest.mark.parametrize("bad", [dict(n=0), dict(n=2.0), dict(n=3, temperature=-1.0)])
def test_sample_prior_rejects_bad_arguments(bad):
    with pytest.raises(ReferenceInputError):
        small_encoder().sample_prior(**bad)


@pytest.mark.parametrize("variant", VARIANTS)
def test_exported_mean_encoder_matches_eager(variant):
    """torch.export with a dynamic batch; shorter references are padded to the exported length."""
    text_dim, speaker_dim = VARIANTS[variant]
    enc = small_encoder(text_summary_dim=text_dim, speaker_dim=speaker_dim).eval()
    mel, lengths = mels([32, 9, 1], n_frames=32)
    cond = conditions(3, text_dim, speaker_dim)
    example = (mel, lengths, cond["text_summary"], cond["speaker"])
    batch = torch.export.Dim("batch", min=1, max=64)
    dynamic = tuple(None if x is None else {0: batch} for x in example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # export's notes on the GRU's flat weights
        program = torch.export.export(MeanEncoder(enc), example, dynamic_shapes=dynamic).module()
    new_mel, new_lengths = mels([20, 32, 3, 7, 1], n_frames=32, seed=7)
    new_cond = conditions(5, text_dim, speaker_dim, seed=8)
    mean, std = program(new_mel, new_lengths, new_cond["text_summary"], new_cond["speaker"])
    post = enc(new_mel, new_lengths, **new_cond, mode="mean")
    torch.testing.assert_close(mean, post.mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(std, post.std, atol=1e-6, rtol=0)


def test_missing_transcript_uses_the_learned_vector():
    enc = small_encoder(text_summary_dim=6).eval()
    mel, lengths = mels([12, 4])
    without = enc(mel, lengths, text_summary=None, mode="mean").mean
    with_text = enc(mel, lengths, text_summary=torch.randn(2, 6), mode="mean").mean
    explicit = enc(mel, lengths, text_summary=enc.no_text.detach().expand(2, 6), mode="mean").mean
    assert not torch.allclose(without, with_text)
    torch.testing.assert_close(without, explicit)


def test_text_dropout_replaces_items_by_the_learned_vector():
    enc = small_encoder(text_summary_dim=6, text_dropout=0.5).train()
    mel, lengths = mels([12] * 32)
    text = torch.randn(32, 6)
    torch.manual_seed(0)
    dropped_run = enc(mel, lengths, text_summary=text, mode="mean").mean
    enc.text_dropout = 0.0
    kept = enc(mel, lengths, text_summary=text, mode="mean").mean
    no_text = enc(mel, lengths, text_summary=None, mode="mean").mean
    is_dropped = torch.isclose(dropped_run, no_text, atol=1e-6).all(dim=1)
    is_kept = torch.isclose(dropped_run, kept, atol=1e-6).all(dim=1)
    assert (is_dropped ^ is_kept).all()  # every item is exactly one of the two
    assert 4 <= int(is_dropped.sum()) <= 28  # p = 0.5 drops some, not all
    enc.text_dropout = 1.0
    all_dropped = enc(mel, lengths, text_summary=text, mode="mean")
    torch.testing.assert_close(all_dropped.mean, no_text)
    all_dropped.mean.sum().backward()
    assert enc.no_text.grad is not None and enc.no_text.grad.abs().sum() > 0
    # dropout is a training-only regulariser: in eval mode the transcript is always used
    enc.eval()
    eval_text = enc(mel, lengths, text_summary=text, mode="mean").mean
    assert not torch.isclose(eval_text, enc(mel, lengths, mode="mean").mean, atol=1e-6).all(dim=1).any()


def test_gradient_flows_through_z_to_the_encoder():
    enc = small_encoder()
    post = enc(*mels([16, 9]), temperature=0.7, generator=torch.Generator().manual_seed(1))
    d_mean, d_std = torch.autograd.grad(post.z.sum(), [post.mean, post.std], retain_graph=True)
    torch.testing.assert_close(d_mean, torch.ones_like(d_mean))
    torch.testing.assert_close(d_std, (post.z - post.mean) / post.std)  # = temperature * eps
    post.z.square().sum().backward()
    assert enc.reference.convs[0].weight.grad.abs().sum() > 0
    assert enc.reference.gru.weight_hh_l0.grad.abs().sum() > 0


def test_condition_on_z_concat_and_add():
    memory, z = torch.randn(2, 5, 4), torch.randn(2, 3)
    concat = condition_on_z(memory, z)
    assert concat.shape == (2, 5, 7)
    torch.testing.assert_close(concat[..., :4], memory)
    torch.testing.assert_close(concat[:, 4, 4:], z)
    added = condition_on_z(memory, torch.ones(2, 4), mode="add")
    torch.testing.assert_close(added, memory + 1)
    with pytest.raises(ReferenceInputError, match="add"):
        condition_on_z(memory, z, mode="add")
    with pytest.raises(ReferenceInputError, match="same B"):
        condition_on_z(memory, torch.randn(3, 3))
    with pytest.raises(ConfigError):
        condition_on_z(memory, z, mode="film")


@pytest.mark.parametrize("mode, out_dim", [("concat", 7), ("add", 4)])
def test_z_conditioner(mode, out_dim):
    torch.manual_seed(0)
    conditioner = ZConditioner(memory_dim=4, latent_dim=3, mode=mode)
    memory, z = torch.randn(2, 5, 4), torch.randn(2, 3)
    out = conditioner(memory, z)
    assert out.shape == (2, 5, out_dim) and conditioner.out_dim == out_dim
    # every step gets the same z-dependent offset/suffix, and a different z changes it
    shifted = out[..., :4] - memory if mode == "add" else out[..., 4:]
    torch.testing.assert_close(shifted[:, 0:1].expand_as(shifted), shifted)
    assert not torch.allclose(conditioner(memory, z + 1.0), out)
    with pytest.raises(ConfigError):
        ZConditioner(4, 3, mode="film")


def test_bf16_autocast_keeps_statistics_and_posterior_in_float32(either_path):
    encoder = VariationalReferenceEncoder(n_mels=80, latent_dim=8, text_summary_dim=4)
    encoder.train()
    mel = torch.randn(3, 40, 80)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        post = encoder(mel, torch.tensor([40, 25, 9]), text_summary=torch.randn(3, 4))
    assert post.mean.dtype == post.std.dtype == post.kl.dtype == torch.float32
    assert torch.isfinite(post.kl).all()
    post.kl.sum().backward()
    norm = encoder.reference.norms[0]
    assert norm.running_mean.dtype == torch.float32 and torch.isfinite(norm.running_var).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in encoder.parameters())
