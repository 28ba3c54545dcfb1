"""Dead letters: what ingestion set aside in ``sira_rejected_events``, with the reason, never dropped.

A record read from a stream or a file carries its position there (:attr:`Rejection.position`: a Redis entry
id, Kafka's ``topic:partition:offset``, a file's name and row). A batch is read again after a crash between its
commit and its acknowledgement, a rebalance, or a claim by another consumer, and a file is ingested again: its
dead letters are then repeats, counted as duplicates and not stored twice. A repeat has the same position AND
the same (redacted) payload (sql/025): positions come again with other records (a recreated Kafka topic or
cluster starts at offset 0, a recreated stream can be given old ids, a file is edited), and such a record is
a dead letter of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from sira.ingest import gate
from sira.ingest.events import EVENT_COLUMNS, Rejection, Row, apply_mapping, bounded_json, stored_id
from sira.ingest.pii import Redactor

COLUMNS = ["event_id", "source", "reason_code", "reason", "field", "payload", "customer_id", "stream_position"]


async def dead_letters(conn: asyncpg.Connection, rejections: Sequence[Rejection], source: str, summary: Any) -> int:
    """Rejected records into ``sira_rejected_events`` (redacted already), counted by reason in ``summary``
    (``rejected``, ``reasons``); returns the repeats left out (already stored from the same position with the
    same payload). A record of an erased person, or naming one of their payments (a malformed label of it), is
    counted (reason ``erased_subject``), never kept: a rejected record's time cannot be trusted to tell an old
    one, which a re-imported file brings back, from a new one."""
    if not rejections:
        return 0
    placed = [j for j in rejections if j.position is not None]
    # the repeats among them (1-based): stored before, or earlier in this batch (same position and payload)
    repeats = set() if not placed else {r[0] for r in await conn.fetch(
        """SELECT n FROM (SELECT *, row_number() OVER (PARTITION BY position, md5(payload::text) ORDER BY n) AS k
                            FROM unnest($2::text[], $3::jsonb[]) WITH ORDINALITY AS r(position, payload, n)) r
            WHERE k > 1 OR EXISTS (SELECT 1 FROM sira_rejected_events e
                                    WHERE e.source = $1 AND e.stream_position = r.position
                                      AND md5(e.payload::text) = md5(r.payload::text) AND e.payload = r.payload
                                      -- another API caller's record is its own (sql/035)
                                      AND coalesce(e.posted_by, '')
                                          = coalesce(current_setting('sira.posted_by', true), ''))""",
        source, [j.position for j in placed], [j.payload for j in placed])}
    left = {id(placed[n - 1]) for n in repeats}
    fresh = [j for j in rejections if id(j) not in left]
    erased = await gate.erased(conn, "sira_erased_subjects", (j.customer_id for j in fresh if j.customer_id))
    # a record naming only an erased payment (a malformed label of it) is theirs too
    payments = await gate.erased(conn, "sira_erased_events", (j.event_id for j in fresh if j.event_id))

    def theirs(j: Rejection) -> bool:
        return j.customer_id in erased or j.event_id in payments

    kept = [j for j in fresh if not theirs(j)]
    if kept:
        await conn.copy_records_to_table(
            "sira_rejected_events", columns=COLUMNS,
            records=[(j.event_id, source, j.reason_code, j.reason, j.field, j.payload, j.customer_id, j.position)
                     for j in kept])
    summary.rejected += len(fresh)
    summary.reasons.update("erased_subject" if theirs(j) else j.reason_code for j in fresh)
    return len(rejections) - len(fresh)


# What says which payment an event is: a copy of an event_id that contradicts the event stored under it in one
# of them (both have a value, and they differ) is another event under a reused id, not a duplicate (a copy from
# another source may have fewer fields, or other attributes: a payment scored online, then loaded from an export).
IDENTITY = ("event_type", "occurred_at", "amount", "currency", "customer_id", "account_id", "card_token",
            "merchant_id", "terminal_id")
_AT = [EVENT_COLUMNS.index(c) for c in IDENTITY]


def identity(row: Row) -> tuple[Any, ...]:
    """A row's :data:`IDENTITY` values."""
    return tuple(row[i] for i in _AT)


