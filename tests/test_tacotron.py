"""Behavioural tests of ProsodyTacotron (prosody_vae/model/tacotron.py) and its losses (prosody_vae/training/losses.py)."""

from __future__ import annotations

import math
import time
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from prosody_vae.plugin.capacity import DualAscent, FixedBeta
from prosody_vae.plugin.errors import ConfigError, DataError, TextError
from prosody_vae.training.losses import (LossConfig, TacotronLoss, alignment_diagonal_score, guided_attention_loss,
                                guided_attention_weight, masked_l1, stop_loss, stop_targets)
from prosody_vae.model import cpu_kernels
from prosody_vae.model.attention import DynamicConvolutionAttention, LocationSensitiveAttention, beta_binomial_pmf
from prosody_vae.model.cpu_kernels import _RecurrentMatmul
from prosody_vae.plugin.masked_norm import MaskedBatchNorm1d
from prosody_vae.model.layers import dropout, summarise_text
from prosody_vae.model.decoder import OutputLayout, run_free
from prosody_vae.model.tacotron import ProsodyTacotron, TacotronConfig

N_MELS = 12
# smaller than the tiny preset, so each test takes well under a second
MICRO = dict(n_mels=N_MELS, embedding_dim=24, encoder_conv_channels=24, encoder_lstm_dim=24, prenet_dims=(24, 24),
             attention_rnn_dim=32, decoder_rnn_dim=32, attention_dim=16, location_filters=4, location_kernel_size=7,
             dca_static_filters=4, dca_static_kernel_size=7, dca_dynamic_filters=4, dca_dynamic_kernel_size=7,
             dca_filter_mlp_dim=16, postnet_channels=16, latent_dim=4, ref_conv_channels=(4, 8), ref_gru_dim=8,
             ref_mlp_dim=8, text_summary_dim=8, max_decoder_steps=50)


pytestmark = pytest.mark.usefixtures("one_thread")


def micro_model(seed: int = 0, **overrides) -> ProsodyTacotron:
    torch.manual_seed(seed)
    return ProsodyTacotron(TacotronConfig.preset("tiny", **{**MICRO, **overrides}))


def make_batch(text_lengths: list[int], mel_lengths: list[int], r: int, n_symbols: int, seed: int = 0,
               pad_garbage: bool = False) -> SimpleNamespace:
    """Random ids and smooth zero-mean mels. Padding holds pad values, or garbage when asked
    (ids still in range, mel frames NaN), which must never reach valid outputs."""
    g = torch.Generator().manual_seed(seed)
    n_tokens = max(text_lengths)
    n_frames = math.ceil(max(mel_lengths) / r) * r
    text = torch.randint(3, n_symbols, (len(text_lengths), n_tokens), generator=g)
    mel = torch.full((len(mel_lengths), n_frames, N_MELS), float("nan") if pad_garbage else math.log(1e-5))
    frames = torch.arange(n_frames)[:, None]
    bins = torch.arange(N_MELS)[None, :]
    for i, (n_text, n_mel) in enumerate(zip(text_lengths, mel_lengths)):
        if not pad_garbage:
            text[i, n_text:] = 0
        phase = float(torch.rand((), generator=g)) * 6.0
        mel[i, :n_mel] = torch.sin(0.15 * frames[:n_mel] + 0.5 * bins + phase)
    return SimpleNamespace(text=text, text_lengths=torch.tensor(text_lengths), mel=mel,
                           mel_lengths=torch.tensor(mel_lengths), speaker_ids=None)


def run(model: ProsodyTacotron, batch: SimpleNamespace, **kwargs):
    return model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths, **kwargs)


