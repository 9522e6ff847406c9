"""Bad input at every entry point a user has: the CLI, `Synthesizer`, the dataset and the reference
encoder. Each case must raise a `ProsodyVAEError` subclass whose message names the offending file,
line or argument, and the CLI must exit 2 with exactly one line on stderr and no traceback.

Covered elsewhere and not repeated here: metadata syntax errors line by line (test_data.py), config
unknown keys and wrong types key by key (test_train.py), the text front end's policies and its
300-case fuzz (test_text.py), the reference encoder's shape and conditioning checks
(test_reference.py), resampling of plain load_wav to an equivalent mel (test_audio.py), and
training's max_frames policy for very long utterances, which are skipped and counted (test_train.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_tiny_corpus
from prosody_vae.audio.mel import AudioConfig, load_wav
from prosody_vae.training.checkpoint import FORMAT_VERSION, load_checkpoint, load_model, save_checkpoint
from prosody_vae.cli import main
from prosody_vae.training.config import TrainConfig, config_from_dict, config_to_dict
from prosody_vae.data.ljspeech import MelCache, TTSDataset, Utterance, read_metadata
from prosody_vae.plugin.errors import AudioError, CheckpointError, DataError, ReferenceInputError, TextError
from prosody_vae.inference.synthesizer import Synthesizer
from prosody_vae.plugin.reference import VariationalReferenceEncoder
from prosody_vae.model.tacotron import ProsodyTacotron
from prosody_vae.data.text import TextProcessor

SR = 22050
N_MELS = 20
MAX_REFERENCE_SECONDS = 2.0  # the tests' limit, so a "very long" reference is only 3 s
# the micro model of test_infer.py; its text front end refuses unknown characters and long texts
CONFIG = {"model": {"preset": "tiny", "n_mels": N_MELS, "embedding_dim": 16, "encoder_conv_channels": 16,
                    "encoder_lstm_dim": 16, "prenet_dims": [16, 16], "attention_rnn_dim": 16, "decoder_rnn_dim": 16,
                    "attention_dim": 8, "location_filters": 4, "location_kernel_size": 7, "postnet_channels": 8,
                    "latent_dim": 4, "ref_conv_channels": [4, 8], "ref_gru_dim": 8, "ref_mlp_dim": 8,
                    "max_decoder_steps": 4},
          "audio": {"n_mels": N_MELS}, "text": {"unknown": "error", "max_length": 50},
          "data": {"n_val": 2, "batch_size": 2}, "max_steps": 1, "threads": 1}


def voiced(seconds: float = 0.6, f0: float = 140.0, sr: int = SR) -> np.ndarray:
    """A harmonic 'voice' band-limited below 4 kHz, so an 8 kHz file keeps all of it."""
    t = np.arange(int(seconds * sr)) / sr
    return sum(0.2 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    config = config_from_dict(TrainConfig, CONFIG, "test")
    torch.manual_seed(0)
    state = {"model": ProsodyTacotron(config.model).state_dict(), "config": config_to_dict(config)}
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", state)


@pytest.fixture(scope="module")
def synth(checkpoint) -> Synthesizer:
    return Synthesizer.from_checkpoint(checkpoint, max_reference_seconds=MAX_REFERENCE_SECONDS)


@pytest.fixture(autouse=True)
def quiet_max_steps():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*max_decoder_steps.*")  # an untrained model never stops
        yield


def cli_error(capsys, *argv) -> str:
    """Run the CLI in-process; assert status 2 and exactly one stderr line; return that line."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------ wavs
