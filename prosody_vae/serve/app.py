"""The HTTP API and the page: a FastAPI app around a `SynthesisEngine`.

    GET  /                 the page (static files, served from this package: no CDN, no build step)
    GET  /healthz          liveness, queue length and the batch sizes formed so far
    GET  /v1/model         the model card, and what this server offers
    POST /v1/synthesize    JSON, or multipart (`options` JSON + a `reference` file) -> WAV or JSON
    POST /v1/encode        multipart `reference` (+ `reference_text`), or JSON {reference_id} -> posterior
    POST /v1/interpolate   JSON: a text spoken from one reference's prosody to another's
    POST /v1/speakers      JSON {name, reference_ids}: enroll a reference speaker the model never heard
    GET  /openapi.json     the API description (and /docs)

Every refusal is a 4xx whose JSON body names the field: {"error": {"field", "message", "type"}}.
A request waits for the model worker at most `timeout_s` (then 504); a client that hangs up while
waiting gives its queue slot back; a full queue answers 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..plugin.errors import ProsodyVAEError, RequestError
from ..version import __version__
from .batching import Job, QueueFull
from .engine import Rendered, ServeConfig, SynthesisEngine, request_error
from .schemas import EncodeRequest, EnrollRequest, InterpolateRequest, SynthesizeRequest
from .uploads import decode_upload

STATIC = Path(__file__).parent / "static"


def create_app(engine: SynthesisEngine) -> FastAPI:
    config = engine.config

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.close()

    app = FastAPI(title="prosody_vae", version=__version__, lifespan=lifespan,
                  description="Controllable prosody: synthesise text in the prosody of a reference, or of "
                              "a sample, and turn the knobs.")
    app.state.engine = engine
    app.add_middleware(BodyLimit, max_bytes=config.max_upload_bytes)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    _add_error_handlers(app)
    authorized = [Depends(_bearer(config.token))]

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        worker = engine.worker
        return {"status": "ok", "queue_length": worker.queue_length, "max_queue": worker.max_queue,
                "batch_sizes": {str(size): n for size, n in sorted(worker.batch_sizes.items())},
                "references": len(engine.references)}

    @app.get("/v1/model", dependencies=authorized)
    async def model() -> dict[str, Any]:
        return engine.model_card()

    @app.post("/v1/synthesize", dependencies=authorized, openapi_extra=_two_bodies(SynthesizeRequest, "options"),
              responses={200: {"content": {"audio/wav": {}, "application/json": {}},
                               "description": "the audio (format wav), or JSON with base64 WAVs and extras"}})
    async def synthesize(request: Request) -> Response:
        body, upload = await _read(request, SynthesizeRequest, "options")
        reference = reference_key = None
        if upload is not None:
            reference_key = engine.references.add(upload)
            reference = upload
        elif body.reference_id is not None:
            reference, reference_key = engine.references.get(body.reference_id), body.reference_id
        specs = engine.synthesis_jobs(body, reference, reference_key)
        jobs = await _run(request, specs)
        results = await run_in_threadpool(engine.vocode, [_with_batch(r, job) for job in jobs
                                                          for r in _result(job)])
        if body.format == "wav":
            (result,) = results
            return Response(_wav_bytes(result.wav, engine.sample_rate), media_type="audio/wav", headers={
                "X-Duration-Seconds": f"{len(result.wav) / engine.sample_rate:.6f}",
                "X-Batch-Size": str(result.batch_size), "X-Hit-Max-Steps": str(result.hit_max_steps).lower(),
                **({"X-Reference-Id": reference_key} if reference_key else {})})
        return JSONResponse({"sample_rate": engine.sample_rate, "reference_id": reference_key, "texts": body.all_texts,
                             "results": [_as_json(r, engine.sample_rate, body.include) for r in results]})

    @app.post("/v1/encode", dependencies=authorized, openapi_extra=_two_bodies(EncodeRequest, None))
    async def encode(request: Request) -> dict[str, Any]:
        body, upload = await _read(request, EncodeRequest, None)
        if upload is not None:
            wav, reference_id, reference_text = upload, engine.references.add(upload), body.reference_text
        else:
            wav, reference_id, reference_text = (engine.references.get(body.reference_id), body.reference_id,
                                                 body.reference_text)
        (job,) = await _run(request, [(None, engine.encode_job(wav, reference_text), 1)])
        return {"reference_id": reference_id, "duration_s": len(wav) / engine.sample_rate, **_result(job)}

    @app.post("/v1/interpolate", dependencies=authorized)
    async def interpolate(body: InterpolateRequest, request: Request) -> dict[str, Any]:
        (job,) = await _run(request, [(None, engine.interpolation_job(body), body.steps)])
        results = await run_in_threadpool(engine.vocode, [_with_batch(r, job) for r in _result(job)])
        return {"sample_rate": engine.sample_rate,
                "results": [_as_json(r, engine.sample_rate, body.include) for r in results]}

    @app.post("/v1/speakers", dependencies=authorized)
    async def enroll(body: EnrollRequest) -> dict[str, Any]:
        return await run_in_threadpool(engine.enroll, body.name, body.reference_ids)  # pitch tracking: seconds

    return app


# --------------------------------------------------------------------------------- requests
async def _read(request: Request, model: type[BaseModel], options_field: Optional[str]
                ) -> tuple[Any, Optional[np.ndarray]]:
    """The request's options (JSON body, or a multipart form) and its decoded upload, if any."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        return _validate(model, await request.body()), None
    if not content_type.startswith("multipart/form-data"):
        raise RequestError("content-type", f"expected application/json or multipart/form-data, got "
                                           f"{content_type or 'none'!r}", 415)
    form = await request.form(max_files=1, max_fields=4)
    upload = form.get("reference")
    if upload is None or isinstance(upload, str):
        raise RequestError("reference", "the multipart form needs a `reference` file")
    if options_field is None:  # every other field is an option
        fields = {k: v for k, v in form.items() if k != "reference"}
        body = _validate(model, fields | {"reference_id": "upload"})
    else:
        body = _validate(model, form.get(options_field) or "{}")
    engine: SynthesisEngine = request.app.state.engine
    wav = await run_in_threadpool(decode_upload, await upload.read(), engine.synth.audio,
                                  engine.synth.max_reference_seconds)
    return body, wav


