"""Per-utterance prosody statistics: definitions on known features, the CSV round trip, the CLI."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from prosody_vae.cli import main
from prosody_vae.data.ljspeech import Utterance
from prosody_vae.plugin.errors import DataError
from prosody_vae.audio.pitch import FrameFeatures
from prosody_vae.data.stats import (UtteranceStats, count_syllables, read_speaker_stats, read_stats, speaker_stats,
                               speakers_path, utterance_stats, write_stats)

SR, HOP = 22050, 256
FRAME_S = HOP / SR


@pytest.mark.parametrize("text, syllables", [
    ("the quick brown fox", 4), ("make a whale", 3), ("table", 2), ("three free trees", 3),
    ("she moved and wanted more", 6), ("beautiful", 3), ("yes", 1), ("hmm", 1), ("carried", 2),
    ("makes boxes", 3), ("apples", 2), ("closely", 2), ("arrangement", 3),
    ("don't", 1), ("say {HH AH0 L OW1} now", 4), ("", 0), ("1, 2, 3?", 0),
])
def test_count_syllables(text, syllables):
    assert count_syllables(text) == syllables


def utterance(text: str = "one two three", speaker: str | None = None) -> Utterance:
    return Utterance("u1", text, text, Path("u1.wav"), speaker)


def test_statistics_of_known_frame_features():
    T = 100
    energy = np.full(T, -100.0, np.float32)
    energy[10:90] = -20.0
    energy[50] = -10.0  # the loudest frame: speech is what lies within 40 dB of it
    energy[60] = -55.0  # 45 dB below the peak: a pause inside the span
    voiced = np.zeros(T, bool)
    voiced[20:60] = True
    hz = np.where(np.arange(T) % 2, 100.0, 200.0)  # alternating: 0 and 12 st
    features = FrameFeatures(np.where(voiced, np.log(hz), 0).astype(np.float32), voiced, energy)
    stats = utterance_stats(utterance(), features)
    assert stats.duration_s == pytest.approx(T * FRAME_S)
    assert stats.speech_s == pytest.approx(80 * FRAME_S)  # frames 10..89; the pause inside counts
    assert stats.voiced_fraction == pytest.approx(40 / 80)
    assert stats.f0_mean_st == pytest.approx(6.0, abs=1e-4)
    assert stats.f0_mean_hz == pytest.approx(math.sqrt(100 * 200), rel=1e-4)  # geometric mean
    assert stats.f0_std_st == pytest.approx(6.0, abs=1e-4)
    assert stats.f0_range_st == pytest.approx(12.0, abs=1e-4) and stats.f0_range_hz == pytest.approx(100.0, rel=1e-4)
    assert stats.syllables == 3 and stats.speaking_rate == pytest.approx(3 / (80 * FRAME_S))
    loud = np.r_[np.full(78, -20.0), -10.0]  # the 79 frames within 40 dB of the peak
    assert stats.energy_db == pytest.approx(10 * np.log10(np.mean(10 ** (loud / 10))), abs=1e-4)
    assert stats.speaker == ""


def test_an_unvoiced_utterance_has_nan_f0_and_survives_the_csv(tmp_path):
    features = FrameFeatures(np.zeros(50, np.float32), np.zeros(50, bool), np.full(50, -30.0, np.float32))
    stats = utterance_stats(utterance(speaker="bob"), features)
    assert math.isnan(stats.f0_mean_hz) and math.isnan(stats.f0_range_st) and stats.voiced_fraction == 0
    path = write_stats(tmp_path / "s.csv", [stats])
    assert path.read_text().splitlines()[1].startswith("u1,bob,")
    (back,) = read_stats(path)
    assert back.id == "u1" and back.speaker == "bob" and back.syllables == 3 and math.isnan(back.f0_mean_st)
    assert back.energy_db == pytest.approx(-30.0)


def test_speaker_means_skip_unvoiced_utterances():
    base = UtteranceStats("a", "x", 1.0, 1.0, 0.5, 100.0, 0.0, 1.0, 10.0, 2.0, 4, 4.0, -20.0)
    rows = [base, dataclasses.replace(base, id="b", f0_mean_st=12.0, speaking_rate=6.0),
            dataclasses.replace(base, id="c", f0_mean_st=math.nan, f0_range_st=math.nan),
            dataclasses.replace(base, id="d", speaker="y", f0_mean_st=-3.0)]
    by_speaker = speaker_stats(rows)
    assert list(by_speaker) == ["x", "y"] and by_speaker["x"].n_utterances == 3
    assert by_speaker["x"].f0_mean_st == pytest.approx(6.0)
    assert by_speaker["x"].f0_mean_hz == pytest.approx(200 / math.sqrt(2))
    assert by_speaker["x"].speaking_rate == pytest.approx(14 / 3) and by_speaker["y"].f0_mean_st == -3.0


def test_malformed_statistics_files_name_file_and_line(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("id,speaker\nu1,x\n")
    with pytest.raises(DataError, match="s.csv: not a UtteranceStats file, missing column"):
        read_stats(path)
    rows = [UtteranceStats("a", "", 1.0, 1.0, 0.5, 100.0, 0.0, 1.0, 10.0, 2.0, 4, 4.0, -20.0)]
    write_stats(path, rows)
    path.write_text(path.read_text().replace(",4,", ",four,"))
    with pytest.raises(DataError, match=r"s.csv:2: column 'syllables' holds 'four'"):
        read_stats(path)


# ---------------------------------------------------------------------------- the CLI
def tone(f0: float, seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    wav = sum(amplitude / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 12))
    ramp = np.minimum(1, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: no clicks
    return (wav * ramp).astype(np.float32)


KNOWN = [("a1", "alice", 110.0, 0.2), ("a2", "alice", 130.0, 0.1), ("b1", "bob", 220.0, 0.2)]


def known_corpus(root: Path) -> Path:
    """Steady tones of known F0 and level, 0.2 s of silence either side, two speakers."""
    (root / "wavs").mkdir(parents=True)
    lines = []
    for utt_id, speaker, f0, amplitude in KNOWN:
        wav = np.concatenate([np.zeros(int(0.2 * SR)), tone(f0, 1.0, amplitude), np.zeros(int(0.2 * SR))])
        sf.write(root / "wavs" / f"{utt_id}.wav", wav.astype(np.float32), SR, subtype="PCM_16")
        lines.append(f"{utt_id}|Hello there.|hello there.|{speaker}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_stats_cli_writes_the_columns_and_plausible_values(tmp_path, capsys, monkeypatch):
    corpus = known_corpus(tmp_path / "corpus")
    assert main(["stats", "--data", str(corpus)]) == 0
    out = corpus / "prosody_stats.csv"
    assert f"wrote {out}" in capsys.readouterr().out
    header = out.read_text().splitlines()[0].split(",")
    assert header == [f.name for f in dataclasses.fields(UtteranceStats)]
    rows = read_stats(out)
    assert [(r.id, r.speaker) for r in rows] == [(i, s) for i, s, _, _ in KNOWN]
    for row, (_, _, f0, amplitude) in zip(rows, KNOWN):
        assert row.f0_mean_hz == pytest.approx(f0, rel=0.01)
        assert row.f0_mean_st == pytest.approx(12 * math.log2(f0 / 100), abs=0.2)
        assert row.f0_range_st < 0.2 and row.f0_range_hz < 2.0  # a steady tone
        assert row.voiced_fraction > 0.95
        assert row.speech_s == pytest.approx(1.0, abs=0.05) and row.duration_s == pytest.approx(1.4, abs=0.02)
        assert row.syllables == 3 and row.speaking_rate == pytest.approx(3 / row.speech_s)
        rms = amplitude * math.sqrt(sum(1 / k ** 2 for k in range(1, 12)) / 2)
        assert row.energy_db == pytest.approx(20 * math.log10(rms), abs=0.5)
    speakers = read_speaker_stats(speakers_path(out))
    assert speakers_path(out).name == "prosody_stats.speakers.csv"
    assert speakers["alice"].n_utterances == 2 and speakers["bob"].n_utterances == 1
    assert speakers["alice"].f0_mean_st == pytest.approx((rows[0].f0_mean_st + rows[1].f0_mean_st) / 2, abs=1e-4)

    # a second run reads the cache: nothing is extracted again
    import prosody_vae.data.ljspeech as data_module

    monkeypatch.setattr(data_module, "frame_features", lambda *a, **k: pytest.fail("features recomputed"))
    other = tmp_path / "elsewhere.csv"
    assert main(["stats", "--data", str(corpus), "--out", str(other)]) == 0
    assert read_stats(other) == rows and (tmp_path / "elsewhere.speakers.csv").exists()


def test_stats_cli_bad_input_is_one_clear_line(tmp_path, capsys):
    corpus = known_corpus(tmp_path / "corpus")
    sf.write(corpus / "wavs" / "a2.wav", np.zeros(SR, np.float32), SR, subtype="PCM_16")
    assert main(["stats", "--data", str(corpus)]) == 2
    silent = corpus / "wavs" / "a2.wav"
    assert f"prosody-vae stats: error: {silent}: audio is digital silence" in capsys.readouterr().err
    (corpus / "wavs" / "b1.wav").unlink()
    assert main(["stats", "--data", str(corpus)]) == 2
    err = capsys.readouterr().err
    assert "metadata.csv: 1 of 3 wav files are missing" in err and "b1.wav" in err
    assert main(["stats", "--data", str(tmp_path / "nowhere")]) == 2
    assert "metadata file not found" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()
