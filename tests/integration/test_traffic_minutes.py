"""The dashboard's live traffic over time: every minute of the window up to now, a silent minute as zero answers
with no latency, so a chart spaces minutes as time passed (only the minutes with answers were returned: the bars
stood evenly spaced across silent minutes, latency lines were drawn through them and the axis stopped at the last
answer, not now)."""

from datetime import datetime, timedelta

from sira.core.auth import Identity
from sira.monitoring.history import traffic

VIEWER = Identity("vic", frozenset({"viewer"}))


async def test_every_minute_up_to_now_is_there_a_silent_one_with_zero_answers_and_no_latency(clean_db):
    async with clean_db.acquire() as conn:
        await conn.execute("INSERT INTO sira_models (name, model_type, created_by) VALUES ('fraud', 'fraud_detection', 't')")
        # answers 8 and 2 minutes ago (three, one degraded, and one), none in between nor since
        await conn.execute(
            """INSERT INTO sira_predictions (prediction_id, scored_at, model_id, model_name, version, role, score,
                                             decision, degraded, latency_ms)
               SELECT gen_random_uuid(), date_trunc('minute', now()) - a.ago * interval '1 minute' + interval '10 s',
                      m.id, 'fraud', 1, 'production', 0.5, a.decision, a.degraded, a.latency
                 FROM sira_models m, (VALUES (8, 'approve', false, 3.0), (8, 'block', true, 5.0), (8, 'review', false, 4.0),
                                             (2, 'approve', false, 7.0)) AS a (ago, decision, degraded, latency)""")
        now = await conn.fetchval("SELECT date_trunc('minute', now())")
        found = await traffic(conn, VIEWER, "fraud", 10)
    minutes = [datetime.fromisoformat(m["minute"]) for m in found["per_minute"]]
    assert minutes == [now - timedelta(minutes=10 - i) for i in range(11)]  # ten minutes ago up to now's minute
    by_ago = {int((now - at).total_seconds() // 60): m for at, m in zip(minutes, found["per_minute"], strict=True)}
    assert by_ago[8] == {"minute": by_ago[8]["minute"], "answers": 3, "approve": 1, "review": 1, "block": 1, "degraded": 1,
                         "p50_ms": 4.0, "p95_ms": by_ago[8]["p95_ms"], "p99_ms": by_ago[8]["p99_ms"]}
    assert 4.0 < by_ago[8]["p95_ms"] <= by_ago[8]["p99_ms"] <= 5.0
    assert by_ago[2]["answers"] == 1 and by_ago[2]["p50_ms"] == 7.0
    for ago in (10, 9, 7, 6, 5, 4, 3, 1, 0):  # silent: measured as none, no latency made up
        assert by_ago[ago] == {"minute": by_ago[ago]["minute"], "answers": 0, "approve": 0, "review": 0, "block": 0,
                               "degraded": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None}, ago
