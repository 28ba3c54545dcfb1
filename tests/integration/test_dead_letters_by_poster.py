"""GET /v1/events/rejected and `sira rejected` answer a service key the dead letters of the events and labels it
posted, never another API caller's (they were answered until 2026-12-07) nor a stream's or a file's (other
producers' records: answered until 2026-12-07, and `sira rejected` with a service key listed every one); admin
reads them all (sql/035)."""

import asyncio
import json

from sira.core import db
from sira.core.auth import Identity, create_key

ADMIN = Identity("test-admin", frozenset({"admin"}))


def bad_event(amount):
    return {"event_id": "e1", "occurred_at": "2026-09-01T10:00:00Z", "customer_id": "c1", "amount": amount}


async def test_a_service_key_never_reads_another_api_callers_dead_letters(client_and_keys, settings, clean_db):
    client, keys = client_and_keys
    headers = {}
    async with db.transaction(clean_db) as conn:
        for name in ("wallet", "shop"):
            key, _ = await create_key(conn, name=name, roles=["service"], pepper=settings.secret("auth_secret"),
                                      creator=ADMIN)
            headers[name] = {"Authorization": f"Bearer {key}"}
    # the same invalid record from both, and one of the shop's own, to the same source
    for name, amounts in (("wallet", [-1]), ("shop", [-1, -2]), ("wallet", [-1])):  # wallet's retry: a repeat
        for amount in amounts:
            answer = await client.post("/v1/events", json={"events": [bad_event(amount)], "source": "checkout"},
                                       headers=headers[name])
            assert answer.status_code == 200 and answer.json()["rejected"] == 1, answer.text
    # a stream's dead letter: posted by no API caller
    await clean_db.execute("INSERT INTO sira_rejected_events (source, reason_code, reason, payload) "
                           "VALUES ('stream', 'malformed', 'not JSON', '{}')")

    async def amounts(who):
        answer = await client.get("/v1/events/rejected", headers=headers.get(who) or keys[who])
        assert answer.status_code == 200, answer.text
        return sorted(str(e["payload"].get("amount", "-")) for e in answer.json()["entries"])

    assert await amounts("wallet") == ["-1"]
    assert await amounts("shop") == ["-1", "-2"]
    assert await amounts("admin") == ["-", "-1", "-1", "-2"]
    assert await clean_db.fetchval("SELECT count(*) FROM sira_rejected_events WHERE posted_by = 'wallet'") == 1
    return headers


async def test_sira_rejected_with_a_service_key_lists_what_it_posted(client_and_keys, settings, clean_db,
                                                                     monkeypatch, capsys):
    from tests.conftest import cli_in_process

    headers = await test_a_service_key_never_reads_another_api_callers_dead_letters(client_and_keys, settings,
                                                                                    clean_db)
    env = {"SIRA_DATABASE_URL": settings.database_url.get_secret_value(), "SIRA_WORKSPACE": str(settings.workspace)}
    for name, expected in (("wallet", 1), ("shop", 2)):
        key = headers[name]["Authorization"].removeprefix("Bearer ")
        done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, "rejected", "--json", "--api-key", key)
        assert done.returncode == 0, done.stderr
        assert len(json.loads(done.stdout)["entries"]) == expected, done.stdout


async def test_a_refused_labels_dead_letter_is_read_by_the_service_that_posted_it(clean_db, settings, tmp_path):
    """POST /v1/feedback's refused label went to the dead letters with no poster: its service could not read it."""
    import httpx

    from sira.http.app import create_app
    from sira.serving.config import ServingConfig
    from sira.serving.service import ScoringService

    async with db.transaction(clean_db) as conn:
        await create_key(conn, name="boot", roles=["admin"], pepper=settings.secret("auth_secret"), creator=None)
        key, _ = await create_key(conn, name="chargebacks", roles=["service"], pepper=settings.secret("auth_secret"),
                                  creator=ADMIN)
    mine = {"Authorization": f"Bearer {key}"}
    app = create_app(settings, scoring=ScoringService(settings, ServingConfig(models=["fraud"], spool_dir=tmp_path)))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            answer = await client.post("/v1/feedback", json={"event_id": "e-77", "label": True,
                                                             "known_at": "2099-01-01T00:00:00Z"}, headers=mine)
            assert answer.status_code == 422, answer.text
            stored = await clean_db.fetch("SELECT source, posted_by FROM sira_rejected_events")
            assert [r["posted_by"] for r in stored] == ["chargebacks"], stored
            page = await client.get("/v1/events/rejected", params={"source": "feedback:"}, headers=mine)
            assert page.status_code == 200 and len(page.json()["entries"]) == 1, page.text
