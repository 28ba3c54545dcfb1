"""Event models: what SIRA accepts, and how a raw record becomes a stored event.

Every source (files, ``POST /v1/events``, the Redis stream, scored requests)
goes through :func:`normalize`: column mapping, validation against
:class:`EventIn`, PII redaction, and the canonical row written to
``sira_events``. A record that fails becomes a :class:`Rejection` with a
stable reason code and the field at fault; its payload is redacted too.

Free-form input is bounded before any redaction: an event with more than
:data:`MAX_ATTRIBUTES` extra fields or :data:`MAX_VALUES` values in all is refused
with ``too_many_fields`` (counted before anything else looks at it), a string (or
field name) longer than ``max_string_length`` with ``field_too_long``, an integer
beyond signed 64 bits, a NUL character or deep nesting with ``invalid_value``, and
an amount sent as a boolean or a string with ``invalid_number``. A dead letter keeps
at most :data:`MAX_VALUES` values of what was sent, and says what it cut (:data:`CUT`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, PydanticUndefined

from sira.core.config import get_settings
from sira.core.errors import InvalidInput
from sira.ingest.pii import MAX_NESTING, Redactor

ENTITY_KEYS = ("customer_id", "account_id", "card_number", "card_token", "merchant_id", "terminal_id")
# Canonical columns of sira_events, in COPY order.
EVENT_COLUMNS = (
    "event_id", "event_type", "occurred_at", "source", "customer_id", "account_id", "card_token", "merchant_id",
    "terminal_id", "device_id", "ip_token", "email_token", "phone_token", "amount", "currency", "country",
    "channel", "attributes",
)
Row = tuple[Any, ...]  # a sira_events row in EVENT_COLUMNS order (what the insert's COPY takes)


def stored_row(row: Mapping[str, Any]) -> Row:
    """A normalized event (:func:`normalize`'s dict) as the insert takes it."""
    return tuple(row[c] for c in EVENT_COLUMNS)


# Input field -> canonical column it becomes after redaction.
_TOKEN_COLUMNS = {"card_number": "card_token", "ip_address": "ip_token", "email": "email_token", "phone": "phone_token"}
MAX_ATTRIBUTES = 64  # extra fields per event (its attributes)
# Values one event may hold in all: its fields, and every field and list item nested in them. Both limits are
# counted before anything validates, scans or redacts an event, in time bounded by the limits, not by what was
# sent: 200,000 extra fields cost 6 s of redaction before the limit above refused them (2026-12).
MAX_VALUES = 1_024
TOO_MANY = "too_many_fields"
# A dead letter keeps at most MAX_VALUES values of the record sent; an object cut short holds this field with
# the number of its fields not kept, a list cut short ends with "<cut N items>".
CUT = "<cut>"
# ... and MAX_KEPT_CHARACTERS of its strings in all, each one past them "<cut N characters>" (it kept up to ~4 MB)
MAX_KEPT_CHARACTERS = 65_536

MAX_EVENT_ID = 200  # sira_events.event_id's CHECK (ids of other entities alike)
Text = Annotated[str, Field(min_length=1, max_length=MAX_EVENT_ID)]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the JSON encoder's and PostgreSQL bigint's range
# Codes of the problems :func:`value_problem` finds and of numbers of the wrong JSON type: each is
# also the type of the pydantic error raised for it, so every caller reports it under that code.
VALUE_CODES = ("field_too_long", "invalid_value", "invalid_number")
# errors whose type is SIRA's code and whose context names the place inside the field (``path``)
MISSING_CODES = ("missing_field", "missing_entity_key")
FUTURE_TIME = "future_time"  # a time more than MAX_CLOCK_SKEW ahead of the clock
FIELD_CODES = (*VALUE_CODES, *MISSING_CODES, FUTURE_TIME, TOO_MANY)
# The largest amount an event may carry, in its currency's unit (a trillion: some eleven million US
# dollars in Lebanese pounds, sixty in Indonesian rupiah). Feature engine v2 holds amounts as int64 in
# 1e-4 units (9.2e14 at most), so a window's sum has room for ~900 of them before it saturates.
MAX_AMOUNT = 1e12
FIRST_YEAR = 1990  # the earliest year of an event's time
# How far ahead of this machine's clock an event's time may be (clocks drift); further, it is refused as
# FUTURE_TIME: an event cannot have happened yet.
MAX_CLOCK_SKEW = timedelta(minutes=5)


def as_utc(value: datetime) -> datetime:
    """A timestamp in UTC; naive timestamps are taken as UTC. ValueError (what pydantic reports as a validation
    error) for a time whose UTC falls outside the calendar (year 1 ahead of UTC, 9999 behind it)."""
    try:
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("outside the dates a UTC time can hold (years 1 to 9999)") from None


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]  # a request's time: in UTC, or a 422


