"""Labels: chargebacks, review outcomes, churn outcomes, each with ``known_at``.

Labels arrive late and from several systems. A label is keyed by (event,
label name, source): importing the same file twice changes nothing; a source
that changes its mind (a chargeback reversed) updates its own label, which is
its newest word by ``known_at`` whatever order the words arrive in, every word
kept in the label's history.

A label may also arrive before its event (a chargeback feed faster than the
event export): it is kept, marked pending and answered ``pending_event``.
Labels join events when they are read, so it counts as soon as the event
comes; one whose event never comes expires after ``pending_label_ttl_days``
into ``sira_rejected_events`` (checked on every label write, a probe of a
partial index).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import asyncpg
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from sira.core import audit
from sira.core.errors import InvalidInput, PermissionDenied
from sira.features.definitions import LABEL_NAME
from sira.features.label_states import fold_label_changes, label_changes, tiles_reading
from sira.features.store import writing_log
from sira.ingest import gate
from sira.ingest.dead_letters import dead_letters
from sira.ingest.events import Rejection, apply_mapping, as_utc, bounded_json, storable_text, stored_id, text_problem
from sira.ingest.pii import Redactor

if TYPE_CHECKING:
    from sira.core.files import InputFiles

# The one label vocabulary: labels imported, sent over HTTP, and label columns of tables trained on.
POSITIVE = frozenset({"1", "true", "t", "yes", "y", "fraud", "positive", "churned", "anomaly"})
NEGATIVE = frozenset({"0", "false", "f", "no", "n", "legit", "genuine", "negative", "retained", "normal"})
LABEL_WORDS = "0/1, true/false, fraud/legit, churned/retained, anomaly/normal"


def parse_label(value: Any) -> bool | None:
    """A binary label from what a source sends (None: missing); ValueError for anything else, without the
    value in the message (a wrongly mapped column may hold names)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in POSITIVE:
        return True
    if text in NEGATIVE:
        return False
    raise ValueError(f"expected a binary label ({LABEL_WORDS}), got a {type(value).__name__} that is none of them")


