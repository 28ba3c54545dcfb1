"""The threshold what-if totals fraud amounts per currency: it summed the raw amounts of EUR and JPY payments
into one number ("fraud amount caught 20,200")."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from sira.core import db
from sira.core.artifacts import save_artifact
from sira.core.auth import Identity
from sira.ingest.bulk import redactor_for, store_events
from sira.monitoring.thresholds import caught_in_words, to_html, what_if
from sira.serving.records import write_predictions

NOW = datetime.now(timezone.utc).replace(microsecond=0)
FIRST = NOW - timedelta(days=70)


async def test_fraud_amounts_are_totalled_per_currency(clean_db, settings):
    n = 20  # even: EUR at 100, odd: JPY at 10,000; the four riskiest are fraud (two of each)
    async with db.transaction(clean_db) as conn:
        model_id = await conn.fetchval("""INSERT INTO sira_models (name, model_type, created_by, label_maturity_days)
                                          VALUES ('fraud', 'fraud_detection', 'admin', 10) RETURNING id""")
        ref = save_artifact(settings, "fraud/runs/cur", {"model.txt": b"tree\n"}, {"format": "sira-model/1"})
        await conn.execute(
            """INSERT INTO sira_model_versions (model_id, version, status, artifact_uri, artifact_sha256,
                                                feature_schema, metrics, thresholds, created_by)
               VALUES ($1, 1, 'production', $2, $3, '[]', '{}', '{"review": 0.5, "block": 0.9}', 'dana')""",
            model_id, ref.uri, ref.sha256)
        times = [FIRST + timedelta(hours=i) for i in range(n)]
        summary, _ = await store_events(conn, [
            {"event_id": f"cur-{i}", "occurred_at": at.isoformat(), "customer_id": f"c-{i}",
             "amount": 100.0 if i % 2 == 0 else 10_000.0, "currency": "EUR" if i % 2 == 0 else "JPY"}
            for i, at in enumerate(times)], redactor=redactor_for(settings), source="file")
        assert summary.accepted == n
        await write_predictions(conn, [
            {"prediction_id": str(uuid.uuid4()), "scored_at": at.isoformat(), "request_id": None,
             "model_id": model_id, "model_name": "fraud", "version": 1, "role": "production",
             "event_id": f"cur-{i}", "features": {}, "score": (i + 1) / (n + 1), "decision": "approve",
             "reasons": [], "flags": {}, "degraded": False, "latency_ms": 1.0} for i, at in enumerate(times)])
        await conn.executemany(
            "INSERT INTO sira_feedback (event_id, label, known_at, source) VALUES ($1, true, $2, 'cb')",
            [(f"cur-{i}", times[i] + timedelta(days=2)) for i in range(n - 4, n)])
    async with clean_db.acquire() as conn:
        result = await what_if(conn, Identity("t-viewer", frozenset({"viewer"})), "fraud", now=NOW,
                               also=(0.0, (n - 1) / (n + 1)))
    rows = {r["threshold"]: r for r in result["thresholds"]}
    everything, top_two = rows[0.0], rows[(n - 1) / (n + 1)]  # flags all; flags the two riskiest (18: EUR, 19: JPY)
    assert everything["fraud_amount_caught_by_currency"] == {"EUR": 200.0, "JPY": 20_000.0}
    assert everything["fraud_amount_share_by_currency"] == {"EUR": 1.0, "JPY": 1.0}
    assert top_two["fraud_amount_caught_by_currency"] == {"EUR": 100.0, "JPY": 10_000.0}
    assert top_two["fraud_amount_share_by_currency"] == {"EUR": 0.5, "JPY": 0.5}
    # a sum across currencies means nothing: null (it was 20,200, EUR and JPY added up), the totals per currency
    assert result["fraud_amount"] is None and everything["fraud_amount_caught"] is None
    assert everything["fraud_amount_share"] is None and result["fraud_amount_by_currency"] == {"EUR": 200.0,
                                                                                              "JPY": 20_000.0}
    assert caught_in_words(top_two) == "100 EUR (50%), 10,000 JPY (50%)"
    assert "100 EUR (50%), 10,000 JPY (50%)" in to_html(result)