def not_ahead_of_the_clock(value: datetime) -> datetime:
    """A time (UTC) no more than :data:`MAX_CLOCK_SKEW` ahead of now, or a :data:`FUTURE_TIME` error: a time
    that has not come yet is a sender's bug (a local time sent without its offset, a sentinel such as
    9999-12-31), and, folded, it would leave every later event of its entities behind it."""
    if value > datetime.now(timezone.utc) + MAX_CLOCK_SKEW:
        raise PydanticCustomError(FUTURE_TIME, "{problem}", {"path": "", "problem": (
            f"more than {MAX_CLOCK_SKEW.total_seconds() / 60:g} minutes ahead of the clock: it has not happened yet "
            "(a time without an offset is UTC)")})
    return value


def max_string_length() -> int:
    """The longest string accepted in any field (``SIRA_MAX_STRING_LENGTH``)."""
    return get_settings().max_string_length


@dataclass(frozen=True)
class ValueProblem:
    """Why a JSON-like value is refused: a stable code, where (dotted path inside the value), why."""

    code: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def error(self) -> PydanticCustomError:
        """The pydantic error of this problem: its type is the code, its context names the path."""
        return PydanticCustomError(self.code, "{problem}", {"problem": str(self), "path": self.path})


def text_problem(value: str, path: str = "") -> ValueProblem | None:
    """What PostgreSQL cannot store in a text: a NUL, or an unpaired surrogate (JSON's ``"\\ud800"`` decodes to
    one; it has no UTF-8 form)."""
    if "\x00" in value:
        return ValueProblem("invalid_value", path, "must not contain NUL (\\u0000) characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return ValueProblem("invalid_value", path, "must not contain unpaired surrogates (\\ud800-\\udfff)")
    return None


def value_problem(value: Any, max_length: int, path: str = "", depth: int = 0) -> ValueProblem | None:
    """Why a JSON-like value cannot be accepted, naming where; None when it can.

    Lengths are checked first, in constant time per string, so an over-long value is refused before
    anything scans it (the redactor's searches, a NUL check). PostgreSQL text and jsonb refuse NUL
    characters; the JSON encoder and bigint refuse integers beyond signed 64 bits; nesting deeper than
    :data:`MAX_NESTING` is refused too.
    """
    if isinstance(value, str):
        if len(value) > max_length:
            return ValueProblem("field_too_long", path, f"longer than {max_length} characters ({len(value)})")
        return text_problem(value, path)
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        return ValueProblem("invalid_value", path, "integer out of the signed 64-bit range")
    if isinstance(value, (Mapping, list, tuple)) and depth >= MAX_NESTING:
        return ValueProblem("invalid_value", path, f"nested more than {MAX_NESTING} levels deep")
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = str(key)
            if len(name) > max_length:
                return ValueProblem("field_too_long", path, f"a field name is longer than {max_length} characters "
                                    f"({len(name)})")
            if text_problem(name, path):
                return ValueProblem("invalid_value", path, "field names must not contain NUL (\\u0000) characters "
                                    "or unpaired surrogates")
            problem = value_problem(item, max_length, f"{path}.{name}" if path else name, depth + 1)
            if problem:
                return problem
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = value_problem(item, max_length, f"{path}.{i}" if path else str(i), depth + 1)
            if problem:
                return problem
    return None


def extra_fields_problem(record: Mapping[str, Any], known: Collection[str]) -> ValueProblem | None:
    """More than :data:`MAX_ATTRIBUTES` fields beyond ``known`` (counted in time bounded by ``known``), or None."""
    extra = len(record) - sum(1 for name in known if name in record)
    if extra > MAX_ATTRIBUTES:
        return ValueProblem(TOO_MANY, "", f"more than {MAX_ATTRIBUTES} extra fields ({extra})")
    return None


def size_problem(record: Mapping[str, Any], known: Collection[str]) -> ValueProblem | None:
    """Why an event is too big to look at (more than :data:`MAX_ATTRIBUTES` fields beyond ``known``, more than
    :data:`MAX_VALUES` values in all), found by counting in time bounded by those limits; None when it is not."""
    problem = extra_fields_problem(record, known)
    if problem:
        return problem
    if _values_left(record.values(), MAX_VALUES) < 0:
        return ValueProblem(TOO_MANY, "", f"more than {MAX_VALUES} values in all (fields, nested fields and list "
                            "items)")
    return None


def _values_left(items: Iterable[Any], budget: int, depth: int = 0) -> int:
    """``budget`` less the values in ``items`` and nested in them, counted until it is spent (then negative).
    Nesting past :data:`MAX_NESTING` is not counted: :func:`value_problem` refuses it without looking inside."""
    for item in items:
        budget -= 1
        if budget >= 0 and depth < MAX_NESTING and isinstance(item, (Mapping, list, tuple)):
            budget = _values_left(item.values() if isinstance(item, Mapping) else item, budget, depth + 1)
        if budget < 0:
            return budget
    return budget


class EventIn(BaseModel):
    """A payment or usage event as sources send it (before redaction).

    Required: ``event_id``, ``occurred_at``, at least one entity key, and
    ``amount`` for payments. Unknown fields are kept in ``attributes`` after
    redaction; naive timestamps are taken as UTC.
    """

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True, coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _not_too_many_fields(cls, data: Any) -> Any:
        # first: every later step (pydantic's own, the bounds below, redaction) costs a time per field
        problem = size_problem(data, cls.model_fields) if isinstance(data, Mapping) else None
        if problem:
            raise problem.error()
        return data

    event_id: Text
    occurred_at: datetime
    event_type: Literal["payment", "usage"] = "payment"
    customer_id: Text | None = None
    account_id: Text | None = None
    card_number: Annotated[str, Field(max_length=64)] | None = None
    card_token: Text | None = None
    merchant_id: Text | None = None
    terminal_id: Text | None = None
    device_id: Text | None = None
    ip_address: Annotated[str, Field(max_length=64)] | None = None
    email: Annotated[str, Field(max_length=320)] | None = None
    phone: Annotated[str, Field(max_length=64)] | None = None
    amount: float | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Za-z]{3}$")] | None = None
    country: Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")] | None = None
    channel: Annotated[str, Field(max_length=32)] | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _bounded_and_blank_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        problem = value_problem(value, max_string_length())
        if problem:
            raise problem.error()
        if value is None or isinstance(value, str) and not value.strip() or isinstance(value, float) and math.isnan(value):
            # no value (a CSV's empty cell, a Parquet null, pandas' NaN) is an absent field: its default, else
            # None (a required field: missing_field). A null event_type was refused, and with it a JSON Lines
            # file where some lines had none (the sample check reads absent keys as nulls)
            spec = cls.model_fields.get(info.field_name or "")
            return spec.default if spec is not None and spec.default is not PydanticUndefined else None
        return value

    @field_validator("amount", mode="before")
    @classmethod
    def _a_number(cls, value: Any, info: ValidationInfo) -> Any:
        # JSON has numbers: true or "12.5" is a sender's bug, not an amount. CSV has only text: a file
        # reader that cannot type a column passes numbers_as_text and its numeric strings are numbers.
        if isinstance(value, bool) or isinstance(value, str) and not (info.context or {}).get("numbers_as_text"):
            raise PydanticCustomError("invalid_number", "must be a number, not {kind}",
                                      {"kind": "a boolean" if isinstance(value, bool) else "a string"})
        return value

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        value = as_utc(value)
        if value.year < FIRST_YEAR:
            raise ValueError(f"must be in {FIRST_YEAR} or later")
        return not_ahead_of_the_clock(value)

    @field_validator("amount")
    @classmethod
    def _finite_amount(cls, value: float | None) -> float | None:
        if value is not None and math.isnan(value):
            # parsed from text ("nan", "NaN": a CSV column read as text) or a Decimal: a missing value, as a
            # float NaN is (it was stored, and a customer's 30-day sum read 922337203685477.6)
            return None
        if value is not None and (not math.isfinite(value) or value < 0 or value > MAX_AMOUNT):
            raise ValueError(f"must be a finite number between 0 and {MAX_AMOUNT:,.0f}")
        return value

    @field_validator("currency", "country")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.upper() if value else value

    @field_validator("channel")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.lower() if value else value

    @model_validator(mode="after")
    def _entity_and_amount(self) -> "EventIn":
        problem = value_problem(self.model_extra, max_string_length()) if self.model_extra else None
        if problem:
            raise problem.error()
        infinite = _infinite(self.model_extra) if self.model_extra else None
        if infinite is not None:  # was stored as null: the value lost without a word
            raise PydanticCustomError("invalid_number", "{path}: must be a finite number (not infinity)",
                                      {"path": infinite})
        if not any(getattr(self, k) for k in ENTITY_KEYS):
            raise PydanticCustomError("missing_entity_key", "needs at least one entity key ({keys})",
                                      {"keys": ", ".join(ENTITY_KEYS), "path": ""})
        if self.event_type == "payment" and self.amount is None:
            raise PydanticCustomError("missing_field", "amount is required for payment events", {"path": "amount"})
        return self