def contradicted(event: Sequence[Any], copy: Row) -> list[str]:
    """The :data:`IDENTITY` fields in which a copy of an event_id contradicts the event (its :func:`identity`;
    amounts as stored: to 4 decimals)."""
    return [c for c, a, i in zip(IDENTITY, event, _AT) if a is not None and copy[i] is not None
            and (round(float(a), 4) != round(float(copy[i]), 4) if c == "amount" else a != copy[i])]


def reused_copy(row: Row, fields: Sequence[str], position: str | None) -> Rejection:
    """The dead letter of a copy of an event_id that names another event (its row as it would be stored)."""
    record = {c: v for c, v in zip(EVENT_COLUMNS, row) if c != "source"}
    return Rejection(record["event_id"], "event_id_reused", f"event_id already names another event (its "
                     f"{', '.join(fields)} differ): this copy was set aside, the first kept", "event_id",
                     bounded_json(record), record["customer_id"], position)


def undecodable_row(raw: Mapping[str, Any], column: str, redactor: Redactor, mapping: Mapping[str, str]) -> Rejection:
    """The dead letter of a file's row with bytes that are no UTF-8 in ``column`` (the first such), its payload the
    row with U+FFFD in their place, redacted. Set aside rather than stored with U+FFFD: that would lose the bytes
    for good (mended, the row loaded again would be a duplicate of its event_id); its file and row name it."""
    record = apply_mapping(raw, mapping)
    field = next((name for name, source in mapping.items() if source == column), column)
    return Rejection(stored_id(record.get("event_id"), redactor), "undecodable",
                     f"{field}: not UTF-8 text (its bytes that are none show as U+FFFD here)", field,
                     redactor.payload(bounded_json(dict(raw)), mapping), stored_id(record.get("customer_id"), redactor))


def poster_of(identity: Any) -> str | None:
    """Whose dead letters ``identity`` (an :class:`~sira.core.auth.Identity`, or None: the local user before any
    key exists) may read: None for every one (admin, the local user), else its own name: a service key reads the
    dead letters of the records it posted, never another caller's nor a stream's or a file's (other producers'
    records; it read those until 2026-12-07, and `sira rejected` with a service key read every one)."""
    return None if identity is None or "admin" in identity.roles else identity.name


async def list_dead_letters(conn: asyncpg.Connection, *, source: str | None = None, reason: str | None = None,
                            before: int | None = None, limit: int = 50,
                            poster: str | None = None) -> dict[str, Any]:
    """The dead letters, newest first (``source``: those whose source starts with it, e.g. ``file:`` or
    ``kafka``, and the rejected labels of such a source, stored under ``feedback:<source>``: ``kafka`` lists
    Kafka's rejected events and labels, ``feedback:`` every rejected label; ``reason``: a reason code;
    ``before``: an id, for the next page; ``poster``: only those of the records that API caller posted, sql/035;
    :func:`poster_of` says whose a reader may see), as stored: redacted; with ``next_before`` when there may be more."""
    rows = await conn.fetch(
        """SELECT id, rejected_at, source, stream_position, event_id, reason_code, field, reason, payload
             FROM sira_rejected_events
            WHERE ($1::text IS NULL OR starts_with(source, $1) OR starts_with(source, 'feedback:' || $1))
              AND ($2::text IS NULL OR reason_code = $2)
              AND ($3::bigint IS NULL OR id < $3)
              AND ($5::text IS NULL OR posted_by = $5)
            ORDER BY id DESC LIMIT $4""", source, reason, before, limit, poster)
    entries = [{**dict(r), "rejected_at": r["rejected_at"].isoformat(), "position": r["stream_position"]}
               for r in rows]
    for entry in entries:
        del entry["stream_position"]
    return {"entries": entries, "next_before": entries[-1]["id"] if len(entries) == limit else None}
