"""`prosody-vae serve`: the API with FastAPI's test client, the batching worker, and the load test."""

from __future__ import annotations

import base64
import io
import math
import socket
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi", reason="the serve extra (FastAPI) is not installed")
import uvicorn  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from prosody_vae.training.checkpoint import save_checkpoint  # noqa: E402
from prosody_vae.cli import build_parser  # noqa: E402
from prosody_vae.training.config import config_to_dict  # noqa: E402
from prosody_vae.plugin.errors import AudioError, ControlError, ReferenceInputError, TextError  # noqa: E402
from prosody_vae.inference.synthesizer import Synthesizer  # noqa: E402
from prosody_vae.serve import ServeConfig  # noqa: E402
from prosody_vae.serve.app import BodyLimit, _wav_bytes, build_app  # noqa: E402
from prosody_vae.serve.batching import BatchWorker, QueueFull  # noqa: E402
from prosody_vae.data.speakers import SpeakerTable  # noqa: E402
from test_infer import TEXTS, make_synth, reference_wav  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
SR = 22050


def decoded(result: dict) -> np.ndarray:
    """The audio (N,) of one JSON result."""
    return sf.read(io.BytesIO(base64.b64decode(result["audio_wav_base64"])), dtype="float32")[0]


def duration(response) -> float:
    assert response.status_code == 200, response.text
    return float(response.headers["X-Duration-Seconds"])


def wav_file(wav: np.ndarray, sample_rate: int = SR) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wav, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def quiet_max_steps():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*max_decoder_steps.*")  # an untrained model never stops
        yield


def app_client(config: ServeConfig | None = None, synth=None) -> TestClient:
    return TestClient(build_app(synth or make_synth(), config or ServeConfig()))


@pytest.fixture(scope="module")
def client():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*max_decoder_steps.*")
        with app_client(ServeConfig(max_upload_bytes=2 * 2**20)) as c:
            yield c


@pytest.fixture(scope="module")
def reference_id(client) -> str:
    return client.post("/v1/encode", files={"reference": ("a.wav", wav_file(reference_wav()), "audio/wav")}
                       ).json()["reference_id"]


def assert_refused(response, status: int, field: str):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field and error["message"], error


