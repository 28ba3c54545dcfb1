"""`sira ingest --source NAME`: the dead letters keep the name, and /metrics counts them under the kind of their
source (`file`), as the API's under `api`: one series per name given would grow without end."""
import asyncio
import csv

from sira.ingest import bulk as ingest
from sira.monitoring import exporter


async def test_a_named_file_source_is_counted_as_file_and_its_dead_letters_keep_the_name(clean_db, ray_session,
                                                                                       settings, tmp_path):
    path = tmp_path / "feed.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["event_id", "occurred_at", "customer_id", "amount"])
        writer.writeheader()
        writer.writerow({"event_id": "s1", "occurred_at": "2026-05-01T10:00:00Z", "customer_id": "c1", "amount": 5})
        writer.writerow({"event_id": "s2", "occurred_at": "not a time", "customer_id": "c1", "amount": 6})
    for name in ("bank-feed", "card-feed", "file:kept"):
        summary = await asyncio.to_thread(ingest.ingest_files, settings, [path], feature_sets=[], progress=False,
                                          source=name)
        assert summary.rejected == 1, summary.to_dict()
    sources = [r["source"] for r in await clean_db.fetch("SELECT source FROM sira_rejected_events ORDER BY id")]
    assert sources == ["file:bank-feed", "file:card-feed", "file:kept"]
    async with clean_db.acquire() as conn:
        counted = {r["source"]: r["n"] for r in (await exporter.read(conn))["ingest"] if r["what"] == "rejected"}
    assert counted == {"file": 3}