def write(path: Path, samples: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Path:
    sf.write(path, samples, sr, subtype=subtype)
    return path


# name -> (writer of the bad file at a path, message expected from every entry point)
BAD_WAVS = {
    "missing": (lambda path: None, "no such audio file"),
    "a folder": (Path.mkdir, "is a folder"),
    "unreadable": (lambda path: write(path, voiced()).chmod(0), "cannot read audio"),
    "corrupt": (lambda path: path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(256))),
                "cannot read audio"),
    "truncated header": (lambda path: path.write_bytes(write(path, voiced()).read_bytes()[:30]), "cannot read audio"),
    "empty": (lambda path: write(path, np.zeros(0, np.float32)), "holds no samples"),
    "all silent": (lambda path: write(path, np.zeros(SR // 2, np.float32)), "digital silence"),
    "NaN-filled": (lambda path: write(path, np.full(SR // 2, np.nan, np.float32), subtype="FLOAT"), "NaN or infinite"),
    "inf-filled": (lambda path: write(path, np.full(SR // 2, np.inf, np.float32), subtype="FLOAT"), "NaN or infinite"),
    "very short (100 samples)": (lambda path: write(path, voiced()[:100]), "too short|shorter than one mel frame"),
    "very long (3 s, limit 2 s)": (lambda path: write(path, voiced(3.0)), "over the 2 s limit"),
}
ROOT_CAN_READ = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
WAV_CASES = [pytest.param(name, marks=ROOT_CAN_READ) if name == "unreadable" else name for name in BAD_WAVS]


def bad_wav(path: Path, name: str) -> tuple[Path, str]:
    writer, message = BAD_WAVS[name]
    writer(path)
    return path, message


@pytest.mark.parametrize("name", WAV_CASES)
def test_bad_reference_wav_through_the_synthesizer(synth, tmp_path, name):
    path, message = bad_wav(tmp_path / "ref.wav", name)
    with pytest.raises((AudioError, ReferenceInputError), match=message) as info:
        synth.tts("Hello there.", reference=path, vocode=False)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("command", ["synthesize", "encode", "transfer", "interpolate"])
@pytest.mark.parametrize("name", WAV_CASES)
def test_bad_reference_wav_through_the_cli(checkpoint, tmp_path, capsys, name, command):
    path, message = bad_wav(tmp_path / "ref.wav", name)
    good = write(tmp_path / "good.wav", voiced())
    (tmp_path / "texts.txt").write_text("One line.\n")
    common = ["--checkpoint", checkpoint, "--max-reference-seconds", MAX_REFERENCE_SECONDS]
    argv = {"synthesize": ["--text", "Hi.", "--reference", path, "--out", tmp_path / "out.wav"],
            "encode": ["--references", good, path, "--out", tmp_path / "z"],
            "transfer": ["--texts", tmp_path / "texts.txt", "--references", path, "--out", tmp_path / "t"],
            "interpolate": ["--text", "Hi.", "--reference-a", good, "--reference-b", path, "--out", tmp_path / "i"]}
    line = cli_error(capsys, command, *common, *argv[command])
    assert line.startswith(f"prosody-vae {command}: error: {path}")
    if name == "a folder" and command in ("encode", "transfer"):  # --references takes folders of wavs
        message = "folder holds no .wav files"
    assert re.search(message, line), line


def corpus_with(tmp_path: Path, name: str) -> tuple[Path, Path, str]:
    """A 3-utterance corpus whose second wav is the bad case `name`: (corpus, that wav, message)."""
    corpus = write_tiny_corpus(tmp_path / "corpus", n=3)
    wav = corpus / "wavs" / "utt001.wav"
    wav.unlink()
    return corpus, *bad_wav(wav, name)


@pytest.mark.parametrize("name", [n for n in WAV_CASES if "long" not in str(n)])  # long: data.max_frames
def test_bad_training_wav_through_the_dataset(tmp_path, name):
    corpus, wav, message = corpus_with(tmp_path, name)
    dataset = TTSDataset(read_metadata(corpus, check_wavs=False), TextProcessor(),
                         MelCache(tmp_path / "mels", AudioConfig(n_mels=N_MELS)))
    with pytest.raises(AudioError, match=message) as info:
        [dataset[i] for i in range(len(dataset))]
    assert str(wav) in str(info.value)


@pytest.mark.parametrize("name", ["missing", "a folder", "corrupt", "truncated header"])
def test_unreadable_header_when_bucketing_names_the_wav(tmp_path, name):
    corpus, wav, _ = corpus_with(tmp_path, name)
    dataset = TTSDataset(read_metadata(corpus, check_wavs=False), TextProcessor(),
                         MelCache(tmp_path / "mels", AudioConfig(n_mels=N_MELS)))
    with pytest.raises(AudioError, match=f"{wav}: cannot read audio header"):
        dataset.mel_lengths


# ---------------------------------------------------------------------------- rates and channels
def write_at(path: Path, rate: int | str) -> np.ndarray:
    """Write the test voice at `rate` (or as a stereo pair); return what it means at 22.05 kHz mono."""
    if rate == "stereo":
        left = voiced(0.8)
        sf.write(path, np.stack([left, 0.5 * left], axis=1), SR, subtype="FLOAT")
        return 0.75 * left
    sf.write(path, voiced(0.8, sr=rate), rate, subtype="FLOAT")
    return voiced(0.8)


@pytest.mark.parametrize("rate", [8000, 44100, 48000, "stereo"])
def test_other_rates_and_stereo_give_the_same_posterior_and_mel(synth, tmp_path, rate):
    native = write_at(tmp_path / "ref.wav", rate)
    from_file, from_native = synth.encode(tmp_path / "ref.wav").mean, synth.encode(native).mean
    elsewhere = synth.encode(voiced(0.8, f0=200.0)).mean
    # measured: 5e-4 at 8 kHz, 2e-5 at 44.1/48 kHz, against 0.1 between two different voices
    assert (from_file - from_native).abs().max() < 0.01 < (elsewhere - from_native).abs().max()

    cache = MelCache(tmp_path / "mels", AudioConfig(n_mels=N_MELS))
    utt = read_metadata(write_single_corpus(tmp_path / "corpus", tmp_path / "ref.wav"))[0]
    mel = cache.get(utt)
    expected = synth.reference_mel(native).numpy()
    assert mel.shape == expected.shape
    np.testing.assert_allclose(mel[2:-2], expected[2:-2], atol=0.01)  # measured 8e-4; edges see the resampler's


def write_single_corpus(root: Path, wav: Path) -> Path:
    (root / "wavs").mkdir(parents=True)
    wav.rename(root / "wavs" / "one.wav")
    (root / "metadata.csv").write_text("one|One.|one.\n")
    return root


# ------------------------------------------------------------------------------------------ text
BAD_TEXTS = {  # name -> (text, message); the micro config has text.unknown = "error", max_length = 50
    "empty": ("", "text is empty"),
    "whitespace only": ("  \t ", "text is empty"),
    "punctuation only": ("?! ... --", "no speakable characters"),
    "unknown character": ("a # b", r"unknown character '#' \(U\+0023\)"),
    "over max length": ("word " * 12, r"encodes to \d+ symbols, over max_length=50"),
}


@pytest.mark.parametrize("name", BAD_TEXTS)
def test_bad_text_through_the_synthesizer_names_the_argument(synth, name):
    text, message = BAD_TEXTS[name]
    with pytest.raises(TextError, match=f"^texts: .*{message}"):
        synth.tts(text, vocode=False)
    with pytest.raises(TextError, match=rf"^texts\[1\]: .*{message}"):
        synth.tts(["Fine.", text], vocode=False)
    with pytest.raises(TextError, match=f"^reference_text: .*{message}"):
        synth.tts("Fine.", reference=voiced(), reference_text=text, vocode=False)


@pytest.mark.parametrize("name", BAD_TEXTS)
@pytest.mark.parametrize("command", ["synthesize", "interpolate", "transfer"])
def test_bad_text_through_the_cli_names_the_flag_or_line(checkpoint, tmp_path, capsys, name, command):
    text, message = BAD_TEXTS[name]
    ref = write(tmp_path / "ref.wav", voiced())
    texts = tmp_path / "texts.txt"
    texts.write_text(f"One fine line.\n\nAnother.\n{text}\n")
    argv = {"synthesize": ["--text", text, "--reference", ref, "--out", tmp_path / "x.wav"],
            "interpolate": ["--text", text, "--reference-a", ref, "--reference-b", ref, "--out", tmp_path / "i"],
            "transfer": ["--texts", texts, "--references", ref, "--out", tmp_path / "t"]}[command]
    if command == "transfer" and not text.strip():  # blank lines of a text file are skipped by design
        texts.write_text(f"{text}\n\n")
        where, message = f"{texts}", "no text lines"
    else:
        where = f"{texts}:4" if command == "transfer" else "--text"
    line = cli_error(capsys, command, "--checkpoint", checkpoint, *argv)
    assert re.match(rf"prosody-vae {command}: error: {re.escape(where)}: .*{message}", line), line
    assert not (tmp_path / "t").exists(), "texts are checked before any output is written"


@pytest.mark.parametrize("name", BAD_TEXTS)
def test_bad_text_in_metadata_names_the_utterance_at_start_up(tmp_path, name):
    text, message = BAD_TEXTS[name]
    corpus = write_tiny_corpus(tmp_path / "corpus", n=3)
    lines = (corpus / "metadata.csv").read_text().splitlines()
    lines[1] = f"utt001|{text}|{text}"
    (corpus / "metadata.csv").write_text("\n".join(lines) + "\n")
    if not text.strip():  # caught by the reader itself, by line
        with pytest.raises(DataError, match="metadata.csv:2: utterance 'utt001' has empty text"):
            read_metadata(corpus)
        return
    processor = TextProcessor(config_from_dict(TrainConfig, CONFIG, "test").text)
    with pytest.raises(TextError, match=f"utterance 'utt001': .*{message}"):
        TTSDataset(read_metadata(corpus), processor, MelCache(tmp_path / "mels", AudioConfig(n_mels=N_MELS)))


def test_unknown_characters_are_mapped_under_the_default_policy(synth):
    """The default text config maps an unknown character to the unknown id instead of refusing."""
    processor = TextProcessor()
    assert processor.unknown_id in processor.encode("a # b")
    with pytest.raises(TextError):
        synth.text.encode("a # b")  # this checkpoint chose unknown = "error"


# ----------------------------------------------------------------------------------- checkpoints
def resave(good: Path, path: Path, model: dict | None = None, **fields) -> None:
    """Save the checkpoint `good` again at `path` with model config entries and top-level fields changed."""
    state = load_checkpoint(good)
    config = {**state["config"], "model": {**state["config"]["model"], **(model or {})}}
    torch.save({**state, "config": config, **fields}, path)


BAD_CHECKPOINTS = {  # name -> (writer(good checkpoint, path), message)
    "missing": (lambda good, path: None, "no such checkpoint"),
    "truncated": (lambda good, path: path.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
                  "cannot read checkpoint"),
    "empty file": (lambda good, path: path.write_bytes(b""), "cannot read checkpoint"),
    "not a checkpoint": (lambda good, path: torch.save([1, 2, 3], path), "not a prosody_vae training checkpoint"),
    "another format version": (lambda good, path: resave(good, path, format_version=FORMAT_VERSION + 1,
                                                         package_version="9.9.9"),
                               rf"format {FORMAT_VERSION + 1} \(prosody_vae 9.9.9\) cannot be read"),
    "config from a newer version": (lambda good, path: resave(good, path, model={"new_knob": 1}),
                                    r"unknown key 'model.new_knob' \(checkpoint written by prosody_vae"),
    # the weights of a latent_dim=4 model under a config that says 6
    "weights of another config": (lambda good, path: resave(good, path, model={"latent_dim": 6}),
                                  r"do not fit its own config \(.*of another shape.*\); nothing was loaded"),
}


@pytest.fixture
def bad_checkpoint(checkpoint, tmp_path, request) -> tuple[Path, str]:
    writer, message = BAD_CHECKPOINTS[request.param]
    writer(checkpoint, tmp_path / "bad.pt")
    return tmp_path / "bad.pt", message


@pytest.mark.parametrize("bad_checkpoint", BAD_CHECKPOINTS, indirect=True)
def test_bad_checkpoint_through_the_synthesizer(bad_checkpoint):
    path, message = bad_checkpoint
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}.*{message}"):
        Synthesizer.from_checkpoint(path)


@pytest.mark.parametrize("bad_checkpoint", BAD_CHECKPOINTS, indirect=True)
@pytest.mark.parametrize("command", ["synthesize", "encode", "evaluate"])
def test_bad_checkpoint_through_the_cli(bad_checkpoint, tmp_path, capsys, command):
    path, message = bad_checkpoint
    ref = write(tmp_path / "ref.wav", voiced())
    argv = {"synthesize": ["--text", "Hi.", "--out", tmp_path / "x.wav"],
            "encode": ["--references", ref, "--out", tmp_path / "z"],
            "evaluate": ["--data", tmp_path, "--out", tmp_path / "e"]}[command]
    line = cli_error(capsys, command, "--checkpoint", path, *argv)
    assert re.match(rf"prosody-vae {command}: error: {re.escape(str(path))}.*{message}", line), line


def test_no_partial_load_unless_asked(checkpoint, tmp_path):
    state = load_checkpoint(checkpoint)
    resave(checkpoint, tmp_path / "other.pt", model={"latent_dim": 6})
    with pytest.raises(CheckpointError, match="strict=False"):
        load_model(tmp_path / "other.pt")
    torch.manual_seed(1)
    with pytest.warns(RuntimeWarning, match="partial load.*of another shape"):
        model, config = load_model(tmp_path / "other.pt", strict=False)
    torch.manual_seed(1)
    initial = ProsodyTacotron(config.model).state_dict()
    loaded = model.state_dict()
    fits = [k for k, v in state["model"].items() if v.shape == loaded[k].shape]
    misfits = [k for k in loaded if k not in fits]
    assert config.model.latent_dim == 6 and fits and misfits
    assert all(torch.equal(loaded[k], state["model"][k]) for k in fits)
    assert all(torch.equal(loaded[k], initial[k]) for k in misfits), "the rest keep their initial values"


def test_a_checkpoint_of_another_package_version_but_the_same_format_loads(checkpoint, tmp_path):
    state = load_checkpoint(checkpoint)
    resave(checkpoint, tmp_path / "old.pt", package_version="0.0.1")
    model, _ = load_model(tmp_path / "old.pt")
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------ config, metadata
BAD_CONFIGS = {  # name -> (TOML, message)
    "unknown key": ("[model]\npreset = 'tiny'\natention_dim = 3\n", "unknown key 'model.atention_dim'"),
    "wrong type": ("max_steps = 'many'\n", "'max_steps' must be int, got 'many'"),
    "wrong nested type": ("[optim]\nbetas = [0.9]\n", r"'optim.betas' must be an array of 2"),
    "not TOML": ("[model\n", "not valid TOML"),
}


@pytest.mark.parametrize("name", BAD_CONFIGS)
@pytest.mark.parametrize("command", ["train", "demo"])
def test_bad_config_through_the_cli(tmp_path, capsys, name, command):
    text, message = BAD_CONFIGS[name]
    config = tmp_path / "bad.toml"
    config.write_text(text)
    data = ["--data", write_tiny_corpus(tmp_path / "corpus", n=3)] if command == "train" else []
    line = cli_error(capsys, command, "--config", config, *data, "--out", tmp_path / "run")
    assert line.startswith(f"prosody-vae {command}: error: {config}: ") and message in line, line
    assert not (tmp_path / "run").exists(), "nothing is written before the config is read"


BAD_METADATA = {  # name -> (edit of the 3-line metadata, message)
    "duplicate ids": (lambda lines: lines + [lines[0]], r"metadata.csv:4: duplicate id 'utt000' \(first on line 1\)"),
    "missing wav": (lambda lines: lines + ["utt009|Hi.|hi."],
                    r"metadata.csv: 1 of 4 wav files are missing: .*utt009.wav"),
    "too few fields": (lambda lines: lines[:1] + ["utt001"] + lines[2:], r"metadata.csv:2: expected 'id\|raw text"),
}


@pytest.mark.parametrize("name", BAD_METADATA)
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_bad_metadata_through_the_cli(checkpoint, tmp_path, capsys, name, command):
    edit, message = BAD_METADATA[name]
    corpus = write_tiny_corpus(tmp_path / "corpus", n=3)
    metadata = corpus / "metadata.csv"
    metadata.write_text("\n".join(edit(metadata.read_text().splitlines())) + "\n")
    config = tmp_path / "micro.toml"
    config.write_text("max_steps = 1\n")
    source = ["--config", config] if command == "train" else ["--checkpoint", checkpoint]
    line = cli_error(capsys, command, *source, "--data", corpus, "--out", tmp_path / "out")
    assert line.startswith(f"prosody-vae {command}: error: {corpus}") and re.search(message, line), line


@pytest.mark.parametrize("name", ["all silent", "corrupt", "very short (100 samples)"])
def test_bad_training_wav_through_cli_train(tmp_path, capsys, name):
    corpus, wav, message = corpus_with(tmp_path, name)
    config = tmp_path / "micro.toml"
    config.write_text("max_steps = 1\n[data]\nn_val = 1\n")
    line = cli_error(capsys, "train", "--config", config, "--data", corpus, "--out", tmp_path / "run")
    assert line.startswith(f"prosody-vae train: error: {wav}: ") and re.search(message, line), line


# ------------------------------------------------------------------------------ other arguments
BAD_ARGUMENTS = {  # name -> (argv after "synthesize --checkpoint CKPT --out OUT", message)
    "negative temperature": (["--text", "Hi.", "--temperature", "-1"], "temperature must be a finite number >= 0"),
    "nan temperature": (["--text", "Hi.", "--temperature", "nan"], "temperature must be a finite number >= 0"),
    "unknown mode": (["--text", "Hi.", "--mode", "median"], "argument --mode: invalid choice: 'median'"),
    "temperature not a number": (["--text", "Hi.", "--temperature", "hot"], "argument --temperature: invalid float"),
    "missing --text": ([], "the following arguments are required: --text"),
    "not a device": (["--text", "Hi.", "--device", "gpu0"], "device 'gpu0' is not a torch device"),
    "zero reference limit": (["--text", "Hi.", "--max-reference-seconds", "0"], "max_reference_seconds must be > 0"),
}


@pytest.mark.parametrize("name", BAD_ARGUMENTS)
def test_bad_arguments_are_one_line_naming_the_argument(checkpoint, tmp_path, capsys, name):
    argv, message = BAD_ARGUMENTS[name]
    line = cli_error(capsys, "synthesize", "--checkpoint", checkpoint, "--out", tmp_path / "x.wav", *argv)
    assert line.startswith("prosody-vae synthesize: error: ") and message in line, line


def test_other_cli_inputs_name_what_is_wrong(checkpoint, tmp_path, capsys):
    ref = write(tmp_path / "ref.wav", voiced())
    (tmp_path / "empty").mkdir()
    line = cli_error(capsys, "encode", "--checkpoint", checkpoint, "--references", tmp_path / "empty",
                     "--out", tmp_path / "z")
    assert line.endswith(f"{tmp_path / 'empty'}: folder holds no .wav files")
    line = cli_error(capsys, "transfer", "--checkpoint", checkpoint, "--texts", tmp_path / "nope.txt",
                     "--references", ref, "--out", tmp_path / "t")
    assert f"{tmp_path / 'nope.txt'}: cannot read the text file" in line
    line = cli_error(capsys, "interpolate", "--checkpoint", checkpoint, "--text", "Hi.", "--reference-a", ref,
                     "--reference-b", ref, "--steps", "1", "--out", tmp_path / "i")
    assert line.endswith("steps must be >= 2, got 1")


# --------------------------------------------------------------------------- reference encoder
@pytest.mark.parametrize("frames", [1, 3, 64, 5000])
def test_reference_encoder_takes_any_length_from_one_frame(frames):
    """No receptive-field minimum: stride-2 convs keep >= 1 frame (reference.py); no maximum either,
    the Synthesizer's max_reference_seconds is where long references are refused."""
    encoder = VariationalReferenceEncoder(n_mels=N_MELS, latent_dim=4, conv_channels=(4, 8, 8, 8, 8, 8),
                                          gru_dim=8, mlp_dim=8).eval()
    posterior = encoder(torch.randn(1, frames, N_MELS), torch.tensor([frames]), mode="mean")
    assert torch.isfinite(posterior.mean).all() and (posterior.std > 0).all()


@pytest.mark.parametrize("reference, message", [
    (np.zeros((3, 3, 3)), r"reference must be .* got shape \(3, 3, 3\)"),
    (np.zeros((10, N_MELS + 1)), r"log-mel \(T, 20\), got shape \(10, 21\)"),
    (np.zeros((0, N_MELS)), "log-mel reference is empty or silence"),
    (np.full((10, N_MELS), np.log(1e-5)), "log-mel reference is empty or silence"),
    (np.full((10, N_MELS), np.nan), "reference holds NaN"),
    (np.zeros(4000), "digital silence"),
    (voiced()[:300], "reference of 300 samples is too short: one mel frame needs 385"),
    (voiced(2.5), r"reference of 2.5 s is over max_reference_seconds=2"),
    (np.zeros((3 * SR // 256, N_MELS)), r"reference of 3.0 s is over max_reference_seconds=2"),
    (["a.wav", object()], "expected a wav path, a waveform or a log-mel"),
])
def test_bad_in_memory_references(synth, reference, message):
    with pytest.raises(ReferenceInputError, match=message):
        synth.reference_mel(reference)


def test_max_reference_seconds_none_lifts_the_limit(checkpoint):
    synth = Synthesizer.from_checkpoint(checkpoint, max_reference_seconds=None)
    assert synth.reference_mel(voiced(40.0)).shape == (40 * SR // 256, N_MELS)


# ------------------------------------------------------------------------------------------ fuzz
FORMATS = [("WAV", s) for s in ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "IMA_ADPCM")] + \
          [("FLAC", s) for s in ("PCM_S8", "PCM_16", "PCM_24")]
CONTENTS = ["speech-like", "zeros", "full scale noise", "far over full scale", "float32 extremes", "NaN", "inf"]


def fuzz_samples(content: str, frames: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((frames, channels))
    samples = {"speech-like": 0.1 * noise, "zeros": 0 * noise, "full scale noise": np.clip(noise, -1, 1),
               "far over full scale": 1e6 * noise, "float32 extremes": np.sign(noise) * 3e38}.get(content, noise)
    if content in ("NaN", "inf") and frames:
        samples[rng.integers(frames), rng.integers(channels)] = np.nan if content == "NaN" else -np.inf
    return samples


@st.composite
def audio_files(draw) -> bytes:
    """The bytes of a random file: a soundfile-written one (any rate, channels, format, content),
    a cut-off copy of one, random bytes, or random bytes behind a RIFF/WAVE header."""
    kind = draw(st.sampled_from(["written", "truncated", "random bytes", "RIFF + random bytes"]))
    if kind.endswith("random bytes"):
        head = b"RIFF\x24\x08\x00\x00WAVEfmt " if kind.startswith("RIFF") else b""
        return head + draw(st.binary(max_size=300))
    fmt, subtype = draw(st.sampled_from(FORMATS))
    rate = draw(st.one_of(st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000]), st.integers(1000, 96000)))
    samples = fuzz_samples(draw(st.sampled_from(CONTENTS)), draw(st.integers(0, 3000)), draw(st.integers(1, 3)),
                           draw(st.integers(0, 2**16)))
    if subtype not in ("FLOAT", "DOUBLE"):  # integer codecs cannot store these (libFLAC aborts on NaN)
        samples = np.clip(np.nan_to_num(samples), -1, 1)
    with tempfile.NamedTemporaryFile(suffix=f".{fmt.lower()}") as f:
        try:
            sf.write(f.name, samples, rate, subtype=subtype, format=fmt)
        except (sf.LibsndfileError, ValueError, TypeError):
            return b""  # a combination the writer refuses (FLAC > 8 channels...): an empty file
        data = Path(f.name).read_bytes()
    return data[: draw(st.integers(0, len(data)))] if kind == "truncated" else data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=audio_files(), max_seconds=st.one_of(st.none(), st.floats(0.01, 1.0)))
def fuzz_one_file(synth: Synthesizer, cache: MelCache, counts: dict[str, int], data: bytes,
                  max_seconds: float | None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.wav"
        path.write_bytes(data)
        counts["cases"] += 1
        try:
            wav = load_wav(path, SR, max_seconds=max_seconds)
        except AudioError as exc:
            assert str(path) in str(exc)
            return
        counts["loaded"] += 1
        info = sf.info(str(path))
        assert wav.dtype == np.float32 and wav.ndim == 1 and np.isfinite(wav).all()
        assert abs(len(wav) - info.frames * SR / info.samplerate) <= 1
        for entry_point in (synth.reference_mel, lambda p: cache.compute(Utterance("fuzz", "fuzz.", "fuzz.", p))):
            try:
                mel = torch.as_tensor(entry_point(path))
            except (AudioError, ReferenceInputError) as exc:
                assert str(path) in str(exc)
                continue
            counts["mels"] += 1
            assert mel.shape == (len(wav) // 256, N_MELS) and torch.isfinite(mel).all()


@pytest.mark.slow
def test_fuzz_wav_loader_reference_and_mel_cache_only_raise_package_errors(synth, tmp_path):
    """Only ProsodyVAEError subclasses escape load_wav, Synthesizer.reference_mel and the training
    mel cache (any other exception fails the test); a load that succeeds is finite float32 mono at
    the requested rate, and a mel that is computed is finite and of the expected length."""
    counts = {"cases": 0, "loaded": 0, "mels": 0}
    fuzz_one_file(synth, MelCache(tmp_path, AudioConfig(n_mels=N_MELS)), counts)
    print(f"\nwav loader fuzz: {counts}")  # shown with -s
    assert counts["cases"] >= 300 and 0 < counts["mels"] < 2 * counts["loaded"] and counts["loaded"] < counts["cases"]


# ----------------------------------------------------------------------------- the real process
@pytest.mark.slow
def test_real_cli_process_prints_one_line_and_no_warnings(checkpoint, tmp_path):
    """In a real process nothing else reaches stderr either (warnings, library chatter)."""
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    silent = write(tmp_path / "silent.wav", np.zeros(SR, np.float32))
    for argv, message in [(["--checkpoint", truncated], f"{truncated}: cannot read checkpoint"),
                          (["--checkpoint", checkpoint, "--reference", silent], f"{silent}: audio is digital silence")]:
        result = subprocess.run([sys.executable, "-m", "prosody_vae", "synthesize", *map(str, argv), "--text", "Hi.",
                                 "--out", str(tmp_path / "x.wav")], capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(f"prosody-vae synthesize: error: {message}"), result.stderr


@pytest.mark.parametrize("flag, words", [("--reference-range", ("reference_range", "pitch head")),
                                         ("--reference-level", ("reference_level", "enrolled speaker"))])
def test_a_reference_option_the_model_or_speaker_cannot_serve_is_one_clear_cli_error(checkpoint, tmp_path, capsys,
                                                                                     flag, words):
    """--reference-range needs a pitch head (this model has none); --reference-level an enrolled speaker."""
    ref = write(tmp_path / "ref.wav", voiced())
    line = cli_error(capsys, "synthesize", "--checkpoint", checkpoint, "--text", "Hi.", "--reference", ref,
                     flag, "--out", tmp_path / "x.wav")
    assert all(word in line for word in words), line
    assert not (tmp_path / "x.wav").exists()