# the fields an event cannot be without: absent, null or blank, each is a missing_field
REQUIRED = frozenset(name for name, field in EventIn.model_fields.items() if field.is_required())


def _infinite(value: Any, path: str = "") -> str | None:
    """Where an infinite number is in a JSON-like value (checked by :func:`value_problem` first: not too deep).
    NaN is a missing value (pandas writes one so), kept as null."""
    if isinstance(value, float):
        return path if math.isinf(value) else None
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    return next((p for k, v in items if (p := _infinite(v, f"{path}.{k}" if path else str(k))) is not None), None)


@dataclass
class IngestSummary:
    """What happened to a batch or a whole load."""

    read: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    features_written: int = 0
    snapshots_updated: int = 0
    labels: int = 0  # label entries of a stream stored (inserted, updated, or the same again)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase of a file load
    results: list[dict[str, Any]] = field(default_factory=list)  # per event, for small batches

    def add(self, other: "IngestSummary") -> None:
        self.read += other.read
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.reasons.update(other.reasons)
        self.features_written += other.features_written
        self.snapshots_updated += other.snapshots_updated
        self.labels += other.labels

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read, "accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected,
            "rejected_by_reason": dict(sorted(self.reasons.items())), "features_written": self.features_written,
            "snapshots_updated": self.snapshots_updated, **({"labels": self.labels} if self.labels else {}),
            "seconds": round(self.seconds, 3),
            **({"phases": {k: round(v, 3) for k, v in self.phases.items()}} if self.phases else {}),
        }


