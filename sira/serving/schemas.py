"""What a scoring request carries, validated (pydantic, no web framework), and the request on its way
through a batch."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator
from pydantic_core import PydanticCustomError

from sira.ingest.events import MAX_ATTRIBUTES, EventIn, extra_fields_problem, max_string_length, value_problem
from sira.ingest.labels import LABEL_WORDS, NEGATIVE, POSITIVE, Label, LabelName
from sira.serving.scoring import ModelRuntime


def _reject_unstorable(value: Any) -> Any:
    """NaN and infinity, over-long strings and field names, NUL characters, integers beyond 64 bits and
    deep nesting are refused wherever they hide in a free-form field, each under its code (JSON parsers
    accept them; the audit trail could not store them; the redactor need not scan them)."""
    _reject_non_finite(value)
    problem = value_problem(value, max_string_length())
    if problem:
        raise problem.error()
    return value


def _reject_non_finite(value: Any, path: str = "") -> Any:
    """NaN and infinity are refused wherever they hide (JSON parsers accept them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("non_finite", "{where}must be finite (NaN and infinity are not accepted)",
                                  {"where": f"{path}: " if path else ""})
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_non_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _reject_non_finite(v, f"{path}.{i}" if path else str(i))
    return value


class ScoreEvent(EventIn):
    """The event to score: the fields of an ingested event; anything else goes in ``attributes``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, coerce_numbers_to_str=True)

    occurred_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    attributes: dict[str, Any] = Field(default_factory=dict, max_length=MAX_ATTRIBUTES)

    @field_validator("amount", "attributes", mode="before")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        if isinstance(value, dict) and len(value) > MAX_ATTRIBUTES:  # before anything scans them
            raise PydanticCustomError("too_many_fields", "more than {limit} extra fields ({count})",
                                      {"limit": MAX_ATTRIBUTES, "count": len(value)})
        return _reject_unstorable(value)


def _few_unknown_fields(model: type[BaseModel], data: Any) -> Any:
    """``data``, unless it holds more fields than ``model`` knows by far: refused at once, before pydantic makes
    an error of each (200,000 unknown fields took a second; each is named by the answer otherwise)."""
    problem = extra_fields_problem(data, model.model_fields) if isinstance(data, dict) else None
    if problem:
        raise problem.error()
    return data


class ScoreItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _not_too_many_fields(cls, data: Any) -> Any:
        return _few_unknown_fields(cls, data)

    request_id: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="Idempotency key: the same request id returns the same answer without scoring again.")
    event: ScoreEvent | None = None
    features: dict[str, Any] | None = Field(None, description="Ready features (bring-your-own-table models).")
    # strict: JSON true or false only ("no" or 0 was read as a yes/no and quietly stopped the recording)
    record: bool = Field(True, strict=True, description="Also record the event in the feature pipeline.")
    explain: bool = Field(False, strict=True, description="Reason codes inline whatever the decision.")

    @field_validator("features", mode="before")
    @classmethod
    def _finite_features(cls, value: Any) -> Any:
        return _reject_unstorable(value)

    @field_validator("request_id", mode="before")
    @classmethod
    def _storable_request_id(cls, value: Any) -> Any:
        return _reject_unstorable(value)

    @model_validator(mode="after")
    def _one_input(self) -> "ScoreItem":
        if (self.event is None) == (self.features is None):
            raise ValueError("send either event (feature-store models) or features (bring-your-own models)")
        return self


class ScoreRequest(ScoreItem):
    model: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]


class BatchScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _not_too_many_fields(cls, data: Any) -> Any:
        return _few_unknown_fields(cls, data)

    model: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
    requests: list[ScoreItem] = Field(..., min_length=1)


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    feature: str
    value: Any
    contribution: float
    direction: Literal["increases_risk", "decreases_risk"]
    text: str


class ScoreAnswer(BaseModel):
    """The answer to ``POST /v1/score``, as declared in OpenAPI. The service builds it as a dict
    (:func:`sira.serving.answers.answer`) and the route sends its bytes without this model on the hot path;
    the tests validate those bytes against this schema (no field undeclared, none missing)."""

    model_config = ConfigDict(extra="forbid")

    prediction_id: str
    request_id: str
    model: str
    version: int
    score: float
    decision: Literal["approve", "review", "block"]
    reasons: list[Reason]
    reasons_deferred: bool
    flags: dict[str, Any]
    degraded: bool
    degraded_reasons: list[str]
    latency_ms: float
    scored_at: str
    event_id: str | None
    replayed: bool


class BatchScoreAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    results: list[ScoreAnswer]


class ShadowScore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int
    score: float
    decision: Literal["approve", "review", "block"]


class StoredPrediction(ScoreAnswer):
    """A stored prediction (``GET /v1/predictions/{id}``): the answer it was, its exact reasons (computed
    now when they were deferred), the features it was scored with, and the shadow versions' scores."""

    role: Literal["production", "shadow"]
    features: dict[str, Any]
    shadow: list[ShadowScore]


class FeedbackAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: str
    label_name: str
    label: bool
    # superseded: older (by known_at) than what its source says now: kept in the label's history only
    status: Literal["recorded", "updated", "unchanged", "pending_event", "superseded"]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prediction_id: uuid.UUID | None = None
    event_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    # what parse_label takes, as the schema says it (it said boolean only; any case and spacing of a word too)
    label: Annotated[Label, WithJsonSchema({
        "anyOf": [{"type": "boolean"}, {"type": "integer", "enum": [0, 1]},
                  {"type": "string", "enum": sorted(POSITIVE | NEGATIVE)}],
        "description": f"The label: {LABEL_WORDS} (true: the positive class)"})]
    label_name: LabelName = "fraud"
    known_at: datetime | None = None
    source: Annotated[str, Field(min_length=1, max_length=100)] = "api"

    @field_validator("event_id", "label_name", "source", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return _reject_unstorable(value)

    @model_validator(mode="after")
    def _target(self) -> "FeedbackRequest":
        if self.prediction_id is None and self.event_id is None:
            raise ValueError("name the prediction_id or the event_id the label is about")
        return self


@dataclass
class Item:
    """A validated request on its way through a batch."""

    runtime: ModelRuntime
    shadow: ModelRuntime | None
    request_id: str
    client_request_id: bool
    event: dict[str, Any] | None  # normalized (redacted) event
    features: dict[str, Any] | None
    record: bool
    explain: bool
    started: float
    missing: list[str] = field(default_factory=list)
    digest: str | None = None  # of what was asked (a client's request id): the same id with other input conflicts
