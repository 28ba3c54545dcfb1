"""Labels: chargebacks, review outcomes, churn outcomes, each with ``known_at``.

Labels arrive late and from several systems. A label is keyed by (event,
label name, source): importing the same file twice changes nothing; a source
that changes its mind (a chargeback reversed) updates its own label.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sira.events import apply_mapping, as_utc
from sira.pii import Redactor

_TRUE = {"1", "true", "t", "yes", "y", "fraud", "positive", "churned", "anomaly"}
_FALSE = {"0", "false", "f", "no", "n", "legit", "genuine", "negative", "retained", "normal"}


class FeedbackIn(BaseModel):
    """One label for an event (or a prediction)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, coerce_numbers_to_str=True)

    event_id: Annotated[str, Field(min_length=1, max_length=200)]
    label: bool
    known_at: datetime
    label_name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")] = "fraud"
    source: Annotated[str, Field(min_length=1, max_length=100)] = "import"
    occurred_at: datetime | None = None
    prediction_id: UUID | None = None

    @field_validator("label", mode="before")
    @classmethod
    def _label(cls, value: Any) -> Any:
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, float) and math.isnan(value):
            return None
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        # the value itself stays out of the message: a wrongly mapped column may hold names
        raise ValueError(f"expected a binary label (0/1, true/false, fraud/legit), got a {type(value).__name__} "
                         "that is none of them")

    @field_validator("known_at", "occurred_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else as_utc(value)


@dataclass
class FeedbackSummary:
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"read": self.read, "inserted": self.inserted, "updated": self.updated, "unchanged": self.unchanged,
                "rejected": self.rejected, "rejected_by_reason": dict(sorted(self.reasons.items()))}


async def record_labels(
    conn: asyncpg.Connection,
    records: Sequence[Mapping[str, Any]],
    *,
    redactor: Redactor,
    source: str = "import",
    created_by: str | None = None,
    mapping: Mapping[str, str] | None = None,
) -> FeedbackSummary:
    """Validate and upsert labels; invalid rows go to ``sira_rejected_events`` with their reason."""
    summary = FeedbackSummary(read=len(records))
    good: dict[tuple[str, str, str], FeedbackIn] = {}
    rejected = []
    for raw in records:
        record = {"source": source, **apply_mapping(raw, mapping or {})}
        try:
            item = FeedbackIn.model_validate(record)
        except ValidationError as exc:
            error = exc.errors()[0]
            loc = ".".join(str(p) for p in error["loc"]) or None
            code = "missing_field" if error["type"] == "missing" else "invalid_field"
            reason = f"{loc} is required" if code == "missing_field" else f"{loc}: {error['msg'].removeprefix('Value error, ')}"
            payload = redactor.payload({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in raw.items()})
            event_id = redactor.scrub_value(str(raw.get("event_id")))[:200] if raw.get("event_id") else None
            rejected.append((event_id, f"feedback:{source}", code, redactor.scrub_text(reason), loc, payload))
            continue
        item.event_id = redactor.scrub_value(item.event_id)  # ids are scrubbed exactly as events' are
        good[(item.event_id, item.label_name, item.source)] = item  # the last word of a file wins
    if rejected:
        await conn.copy_records_to_table(
            "sira_rejected_events", records=rejected,
            columns=["event_id", "source", "reason_code", "reason", "field", "payload"],
        )
        summary.rejected = len(rejected)
        summary.reasons.update(r[2] for r in rejected)
    if good:
        rows = await conn.fetch(
            """INSERT INTO sira_feedback (event_id, label_name, label, source, known_at, occurred_at, prediction_id, created_by)
               SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::text[], $5::timestamptz[],
                                    $6::timestamptz[], $7::uuid[], $8::text[])
               ON CONFLICT (event_id, label_name, source) DO UPDATE
                  SET label = EXCLUDED.label, known_at = EXCLUDED.known_at,
                      occurred_at = coalesce(EXCLUDED.occurred_at, sira_feedback.occurred_at),
                      prediction_id = coalesce(EXCLUDED.prediction_id, sira_feedback.prediction_id),
                      updated_by = EXCLUDED.created_by, updated_at = now()
                WHERE (sira_feedback.label, sira_feedback.known_at) IS DISTINCT FROM (EXCLUDED.label, EXCLUDED.known_at)
               RETURNING (xmax = 0) AS inserted""",
            [g.event_id for g in good.values()], [g.label_name for g in good.values()],
            [g.label for g in good.values()], [g.source for g in good.values()],
            [g.known_at for g in good.values()], [g.occurred_at for g in good.values()],
            [g.prediction_id for g in good.values()], [created_by] * len(good),
        )
        summary.inserted = sum(1 for r in rows if r["inserted"])
        summary.updated = len(rows) - summary.inserted
        summary.unchanged = len(good) - len(rows)
    return summary


async def import_label_files(
    settings: Any, paths: list[Any], *, mapping: Mapping[str, str] | None = None, source: str = "import",
    created_by: str | None = None,
) -> FeedbackSummary:
    """``sira feedback import``: read label files (checked first) and record them in one transaction."""
    from sira import db
    from sira.errors import InvalidInput
    from sira.files import find_files, read_table
    from sira.ingest import redactor_for

    mapping = dict(mapping or {})
    table = read_table(find_files(paths))
    required = {mapping.get(c, c) for c in ("event_id", "label", "known_at")}
    missing = sorted(required - set(table.column_names))
    if missing:
        raise InvalidInput(f"required column(s) missing: {', '.join(missing)}", details={"columns": missing})
    async with db.open_pool(settings) as pool:
        async with db.transaction(pool) as conn:
            return await record_labels(conn, table.to_pylist(), redactor=redactor_for(settings), source=source,
                                       mapping=mapping, created_by=created_by)
