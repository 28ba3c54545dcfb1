"""Labels that arrive before their event: kept and said to be pending, used once the event comes, expired
into the rejected table when it never does."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sira.features.definitions import PAYMENTS_V1
from sira.features.store import load_histories
from sira.ingest.bulk import store_events
from sira.ingest.labels import expire_pending_labels, import_label_files, record_labels
from sira.ingest.pii import Redactor

R = Redactor(b"pending-label-tests")
T0 = datetime(2026, 9, 1, tzinfo=timezone.utc)


def payment(event_id: str, minutes: int, terminal: str = "t1") -> dict:
    return {"event_id": event_id, "occurred_at": (T0 + timedelta(minutes=minutes)).isoformat(),
            "customer_id": "c1", "terminal_id": terminal, "card_number": "4111111111111111", "amount": 25.0,
            "country": "SN"}


async def pending(conn, event_id: str) -> bool:
    return await conn.fetchval("SELECT pending_since IS NOT NULL FROM sira_feedback WHERE event_id = $1", event_id)


async def test_a_label_before_its_event_is_pending_then_used_when_the_event_comes(clean_db):
    async with clean_db.acquire() as conn:
        async with conn.transaction():
            await store_events(conn, [payment("known-1", 0)], redactor=R, source="file")
        summary = await record_labels(conn, [
            {"event_id": "early-1", "label": True, "known_at": T0 + timedelta(hours=2), "source": "chargeback"},
            {"event_id": "known-1", "label": True, "known_at": T0 + timedelta(hours=2), "source": "chargeback"},
        ], redactor=R, pending_ttl_days=30)
        assert (summary.inserted, summary.pending_event, summary.expired) == (2, 1, 0)
        assert summary.to_dict()["pending_event"] == 1
        assert await pending(conn, "early-1") and not await pending(conn, "known-1")
        # resent with another value while still pending: still pending, still counted
        again = await record_labels(conn, [{"event_id": "early-1", "label": False, "known_at": T0 + timedelta(hours=3),
                                            "source": "chargeback"}], redactor=R)
        assert (again.updated, again.pending_event) == (1, 1)
        await conn.execute("UPDATE sira_feedback SET label = true, known_at = $1 WHERE event_id = 'early-1'",
                           T0 + timedelta(hours=2))

        # the event arrives: the label is used like any other (labels join events when read)
        async with conn.transaction():
            await store_events(conn, [payment("early-1", 30)], redactor=R, source="file")
        spec = PAYMENTS_V1.entity("terminal")
        history = (await load_histories(conn, spec, ["t1"], T0 - timedelta(days=1), T0 + timedelta(days=1),
                                        "fraud"))["t1"]
        labelled = {str(e) for e, k in zip(history.event_id, history.label_known_at) if k == k}  # k == k: not NaN
        assert labelled == {"known-1", "early-1"}

        # long after: its event came, so it is not expired; it only stops being pending
        await conn.execute("UPDATE sira_feedback SET pending_since = now() - interval '40 days'")
        assert await expire_pending_labels(conn, 30) == 0
        assert not await pending(conn, "early-1")
        assert await conn.fetchval("SELECT count(*) FROM sira_feedback") == 2


async def test_a_pending_label_whose_event_never_comes_expires_into_the_rejected_table(clean_db):
    async with clean_db.acquire() as conn:
        first = await record_labels(conn, [
            {"event_id": "never-1", "label": True, "known_at": T0, "source": "chargeback"},
            {"event_id": "young-1", "label": True, "known_at": T0, "source": "chargeback"},
        ], redactor=R, pending_ttl_days=30)
        assert first.pending_event == 2
        await conn.execute("UPDATE sira_feedback SET pending_since = now() - interval '31 days' "
                           "WHERE event_id = 'never-1'")
        # expiry runs with the next label write
        summary = await record_labels(conn, [{"event_id": "young-2", "label": False, "known_at": T0}], redactor=R,
                                      pending_ttl_days=30)
        assert (summary.inserted, summary.pending_event, summary.expired) == (1, 1, 1)
        left = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM sira_feedback")}
        assert left == {"young-1", "young-2"}
        dead = await conn.fetchrow("SELECT event_id, source, reason_code, field, payload FROM sira_rejected_events")
        assert (dead["event_id"], dead["source"], dead["reason_code"], dead["field"]) == (
            "never-1", "feedback:chargeback", "pending_label_expired", "event_id")
        assert dead["payload"]["label"] is True and dead["payload"]["label_name"] == "fraud"
        # a shorter time to live expires the younger ones too; nothing twice
        assert await expire_pending_labels(conn, 30) == 0
        await conn.execute("UPDATE sira_feedback SET pending_since = now() - interval '2 days'")
        assert await expire_pending_labels(conn, 1) == 2
        assert await conn.fetchval("SELECT count(*) FROM sira_feedback") == 0


async def test_feedback_import_counts_pending_labels_and_expires_with_the_setting(clean_db, settings, tmp_path):
    async with clean_db.acquire() as conn:
        async with conn.transaction():
            await store_events(conn, [payment("imp-known", 0)], redactor=R, source="file")
        await record_labels(conn, [{"event_id": "imp-old", "label": True, "known_at": T0}], redactor=R)
        await conn.execute("UPDATE sira_feedback SET pending_since = now() - interval '3 days'")
    labels = tmp_path / "labels.csv"
    labels.write_text("event_id,label,known_at\nimp-known,1,2026-09-02\nimp-early,1,2026-09-02\n")
    summary = await import_label_files(settings.model_copy(update={"pending_label_ttl_days": 2}), [labels],
                                       source="bank")
    assert summary.to_dict() | {"rejected_by_reason": {}} == {
        "read": 2, "inserted": 2, "updated": 0, "unchanged": 0, "duplicates": 0, "rejected": 0, "pending_event": 1,
        "expired": 1,
        "rejected_by_reason": {}}
    assert {r["event_id"] for r in await clean_db.fetch("SELECT event_id FROM sira_feedback")} == {
        "imp-known", "imp-early"}


async def test_post_feedback_answers_pending_event_for_an_event_not_stored_yet(clean_db, settings, tmp_path):
    import httpx

    from sira.core.auth import create_key
    from sira.http.app import create_app
    from sira.serving.config import ServingConfig
    from sira.serving.service import ScoringService

    async with clean_db.acquire() as conn:
        async with conn.transaction():
            key, _ = await create_key(conn, name="boot", roles=["admin"], pepper=settings.secret("auth_secret"),
                                      creator=None)
            await store_events(conn, [payment("api-known", 0)], redactor=R, source="file")
    app = create_app(settings, scoring=ScoringService(settings, ServingConfig(models=["fraud"], spool_dir=tmp_path)))
    headers = {"Authorization": f"Bearer {key}"}
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            r = await client.post("/v1/feedback", json={"event_id": "api-early", "label": True, "source": "chargeback"},
                                  headers=headers)
            assert r.status_code == 200 and r.json()["status"] == "pending_event", r.text
            r = await client.post("/v1/feedback", json={"event_id": "api-known", "label": True, "source": "chargeback"},
                                  headers=headers)
            assert r.status_code == 200 and r.json()["status"] == "recorded", r.text
    async with clean_db.acquire() as conn:
        assert await pending(conn, "api-early") and not await pending(conn, "api-known")