@dataclass(frozen=True)
class Rejection:
    """Why a record was not accepted, safe to store (payload redacted)."""

    event_id: str | None
    reason_code: str
    reason: str
    field: str | None
    payload: dict[str, Any]
    customer_id: str | None = None  # as sira_events holds it (scrubbed): erasure and subject access find it
    position: str | None = None  # where a stream delivered it, or its file:row (sira.ingest.dead_letters): stored once


def apply_mapping(record: Mapping[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    """Rename a source record's columns to SIRA's (mapping: canonical name -> source column)."""
    if not mapping:
        return dict(record)
    renamed = {source: canonical for canonical, source in mapping.items()}
    return {renamed.get(k, k): v for k, v in record.items()}


def normalize(
    raw: Mapping[str, Any], redactor: Redactor, source: str, mapping: Mapping[str, str] | None = None, *,
    numbers_as_text: bool = False,
) -> dict[str, Any] | Rejection:
    """Validate and redact one record: a canonical ``sira_events`` row, or a rejection.

    A rejection keeps the original record (source column names, redacted) so it can be replayed.
    ``numbers_as_text``: the source has no number type (CSV), so a numeric string is a number.
    """
    record = apply_mapping(raw, mapping or {})
    try:
        event = EventIn.model_validate(record, context={"numbers_as_text": numbers_as_text})
    except ValidationError as exc:
        return _rejection(record, raw, exc, redactor, mapping)
    return event_row(event, redactor, source, event.model_extra or {}, raw, mapping)


def event_row(
    event: EventIn, redactor: Redactor, source: str, extra: Mapping[str, Any], raw: Mapping[str, Any] | None = None,
    mapping: Mapping[str, str] | None = None,
) -> dict[str, Any] | Rejection:
    """A validated event as its redacted ``sira_events`` row (``extra``: fields kept as attributes;
    ``raw``: the record as sent, with its source column names (``mapping``), kept redacted in a rejection,
    else the event's own fields)."""
    data = event.model_dump(exclude_none=False)
    row: dict[str, Any] = {"source": source}
    for name in ("event_id", "customer_id", "account_id", "card_token", "merchant_id", "terminal_id"):
        value = data[name]
        row[name] = redactor.scrub_value(value) if value is not None else None
    if len(row["event_id"]) > MAX_EVENT_ID:  # tokens are longer than what they replace
        return Rejection(None, "invalid_field", f"event_id: longer than {MAX_EVENT_ID} characters once the "
                         "personal data in it is replaced by tokens", "event_id", _payload(redactor, data, raw, mapping),
                         row["customer_id"])
    given_card = row["card_token"]  # a card token as sent, scrubbed: a card number sent in it is tokenised
    for name, column in _TOKEN_COLUMNS.items():
        row[column] = redactor.field(name, data[name])[1]
    if row["card_token"] is None:  # the card number's token keys the card when both are sent
        row["card_token"] = given_card
    row["device_id"] = redactor.field("device_id", data["device_id"])[1]
    row.update(
        event_type=data["event_type"], occurred_at=data["occurred_at"], amount=data["amount"],
        currency=data["currency"], country=data["country"],
        channel=redactor.scrub_value(data["channel"]) if data["channel"] else None,  # a code, or prose: a token
    )
    row["attributes"] = redactor.scrub(_jsonable(dict(extra), max_string_length()))  # counted: EventIn
    return row


def _payload(redactor: Redactor, data: Mapping[str, Any], raw: Mapping[str, Any] | None,
             mapping: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What a rejection keeps: the record as sent (else the event's fields), bounded and redacted, each mapped
    column as the field it is mapped to (under its source name, for replay)."""
    return redactor.payload(bounded_json(dict(data if raw is None else raw)), None if raw is None else mapping)


@dataclass
class _Budget:
    """Values a dead letter may still keep."""

    left: int = MAX_VALUES
    characters: float = math.inf  # a dead letter's: MAX_KEPT_CHARACTERS (an accepted event's are bounded before)

    def text(self, value: str, max_length: int) -> str:
        """``value`` as kept: whole while the characters last, else a marker of its length."""
        if len(value) > max_length:  # no two words in a row: the redactor keeps the markers
            return f"<field_too_long {len(value)} characters>"
        if len(value) > self.characters:
            return f"<cut {len(value)} characters>"
        self.characters -= len(value)
        return storable_text(value)


def _jsonable(value: Any, max_length: int, depth: int = 0, budget: _Budget | None = None) -> Any:
    """A JSON value PostgreSQL can store: integers beyond 64 bits become their digits, a string or field
    name over ``max_length`` a marker of its length (a dead letter never holds the value itself, nor makes
    the redactor scan it), nesting cut at :data:`MAX_NESTING` levels (valid JSON can nest deeper than
    Python's stack), and fields and list items past ``budget`` (:data:`MAX_VALUES` in all) cut, what was cut
    counted (:data:`CUT`), strings past the budget's characters a marker: the redactor scans what is kept."""
    budget = budget or _Budget()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)  # a dead letter keeps an infinity as text
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        value = str(value)
    if isinstance(value, str):
        return budget.text(value, max_length)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, (Mapping, list, tuple)) and depth >= MAX_NESTING:
        return f"<nested more than {MAX_NESTING} levels deep>"
    if isinstance(value, Mapping):
        fields: dict[str, Any] = {}
        for kept, (k, v) in enumerate(value.items()):
            if budget.left <= 0:
                fields[CUT] = len(value) - kept
                break
            budget.left -= 1
            fields[budget.text(str(k), max_length)] = _jsonable(v, max_length, depth + 1, budget)
        return fields
    if isinstance(value, (list, tuple)):
        items: list[Any] = []
        for kept, v in enumerate(value):
            if budget.left <= 0:
                items.append(f"<cut {len(value) - kept} items>")  # no two words in a row: the redactor keeps it
                break
            budget.left -= 1
            items.append(_jsonable(v, max_length, depth + 1, budget))
        return items
    return _jsonable(str(value), max_length, depth, budget)


def bounded_json(value: Any) -> Any:
    """A record as a dead letter may keep it (see :func:`_jsonable`), before redaction."""
    return _jsonable(value, max_string_length(), budget=_Budget(characters=MAX_KEPT_CHARACTERS))


def storable_text(text: str) -> str:
    """The text with what PostgreSQL cannot store (NUL, unpaired surrogates) replaced by U+FFFD."""
    if text_problem(text) is None:
        return text
    return "".join("\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in text)


def _rejection(
    record: Mapping[str, Any], raw: Mapping[str, Any], exc: ValidationError, redactor: Redactor,
    mapping: Mapping[str, str] | None,
) -> Rejection:
    error = exc.errors()[0]
    loc = ".".join(str(p) for p in error["loc"]) or None
    kind = error["type"]
    if kind in FIELD_CODES:  # the message names the place inside the field; the field names both
        where = ".".join(p for p in (loc, (error.get("ctx") or {}).get("path")) if p) or None
        code, reason, loc = kind, f"{loc}: {error['msg']}" if loc else error["msg"], where
    elif kind == "missing" or (error.get("input") is None and loc in REQUIRED):
        # absent, null or blank (a CSV's empty cell, a Parquet null): all the same to a reader of dead letters
        code, reason = "missing_field", f"{loc} is required"
    elif loc is None:
        code, reason = "invalid_event", error["msg"].removeprefix("Value error, ")
    else:
        code, reason = "invalid_field", f"{loc}: {error['msg'].removeprefix('Value error, ')}"
    return Rejection(stored_id(record.get("event_id"), redactor), code, redactor.scrub_text(reason), loc,
                     _payload(redactor, record, raw, mapping), stored_id(record.get("customer_id"), redactor))


def stored_id(value: Any, redactor: Redactor) -> str | None:
    """An id of a refused record as a stored event's would be (scrubbed), when it is one that can be stored."""
    text = "" if value is None else str(value)
    return storable_text(redactor.scrub_value(text)[:MAX_EVENT_ID]) if 0 < len(text) <= max_string_length() else None


def json_records(lines: Any, names: Mapping[str, str] | None = None) -> list[dict[str, Any] | Rejection]:
    """A table of JSON Lines (:func:`sira.core.files.json_lines`: file, line, text) decoded one line at a time:
    a line that is no JSON object is a dead letter naming its file (``names``: path -> the name a person
    knows it by; else its own name) and line, not its text (which may hold personal data); its payload is the
    caller's to redact."""
    from sira.core.files import decode_json_line

    out: list[dict[str, Any] | Rejection] = []
    for path, line, text in zip(*(lines.column(c).to_pylist() for c in ("file", "line", "text"))):
        value = decode_json_line(text)
        out.append(value if isinstance(value, dict) else Rejection(
            None, "undecodable", f"line {line}: {value}", None,
            {"file": (names or {}).get(path) or Path(path).name, "line": line}))
    return out


def check_columns(columns: list[str], mapping: Mapping[str, str]) -> None:
    """Fail before loading when a file's columns cannot make events (names the column)."""
    from sira.core.files import check_mapped

    check_mapped(columns, mapping)
    present = set(apply_mapping({c: None for c in columns}, mapping))
    for required in ("event_id", "occurred_at"):
        if required not in present:
            raise InvalidInput(
                f"required column {required} is missing (map one with --map {required}=SOURCE_COLUMN)",
                details={"column": required},
            )
    if not present & set(ENTITY_KEYS):
        raise InvalidInput(
            f"no entity key column: need one of {', '.join(ENTITY_KEYS)}", details={"columns": list(ENTITY_KEYS)}
        )


def check_sample_types(sample: Any, mapping: Mapping[str, str], *, numbers_as_text: bool,
                       file: Path | str | None = None) -> None:
    """Fail before loading when a column is of the wrong type throughout the sample (``numbers_as_text``:
    the sample's types are not the file's own, CSV or JSON Lines a sample table turned to text), naming
    ``file`` (the sample's) when given, as every other refusal of a file does."""
    if sample.num_rows == 0:
        raise InvalidInput("the input has no rows")
    redactor = Redactor(b"sample-check")  # nothing is stored: any key will do
    fields: Counter = Counter()
    rows = sample.to_pylist()
    for raw in rows:
        result = normalize(raw, redactor, "sample", mapping, numbers_as_text=numbers_as_text)
        if isinstance(result, Rejection) and result.field:
            fields[result.field] += 1
    for column, bad in fields.items():
        if bad == len(rows):
            source = mapping.get(column, column)
            raise InvalidInput(
                f"{f'{file}: ' if file else ''}column {source} cannot be read as {column} in any of the first "
                f"{len(rows)} rows", details={"column": source, **({"file": str(file)} if file else {})},
            )
