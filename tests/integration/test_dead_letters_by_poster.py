"""GET /v1/events/rejected answers a service key the dead letters of the events it posted (and those no API caller
posted: a stream's, a file's), never another API caller's (they were answered until 2026-12-07); admin reads them
all (sql/035)."""

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

    assert await amounts("wallet") == ["-", "-1"]
    assert await amounts("shop") == ["-", "-1", "-2"]
    assert await amounts("admin") == ["-", "-1", "-1", "-2"]
    assert await clean_db.fetchval("SELECT count(*) FROM sira_rejected_events WHERE posted_by = 'wallet'") == 1
