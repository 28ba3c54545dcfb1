"""Dead letters: what ingestion set aside in ``sira_rejected_events``, with the reason, never dropped.

A record read from a stream carries its position there (:attr:`Rejection.position`: a Redis entry id,
Kafka's ``topic:partition:offset``). A batch is read again after a crash between its commit and its
acknowledgement, a rebalance, or a claim by another consumer: its dead letters are then repeats, counted
as duplicates and not stored twice (sql/024: one row per source and position).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from sira.ingest import gate
from sira.ingest.events import Rejection

COLUMNS = ["event_id", "source", "reason_code", "reason", "field", "payload", "customer_id", "stream_position"]


async def dead_letters(conn: asyncpg.Connection, rejections: Sequence[Rejection], source: str, summary: Any) -> int:
    """Rejected records into ``sira_rejected_events`` (redacted already), counted by reason in ``summary``
    (``rejected``, ``reasons``); returns the repeats left out (already stored from the same position). A
    record of an erased person, or naming one of their payments (a malformed label of it), is counted (reason
    ``erased_subject``), never kept: a rejected record's time cannot be trusted to tell an old one, which a
    re-imported file brings back, from a new one."""
    if not rejections:
        return 0
    positions = sorted({j.position for j in rejections if j.position is not None})
    stored = set() if not positions else {r[0] for r in await conn.fetch(
        "SELECT stream_position FROM sira_rejected_events WHERE source = $1 AND stream_position = ANY($2::text[])",
        source, positions)}
    fresh = [j for j in rejections if j.position is None or j.position not in stored]
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