# ------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("kind", ["location", "forward", "dca"])
@pytest.mark.parametrize("r", [1, 2, 4])
def test_forward_shapes_masks_and_gradients(kind, r):
    model = micro_model(attention_kind=kind, reduction_factor=r)
    batch = make_batch([7, 4, 5], [9, 13, 5], r, model.config.n_symbols)
    out = run(model, batch)
    n_frames = batch.mel.shape[1]
    assert out.mel_decoder.shape == out.mel_postnet.shape == (3, n_frames, N_MELS)
    assert out.stop_logits.shape == (3, n_frames // r)
    assert out.alignments.shape == (3, n_frames // r, 7)
    assert out.posterior.z.shape == (3, 4)
    steps = (batch.mel_lengths + r - 1) // r
    valid_steps = torch.arange(n_frames // r) < steps[:, None]
    torch.testing.assert_close(out.alignments.sum(dim=2), valid_steps.float())
    assert (out.alignments[1, :, 4:] == 0).all()  # padded tokens get no attention
    assert (out.mel_postnet[2, 5:] == math.log(1e-5)).all() and (out.mel_decoder[2, 5:] == math.log(1e-5)).all()
    terms = TacotronLoss()(out, batch, FixedBeta(1.0), step=0)
    terms.total.backward()
    for name, parameter in model.named_parameters():
        if name != "embedding.weight":  # its padding row has no gradient by design
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("kind", ["location", "forward", "dca"])
def test_padding_never_changes_valid_outputs(kind):
    # eval mode with prenet dropout off at inference (the documented way to make eval deterministic)
    model = micro_model(attention_kind=kind, reduction_factor=2, prenet_dropout_at_inference=False).eval()
    alone = make_batch([6], [9], 2, model.config.n_symbols, seed=3)
    padded = make_batch([6, 10], [9, 16], 2, model.config.n_symbols, seed=4, pad_garbage=True)
    padded.text[0, :6], padded.mel[0, :9] = alone.text[0], alone.mel[0, :9]
    with torch.no_grad():
        a, b = run(model, alone, mode="mean"), run(model, padded, mode="mean")
    torch.testing.assert_close(b.mel_postnet[0, :9], a.mel_postnet[0, :9], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.stop_logits[0, :5], a.stop_logits[0, :5], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.alignments[0, :5, :6], a.alignments[0, :5], atol=1e-5, rtol=1e-4)
    assert (b.alignments[0, :, 6:] == 0).all() and (b.alignments[0, 5:] == 0).all()
    assert torch.isfinite(b.mel_postnet).all()  # NaN padding stays out even of the padded frames


def test_masked_batch_norm_counts_only_valid_positions():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5)
    x[1, :, 3:] = 1e4  # padding garbage would dominate unmasked statistics
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    masked, reference = MaskedBatchNorm1d(3), torch.nn.BatchNorm1d(3)
    out = masked(x, mask)
    expected = reference(torch.cat([x[0].T, x[1, :, :3].T]))  # BatchNorm over the 8 valid positions only
    torch.testing.assert_close(out[0].T, expected[:5])
    torch.testing.assert_close(out[1, :, :3].T, expected[5:])
    assert (out[1, :, 3:] == 0).all()
    torch.testing.assert_close(masked.running_var, reference.running_var)


def test_decoder_runs_under_bf16_autocast():
    model = micro_model(reduction_factor=2)
    batch = make_batch([6, 4], [10, 7], 2, model.config.n_symbols)
    memory = torch.randn(2, 6, model.config.encoder_lstm_dim + model.config.latent_dim)
    mask = torch.arange(6) < batch.text_lengths[:, None]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = model.decoder(memory, mask, batch.mel)
    layout = model.decoder.layout
    (layout.frames(out).float().abs().mean() + layout.stop_logit(out).float().mean()).backward()
    weight = model.decoder.decoder_cell.recurrent_weight
    assert weight.grad is not None and weight.grad.dtype == torch.float32 and torch.isfinite(weight.grad).all()
    assert weight.grad.abs().sum() > 0


def test_dca_prior_is_the_beta_binomial():
    pmf = beta_binomial_pmf(11, alpha=0.1, beta=0.9)
    assert float(pmf.sum()) == pytest.approx(1.0, abs=1e-6)
    assert pmf[0] > 0.5 and (pmf[0] > pmf[1:]).all()  # staying put is likeliest
    expected_move = 10 * 0.1 / (0.1 + 0.9)  # n * alpha / (alpha + beta)
    assert float((pmf * torch.arange(11)).sum()) == pytest.approx(expected_move, rel=1e-5)
    uniform = beta_binomial_pmf(5, alpha=1.0, beta=1.0)  # BetaBinomial(a = b = 1) is uniform
    torch.testing.assert_close(uniform, torch.full((5,), 0.2))


@pytest.mark.parametrize("tape_chunk", [3, 32])  # 3: the weight gradient sums over several chunks
def test_recurrent_matmul_gradient_is_exact(tape_chunk, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_TAPE_CHUNK", tape_chunk)

    def recurrence(weight, x0):
        matmul = _RecurrentMatmul(weight, rows=3)
        h, total = x0, 0.0
        for _ in range(7):
            h = torch.tanh(matmul(h))
            total = total + h.square().sum()
        return total

    weight = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(recurrence, (weight, x0))


def _plain_dca_step(attention, query, previous):
    """DCA energies as in Battenberg et al., with conv1d over (B, channels, L): the oracle for the
    (B, L, A) matmul form in attention.py."""
    batch, n_tokens = previous.shape
    n_dynamic, size = attention.dynamic_shape
    static = attention.static_dense(F.conv1d(previous[:, None], attention.static_conv.weight,
                                             padding=attention.static_conv.kernel_size[0] // 2).transpose(1, 2))
    filters = attention.filter_mlp(query).reshape(batch * n_dynamic, 1, size)
    dynamic = F.conv1d(previous[None], filters, padding=size // 2, groups=batch).reshape(batch, n_dynamic, n_tokens)
    hidden = torch.tanh(static + attention.dynamic_dense(dynamic.transpose(1, 2)))  # (B, L, A)
    pmf = beta_binomial_pmf(attention.prior_filter.shape[2], 0.1, 0.9).to(previous.dtype)
    padded = F.pad(previous, (len(pmf) - 1, 0))
    # prior[j] = sum_k pmf[k] * previous[j - k]: the chance of moving k tokens forward
    prior = sum(pmf[k] * padded[:, len(pmf) - 1 - k : len(pmf) - 1 - k + n_tokens] for k in range(len(pmf)))
    return attention.score(hidden)[..., 0] + torch.log(prior.clamp_min(1e-6))


def _plain_location_step(attention, keys, query, previous, cumulative):
    location = F.conv1d(torch.stack([previous, cumulative], dim=1), attention.location_conv.weight,
                        padding=attention.location_conv.kernel_size[0] // 2)  # (B, F, L)
    hidden = torch.tanh(keys + attention.location_dense(location.transpose(1, 2)) + attention.query(query)[:, None])
    return attention.score(hidden)[..., 0]


@pytest.mark.parametrize("kind", ["dca", "location"])
def test_attention_matmul_form_equals_the_convolution_form(kind):
    """Four decoder steps: alignments and the gradients of the query, memory and every weight agree
    with the textbook conv1d formulation."""
    torch.manual_seed(0)
    batch, n_tokens, query_dim, memory_dim = 3, 13, 10, 7
    if kind == "dca":
        attention = DynamicConvolutionAttention(query_dim, 6, 4, 5, 3, 7, 8, 11, 0.1, 0.9).double()
    else:
        attention = LocationSensitiveAttention(query_dim, memory_dim, 6, 4, 7).double()
    memory = torch.randn(batch, n_tokens, memory_dim, dtype=torch.float64, requires_grad=True)
    queries = torch.randn(4, batch, query_dim, dtype=torch.float64, requires_grad=True)
    mask = torch.arange(n_tokens) < torch.tensor([13, 9, 4])[:, None]
    results = []
    for optimised in (True, False):
        step = attention.start(memory, mask)
        previous = F.one_hot(torch.zeros(batch, dtype=torch.long), n_tokens).double()
        cumulative, total = previous, 0.0
        for query in queries:
            if optimised:
                previous = step(query, previous, cumulative)
            elif kind == "dca":
                previous = _plain_dca_step(attention, query, previous).masked_fill(~mask, -math.inf).softmax(dim=1)
            else:
                energies = _plain_location_step(attention, attention.keys(memory), query, previous, cumulative)
                previous = energies.masked_fill(~mask, -math.inf).softmax(dim=1)
            cumulative = cumulative + previous
            total = total + (previous * torch.arange(n_tokens)).sum()
        inputs = [queries, memory, *attention.parameters()]
        grads = torch.autograd.grad(total, inputs, allow_unused=True)
        results.append([previous] + [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)])
    assert results[1][1].abs().sum() > 0
    for optimised_value, plain_value in zip(*results):
        torch.testing.assert_close(optimised_value, plain_value, rtol=1e-9, atol=1e-12)


def test_dropout_equals_multiplying_by_the_scaled_mask():
    x = torch.randn(6, 9, requires_grad=True)
    noise = torch.rand(6, 9, generator=torch.Generator().manual_seed(4))
    scaled_mask = (noise >= 0.3).float() * (1 / 0.7)
    out = dropout(x, 0.3, True, torch.Generator().manual_seed(4))
    assert torch.equal(out, x * scaled_mask)  # bit for bit: the same draw, the same rounding
    out.sum().backward()
    assert torch.equal(x.grad, scaled_mask)


def test_text_summary_equals_the_lstm_over_embeddings():
    """`summarise_text` (projected embedding table, one-hot input) == nn.LSTM over nn.Embedding,
    outputs and gradients, and the padding row gets no gradient (as with nn.Embedding)."""
    torch.manual_seed(0)
    embedding, lstm = torch.nn.Embedding(11, 6, padding_idx=0), torch.nn.LSTM(6, 5, batch_first=True)
    text = torch.randint(1, 11, (3, 8))
    lengths = torch.tensor([8, 3, 5])
    text[1, 3:] = 0
    text[2, 5:] = 0
    weights = [embedding.weight, *lstm.parameters()]
    results = []
    for optimised in (True, False):
        if optimised:
            summary = summarise_text(lstm, embedding, text, lengths)
        else:
            summary = lstm(embedding(text))[0][torch.arange(3), lengths - 1]
        results.append([summary, *torch.autograd.grad(summary.square().sum(), weights)])
    assert (results[0][1][0] == 0).all() and results[0][1].abs().sum() > 0
    for optimised_value, plain_value in zip(*results):
        torch.testing.assert_close(optimised_value, plain_value, rtol=1e-5, atol=1e-6)


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = ProsodyTacotron(TacotronConfig.preset("tiny", n_mels=N_MELS, reduction_factor=2))
    batch = make_batch([12, 9, 10, 8], [40, 30, 36, 28], 2, model.config.n_symbols, seed=1)
    loss = TacotronLoss(LossConfig(guided_attention_fade_steps=None))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    start = time.perf_counter()
    history = []
    for step in range(150):
        terms = loss(run(model, batch), batch, FixedBeta(1e-2), step)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        history.append(terms.mel_l1.item())
        if history[-1] <= 0.5 * history[0]:
            break
    print(f"L1 {history[0]:.3f} -> {history[-1]:.3f} in {step + 1} steps, {time.perf_counter() - start:.1f} s")
    assert history[-1] <= 0.5 * history[0], f"L1 went {history[0]:.3f} -> {history[-1]:.3f} in {step + 1} steps"
    assert time.perf_counter() - start < 20.0


def _stop_controlled_model(r: int = 2) -> ProsodyTacotron:
    """A micro model whose stop logit is 10 * z[0] - 5: the context holds z exactly (attention
    weights sum to 1 and z is the same on every token), so z[0] = 1 stops and z[0] = -1 never does.
    The stop gate is off: an untrained alignment never reaches the end of the text."""
    model = micro_model(reduction_factor=r, prenet_dropout_at_inference=False, stop_gate_tokens=0).eval()
    config = model.config
    z_column = config.decoder_rnn_dim + config.encoder_lstm_dim  # z's first entry in [decoder_h ; context]
    with torch.no_grad():
        model.decoder.projection.weight[-1].zero_()
        model.decoder.projection.weight[-1, z_column] = 10.0
        model.decoder.projection.bias[-1] = -5.0
    return model


def test_infer_stops_each_item_on_its_own_and_reports_max_steps():
    model = _stop_controlled_model(r=2)
    batch = make_batch([5, 7, 6], [4, 4, 4], 2, model.config.n_symbols)
    z = torch.zeros(3, 4)
    z[:, 0] = torch.tensor([1.0, -1.0, 1.0])
    with pytest.warns(RuntimeWarning, match="1 of 3 items reached max_decoder_steps=6"):
        out = model.infer(batch.text, batch.text_lengths, z, max_decoder_steps=6)
    assert out.hit_max_steps.tolist() == [False, True, False]
    assert out.stop_steps.tolist() == [1, 6, 1]
    assert out.mel_lengths.tolist() == [2, 12, 2]
    assert out.mel_postnet.shape == (3, 12, N_MELS)
    assert (out.mel_postnet[[0, 2], 2:] == math.log(1e-5)).all() and torch.isfinite(out.mel_postnet[1]).all()
    assert (out.alignments[[0, 2], 1:] == 0).all()
    # a batch that all stops ends the loop early, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        early = model.infer(batch.text[[0, 2]], batch.text_lengths[[0, 2]], z[[0, 2]], max_decoder_steps=6)
    assert early.mel_postnet.shape == (2, 2, N_MELS) and not early.hit_max_steps.any()
    # item 0 synthesised alone matches item 0 of the batch
    single = model.infer(batch.text[:1, :5], batch.text_lengths[:1], z[:1], max_decoder_steps=6)
    torch.testing.assert_close(single.mel_postnet[0], out.mel_postnet[0, :2], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("r", [1, 3])
def test_teacher_forcing_on_free_running_output_reproduces_it(r):
    # the decoder fed its own free-running frames must retrace them: same go frame, same frame
    # order within a step, and the last of the r frames feeding the next step in both modes
    model = micro_model(reduction_factor=r, prenet_dropout_at_inference=False).eval()
    memory = torch.randn(2, 6, model.config.encoder_lstm_dim + model.config.latent_dim)
    mask = torch.arange(6) < torch.tensor([6, 4])[:, None]
    with torch.no_grad():
        out, alignments, _, _ = model.decoder.infer(memory, mask, max_steps=5, stop_threshold=1 - 1e-6)
        frames = model.decoder.layout.frames(out)
        forced_out, forced_alignments = model.decoder(memory, mask, frames)
    assert frames.shape == (2, 5 * r, N_MELS)
    torch.testing.assert_close(forced_out, out, atol=1e-5, rtol=1e-4)  # frames and stop logits
    torch.testing.assert_close(forced_alignments, alignments, atol=1e-5, rtol=1e-4)


def test_infer_prenet_dropout_is_reproducible_with_a_generator():
    model = micro_model(reduction_factor=2).eval()  # prenet dropout stays on at inference
    text, lengths = torch.tensor([[5, 6, 7, 8]]), torch.tensor([4])
    with pytest.warns(RuntimeWarning, match="max_decoder_steps"):  # an untrained model never stops
        outs = [model.infer(text, lengths, max_decoder_steps=3, generator=torch.Generator().manual_seed(s))
                for s in (1, 1, 2)]
    torch.testing.assert_close(outs[0].mel_postnet, outs[1].mel_postnet)
    assert not torch.allclose(outs[0].mel_postnet, outs[2].mel_postnet)


def test_speaker_and_text_summary_variants():
    model = micro_model(posterior="V+T+S", n_speakers=3, speaker_dim=5, text_dropout=0.0)
    batch = make_batch([5, 7], [8, 6], 4, model.config.n_symbols)
    out = run(model, batch, speaker_ids=torch.tensor([0, 2]))
    assert out.mel_postnet.shape == (2, 8, N_MELS)
    with pytest.raises(DataError, match="speaker_ids"):
        run(model, batch)
    model.eval()
    with_text = model.encode_reference(batch.mel, batch.mel_lengths, batch.text, batch.text_lengths,
                                       speaker_ids=torch.tensor([0, 2]))
    without_text = model.encode_reference(batch.mel, batch.mel_lengths, speaker_ids=torch.tensor([0, 2]))
    assert with_text.mean.shape == without_text.mean.shape == (2, 4)
    assert not torch.allclose(with_text.mean, without_text.mean)  # the transcript is read


def test_reference_defaults_to_the_target_and_can_be_replaced():
    model = micro_model(reduction_factor=2).eval()
    batch = make_batch([5, 7], [8, 6], 2, model.config.n_symbols)
    other = make_batch([5, 7], [10, 4], 2, model.config.n_symbols, seed=9)
    with torch.no_grad():
        own = run(model, batch, mode="mean").posterior
        replaced = run(model, batch, mode="mean", reference_mel=other.mel, reference_lengths=other.mel_lengths).posterior
        torch.testing.assert_close(own.mean, model.encode_reference(batch.mel, batch.mel_lengths).mean)
        torch.testing.assert_close(replaced.mean, model.encode_reference(other.mel, other.mel_lengths).mean)
    assert not torch.allclose(own.mean, replaced.mean)


def test_input_errors_name_the_argument():
    model = micro_model(reduction_factor=2)
    batch = make_batch([5], [7], 2, model.config.n_symbols)
    with pytest.raises(DataError, match="multiple of reduction_factor"):
        model(batch.text, batch.text_lengths, batch.mel[:, :7], batch.mel_lengths)
    with pytest.raises(DataError, match="mel_lengths"):
        model(batch.text, batch.text_lengths, batch.mel, torch.tensor([9]))
    with pytest.raises(TextError, match="text_lengths"):
        model(batch.text, torch.tensor([6]), batch.mel, batch.mel_lengths)


# ------------------------------------------------------------------------------------------ config
def test_config_presets_validation_and_round_trip():
    with pytest.raises(ConfigError, match="unknown preset"):
        TacotronConfig.preset("huge")
    with pytest.raises(ConfigError, match="attention_kinds"):
        TacotronConfig.preset("tiny", attention_kinds="dca")
    with pytest.raises(ConfigError, match="attention_kind"):
        TacotronConfig.preset("tiny", attention_kind="gmm")
    with pytest.raises(ConfigError, match="odd"):
        TacotronConfig(location_kernel_size=30)
    with pytest.raises(ConfigError, match="V\\+T\\+S"):
        TacotronConfig(posterior="V+T+S")
    config = TacotronConfig.preset("small", attention_kind="dca", prenet_dims=[64, 32])
    assert config.prenet_dims == (64, 32)
    assert TacotronConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("preset, low, high", [("tiny", 2.0e6, 3.0e6), ("small", 5e6, 12e6),
                                                ("tacotron2", 28e6, 31e6)])
def test_preset_parameter_counts(preset, low, high):
    n = sum(p.numel() for p in ProsodyTacotron(TacotronConfig.preset(preset)).parameters())
    assert low <= n <= high, f"{preset}: {n / 1e6:.2f} M parameters"


# ------------------------------------------------------------------------------------------ losses
def test_stop_targets_start_at_the_step_holding_the_last_frame():
    targets, mask = stop_targets(torch.tensor([5, 8, 1]), n_steps=4, r=2)
    assert targets.tolist() == [[0, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]]
    assert mask.tolist() == [[True, True, True, False], [True, True, True, True], [True, False, False, False]]


def test_stop_loss_masks_padding_and_weights_positives():
    lengths = torch.tensor([5, 8])  # r = 2: valid steps 3 and 4, one positive each
    targets, _ = stop_targets(lengths, 4, 2)
    right = torch.where(targets > 0, 20.0, -20.0)
    right[0, 3] = -20.0  # a wrong value on a masked step is ignored
    assert float(stop_loss(right, lengths, 2, pos_weight=5.0)) < 1e-6
    zeros = stop_loss(torch.zeros(2, 4), lengths, 2, pos_weight=5.0)
    expected = math.log(2.0) * (5.0 * 2 + 5) / 7  # 2 positives weighted 5, 5 negatives, 7 valid steps
    assert float(zeros) == pytest.approx(expected, rel=1e-6)


def test_masked_l1_ignores_padding():
    pred, target = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    target[0, 2:] = float("nan")
    target[1, 3:] = 100.0
    assert float(masked_l1(pred, target, torch.tensor([2, 3]))) == pytest.approx(1.0)


def test_guided_attention_prefers_the_diagonal():
    steps, tokens = 20, 10
    lengths, decoder_lengths = torch.tensor([tokens]), torch.tensor([steps])
    diagonal = torch.zeros(1, steps, tokens)
    diagonal[0, torch.arange(steps), torch.arange(steps) * tokens // steps] = 1.0
    random = torch.randn(1, steps, tokens, generator=torch.Generator().manual_seed(0)).mul(3).softmax(dim=2)
    diagonal_loss = guided_attention_loss(diagonal, lengths, decoder_lengths, g=0.2)
    random_loss = guided_attention_loss(random, lengths, decoder_lengths, g=0.2)
    assert float(diagonal_loss) < 0.05 < 0.3 < float(random_loss) < 1.0


def test_guided_attention_weight_fades_linearly():
    assert guided_attention_weight(0, 2.0, fade_start=100, fade_steps=200) == 2.0
    assert guided_attention_weight(200, 2.0, fade_start=100, fade_steps=200) == pytest.approx(1.0)
    assert guided_attention_weight(10_000, 2.0, fade_start=100, fade_steps=200) == 0.0
    assert guided_attention_weight(10_000, 2.0, fade_steps=None) == 2.0


def test_alignment_diagonal_score():
    text_lengths, decoder_lengths = torch.tensor([4, 2]), torch.tensor([3, 2])
    sharp = torch.zeros(2, 3, 5)
    sharp[:, :, 0] = 1.0
    sharp[1, 2] = 0.2  # beyond item 1's steps: ignored
    assert float(alignment_diagonal_score(sharp, text_lengths, decoder_lengths)) == pytest.approx(1.0)
    uniform = torch.zeros(2, 3, 5)
    uniform[0, :, :4] = 0.25
    uniform[1, :, :2] = 0.5
    score = alignment_diagonal_score(uniform, text_lengths, decoder_lengths)
    assert float(score) == pytest.approx((3 * 0.25 + 2 * 0.5) / 5)


def test_loss_terms_are_finite_and_kl_is_normalised_per_valid_element():
    model = micro_model(reduction_factor=2)
    batch = make_batch([6, 4], [10, 7], 2, model.config.n_symbols)
    out = run(model, batch)
    terms = TacotronLoss(LossConfig(guided_attention_weight=3.0, guided_attention_fade_steps=None))(
        out, batch, FixedBeta(1.0), step=5)
    assert all(math.isfinite(v) for v in terms.as_floats().values())
    expected_kl_term = out.posterior.kl.mean() / (8.5 * N_MELS)  # mean valid frames (10 + 7) / 2
    torch.testing.assert_close(terms.kl_term, expected_kl_term)
    torch.testing.assert_close(terms.total, terms.mel_l1 + terms.postnet_l1 + terms.stop
                               + 3.0 * terms.guided_attention + terms.kl_term)
    dual = TacotronLoss()(out, batch, DualAscent(capacity=50.0, beta_init=1.0), step=0)
    torch.testing.assert_close(dual.kl_term, (out.posterior.kl.mean() - 50.0) / (8.5 * N_MELS))


@pytest.mark.parametrize("gate_tokens, expected_stops", [(0, [1, 1]), (1, [2, 6]), (3, [1, 4])])
def test_an_item_stops_only_once_its_attention_reached_the_end_of_its_text(gate_tokens, expected_stops):
    """run_free with a stop logit that always says stop and an alignment that moves one token per
    step: the gate holds each item until its peak is on one of its last `gate_tokens` tokens."""
    layout = OutputLayout(n_mels=N_MELS, r=1)
    lengths = torch.tensor([2, 6])
    position = {"step": 0}

    def step(frame):
        alignment = torch.nn.functional.one_hot(torch.tensor([position["step"]] * 2).clamp(max=5), 6).float()
        position["step"] += 1
        return torch.full((2, layout.size), 10.0), alignment  # stop logit 10: stop wherever allowed

    _, _, stop_steps, hit_max = run_free(step, torch.zeros(2, N_MELS), layout, 10, 0.5, lengths, gate_tokens)
    assert stop_steps.tolist() == expected_stops and not hit_max.any()
