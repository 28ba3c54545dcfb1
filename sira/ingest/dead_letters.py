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
    record of an erased person is counted (reason ``erased_subject``), never kept: a rejected record's time
    cannot be trusted to tell an old one, which a re-imported file brings back, from a new one."""
    if not rejections:
        return 0
    positions = sorted({j.position for j in rejections if j.position is not None})
    stored = set() if not positions else {r[0] for r in await conn.fetch(
        "SELECT stream_position FROM sira_rejected_events WHERE source = $1 AND stream_position = ANY($2::text[])",
        source, positions)}
    fresh = [j for j in rejections if j.position is None or j.position not in stored]
    erased = await gate.erased(conn, "sira_erased_subjects", (j.customer_id for j in fresh if j.customer_id))
    kept = [j for j in fresh if j.customer_id not in erased]
    if kept:
        await conn.copy_records_to_table(
            "sira_rejected_events", columns=COLUMNS,
            records=[(j.event_id, source, j.reason_code, j.reason, j.field, j.payload, j.customer_id, j.position)
                     for j in kept])
    summary.rejected += len(fresh)
    summary.reasons.update(j.reason_code if j.customer_id not in erased else "erased_subject" for j in fresh)
    return len(rejections) - len(fresh)
