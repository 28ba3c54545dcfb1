"""The threshold what-if's default window follows the version's labelled answers, as live performance's does,
and a window without labelled answers of both classes says which window, or which version, has them.

`sira thresholds --model fraud` after the demo answered `empty_window: ... between 2026-10-30 and 2026-11-27`:
the default window counted back from now, while the demo's answers were six weeks older."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from sira.core import db
from sira.core.artifacts import save_artifact
from sira.core.auth import Identity
from sira.core.errors import InvalidInput
from sira.monitoring.thresholds import what_if
from sira.serving.records import write_predictions

VIEWER = Identity("t-viewer", frozenset({"viewer"}))
NOW = datetime.now(timezone.utc).replace(microsecond=0)
V1_FIRST = NOW - timedelta(days=70)  # before the window that counted back from now (38 to 10 days ago)


async def answers(conn, version: int, first: datetime, n: int, frauds: int) -> list[datetime]:
    """``n`` production answers of ``version``, an hour apart from ``first``; the ``frauds`` riskiest got a
    chargeback two days later, the others none (legitimate once older than the label maturity)."""
    model_id = await conn.fetchval("SELECT id FROM sira_models WHERE name = 'fraud'")
    times = [first + timedelta(hours=i) for i in range(n)]
    records = [{"prediction_id": str(uuid.uuid4()), "scored_at": at.isoformat(), "request_id": None,
                "model_id": model_id, "model_name": "fraud", "version": version, "role": "production",
                "event_id": f"v{version}-e{i}", "features": {"amount": 10.0}, "score": (i + 1) / (n + 1),
                "decision": "approve", "reasons": [], "flags": {}, "degraded": False, "latency_ms": 1.0}
               for i, at in enumerate(times)]
    await write_predictions(conn, records)
    await conn.executemany("INSERT INTO sira_feedback (event_id, label, known_at, source) VALUES ($1, true, $2, 'cb')",
                           [(r["event_id"], times[i] + timedelta(days=2)) for i, r in enumerate(records)][n - frauds:])
    return times


@pytest.fixture
async def answered(clean_db, settings):
    """fraud v1 with 60 labelled answers (6 fraud) ten weeks ago; v2 (production) with 5, none fraud."""
    async with db.transaction(clean_db) as conn:
        model_id = await conn.fetchval("""INSERT INTO sira_models (name, model_type, created_by, label_maturity_days)
                                          VALUES ('fraud', 'fraud_detection', 'admin', 10) RETURNING id""")
        for version, status in ((1, "archived"), (2, "production")):
            ref = save_artifact(settings, f"fraud/runs/v{version}", {"model.txt": b"tree\n"}, {"format": "sira-model/1"})
            await conn.execute(
                """INSERT INTO sira_model_versions (model_id, version, status, artifact_uri, artifact_sha256,
                                                    feature_schema, metrics, thresholds, created_by)
                   VALUES ($1, $2, $3, $4, $5, '[]', '{}', '{"review": 0.5, "block": 0.9}', 'dana')""",
                model_id, version, status, ref.uri, ref.sha256)
        v1 = await answers(conn, 1, V1_FIRST, 60, 6)
        await answers(conn, 2, NOW - timedelta(days=65), 5, 0)
    return v1


async def ask(pool, **kwargs):
    async with pool.acquire() as conn:
        return await what_if(conn, VIEWER, "fraud", now=NOW, **kwargs)


async def test_the_default_window_ends_at_the_versions_newest_labelled_answer(clean_db, answered):
    result = await ask(clean_db, version=1)
    assert (result["labelled"], result["positives"]) == (60, 6)
    assert result["window"]["to"] == (answered[-1] + timedelta(microseconds=1)).isoformat()
    assert result["provisional"] is False  # ten weeks old: every label has matured


async def test_a_version_without_both_classes_is_told_which_version_has_them(clean_db, answered):
    with pytest.raises(InvalidInput) as caught:
        await ask(clean_db)  # production's: v2
    assert caught.value.code == "empty_window"
    message = caught.value.message
    assert message.startswith("fraud v2 has 5 labelled answers, 0 of them fraud: both classes are needed")
    assert (f"v1 has 60 (6 fraud) between {answered[0]:%Y-%m-%d} and {answered[-1]:%Y-%m-%d}: version 1"
            in message)  # the parameter as both the CLI (--version) and the API (?version=) name it
    assert caught.value.details["field"] == "version" and caught.value.details["versions"] == [1]


async def test_a_window_without_both_classes_is_told_where_the_versions_labelled_answers_are(clean_db, answered):
    with pytest.raises(InvalidInput) as caught:
        await ask(clean_db, version=1, time_from=NOW - timedelta(days=20), time_to=NOW - timedelta(days=15))
    message = caught.value.message
    assert caught.value.code == "empty_window" and "fraud v1 has no labelled answers of both classes between" in message
    until = answered[-1] + timedelta(days=1)
    assert f"its 60 (6 fraud) are between {answered[0]:%Y-%m-%d} and {answered[-1]:%Y-%m-%d}: " \
           f"from {answered[0]:%Y-%m-%d} to {until:%Y-%m-%d}" in message
    assert caught.value.details["field"] == "from"
    assert caught.value.details["suggested"] == {"from": f"{answered[0]:%Y-%m-%d}", "to": f"{until:%Y-%m-%d}"}
    result = await ask(clean_db, version=1, time_from=answered[0].replace(hour=0, minute=0, second=0),
                       time_to=until.replace(hour=0, minute=0, second=0))
    assert (result["labelled"], result["positives"]) == (60, 6)  # the window it named works
