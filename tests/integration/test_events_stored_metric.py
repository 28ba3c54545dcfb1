"""``sira_events_stored_total`` (the exporter's ingest counter) counts events stored, not sequence values an
insert of events already stored consumed."""

from __future__ import annotations

from sira.features.definitions import PAYMENTS_V1
from sira.ingest.bulk import count_inserted, normalize_all, record_normalized, redactor_for, store_normalized
from sira.ingest.events import stored_row
from sira.monitoring.exporter import families, read


def events(n: int) -> list[dict]:
    return [{"event_id": f"m{i:03d}", "occurred_at": f"2026-09-01T{i % 24:02d}:00:00Z", "customer_id": f"c{i % 5}",
             "terminal_id": f"t{i % 3}", "amount": 10 + i} for i in range(n)]


async def stored_metric(pool) -> float:
    async with pool.acquire() as conn:
        found = families(await read(conn))
    (family,) = [f for f in found if f.name == "sira_events_stored"]
    (sample,) = family.samples
    return sample.value


async def test_events_stored_again_do_not_count_again(clean_db, settings):
    """The reviewer's case: 7,267 events already ingested, scored again through POST /v1/score/batch (the
    replica's recorder stores them with record_normalized): the counter said 22,731 for 15,464 rows."""
    source, rows = normalize_all(events(12), redactor_for(settings), "api")
    async with clean_db.acquire() as conn, conn.transaction():
        summary, fresh = await store_normalized(conn, rows, source)
    assert summary.accepted == len(fresh) == 12
    assert await stored_metric(clean_db) == 12
    for _ in range(2):  # a replica's recorder stores the events it scored: all of them there already
        async with clean_db.acquire() as conn, conn.transaction():
            assert await record_normalized(conn, PAYMENTS_V1, fresh) == 0
    async with clean_db.acquire() as conn, conn.transaction():  # a file loaded again (the bulk path)
        assert await count_inserted(conn, [stored_row(r) for r in fresh]) == 0
    async with clean_db.acquire() as conn, conn.transaction():  # with new ones among them
        _, more = normalize_all(events(15), redactor_for(settings), "api")
        assert await record_normalized(conn, PAYMENTS_V1, more) == 3
    assert await clean_db.fetchval("SELECT count(*) FROM sira_events") == 15
    assert await stored_metric(clean_db) == 15
