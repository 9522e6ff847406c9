"""The serving engine: a `Synthesizer` behind one batching model worker, and what a request becomes.

A synthesis request turns into one job per seed. Jobs that differ only in their texts share a key,
so the worker may run them as one `Synthesizer.tts` batch; since every item draws its noise from
its own (seed, text) generator, an item's audio is the same alone or in any batch. Requests that
ask for `n_samples` run alone: their results come back in the order `tts` gives them.

Knobs come from the model's calibration (`Synthesizer.controls`): the model card lists each
usable knob with its unit and range, for the page's sliders, and a request's controls are checked
against them before queueing, as is a `speaker` against the model's speaker table.

Audio is vocoded per item after `tts(vocode=False)`, outside the model worker (`vocode`, called
from the request's own thread, which hands the work to the vocoder processes when there are some:
`prosody-vae serve` starts one): by the Synthesizer's own vocoder, or by the one a request names
(loaded once per name). The vocoder costs about as much CPU per item as the whole batched decode
(benchmarks/load_test.py), so vocoding in the worker would serialise it; outside, the vocoding of
one batch overlaps the decoding of the next, and uses the other cores.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from ..audio.mel import AudioConfig
from ..inference.knobs import KNOBS, calibrate_command
from ..plugin.errors import CheckpointError, ConfigError, ControlError, ProsodyVAEError, ReferenceInputError, RequestError, TextError
from ..vocoders.registry import available_vocoders, load_vocoder, run_vocoder
from .batching import BatchWorker
from .schemas import InterpolateRequest, SynthesizeRequest
from .uploads import ReferenceStore

WARM_UP_TEXT = "Warm up the model."


@dataclass
class ServeConfig:
    """Settings of `prosody-vae serve`: the queue, the batcher and the per-request limits."""

    max_batch: int = 8  # items per model batch
    max_wait_ms: float = 10.0  # how long the first job of a batch waits for companions
    max_queue: int = 32  # jobs waiting; beyond it, 429 with Retry-After
    timeout_s: float = 60.0  # per request, queueing included; then 504
    max_text_chars: int = 400
    max_items: int = 16  # results per request: texts x seeds x n_samples
    max_upload_bytes: int = 10 * 2**20  # any request body; checked before reading it
    max_references: int = 64  # uploads kept by id
    token: Optional[str] = None  # a bearer token every /v1 request must carry
    cors_origins: tuple[str, ...] = ()  # none: no CORS headers at all
    warm_up: bool = True
    # torch intra-op threads of `serve()`: the server's parallelism is the model worker beside the
    # requests' vocoding threads, and intra-op threads on top of those wait on each other (on a
    # busy 2-core machine, 2 threads made a batch-1 decode 36x slower: benchmarks/serve_profile.py)
    threads: int = 1
    # processes that vocode (0: the request threads do). The source-filter vocoder is many small
    # torch and numpy calls that hold the GIL, so vocoding threads share one core with the model
    # worker; in a process of its own it runs beside the decoding (benchmarks/README.md, serving)
    vocoder_processes: int = 0

    def __post_init__(self):
        for name in ("max_batch", "max_queue", "max_text_chars", "max_items", "max_upload_bytes", "max_references",
                     "threads"):
            if not getattr(self, name) >= 1:
                raise ConfigError(f"ServeConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.vocoder_processes < 0:
            raise ConfigError(f"ServeConfig.vocoder_processes must be >= 0, got {self.vocoder_processes!r}")
        if not (self.max_wait_ms >= 0 and self.timeout_s > 0):
            raise ConfigError(f"ServeConfig needs max_wait_ms >= 0 and timeout_s > 0, got "
                              f"{self.max_wait_ms!r} and {self.timeout_s!r}")


@dataclass(frozen=True)
class Prosody:
    """What a job asks of `Synthesizer.tts` besides its texts (tts's arguments of the same names).
    `interpolate`: the two ends' reference audio, spoken from a's posterior mean to b's."""

    reference: Optional[np.ndarray] = None
    reference_text: Optional[str] = None
    mode: str = "mean"
    temperature: float = 1.0
    seed: Optional[int] = None
    n_samples: int = 1
    strength: float = 1.0
    controls: Mapping[str, float] = field(default_factory=dict)
    speaker: Optional[str] = None
    reference_speaker: Optional[str] = None
    pitch_mode: str = "relative"
    reference_range: bool = False
    reference_level: bool = False
    interpolate: Optional[tuple[np.ndarray, np.ndarray]] = None


@dataclass
class TTSJob:
    texts: list[str]
    prosody: Prosody
    vocoder: Optional[str]  # None: the Synthesizer's own


@dataclass
class Rendered:
    """One result: audio (N,) float32, mel (T, n_mels), F0 (T,) Hz or None, alignment (S, L), z (latent,)."""

    wav: Optional[np.ndarray]  # None until vocoded
    mel: torch.Tensor
    f0: Optional[torch.Tensor]
    alignment: torch.Tensor
    z: torch.Tensor
    stop_step: int
    hit_max_steps: bool
    seed: Optional[int] = None
    vocoder: Optional[str] = None  # None: the Synthesizer's own
    batch_size: int = field(default=0)


class SynthesisEngine:
    def __init__(self, synth, config: ServeConfig | None = None):
        self.synth = synth
        self.config = config or ServeConfig()
        self.references = ReferenceStore(self.config.max_references)
        self._vocoders: dict[str, Any] = {}
        self._vocoder_lock = threading.Lock()
        self.worker = BatchWorker(self._run_batch, self.config.max_batch, self.config.max_wait_ms / 1000,
                                  self.config.max_queue)
        self._pool = None
        if self.config.vocoder_processes:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.config.vocoder_processes, multiprocessing.get_context("spawn"),
                                             initializer=torch.set_num_threads, initargs=(1,))
        if self.config.warm_up:  # the first batch pays for lazy allocations; not a client
            self.vocode(self.worker.submit(None, TTSJob([WARM_UP_TEXT], Prosody(), None)).future.result())
            self.worker.batch_sizes.clear()

    @property
    def sample_rate(self) -> int:
        return self.synth.audio.sample_rate

    def close(self) -> None:
        self.worker.close()
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    # ----------------------------------------------------------------------------- the model card
    def model_card(self) -> dict[str, Any]:
        """`Synthesizer.model_card()`, plus what this server offers: vocoders, limits, and the
        sliders of the calibrated knobs (none on an uncalibrated model, and the command that
        calibrates it)."""
        card = self.synth.model_card().to_dict()
        default_vocoder = getattr(self.synth.vocoder, "name", None) or (
            "griffin-lim" if self.synth.vocoder is None else type(self.synth.vocoder).__name__)
        card["server"] = {
            "sample_rate": self.sample_rate,
            "vocoder": default_vocoder,
            "vocoders": self.usable_vocoders(),
            "knobs": {name: {"min": knob.minimum, "max": knob.maximum, "default": KNOBS[name].neutral,
                             "unit": knob.unit, "path": knob.path}
                      for name, knob in self.synth.controls.items() if knob.path != "none"},
            "enrolled": {name: round(e.f0_mean_hz, 2) for name, e in sorted(self.synth.enrolments.items())},
            "calibrate_command": None if self.synth.calibration else calibrate_command(self.synth.checkpoint),
            "limits": {k: v for k, v in asdict(self.config).items()
                       if k in ("max_text_chars", "max_items", "max_upload_bytes", "timeout_s")}
                      | {"max_reference_seconds": self.synth.max_reference_seconds},
        }
        return card

    def usable_vocoders(self) -> list[str]:
        """Installed vocoders that can voice this model's mels (the HiFi-GANs read only their own
        mel convention; the source-filter vocoder needs a pitch head's F0)."""
        pitch, hifigan_mels = bool(self.synth.config.model.pitch_head), self.synth.audio == AudioConfig()
        return [name for name in available_vocoders()
                if (pitch or name != "source-filter") and (hifigan_mels or not name.startswith("hifigan"))]

    # ----------------------------------------------------------------------------- checks
    def check_text(self, text: str, field_name: str) -> None:
        if len(text) > self.config.max_text_chars:
            raise RequestError(field_name, f"{len(text)} characters is over the limit of "
                                           f"{self.config.max_text_chars}; split the text")
        try:
            self.synth.text.encode(text)
        except TextError as exc:
            raise RequestError(field_name, str(exc)) from None

    def vocoder(self, name: Optional[str]):
        """The vocoder a request names, loaded once; None stands for the Synthesizer's own."""
        if name is None:
            return None
        usable = self.usable_vocoders()
        if name not in usable:
            raise RequestError("vocoder", f"unknown or unusable vocoder {name!r} for this model; "
                                          f"usable: {', '.join(usable)}")
        with self._vocoder_lock:
            if name not in self._vocoders:
                try:
                    self._vocoders[name] = load_vocoder(name, device=self.synth.device, audio=self.synth.audio)
                except ConfigError as exc:
                    raise RequestError("vocoder", str(exc)) from None
            return self._vocoders[name]

    def check_controls(self, controls: dict[str, float]) -> None:
        """Each knob by itself, as `tts` would check it (name, calibration, range, path), so the
        refusal names `controls.<knob>`."""
        for name, value in controls.items():
            try:
                self.synth.control_paths({name: value})  # tts's own check
            except ControlError as exc:
                raise RequestError(f"controls.{name}", str(exc)) from None

    def check_speaker(self, speaker: str, field: str = "speaker") -> None:
        """A voice of the model; for `reference_speaker` an enrolled speaker too (POST /v1/speakers)."""
        known = self.synth.speakers
        enrolled = list(self.synth.enrolments) if field == "reference_speaker" else []
        if speaker in known or speaker in enrolled:
            return
        if not known and not enrolled:
            raise RequestError(field, f"this is a single-speaker model: leave `{field}` out"
                                      + (" (or enroll the reference's speaker: POST /v1/speakers)"
                                         if field == "reference_speaker" else ""))
        raise RequestError(field, f"unknown speaker {speaker!r}; known: {', '.join(known) or 'none'}"
                                  + (f"; enrolled: {', '.join(enrolled) or 'none'} (POST /v1/speakers enrolls one)"
                                     if field == "reference_speaker" else ""))

    def enroll(self, name: str, reference_ids: list[str]) -> dict[str, Any]:
        """Enroll a reference speaker from earlier uploads (`Synthesizer.enroll`), stored beside the
        checkpoint; what was measured."""
        recordings = [self.references.get(rid, f"reference_ids[{i}]") for i, rid in enumerate(reference_ids)]
        try:
            enrolment = self.synth.enroll(name, recordings)
        except CheckpointError as exc:  # the file beside the checkpoint could not be written: ours, not theirs
            raise RequestError("name", str(exc), 500) from None
        except ProsodyVAEError as exc:
            raise RequestError("reference_ids" if exc.field == "recordings" else exc.field or "name", str(exc)) from None
        return {**asdict(enrolment), "f0_mean_hz": round(enrolment.f0_mean_hz, 2)}

    # ----------------------------------------------------------------------------- jobs
    def synthesis_jobs(self, request: SynthesizeRequest, reference: Optional[np.ndarray],
                       reference_key: Optional[str]) -> list[tuple[Any, TTSJob, int]]:
        """(key, job, items) per seed, each checked: a bad request fails here, before any queueing."""
        if (request.text is None) == (request.texts is None):
            raise RequestError("text", "give exactly one of `text` and `texts`")
        if request.seed is not None and request.seeds is not None:
            raise RequestError("seeds", "give at most one of `seed` and `seeds`")
        texts = request.all_texts
        for i, text in enumerate(texts):
            self.check_text(text, "text" if request.text is not None else f"texts[{i}]")
        if request.reference_text is not None:
            if reference is None:
                raise RequestError("reference_text", "a reference transcript needs a reference")
            self.check_text(request.reference_text, "reference_text")
        self.check_controls(request.controls)
        for name in ("speaker", "reference_speaker"):
            if getattr(request, name) is not None:
                self.check_speaker(getattr(request, name), name)
        if request.reference_speaker is not None and reference is None:
            raise RequestError("reference_speaker", "who speaks the reference needs a reference")
        if request.pitch_mode == "absolute":
            try:  # tts's own check
                self.synth.absolute_pitch_shift(self.synth.speaker_ids(request.speaker, 1), request.reference_speaker, 1)
            except ProsodyVAEError as exc:
                raise RequestError("pitch_mode", str(exc)) from None
        if request.reference_range:
            try:  # tts's own check
                self.synth.check_reference_range(reference)
            except ProsodyVAEError as exc:
                raise RequestError("reference_range", str(exc)) from None
        if request.reference_level:
            try:  # tts's own check
                self.synth.check_reference_level(reference, request.reference_speaker)
            except ProsodyVAEError as exc:
                raise RequestError("reference_level", str(exc)) from None
        seeds = request.seeds if request.seeds is not None else [request.seed]
        items = len(texts) * len(seeds) * request.n_samples
        if items > self.config.max_items:
            too_many = "seeds" if request.seeds else "n_samples" if request.n_samples > 1 else "texts"
            raise RequestError(too_many, f"this request asks for {items} results; the limit is {self.config.max_items}")
        if request.format == "wav" and items > 1:
            raise RequestError("format", f"a wav holds one result and this request makes {items}; ask for "
                                         "format \"json\"")
        self.vocoder(request.vocoder)  # refused now, not in the worker
        jobs = []
        for seed in seeds:
            prosody = Prosody(reference, request.reference_text, request.mode, request.temperature, seed,
                              request.n_samples, request.strength, request.controls, request.speaker,
                              request.reference_speaker, request.pitch_mode, request.reference_range,
                              request.reference_level)
            # a batch shares every argument but the texts; n_samples results come back in tts's order
            key = None if request.n_samples > 1 else (
                reference_key, request.reference_text, request.mode, request.temperature, seed,
                request.strength, tuple(sorted(request.controls.items())), request.speaker,
                request.reference_speaker, request.pitch_mode, request.reference_range, request.reference_level)
            jobs.append((key, TTSJob(texts, prosody, request.vocoder), items // len(seeds)))
        return jobs

    def interpolation_job(self, request: InterpolateRequest) -> TTSJob:
        self.check_text(request.text, "text")
        self.vocoder(request.vocoder)
        ends = tuple(self.references.get(getattr(request, name), name) for name in ("reference_a", "reference_b"))
        if request.speaker is not None:
            self.check_speaker(request.speaker)
        # the ends' posterior means are encoded in the worker, like every other use of the model
        return TTSJob([request.text] * request.steps, Prosody(seed=request.seed, speaker=request.speaker,
                                                              interpolate=ends), request.vocoder)

    def encode_job(self, wav: np.ndarray, reference_text: Optional[str]) -> Callable[[], dict[str, Any]]:
        if reference_text is not None:
            self.check_text(reference_text, "reference_text")

        def encode() -> dict[str, Any]:
            posterior = self.synth.encode(wav, reference_text)
            return {"mean": posterior.mean[0].tolist(), "std": posterior.std[0].tolist(),
                    "kl_nats": float(posterior.kl[0]), "kl_per_dim": posterior.kl_per_dim[0].tolist()}
        return encode

    # ----------------------------------------------------------------------------- the worker
    def _run_batch(self, payloads: list[Any]) -> list[Any]:
        if callable(payloads[0]):  # encode: always alone
            return [payloads[0]()]
        texts = [text for job in payloads for text in job.texts]
        p = payloads[0].prosody  # a batch shares it (synthesis_jobs' key)
        z = None
        if p.interpolate is not None:
            means = self.synth.encode(list(p.interpolate)).mean  # (2, latent)
            weights = torch.linspace(0, 1, len(texts), device=self.synth.device)[:, None]
            z = (1 - weights) * means[0] + weights * means[1]  # (steps, latent)
        result = self.synth.tts(texts, reference=p.reference, reference_text=p.reference_text, z=z, mode=p.mode,
                                temperature=p.temperature, seed=p.seed, n_samples=p.n_samples, strength=p.strength,
                                controls=p.controls, speaker=p.speaker, reference_speaker=p.reference_speaker,
                                pitch_mode=p.pitch_mode, reference_range=p.reference_range,
                                reference_level=p.reference_level, vocode=False)
        per_text = len(result.mel) // len(texts)  # n_samples results per text (1 unless asked)
        out, start = [], 0
        for job in payloads:
            count = len(job.texts) * per_text
            out.append([Rendered(wav=None, mel=result.mel[i], f0=result.f0[i] if result.f0 else None,
                                 alignment=result.alignment[i], z=result.z[i], stop_step=int(result.stop_step[i]),
                                 hit_max_steps=bool(result.hit_max_steps[i]), seed=job.prosody.seed,
                                 vocoder=job.vocoder) for i in range(start, start + count)])
            start += count
        return out

    def vocode(self, results: list[Rendered]) -> list[Rendered]:
        """Fill in each result's audio (N,) float32: here, or in the vocoder processes when there
        are some and the vocoder is one they can load by name."""
        pending = []
        for r in results:
            vocoder = self.vocoder(r.vocoder)
            name = r.vocoder or getattr(self.synth.vocoder, "name", None)
            if self._pool is not None and name in available_vocoders() and self.synth.device.type == "cpu":
                f0 = None if r.f0 is None else r.f0.cpu().numpy()
                pending.append((r, self._pool.submit(_vocode_by_name, name, self.synth.audio, r.mel.cpu().numpy(), f0)))
                continue
            r.wav = (self.synth.vocode(r.mel, r.f0) if vocoder is None
                     else run_vocoder(vocoder, r.mel, r.f0).float().cpu().numpy())
        for r, future in pending:
            r.wav = future.result()
        return results


_PROCESS_VOCODERS: dict[str, Any] = {}  # a vocoder process's own, loaded on first use


def _vocode_by_name(name: str, audio: AudioConfig, mel: np.ndarray, f0: Optional[np.ndarray]) -> np.ndarray:
    """In a vocoder process: mel (T, n_mels), F0 (T,) Hz or None -> audio (N,) float32."""
    if name not in _PROCESS_VOCODERS:
        _PROCESS_VOCODERS[name] = load_vocoder(name, audio=audio)
    f0 = None if f0 is None else torch.from_numpy(f0)
    return run_vocoder(_PROCESS_VOCODERS[name], torch.from_numpy(mel), f0).float().numpy()


# where an error that names no argument points: the part of a request that type of error is about
_FIELD_OF_ERROR = ((TextError, "text"), (ReferenceInputError, "reference"), (ControlError, "controls"))


def request_error(exc: ProsodyVAEError) -> RequestError:
    """A Synthesizer error as a RequestError naming the argument the error carries as its `field`
    (tts's arguments and the request's fields share their names), else the part of the request
    its type is about. The message is passed on as it is, never read."""
    if isinstance(exc, RequestError):
        return exc
    field = exc.field or next((name for kind, name in _FIELD_OF_ERROR if isinstance(exc, kind)), "request")
    message = str(exc)
    return RequestError(field, message.removeprefix(f"{field}: "))