def is_missing(value: Any) -> bool:
    """A value a source sends for "none": null, NaN, or a blank string (an empty CSV cell of a text column)."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str)
                                                                              and not value.strip())


# A label cannot be known later than now; this much clock skew between a source and SIRA is forgiven. A known_at
# further ahead (a sentinel such as 2199-12-31) is refused as ``known_at_in_future``: stored, it would count as
# known for every cut-off and make partitions for the years up to it.
KNOWN_AT_SKEW = timedelta(days=1)
# Codes of label problems that are the type of their pydantic error (others are invalid_field / missing_field).
LABEL_CODES = ("known_at_in_future",)

# A label and its name (fraud, chargeback, churn_90d, ...): the same rules wherever a label comes in.
Label = Annotated[bool, BeforeValidator(parse_label)]
LabelName = Annotated[str, Field(pattern=LABEL_NAME)]


class FeedbackIn(BaseModel):
    """One label for an event (or a prediction)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, coerce_numbers_to_str=True)

    event_id: Annotated[str, Field(min_length=1, max_length=200)]
    label: Label
    known_at: datetime
    label_name: LabelName = "fraud"
    source: Annotated[str, Field(min_length=1, max_length=100)] = "import"
    occurred_at: datetime | None = None
    prediction_id: UUID | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        problem = text_problem(value) if isinstance(value, str) else None  # what PostgreSQL's text refuses
        if problem:
            raise problem.error()
        return value

    @field_validator("known_at", "occurred_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # as an event's time: a sentinel (9999-12-31) overflowed the checkpoints' midnights after it and
        # failed every later fold of the log
        if value is None:
            return None
        value = as_utc(value)
        if not 1990 <= value.year <= 2200:
            raise ValueError("must be between 1990 and 2200")
        return value

    @field_validator("known_at")
    @classmethod
    def _not_ahead(cls, value: datetime) -> datetime:
        if value > datetime.now(timezone.utc) + KNOWN_AT_SKEW:
            raise PydanticCustomError("known_at_in_future", "is in the future (more than {skew} ahead of now): a "
                                      "label cannot be known before it happens",
                                      {"skew": f"{KNOWN_AT_SKEW.total_seconds() / 3600:g} hours"})
        return value


# Fields a record may leave out (defaults apply): a null or blank value there is left out too.
_OPTIONAL = frozenset(name for name, f in FeedbackIn.model_fields.items() if not f.is_required())


def label_source(who: Any, requested: str, named: bool) -> str:
    """The source a caller's label is recorded under. Service and admin keys name it (``requested``); a
    person's label is theirs, ``analyst:<name>``, and never overwrites a system's (chargebacks, ...): naming
    another source (``named``) is refused."""
    if who.roles & {"service", "admin"}:
        return requested
    own = f"analyst:{who.name}"[:100]
    if named and requested != own:
        raise audit.denied(PermissionDenied("only service keys name the source of a label; an analyst's labels are "
                                            f"recorded as analyst:{who.name}", details={"field": "source"}),
                           who.actor(), "feedback.write")
    return own


@dataclass
class FeedbackSummary:
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    pending_event: int = 0  # written (inserted or updated) for an event not stored yet
    expired: int = 0  # pending labels whose event never came, moved to sira_rejected_events
    repeated: int = 0  # rejected labels a stream delivered again, stored once (sira.ingest.dead_letters)
    duplicates: int = 0  # rows of the same input a newer one (same event, label name and source) superseded
    earlier: int = 0  # words older than what their source says now (arrived late): kept in the label's history only
    reasons: Counter = field(default_factory=Counter)
    refused: Rejection | None = None  # the first label refused: its code, field and reason (a caller of one answers it)

    def refusal(self) -> InvalidInput | None:
        """What a caller that sent one label (``POST /v1/feedback``) answers when it was refused: 422 under its
        own code (``known_at_in_future``; a field's problem: ``invalid_feedback``), naming the field and saying
        why, as a file load's dead letter does; None when nothing was refused."""
        if not self.rejected:
            return None
        code = self.refused.reason_code if self.refused else next(iter(self.reasons), "rejected")
        reason = self.refused.reason if self.refused else code
        return InvalidInput(f"label rejected: {reason}", code=code if code in LABEL_CODES else "invalid_feedback",
                            details={"field": self.refused.field} if self.refused and self.refused.field else {})

    def to_dict(self) -> dict[str, Any]:
        return {"read": self.read, "inserted": self.inserted, "updated": self.updated, "unchanged": self.unchanged,
                **({"earlier": self.earlier} if self.earlier else {}), "duplicates": self.duplicates,
                "rejected": self.rejected, "pending_event": self.pending_event, "expired": self.expired,
                "rejected_by_reason": dict(sorted(self.reasons.items()))}


# An event is known when it is stored, or was scored (a prediction names it, recorded or not).
_EVENT_KNOWN = ("(EXISTS (SELECT 1 FROM sira_events e WHERE e.event_id = {0})"
                " OR EXISTS (SELECT 1 FROM sira_predictions p WHERE p.event_id = {0}))")


async def expire_pending_labels(conn: asyncpg.Connection, ttl_days: float, *, limit: int = 1_000) -> int:
    """Move labels pending longer than ``ttl_days`` whose event still is not known to ``sira_rejected_events``
    (reason ``pending_label_expired``); those whose event came meanwhile stop being pending. At most ``limit``
    rows a call, skipping rows another writer holds: cheap enough for every label write."""
    due_sql = """SELECT id, (""" + _EVENT_KNOWN.format("f.event_id") + """) AS known FROM sira_feedback f
                  WHERE pending_since IS NOT NULL AND pending_since < now() - make_interval(secs => $1)
                  ORDER BY pending_since LIMIT $2 FOR UPDATE SKIP LOCKED"""
    return await conn.fetchval(
        f"""WITH due AS ({due_sql}),
                 arrived AS (UPDATE sira_feedback f SET pending_since = NULL FROM due WHERE f.id = due.id AND due.known),
                 gone AS (DELETE FROM sira_feedback f USING due WHERE f.id = due.id AND NOT due.known
                          RETURNING f.event_id, f.label_name, f.label, f.source, f.known_at, f.pending_since,
                                    f.created_by),
                 moved AS (INSERT INTO sira_rejected_events (event_id, source, reason_code, reason, field, payload)
                           SELECT event_id, left('feedback:' || source, 200), 'pending_label_expired',
                                  'no event with this event_id arrived within ' || $3 || ' days of the label',
                                  'event_id',
                                  jsonb_build_object('label_name', label_name, 'label', label, 'source', source,
                                                     'known_at', known_at, 'pending_since', pending_since,
                                                     'created_by', created_by)
                             FROM gone RETURNING 1)
            SELECT count(*) FROM moved""",
        ttl_days * 86_400, limit, f"{ttl_days:g}")


async def record_labels(
    conn: asyncpg.Connection,
    records: Sequence[Mapping[str, Any]],
    *,
    redactor: Redactor,
    source: str = "import",
    created_by: str | None = None,
    mapping: Mapping[str, str] | None = None,
    pending_ttl_days: float | None = None,
    positions: Sequence[str] | None = None,
    broken: Sequence[Rejection] = (),
) -> FeedbackSummary:
    """Validate and upsert labels; invalid rows go to ``sira_rejected_events`` with their reason (once per
    stream position, ``positions`` aligned with ``records``), and so do ``broken`` ones (lines of a file
    that are no record). A null or blank value of a field with a default (``source``, ``label_name``) takes
    the default. A label for an event not known yet is stored pending; ``pending_ttl_days``: also expire
    labels pending longer.

    A source's label is its newest word by ``known_at`` (on a tie, the last of the input, or of the inputs, to
    come): a chargeback arriving after its reversal, in the same input or a later one, leaves the reversal the
    label; every word is kept in its history (``sira_feedback_history``), which training and feature set v2
    read, so what is stored does not depend on the order the words came in, nor on how they were batched."""
    summary = FeedbackSummary(read=len(records) + len(broken))
    said: dict[tuple[str, str, str], list[FeedbackIn]] = {}
    rejected = [replace(j, payload=redactor.payload(j.payload)) for j in broken]
    labelled_by_prediction = await prediction_events(conn, (apply_mapping(r, mapping or {}) for r in records))
    for i, raw in enumerate(records):
        record = {"source": source, **{k: v for k, v in apply_mapping(raw, mapping or {}).items()
                                       if k not in _OPTIONAL or not is_missing(v)}}
        unknown = by_prediction(record, labelled_by_prediction)
        if unknown:
            rejected.append(Rejection(None, "unknown_prediction", unknown, "prediction_id",
                                      redactor.payload(bounded_json(raw)), position=positions[i] if positions else None))
            continue
        try:
            item = FeedbackIn.model_validate(record)
        except ValidationError as exc:
            error = exc.errors()[0]
            loc = ".".join(str(p) for p in error["loc"]) or None
            code = (error["type"] if error["type"] in LABEL_CODES
                    else "missing_field" if error["type"] == "missing" else "invalid_field")
            reason = f"{loc} is required" if code == "missing_field" else f"{loc}: {error['msg'].removeprefix('Value error, ')}"
            payload = redactor.payload(bounded_json(raw))
            rejected.append(Rejection(stored_id(raw.get("event_id"), redactor), code, redactor.scrub_text(reason), loc,
                                      payload, position=positions[i] if positions else None))
            continue
        item.event_id = redactor.scrub_value(item.event_id)  # ids are scrubbed exactly as events' are
        item.source = redactor.scrub_text(item.source)  # a name, readable, but an email in it becomes a token
        said.setdefault((item.event_id, item.label_name, item.source), []).append(item)
    summary.refused = rejected[0] if rejected else None
    for words in said.values():
        words.sort(key=lambda g: g.known_at)  # stable: the input's order on a tie
        summary.duplicates += len(words) - 1
    good = {key: words[-1] for key, words in said.items()}  # each source's newest word
    summary.repeated = await dead_letters(conn, rejected, storable_text(redactor.scrub_text(f"feedback:{source}")),
                                          summary)
    if good:  # a label of an erased person's payment: counted, never kept (sql/023)
        await writing_log(conn)  # before the check: an erasure commits before it or waits (sira.features.store)
        erased = await gate.erased(conn, "sira_erased_events", (g.event_id for g in good.values()))
        if erased:
            gone = [key for key, g in good.items() if g.event_id in erased]
            for key in gone:
                del good[key], said[key]
            summary.rejected += len(gone)
            summary.reasons["erased_subject"] += len(gone)
    folding: dict[str, list[Any]] = {}  # label name -> the v2 feature sets in service reading it
    before: dict[str, Any] = {}
    if good:
        folding, before = await _before_write(conn, good.values())
        # the older words first (known_at order): on a tie with the current one, the history reads the current last
        kept = await _keep_said(conn, [g for words in said.values() for g in words[:-1]])
        rows = await conn.fetch(
            f"""INSERT INTO sira_feedback (event_id, label_name, label, source, known_at, occurred_at, prediction_id,
                                          created_by, pending_since, updated_by, updated_at)
               SELECT u.event_id, u.label_name, u.label, u.source, u.known_at, u.occurred_at, u.prediction_id,
                      u.created_by, CASE WHEN u.prediction_id IS NOT NULL OR {_EVENT_KNOWN.format("u.event_id")}
                                         THEN NULL ELSE now() END,
                      -- said otherwise before, in this input: changed, as an update is (its event refolded)
                      CASE WHEN u.changed THEN u.created_by END, CASE WHEN u.changed THEN now() END
                 FROM unnest($1::text[], $2::text[], $3::bool[], $4::text[], $5::timestamptz[],
                             $6::timestamptz[], $7::uuid[], $8::text[], $9::bool[])
                      AS u(event_id, label_name, label, source, known_at, occurred_at, prediction_id, created_by,
                           changed)
               ON CONFLICT (event_id, label_name, source) DO UPDATE
                  SET label = EXCLUDED.label, known_at = EXCLUDED.known_at,
                      id = DEFAULT,  -- a new position: incremental jobs (watermarks on id) read the change
                      occurred_at = coalesce(EXCLUDED.occurred_at, sira_feedback.occurred_at),
                      prediction_id = coalesce(EXCLUDED.prediction_id, sira_feedback.prediction_id),
                      updated_by = EXCLUDED.created_by, updated_at = now(),
                      -- still pending: since the label was first written (its time to live does not restart)
                      pending_since = CASE WHEN EXCLUDED.pending_since IS NOT NULL
                                           THEN coalesce(sira_feedback.pending_since, EXCLUDED.pending_since) END
                WHERE (sira_feedback.label, sira_feedback.known_at) IS DISTINCT FROM (EXCLUDED.label, EXCLUDED.known_at)
                  AND EXCLUDED.known_at >= sira_feedback.known_at  -- an older word does not replace a newer one
               RETURNING event_id, label_name, source, (xmax = 0) AS inserted, pending_since IS NOT NULL AS pending""",
            [g.event_id for g in good.values()], [g.label_name for g in good.values()],
            [g.label for g in good.values()], [g.source for g in good.values()],
            [g.known_at for g in good.values()], [g.occurred_at for g in good.values()],
            [g.prediction_id for g in good.values()], [created_by] * len(good), [key in kept for key in good],
        )
        written = {(r["event_id"], r["label_name"], r["source"]) for r in rows}
        late = await _keep_said(conn, [g for key, g in good.items() if key not in written])  # older than stored
        await _changed(conn, (kept | late) - written, created_by)
        summary.inserted = sum(1 for r in rows if r["inserted"])
        summary.updated = len(rows) - summary.inserted
        summary.earlier = len(late)
        summary.unchanged = len(good) - len(rows) - len(late)
        summary.pending_event = sum(1 for r in rows if r["pending"])
        for name, sets in folding.items():  # into the entities' states now: a served vector counts them (#21)
            after = await label_changes(conn, name, (g.event_id for g in good.values() if g.label_name == name))
            await fold_label_changes(conn, sets, name, before[name], after)
    if pending_ttl_days is not None:
        summary.expired = await expire_pending_labels(conn, pending_ttl_days)
    return summary


async def _keep_said(conn: asyncpg.Connection, words: Sequence[FeedbackIn]) -> set[tuple[str, str, str]]:
    """Words that are not their source's current one (older), each kept once in the label's history, in the
    order given; returns the (event, label name, source) of those new there."""
    new = list(dict.fromkeys((g.event_id, g.label_name, g.source, g.label, g.known_at) for g in words))
    if not new:
        return set()
    rows = await conn.fetch(
        """INSERT INTO sira_feedback_history (event_id, label_name, source, label, known_at)
           SELECT u.event_id, u.label_name, u.source, u.label, u.known_at
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::timestamptz[]) WITH ORDINALITY
                  AS u(event_id, label_name, source, label, known_at, n)
            WHERE NOT EXISTS (SELECT 1 FROM sira_feedback_history h
                               WHERE (h.event_id, h.label_name, h.source, h.label, h.known_at)
                                   = (u.event_id, u.label_name, u.source, u.label, u.known_at))
            ORDER BY u.n
           RETURNING event_id, label_name, source""", *(list(c) for c in zip(*new)))
    return {(r["event_id"], r["label_name"], r["source"]) for r in rows}


async def _changed(conn: asyncpg.Connection, keys: set[tuple[str, str, str]], by: str | None) -> None:
    """Labels whose history changed and not their current word: a new position (``id``) and ``updated_at``, as an
    update gets, so the incremental jobs and feature set v2's checkpoints (sira.features.states.advance) read it."""
    if keys:
        await conn.execute(
            """UPDATE sira_feedback f SET id = DEFAULT, updated_by = $4, updated_at = now()
                 FROM unnest($1::text[], $2::text[], $3::text[]) AS k(event_id, label_name, source)
                WHERE (f.event_id, f.label_name, f.source) = (k.event_id, k.label_name, k.source)""",
            *(list(c) for c in zip(*sorted(keys))), by)


async def _before_write(conn: asyncpg.Connection, good: Any) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """The feature sets in service whose states read each label name written, and the events' effective
    known_at before the write (what :func:`fold_label_changes` compares the write with)."""
    from sira.ingest.bulk import feature_sets_in_service

    names = {g.label_name for g in good}
    in_service = await feature_sets_in_service(conn)
    folding = {name: sets for name in sorted(names) if (sets := tiles_reading(in_service, name))}
    return folding, {name: await label_changes(conn, name, (g.event_id for g in good if g.label_name == name))
                     for name in folding}


def read_label_files(files: InputFiles) -> tuple[list[dict[str, Any]], list[Rejection], list[str]]:
    """A label import's records, the lines that are not records, and the columns the records have. JSON
    Lines are decoded line by line as event files are: a line that is no JSON object is a dead letter naming
    its file and line (not its text), a field whose type changes from line to line is validated row by row."""
    from sira.core.errors import InvalidInput
    from sira.core.files import ROW_GROUP, json_lines, read_table
    from sira.ingest.events import json_records

    if files.format != "json":
        table = read_table(files)
        return table.to_pylist(), [], table.column_names
    records: list[dict[str, Any]] = []
    broken: list[Rejection] = []
    for path in files.paths:
        for lines in json_lines(path, ROW_GROUP):
            for r in json_records(lines):
                if isinstance(r, Rejection):
                    broken.append(r)
                else:
                    records.append(r)
    if broken and not records:
        raise InvalidInput(f"cannot read as json: none of the {len(broken)} lines is a JSON object",
                           details={"files": files.strings})
    return records, broken, list(dict.fromkeys(k for r in records for k in r))


def check_label_columns(columns: Sequence[str], mapping: Mapping[str, str]) -> None:
    """Fail before importing when a file's columns cannot make labels: a mapped column not in it, a mapped
    name it also has as a column of its own (which of the two would be the label's?), a required one missing."""
    from sira.core.errors import InvalidInput
    from sira.core.files import check_mapped

    check_mapped(columns, mapping)
    # a label names its event, or a stored prediction (sira.ingest.labels.prediction_events)
    required = ("label", "known_at") + (("event_id",) if mapping.get("prediction_id", "prediction_id") not in columns
                                        else ())
    missing_columns = sorted({mapping.get(c, c) for c in required} - set(columns))
    if missing_columns:
        raise InvalidInput(f"required column(s) missing: {', '.join(missing_columns)}",
                           details={"columns": missing_columns})


async def import_label_files(
    settings: Any, paths: list[Any], *, mapping: Mapping[str, str] | None = None, source: str | None = None,
    created_by: str | None = None, who: Any = None,
) -> FeedbackSummary:
    """``sira feedback import``: read label files (checked first) and record them in one transaction.
    ``source`` (None: ``import``) for rows without one; ``who`` (an Identity; None: the local user before
    any key exists) may name sources only as :func:`label_source` allows, in ``source`` and in the file."""
    from sira.core import db
    from sira.core.files import find_files
    from sira.ingest.bulk import redactor_for

    mapping = dict(mapping or {})
    text = tuple(mapping.get(c, c) for c in ("event_id", "label_name", "source", "prediction_id"))
    records, broken, columns = read_label_files(replace(find_files(paths), text=text))  # "007" keeps its zeros
    check_label_columns(columns, mapping)
    if who is not None:  # an analyst's labels are their own: never a chargeback's, a review's, ...
        # every source a row would be recorded under, as record_labels reads it
        sources = (apply_mapping(r, mapping).get("source") for r in records)
        named = {str(v).strip() for v in sources if not is_missing(v)}
        for requested in sorted(named):
            label_source(who, requested, True)
        source = label_source(who, source or "import", source is not None)
    source = source or "import"
    async with db.open_pool(settings) as pool:
        async with db.transaction(pool) as conn:
            summary = await record_labels(conn, records, redactor=redactor_for(settings), source=source,
                                          mapping=mapping, created_by=created_by, broken=broken,
                                          pending_ttl_days=settings.pending_label_ttl_days)
    if summary.inserted or summary.updated:
        await db.analyze(db.resolve_dsn(settings), "sira_feedback")  # a bulk load: statistics for the planner
    return summary


# -- labels by prediction ---------------------------------------------------------------------------


def prediction_key(prediction_id: UUID | str) -> str:
    """The event_id a label of a prediction scored without an event (ready ``features``: a model trained on a
    table) is stored under. Labels are keyed by event; live performance joins them by ``prediction_id`` too."""
    return f"prediction:{prediction_id}"


async def prediction_events(conn: asyncpg.Connection, records: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """For the records that name a ``prediction_id`` and no ``event_id``: the event each prediction scored, or
    :func:`prediction_key` for one scored from ready features, by prediction id (unknown ones left out)."""
    ids = set()
    for r in records:
        if is_missing(r.get("event_id")) and not is_missing(r.get("prediction_id")):
            try:
                ids.add(UUID(str(r["prediction_id"]).strip()))
            except ValueError:
                pass  # validation names it
    if not ids:
        return {}
    rows = await conn.fetch("SELECT prediction_id, event_id FROM sira_predictions WHERE prediction_id = ANY($1::uuid[])",
                            list(ids))
    return {str(r["prediction_id"]): r["event_id"] or prediction_key(r["prediction_id"]) for r in rows}


def by_prediction(record: dict[str, Any], events: Mapping[str, str]) -> str | None:
    """Fill in the event of a record naming only its prediction (from :func:`prediction_events`); the reason
    when no stored prediction has that id (None: nothing to do, or done)."""
    if not is_missing(record.get("event_id")) or is_missing(record.get("prediction_id")):
        return None
    try:
        key = str(UUID(str(record["prediction_id"]).strip()))
    except ValueError:
        return None  # validation names it
    if key not in events:
        return f"no stored prediction {key}"
    record["event_id"] = events[key]
    return None