# ------------------------------------------------------------------------------------ endpoints
def test_health_model_card_and_openapi(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["queue_length"] == 0
    card = client.get("/v1/model").json()
    assert card["latent_dim"] == 4 and card["speakers"] == [] and card["server"]["sample_rate"] == SR
    # an uncalibrated model offers no knobs, and says how to calibrate it
    assert card["calibration"] is None and card["server"]["knobs"] == {}
    assert card["server"]["calibrate_command"].startswith("prosody-vae calibrate --checkpoint")
    assert card["server"]["vocoder"] == "griffin-lim" and "griffin-lim" in card["server"]["vocoders"]
    # 20 mels are not the HiFi-GAN convention, and there is no pitch head for the source-filter vocoder
    assert not any(name.startswith("hifigan") or name == "source-filter" for name in card["server"]["vocoders"])
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/healthz", "/v1/model", "/v1/synthesize", "/v1/encode", "/v1/interpolate"} <= set(paths)
    bodies = paths["/v1/synthesize"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(bodies)


def test_synthesize_answers_a_wav_matching_the_synthesizer(client):
    response = client.post("/v1/synthesize", json={"text": TEXTS[0], "seed": 3, "temperature": 0.5})
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    wav, rate = sf.read(io.BytesIO(response.content), dtype="float32")
    assert rate == SR and abs(len(wav) / SR - float(response.headers["X-Duration-Seconds"])) < 1e-6
    synth = client.app.state.engine.synth
    alone = synth.tts(TEXTS[0], seed=3, temperature=0.5).wav[0]
    assert response.content == _wav_bytes(alone, SR)


def test_json_answer_carries_the_extras_asked_for(client, reference_id):
    response = client.post("/v1/synthesize", json={
        "texts": TEXTS[:2], "reference_id": reference_id, "format": "json", "include": ["f0", "alignment", "z", "mel"]})
    body = response.json()
    assert response.status_code == 200 and body["reference_id"] == reference_id and len(body["results"]) == 2
    for result in body["results"]:
        mel = np.array(result["mel"])
        assert mel.shape[1] == 20 and len(result["z"]) == 4 and result["f0_hz"] is None  # no pitch head
        assert np.array(result["alignment"]).shape[0] == result["stop_step"]
        assert abs(len(decoded(result)) / SR - result["duration_s"]) < 1e-6


def test_seeds_give_one_result_each(client):
    body = client.post("/v1/synthesize", json={"text": TEXTS[1], "seeds": [1, 2, 3], "format": "json"}).json()
    assert [r["seed"] for r in body["results"]] == [1, 2, 3]
    assert len({r["audio_wav_base64"] for r in body["results"]}) == 3


def test_multipart_upload_then_reuse_by_id(client):
    upload = wav_file(reference_wav(f0=180.0))
    first = client.post("/v1/synthesize", data={"options": '{"text": "Hello there."}'},
                        files={"reference": ("r.wav", upload, "audio/wav")})
    assert first.status_code == 200, first.text
    again = client.post("/v1/synthesize", json={"text": "Hello there.", "reference_id": first.headers["X-Reference-Id"]})
    assert again.content == first.content  # the same reference, by upload or by id


def test_encode_gives_the_posterior_by_upload_or_id(client, reference_id):
    by_id = client.post("/v1/encode", json={"reference_id": reference_id}).json()
    synth = client.app.state.engine.synth
    uploaded = sf.read(io.BytesIO(wav_file(reference_wav())), dtype="float32")[0]  # 16-bit, as sent
    posterior = synth.encode(uploaded)
    assert np.allclose(by_id["mean"], posterior.mean[0].numpy(), atol=1e-5)
    assert len(by_id["std"]) == 4 and by_id["kl_nats"] > 0 and abs(by_id["duration_s"] - 0.6) < 1e-3


def test_interpolate_walks_from_one_reference_to_the_other(client, reference_id):
    other = client.post("/v1/encode", files={"reference": ("b.wav", wav_file(reference_wav(f0=220.0)), "audio/wav")}
                        ).json()["reference_id"]
    body = client.post("/v1/interpolate", json={"text": "Hello.", "reference_a": reference_id, "reference_b": other,
                                                "steps": 3, "include": ["z"]}).json()
    z = np.array([r["z"] for r in body["results"]])
    synth = client.app.state.engine.synth
    as_sent = lambda wav: sf.read(io.BytesIO(wav_file(wav)), dtype="float32")[0]
    ends = synth.encode([as_sent(reference_wav()), as_sent(reference_wav(f0=220.0))]).mean.numpy()
    assert np.allclose(z[0], ends[0], atol=1e-4) and np.allclose(z[-1], ends[1], atol=1e-4)
    assert np.allclose(z[1], ends.mean(0), atol=1e-4)


# ------------------------------------------------------------------------------------ bad input
SILENT = wav_file(np.zeros(SR // 2, dtype=np.float32))
TOO_LONG = wav_file(0.1 * np.sin(np.arange(31 * SR) / 10).astype(np.float32))


@pytest.mark.parametrize("path, request_kwargs, status, field", [
    ("/v1/synthesize", dict(content=b'{"text": "Hi.",', headers={"content-type": "application/json"}), 400, "body"),
    ("/v1/synthesize", dict(json={"text": "Hi.", "tempo": 2}), 422, "tempo"),
    ("/v1/synthesize", dict(json={"text": "x" * 401}), 422, "text"),
    ("/v1/synthesize", dict(json={"text": "?!"}), 422, "text"),
    ("/v1/synthesize", dict(json={"texts": ["Hi.", "  "]}), 422, "texts[1]"),
    ("/v1/synthesize", dict(json={"text": "Hi.", "texts": ["Hi."]}), 422, "text"),
    ("/v1/synthesize", dict(json={}), 422, "text"),
    ("/v1/synthesize", dict(json={"text": "Hi.", "temperature": 9}), 422, "temperature"),
    ("/v1/synthesize", dict(json={"text": "Hi.", "seed": -1}), 422, "seed"),
    ("/v1/synthesize", dict(json={"text": "Hi.", "seeds": [1, 2**31]}), 422, "seeds[1]"),
    ("/v1/synthesize", dict(json={"text": "Hi.", "n_samples": 99}), 422, "n_samples"),
    ("/v1/synthesize", dict(json={"text": "Hi.", "strength": -1}), 422, "strength"),
    ("/v1/synthesize", dict(json={"text": "Hi.", "controls": {"rate": "fast"}}), 422, "controls.rate"),
    ("/v1/synthesize", dict(json={"text": "Hi.", "controls": {"tempo": 1.0}}), 422, "controls.tempo"),
    ("/v1/synthesize", dict(json={"text": "Hi.", "controls": {"rate": 1.2}}), 422, "controls.rate"),  # uncalibrated
    ("/v1/synthesize", dict(json={"text": "Hi.", "mode": "median"}), 422, "mode"),
    ("/v1/synthesize", dict(json={"text": "Hi.", "reference_id": "nope"}), 404, "reference_id"),
    ("/v1/synthesize", dict(json={"text": "Hi.", "reference_text": "Hello."}), 422, "reference_text"),
    ("/v1/synthesize", dict(json={"texts": ["Hi.", "Bye."]}), 422, "format"),
    ("/v1/synthesize", dict(json={"text": "Hi.", "seeds": list(range(17)), "format": "json"}), 422, "seeds"),
    ("/v1/synthesize", dict(json={"text": "Hi.", "vocoder": "wavenet"}), 422, "vocoder"),
    ("/v1/synthesize", dict(json={"text": "Hi.", "vocoder": "source-filter"}), 422, "vocoder"),
    ("/v1/synthesize", dict(content=b"text=Hi", headers={"content-type": "text/plain"}), 415, "content-type"),
    ("/v1/synthesize", dict(data={"options": "{}"}, files={"reference": ("r.wav", b"RIFF nonsense", "audio/wav")}),
     415, "reference"),
    ("/v1/encode", dict(files={"reference": ("r.txt", b"just some text, not audio", "text/plain")}), 415, "reference"),
    ("/v1/encode", dict(files={"reference": ("r.wav", SILENT, "audio/wav")}), 422, "reference"),
    ("/v1/encode", dict(files={"reference": ("r.wav", TOO_LONG, "audio/wav")}), 422, "reference"),
    ("/v1/encode", dict(files={"reference": ("r.wav", b"\0" * (2 * 2**20 + 1), "audio/wav")}), 413, "reference"),
    ("/v1/encode", dict(data={"reference_text": "Hi."}, files={"other": ("r.wav", SILENT, "audio/wav")}), 422,
     "reference"),
    ("/v1/encode", dict(json={"reference_id": "nope"}), 404, "reference_id"),
    ("/v1/interpolate", dict(json={"text": "Hi.", "reference_a": "a", "reference_b": "b", "steps": 1}), 422, "steps"),
    ("/v1/interpolate", dict(json={"text": "Hi.", "reference_a": "a", "reference_b": "b"}), 404, "reference_a"),
])
def test_bad_input_is_a_4xx_naming_the_field(client, path, request_kwargs, status, field):
    assert_refused(client.post(path, **request_kwargs), status, field)


@pytest.mark.parametrize("error, field", [
    (ControlError("controls.rate: the wording may change", field="controls.rate"), "controls.rate"),
    (ReferenceInputError("a message that mentions temperature and seed", field="strength"), "strength"),
    (TextError("texts: reworded", field="texts"), "texts"),
    (ReferenceInputError("no argument named at all"), "reference"),  # no field: the part its type is about
])
def test_an_error_from_the_model_answers_with_its_own_field_whatever_its_message_says(error, field):
    """The API's error field is the exception's `field`, never read from its message: here the
    Synthesizer raises while the worker runs the job, after every check before queueing passed."""
    synth = make_synth()

    def refuse(texts, **arguments):
        if texts != ["Warm up the model."]:
            raise error
        return Synthesizer.tts(synth, texts, **arguments)
    synth.tts = refuse
    with app_client(synth=synth) as c:
        response = c.post("/v1/synthesize", json={"text": "Hi."})
    assert_refused(response, 422, field)
    assert response.json()["error"]["message"] == str(error).removeprefix(f"{field}: ")


def test_a_knob_on_an_uncalibrated_model_names_the_calibrate_command(client):
    response = client.post("/v1/synthesize", json={"text": "Hi.", "controls": {"pitch": 2}})
    assert_refused(response, 422, "controls.pitch")
    assert "prosody-vae calibrate --checkpoint" in response.json()["error"]["message"]
    # a neutral knob asks for no change: allowed, and the same audio as leaving it out
    neutral = client.post("/v1/synthesize", json={"text": "Hi.", "controls": {"rate": 1.0, "energy": 0}})
    assert neutral.status_code == 200 and neutral.content == client.post("/v1/synthesize", json={"text": "Hi."}).content


def test_the_size_limit_is_checked_before_reading_the_body():
    async def app(scope, receive, send):
        raise AssertionError("the app must not run")

    async def receive():
        raise AssertionError("the body must not be read")

    sent = []

    async def send(message):
        sent.append(message)

    import asyncio

    scope = {"type": "http", "method": "POST", "path": "/v1/encode",
             "headers": [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"999999999")]}
    asyncio.run(BodyLimit(app, max_bytes=1000)(scope, receive, send))
    assert sent[0]["status"] == 413 and b'"field":"reference"' in sent[1]["body"]


# ------------------------------------------------------------------------------------ strength, n_samples, knobs
def test_a_speaker_on_a_single_speaker_model_is_refused(client):
    response = client.post("/v1/synthesize", json={"text": "Hi.", "speaker": "nobody"})
    assert_refused(response, 422, "speaker")
    assert "single-speaker" in response.json()["error"]["message"]


def test_speakers_by_name_and_an_unknown_one_listing_the_known():
    synth = make_synth(n_speakers=2, speaker_dim=4)
    synth.speaker_table = SpeakerTable(("en-us+f3", "en-us+m1"))
    with app_client(ServeConfig(warm_up=False), synth) as multi:
        assert multi.get("/v1/model").json()["speakers"] == ["en-us+f3", "en-us+m1"]
        response = multi.post("/v1/synthesize", json={"text": "Hi.", "speaker": "nobody"})
        assert_refused(response, 422, "speaker")
        assert "en-us+f3, en-us+m1" in response.json()["error"]["message"]
        voices = [decoded(multi.post("/v1/synthesize", json={"text": "Hi.", "speaker": name, "format": "json"}
                                     ).json()["results"][0]) for name in synth.speakers]
        assert len(voices[0]) and not np.array_equal(voices[0], voices[1])


def test_reference_range_reaches_the_synthesizer_and_is_refused_without_a_reference_or_pitch_head(reference_id, client):
    assert_refused(client.post("/v1/synthesize", json={"text": "Hi.", "reference_id": reference_id,
                                                       "reference_range": True}), 422, "reference_range")  # no pitch head
    synth = make_synth(pitch_head=True)
    with app_client(ServeConfig(warm_up=False), synth) as pitched:
        ref = pitched.post("/v1/encode", files={"reference": ("a.wav", wav_file(reference_wav()), "audio/wav")}
                           ).json()["reference_id"]
        ask = lambda **kw: pitched.post("/v1/synthesize", json={"text": "Hi.", "seed": 1, "format": "json",
                                                                "include": ["f0"], **kw})
        assert_refused(ask(reference_range=True), 422, "reference_range")  # no reference
        served = ask(reference_id=ref, reference_range=True).json()["results"][0]["f0_hz"]
        direct = synth.tts("Hi.", reference=reference_wav(), seed=1, reference_range=True, vocode=False).f0[0]
        assert np.allclose(served, direct.numpy(), atol=0.06)


def test_reference_speaker_absolute_pitch_and_the_interpolation_voice_reach_the_synthesizer_checked():
    synth = make_synth(n_speakers=2, speaker_dim=4, pitch_head=True)
    synth.speaker_table = SpeakerTable(("en-us+f3", "en-us+m1"), log_f0_mean=(math.log(220.0), math.log(110.0)))
    with app_client(ServeConfig(warm_up=False), synth) as multi:
        upload = multi.post("/v1/encode", files={"reference": ("a.wav", wav_file(reference_wav()), "audio/wav")})
        ref = upload.json()["reference_id"]
        ask = lambda **kw: multi.post("/v1/synthesize", json={"text": "Hi.", "seed": 1, "format": "json",
                                                               "include": ["f0"], **kw})
        assert_refused(ask(reference_id=ref, reference_speaker="nobody"), 422, "reference_speaker")
        assert "en-us+f3, en-us+m1" in ask(reference_id=ref, reference_speaker="nobody").json()["error"]["message"]
        assert_refused(ask(reference_speaker="en-us+f3"), 422, "reference_speaker")  # and no reference
        assert_refused(ask(reference_id=ref, speaker="en-us+m1", pitch_mode="absolute"), 422, "pitch_mode")
        relative, absolute = (ask(reference_id=ref, speaker="en-us+m1", reference_speaker="en-us+f3",
                                  pitch_mode=mode).json()["results"][0] for mode in ("relative", "absolute"))
        # absolute: the output voice's predicted F0 moved up by the register gap, one octave (x2)
        voiced = [(a, r) for a, r in zip(absolute["f0_hz"], relative["f0_hz"]) if r > 0]
        assert voiced and all(a == pytest.approx(2 * r, abs=0.15) for a, r in voiced)  # f0_hz: 0.1 Hz steps
        direct = synth.tts("Hi.", reference=reference_wav(), seed=1, speaker="en-us+m1",
                           reference_speaker="en-us+f3", pitch_mode="absolute")
        assert np.allclose(absolute["f0_hz"], direct.f0[0].numpy(), atol=0.06)
        walk = lambda name: multi.post("/v1/interpolate", json={"text": "Hi.", "reference_a": ref, "reference_b": ref,
                                                                "steps": 2, "seed": 1, "speaker": name})
        assert_refused(walk("nobody"), 422, "speaker")
        voices = [decoded(walk(name).json()["results"][0]) for name in synth.speakers]
        assert len(voices[0]) and not np.array_equal(voices[0], voices[1])


def test_n_samples_gives_different_draws_the_first_as_without_it(client):
    ask = lambda **kw: client.post("/v1/synthesize", json={"text": "Hi.", "seed": 5, "format": "json", **kw}).json()
    results = ask(n_samples=3)["results"]
    assert len(results) == 3 and len({r["audio_wav_base64"] for r in results}) == 3
    first, alone = decoded(results[0]), decoded(ask()["results"][0])
    # equal up to float rounding: three items run as one batch (as in test_batched_results_equal_unbatched_ones)
    assert first.shape == alone.shape and np.abs(first - alone).max() < 2e-3


def test_strength_zero_gives_the_prior_means_output(client, reference_id):
    def ask(**kw):
        body = client.post("/v1/synthesize", json={"text": "Hi.", "seed": 2, "format": "json", "include": ["z"],
                                                   **kw}).json()
        return body["results"][0]
    reference = lambda strength: ask(reference_id=reference_id, strength=strength)
    prior_mean = ask(temperature=0.0)  # no reference, no noise: z = 0
    assert prior_mean["z"] == [0.0] * 4
    assert reference(0.0)["z"] == [0.0] * 4
    assert reference(0.0)["audio_wav_base64"] == prior_mean["audio_wav_base64"]
    assert reference(1.0)["z"] != prior_mean["z"]
    half, full = np.array(reference(0.5)["z"]), np.array(reference(1.0)["z"])
    assert np.allclose(half, full / 2, atol=2e-5)


@pytest.fixture(scope="module")
def calibrated_client(calibrated_demo_checkpoint):
    synth = Synthesizer.from_checkpoint(calibrated_demo_checkpoint, vocoder="source-filter")
    with app_client(ServeConfig(), synth) as c:
        yield c


@pytest.mark.slow
def test_a_calibrated_model_offers_its_knobs_with_ranges(calibrated_client):
    card = calibrated_client.get("/v1/model").json()
    synth = calibrated_client.app.state.engine.synth
    assert card["calibration"]["n_utterances"] > 0 and card["server"]["calibrate_command"] is None
    knobs = card["server"]["knobs"]
    assert set(knobs) == {name for name, knob in synth.controls.items() if knob.path != "none"}
    rate = knobs["rate"]
    assert rate["path"] == "z" and rate["unit"] == "ratio" and rate["min"] < 1.0 == rate["default"] < rate["max"]
    assert rate["min"] < 0.9 and rate["max"] > 1.1  # a usable range


@pytest.mark.slow
def test_the_rate_knob_changes_the_duration_the_right_way(calibrated_client):
    rate = calibrated_client.get("/v1/model").json()["server"]["knobs"]["rate"]
    text = "Please bring the blue box to the kitchen tomorrow."
    ask = lambda **controls: duration(calibrated_client.post("/v1/synthesize", json={"text": text,
                                                                                     "controls": controls}))
    slower, neutral, faster = ask(rate=rate["min"]), ask(), ask(rate=rate["max"])
    assert slower > neutral > faster, (slower, neutral, faster)


@pytest.mark.slow
def test_unknown_and_out_of_range_controls_are_refused(calibrated_client):
    rate = calibrated_client.get("/v1/model").json()["server"]["knobs"]["rate"]
    ask = lambda controls: calibrated_client.post("/v1/synthesize", json={"text": "Hi.", "controls": controls})
    assert_refused(ask({"tempo": 1.0}), 422, "controls.tempo")
    for value in (rate["max"] * 1.05, rate["min"] * 0.95):
        response = ask({"pitch": 0.0, "rate": value})
        assert_refused(response, 422, "controls.rate")
        assert "outside its calibrated range" in response.json()["error"]["message"]
    assert ask({"rate": rate["max"]}).status_code == 200  # the range's ends are in it


# ------------------------------------------------------------------------------------ batching and the queue
def test_batched_results_equal_unbatched_ones():
    texts = ["The boat arrived.", "Did you see it?", "Bread, milk and honey!", "Hello."]
    with app_client(ServeConfig(max_batch=4, max_wait_ms=2000)) as c:
        answers = {}

        def ask(text):
            answers[text] = c.post("/v1/synthesize", json={"text": text, "seed": 7, "mode": "sample"})

        threads = [threading.Thread(target=ask, args=(t,)) for t in texts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        synth = c.app.state.engine.synth
        assert c.get("/healthz").json()["batch_sizes"] == {"4": 1}  # one batch of all four
        for text in texts:
            assert answers[text].headers["X-Batch-Size"] == "4"
            batched = sf.read(io.BytesIO(answers[text].content), dtype="float32")[0]
            alone = sf.read(io.BytesIO(_wav_bytes(synth.tts(text, seed=7).wav[0], SR)), dtype="float32")[0]
            # equal up to float rounding: a batched matmul may sum in another order (as in test_infer),
            # and the autoregressive decoder carries that rounding on, so single samples can move by a
            # few 1e-3 on one machine and not another; a batching bug (a mixed-up item, padding leaking
            # in) moves the whole signal, so the error is measured against the signal's energy
            assert batched.shape == alone.shape, text
            relative = np.sqrt(np.mean((batched - alone) ** 2) / np.mean(alone ** 2))
            assert relative < 1e-2, (text, relative)


def test_vocoder_processes_give_the_same_audio_as_vocoding_in_the_server():
    synth = make_synth(vocoder="griffin-lim")
    body = {"texts": ["The boat arrived.", "Hello."], "seed": 3}
    with app_client(ServeConfig(warm_up=False), synth) as here:
        expected = [decoded(r) for r in here.post("/v1/synthesize", json={**body, "format": "json"}).json()["results"]]
    with app_client(ServeConfig(warm_up=False, vocoder_processes=1), synth) as pooled:
        engine = pooled.app.state.engine
        got = [decoded(r) for r in pooled.post("/v1/synthesize", json={**body, "format": "json"}).json()["results"]]
        assert engine._pool is not None and len(engine._pool._processes) == 1  # it did go through the process
    assert len(got) == 2 and all(np.array_equal(a, b) for a, b in zip(got, expected))


def blocked(client: TestClient) -> tuple[threading.Event, threading.Event]:
    """Hold the model worker on its next batch until `release` is set; `taken` is set once the
    worker holds a batch (an empty queue alone does not say so: the request may not be queued yet)."""
    worker = client.app.state.engine.worker
    run, release, taken = worker.run_batch, threading.Event(), threading.Event()
    worker.run_batch = lambda payloads: (taken.set(), release.wait(30), run(payloads))[2]
    return release, taken


def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_full_queue_answers_429_with_retry_after():
    with app_client(ServeConfig(max_batch=1, max_queue=1)) as c:
        (release, taken), worker, answers = blocked(c), c.app.state.engine.worker, []
        ask = lambda: answers.append(c.post("/v1/synthesize", json={"text": "Hi."}).status_code)
        running = threading.Thread(target=ask)
        running.start()
        assert taken.wait(10)
        waiting = threading.Thread(target=ask)
        waiting.start()
        wait_until(lambda: worker.queue_length == 1)
        full = c.post("/v1/synthesize", json={"text": "Hi."})
        assert_refused(full, 429, "request")
        assert int(full.headers["Retry-After"]) >= 1
        release.set()
        running.join()
        waiting.join()
        assert answers == [200, 200]


def test_a_request_past_its_timeout_gets_504_and_frees_its_slot():
    with app_client(ServeConfig(max_batch=1, timeout_s=0.5)) as c:
        (release, taken), worker = blocked(c), c.app.state.engine.worker
        first = threading.Thread(target=lambda: c.post("/v1/synthesize", json={"text": "Hi."}))
        first.start()
        assert taken.wait(10)
        assert_refused(c.post("/v1/synthesize", json={"text": "Hi."}), 504, "timeout_s")
        assert worker.queue_length == 0
        release.set()
        first.join()


def test_a_client_that_hangs_up_frees_its_slot():
    """A real server (uvicorn, in a thread): the request's socket closes while it waits in the queue."""
    app = build_app(make_synth(), ServeConfig(max_batch=1))
    worker = app.state.engine.worker
    run, release = worker.run_batch, threading.Event()
    worker.run_batch = lambda payloads: (release.wait(30), run(payloads))[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started)
        body = b'{"text": "Hi."}'
        request = (b"POST /v1/synthesize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        holder, queued = socket.create_connection(("127.0.0.1", port)), socket.create_connection(("127.0.0.1", port))
        holder.sendall(request)  # the worker takes this one and blocks
        wait_until(lambda: worker.queue_length == 0 and sum(worker.batch_sizes.values()) == 0)
        time.sleep(0.2)
        queued.sendall(request)
        wait_until(lambda: worker.queue_length == 1)
        queued.close()  # hang up while queued
        wait_until(lambda: worker.queue_length == 0, seconds=5)
        release.set()
        holder.settimeout(30)
        assert holder.recv(12).startswith(b"HTTP/1.1 200")
        holder.close()
        wait_until(lambda: worker.batch_sizes == {1: 1})  # the hung-up request never ran
    finally:
        release.set()
        server.should_exit = True
        thread.join(10)


def test_worker_batches_by_key_up_to_max_batch_and_isolates_a_failure():
    seen = []

    def run_batch(payloads):
        seen.append(list(payloads))
        if "bad" in payloads:
            raise AudioError("bad payload")
        return [p.upper() for p in payloads]

    worker = BatchWorker(run_batch, max_batch=3, max_wait_s=0.5, max_queue=10)
    try:
        jobs = [worker.submit("k", p) for p in ("a", "bad", "c", "d")] + [worker.submit("other", "e")]
        assert [j.future.result(5) if p != "bad" else None for j, p in zip(jobs, "a bad c d e".split())] == [
            "A", None, "C", "D", "E"]
        with pytest.raises(AudioError):
            jobs[1].future.result()
        assert seen[0] == ["a", "bad", "c"] and ["a"] in seen and ["c"] in seen  # retried alone
        assert all(len(batch) <= 3 for batch in seen) and ["e"] in seen
    finally:
        worker.close()


def test_worker_queue_is_bounded_and_cancel_frees_a_slot():
    release = threading.Event()
    worker = BatchWorker(lambda payloads: (release.wait(10), payloads)[1], max_batch=1, max_wait_s=0, max_queue=1)
    try:
        running = worker.submit(None, 1)
        wait_until(lambda: worker.queue_length == 0)
        waiting = worker.submit(None, 2)
        with pytest.raises(QueueFull) as full:
            worker.submit(None, 3)
        assert full.value.retry_after_s >= 1
        assert worker.cancel(waiting) and waiting.future.cancelled() and not worker.cancel(running)
        worker.submit(None, 4)  # the slot is free again
        release.set()
        assert running.future.result(5) == 1
    finally:
        release.set()
        worker.close()


def test_the_model_is_warmed_up_once_at_start():
    synth = make_synth()
    calls = []
    tts = synth.tts
    synth.tts = lambda *args, **kwargs: (calls.append(args[0]), tts(*args, **kwargs))[1]
    with app_client(synth=synth) as c:
        assert len(calls) == 1 and c.get("/healthz").json()["batch_sizes"] == {}  # warm-up is not a client batch
        c.post("/v1/synthesize", json={"text": "Hi."})
        assert len(calls) == 2


# ------------------------------------------------------------------------------------ deployment defaults
def test_bearer_token_cors_and_the_default_host():
    with app_client(ServeConfig(token="s3cret")) as c:
        assert_refused(c.get("/v1/model"), 401, "authorization")
        assert_refused(c.get("/v1/model", headers={"Authorization": "Bearer wrong"}), 401, "authorization")
        assert c.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200  # the page asks for it
        assert "access-control-allow-origin" not in c.get("/healthz", headers={"Origin": "https://x.org"}).headers
    with app_client(ServeConfig(cors_origins=("https://x.org",))) as c:
        assert c.get("/healthz", headers={"Origin": "https://x.org"}).headers["access-control-allow-origin"] == \
            "https://x.org"
    args = build_parser().parse_args(["serve", "--checkpoint", "c.pt"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.token is None and args.cors_origin == []


def test_the_page_and_its_assets_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    static = REPO / "prosody_vae" / "serve" / "static"
    for path in static.iterdir():
        text = path.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, f"{path.name} loads something remote"
        assert client.get(f"/static/{path.name}").status_code == 200


# ------------------------------------------------------------------------------------ the load test
def micro_checkpoint(path: Path) -> Path:
    synth = make_synth()
    return save_checkpoint(path, {"model": synth.model.state_dict(), "config": config_to_dict(synth.config)})


@pytest.mark.slow
def test_load_test_script_runs_with_no_errors(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the server subprocess imports this checkout
    import load_test

    checkpoint = micro_checkpoint(tmp_path / "micro.pt")
    reports = load_test.main(["--checkpoint", str(checkpoint), "--clients", "1", "4", "--requests", "3",
                              "--seconds", "60", "--server-args", "--max-batch 4 --max-wait-ms 50 --max-queue 8",
                              "--json", str(tmp_path / "load.json")])
    assert [r.clients for r in reports] == [1, 4]
    assert all(r.errors == 0 and r.rejected_429 == 0 for r in reports), [r.error_samples for r in reports]
    assert [r.requests_ok for r in reports] == [3, 12]
    assert sum(int(size) * n for size, n in reports[1].batch_sizes.items()) == 12
    assert (tmp_path / "load.json").is_file()


def test_a_voice_enrolled_over_http_is_a_reference_speaker_with_its_own_register():
    from test_enrolment import steady_tone

    synth = make_synth(n_speakers=2, speaker_dim=4, pitch_head=True)
    synth.speaker_table = SpeakerTable(("en-us+f3", "en-us+m1"), log_f0_mean=(math.log(220.0), math.log(110.0)))
    with app_client(ServeConfig(warm_up=False), synth) as multi:
        upload = lambda wav: multi.post("/v1/encode", files={"reference": ("a.wav", wav_file(wav), "audio/wav")}
                                        ).json()["reference_id"]
        takes = [upload(steady_tone(165.0 + i, SR)) for i in range(2)]
        ask = lambda **kw: multi.post("/v1/synthesize", json={"text": "Hi.", "seed": 1, "format": "json",
                                                               "include": ["f0"], "reference_id": takes[0],
                                                               "speaker": "en-us+m1", **kw})
        refused = ask(reference_speaker="me")
        assert_refused(refused, 422, "reference_speaker")
        assert "enrolled: none" in refused.json()["error"]["message"]
        assert_refused(multi.post("/v1/speakers", json={"name": "en-us+m1", "reference_ids": takes}), 422, "name")
        assert_refused(multi.post("/v1/speakers", json={"name": "me", "reference_ids": ["nope"]}), 404,
                       "reference_ids[0]")
        short = upload(steady_tone(165.0, SR, 0.5))
        assert_refused(multi.post("/v1/speakers", json={"name": "me", "reference_ids": [short]}), 422, "reference_ids")
        enrolled = multi.post("/v1/speakers", json={"name": "me", "reference_ids": takes})
        assert enrolled.status_code == 200, enrolled.text
        assert enrolled.json()["f0_mean_hz"] == pytest.approx(165.5, rel=0.01)
        assert multi.get("/v1/model").json()["server"]["enrolled"] == {"me": enrolled.json()["f0_mean_hz"]}
        relative, absolute = (ask(reference_speaker="me", pitch_mode=mode).json()["results"][0]
                              for mode in ("relative", "absolute"))
        voiced = [(a, r) for a, r in zip(absolute["f0_hz"], relative["f0_hz"]) if r > 0]
        gain = synth.enrolments["me"].f0_mean_hz / 110.0  # the enrolled register over the target voice's
        assert voiced and all(a == pytest.approx(gain * r, abs=0.15) for a, r in voiced)
        # reference_level: louder than the enrolment by 6 dB, so is the output
        assert_refused(ask(reference_level=True), 422, "reference_level")  # no reference_speaker
        louder = upload(2 * steady_tone(165.0, SR))
        mel = lambda level: np.asarray(ask(reference_id=louder, reference_speaker="me", reference_level=level,
                                           include=["mel"]).json()["results"][0]["mel"])
        assert np.allclose(mel(True) - mel(False), 20 * math.log10(2) * math.log(10) / 20, atol=0.02)
