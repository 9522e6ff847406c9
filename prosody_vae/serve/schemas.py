"""The JSON API's request bodies: typed, closed (an unknown field is refused), with their ranges.

These models are the OpenAPI description too (FastAPI renders them at /openapi.json and /docs).
Limits that depend on the server's settings (text length, items per request) are checked by the
engine against `ServeConfig`; the ranges here hold for every server.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from ..inference.knobs import KNOBS

KNOB_UNITS = ", ".join(f"{knob.name} ({knob.unit})" for knob in KNOBS.values())

MAX_SEED = 2**31 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Extra = Literal["f0", "alignment", "z", "mel"]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SynthesizeRequest(_Closed):
    """Text(s) in one prosody: exactly one of `text` and `texts`, at most one of `seed` and `seeds`.
    Without a reference (or with mode "sample") the seed picks the noise; `seeds` asks for one
    result per text per seed."""

    text: Optional[str] = Field(None, description="one text (or give `texts`)")
    texts: Optional[list[str]] = Field(None, min_length=1, description="several texts, one result each")
    reference_id: Optional[str] = Field(None, description="an earlier upload's id (POST /v1/encode)")
    reference_text: Optional[str] = Field(None, description="the reference's transcript (optional)")
    mode: Literal["mean", "sample"] = "mean"
    temperature: float = Field(1.0, ge=0.0, le=5.0)
    seed: Optional[Seed] = None
    seeds: Optional[list[Seed]] = Field(None, min_length=1, description="one result per seed")
    n_samples: int = Field(1, ge=1, le=16, description="draws per text and seed (of the prior, or the posterior "
                                                       "with mode \"sample\")")
    strength: float = Field(1.0, ge=0.0, le=4.0, description="0: the prior mean; 1: the reference's prosody")
    controls: dict[str, float] = Field(default_factory=dict, description="calibrated knobs within their ranges "
                                       "(GET /v1/model: server.knobs), e.g. {\"rate\": 0.8}: " + KNOB_UNITS)
    speaker: Optional[str] = Field(None, description="the output's voice (GET /v1/model lists them)")
    reference_speaker: Optional[str] = Field(None, description="who speaks the reference, one of the model's voices "
                                             "(unnamed: the output's voice, or for a model that reads prosody tracks, "
                                             "the voice of nearest pitch register)")
    pitch_mode: Literal["relative", "absolute"] = Field(
        "relative", description="relative: the reference's pitch offset on the output voice's register; absolute: "
                                "the reference's Hz (needs `reference_speaker`)")
    reference_range: bool = Field(False, description="scale the output's F0 contour to the reference's pitch "
                                                     "range (a model with a pitch head)")
    reference_level: bool = Field(False, description="make the output as much louder or softer than usual as the "
                                                     "reference is against its enrolled speaker's level (needs "
                                                     "`reference_speaker`, enrolled: POST /v1/speakers)")
    vocoder: Optional[str] = Field(None, description="a vocoder name (GET /v1/model lists them)")
    format: Literal["wav", "json"] = Field("wav", description="wav: the audio; json: base64 audio + extras")
    include: list[Extra] = Field(default_factory=list, description="arrays (per result) to add to a JSON answer")

    @property
    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts)


class EncodeRequest(_Closed):
    reference_id: str
    reference_text: Optional[str] = None


class InterpolateRequest(_Closed):
    text: str
    reference_a: str = Field(description="a reference id (POST /v1/encode)")
    reference_b: str = Field(description="a reference id (POST /v1/encode)")
    steps: int = Field(5, ge=2, le=16)
    seed: Optional[Seed] = None
    speaker: Optional[str] = Field(None, description="the output's voice (GET /v1/model lists them)")
    vocoder: Optional[str] = None
    include: list[Extra] = Field(default_factory=list)


class EnrollRequest(_Closed):
    """A reference speaker the model never heard, known from a few uploads (POST /v1/encode each):
    afterwards `reference_speaker: name` reads their pitch relative to their own register."""

    name: str = Field(min_length=1, max_length=64)
    reference_ids: list[str] = Field(min_length=1, max_length=32, description="earlier uploads' ids, "
                                     "5 or so recordings of a sentence each")