def _validate(model: type[BaseModel], data: bytes | str | dict) -> Any:
    try:
        return model.model_validate(data) if isinstance(data, dict) else model.model_validate_json(data)
    except ValidationError as exc:
        raise _validation_error(exc.errors()) from None


def _validation_error(errors: Sequence[dict]) -> RequestError:
    """Pydantic's first complaint as a RequestError naming the field (`texts[1]`, `controls.rate`)."""
    first = errors[0]
    if first["type"] == "json_invalid":
        return RequestError("body", f"malformed JSON ({first.get('ctx', {}).get('error', first['msg'])})", 400)
    loc = [part for part in first["loc"] if part != "body"]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "body"
    message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
    return RequestError(field, message, 400 if field == "body" else 422)


async def _run(request: Request, specs: list[tuple[Any, Any, int]]) -> list[Job]:
    """Queue the jobs and wait for all of them: at most timeout_s, and only while the client is there."""
    engine: SynthesisEngine = request.app.state.engine
    jobs: list[Job] = []
    try:
        for key, payload, size in specs:
            jobs.append(engine.worker.submit(key, payload, size))
    except QueueFull:
        for job in jobs:
            engine.worker.cancel(job)
        raise
    results = asyncio.ensure_future(asyncio.gather(*(asyncio.wrap_future(job.future) for job in jobs)))
    gone = asyncio.ensure_future(_disconnect(request))
    done, _ = await asyncio.wait({results, gone}, timeout=engine.config.timeout_s, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if results in done:
        results.result()  # raises a job's error
        return jobs
    for job in jobs:
        engine.worker.cancel(job)
    results.cancel()
    if gone in done:
        raise ClientGone()
    raise RequestError("timeout_s", f"no result within the server's {engine.config.timeout_s:g} s; the queue "
                                    "may be long (retry later) or the request too large", 504)


async def _disconnect(request: Request) -> None:
    """Returns when the client hangs up (the body has been read, so only a disconnect can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class ClientGone(Exception):
    """The client hung up while its request waited."""


def _result(job: Job) -> Any:
    try:
        return job.future.result()
    except ProsodyVAEError as exc:
        raise request_error(exc) from None


def _with_batch(result: Rendered, job: Job) -> Rendered:
    result.batch_size = job.batch_size
    return result


# --------------------------------------------------------------------------------- answers
def _wav_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wav, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _as_json(result: Rendered, sample_rate: int, include: Sequence[str]) -> dict[str, Any]:
    out = {"audio_wav_base64": base64.b64encode(_wav_bytes(result.wav, sample_rate)).decode("ascii"),
           "duration_s": len(result.wav) / sample_rate, "stop_step": result.stop_step,
           "hit_max_steps": result.hit_max_steps, "seed": result.seed, "batch_size": result.batch_size}
    rounded = lambda tensor, digits: np.round(tensor.detach().cpu().numpy().astype(np.float64), digits).tolist()
    if "f0" in include:
        out["f0_hz"] = None if result.f0 is None else rounded(result.f0, 1)  # (T,)
    if "alignment" in include:
        out["alignment"] = rounded(result.alignment, 3)  # (decoder steps, characters)
    if "z" in include:
        out["z"] = rounded(result.z, 5)  # (latent,)
    if "mel" in include:
        out["mel"] = rounded(result.mel, 2)  # (T, n_mels)
    return out


def _error(status: int, field: str, message: str, kind: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "message": message, "type": kind}}, status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, exc.field, exc.message, "RequestError")

    @app.exception_handler(ProsodyVAEError)
    async def model_refused(request: Request, exc: ProsodyVAEError) -> JSONResponse:
        error = request_error(exc)
        return _error(error.status, error.field, error.message, type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = _validation_error(exc.errors())
        return _error(error.status, error.field, error.message, "ValidationError")

    @app.exception_handler(QueueFull)
    async def full(request: Request, exc: QueueFull) -> JSONResponse:
        return _error(429, "request", str(exc), "QueueFull", {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(ClientGone)
    async def gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; nginx's code for "client closed request"

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        field = {401: "authorization", 404: "path", 405: "method"}.get(exc.status_code, "body")
        return _error(exc.status_code, field, str(exc.detail), "HTTPException", getattr(exc, "headers", None))


def _bearer(token: Optional[str]):
    async def check(request: Request) -> None:
        if token is None:
            return
        sent = request.headers.get("authorization", "")
        if not secrets.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "a valid `Authorization: Bearer <token>` header is required",
                                headers={"WWW-Authenticate": "Bearer"})
    return check


def _two_bodies(model: type[BaseModel], options_field: Optional[str]) -> dict[str, Any]:
    """OpenAPI for an endpoint that reads JSON, or a multipart form with a `reference` file."""
    form = ({options_field: {"type": "string", "description": f"{model.__name__} as JSON"}} if options_field
            else {k: v for k, v in model.model_json_schema()["properties"].items() if k != "reference_id"})
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "required": ["reference"], "properties": {
            "reference": {"type": "string", "format": "binary", "description": "audio: wav, flac, ogg"},
            **form}}}}}}


class BodyLimit:
    """Refuse a request body over `max_bytes` with 413: by its Content-Length before reading a
    byte, or, for a chunked body, as soon as the bytes read pass the limit."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        field = "reference" if headers.get(b"content-type", b"").startswith(b"multipart/") else "body"
        too_large = RequestError(field, f"the request body is over the server's limit of {self.max_bytes} bytes", 413)
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            response = _error(413, too_large.field, too_large.message, "RequestError",
                              {"Connection": "close"})
            return await response(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise too_large
            return message

        await self.app(scope, counted, send)


def build_app(synth, config: ServeConfig | None = None) -> FastAPI:
    """The app for a loaded Synthesizer (the model worker starts, and warms up, here)."""
    return create_app(SynthesisEngine(synth, config))
