"""``sira pii rekey-cards``: card numbers that older versions stored as sent in ``card_token`` become their keyed
tokens everywhere SIRA keeps them, and what was derived under the raw key is rebuilt from the log. A private
database: the session's shared one is left alone."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest

from sira.core import db
from sira.core.config import reset_settings
from tests.conftest import private_installation
from tests.integration.test_erasure import pg_dump
from tests.integration.test_stream import assert_folded_once_into_v2

PAN = "4111111111111111"
START = datetime(2026, 10, 1, 9, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def installation(create_database, fraud_model, redis_url):
    return private_installation(create_database, fraud_model, "sira_rekey", redis_url)


def payment(k: int, **card: str) -> dict:
    return {"event_id": f"ev-rekey-{k}", "occurred_at": (START + timedelta(hours=k)).isoformat(),
            "customer_id": "cus-rekey", "terminal_id": "t-rekey", "amount": 20.0 + k, "country": "FR",
            "channel": "web", **card}


async def stored_as_older_versions_did(dsn: str, settings) -> str:
    """Six payments of one card: three sent as a card number (tokenised), three whose card number came in
    ``card_token`` and was kept as sent (what the per-record path did before the fix), one opaque card
    token; a dead letter and a v1 feature row that hold the number; v2 states and v1 snapshots built from
    that log. Returns the card number's token."""
    from sira.features.definitions import PAYMENTS_V1, PAYMENTS_V2
    from sira.features.states import rebuild
    from sira.features.store import materialize
    from sira.ingest.bulk import redactor_for, store_events

    redactor = redactor_for(settings)
    records = [payment(k, card_number=PAN) for k in range(3)] + [payment(k, card_token=f"as-sent-{k}")
                                                                 for k in range(3, 6)]
    records.append(payment(6, card_token="card-opaque-77"))
    pool = await db.create_pool(dsn, settings)
    try:
        async with db.transaction(pool) as conn:
            summary, _ = await store_events(conn, records, redactor=redactor, source="older")
            assert summary.accepted == 7
            await conn.execute("UPDATE sira_events SET card_token = $1 WHERE card_token LIKE 'as-sent-%'", PAN)
            await conn.execute("INSERT INTO sira_rejected_events (event_id, source, reason_code, reason, payload) "
                               "VALUES ('ev-rekey-bad', 'older', 'invalid_field', 'amount: negative', $1)",
                               {"card_token": PAN, "amount": -1})
            await conn.execute(
                "INSERT INTO sira_features (feature_set, feature_set_version, entity_type, entity_id, as_of, event_id, "
                "features) VALUES ('payments', 1, 'card', $1, $2, 'ev-rekey-3', '{}')", PAN, START + timedelta(hours=3))
            await rebuild(conn, PAYMENTS_V2)
            await materialize(conn, PAYMENTS_V1, full=True)
    finally:
        await pool.close()
    return redactor.field("card_number", PAN)[1]


async def test_card_numbers_kept_as_card_tokens_are_rekeyed_and_what_derives_from_them_rebuilt(
        installation, monkeypatch, capsys):
    import redis

    inst = installation
    token = await stored_as_older_versions_did(inst.dsn, inst.settings)
    assert token.startswith("tok_") and PAN in pg_dump(inst.dsn)
    cache = redis.Redis.from_url(inst.redis_url)
    stale = [f"sira:state:0123abcd:payments@2:card:{PAN}", f"sira:history:0123abcd:card:{PAN}",  # as replicas write
             f"sira:history:card:{PAN}"]  # as they wrote histories before 2026-12-06
    kept = ["sira:state:0123abcd:payments@2:card:card-opaque-77", f"sira:state:0123abcd:payments@2:card:{token}"]
    for key in stale + kept:
        cache.set(key, b"a cached state")

    from sira.cli.main import main

    async def sira(who: str, *args: str):
        monkeypatch.setenv("SIRA_DATABASE_URL", inst.dsn)
        monkeypatch.setenv("SIRA_WORKSPACE", str(inst.settings.workspace))
        monkeypatch.setenv("SIRA_REDIS_URL", inst.redis_url)
        monkeypatch.setenv("SIRA_API_KEY", inst.keys[who])
        reset_settings()
        try:
            return await asyncio.to_thread(main, ["pii", "rekey-cards", *args]), capsys.readouterr()
        finally:
            reset_settings()

    code, out = await sira("data_scientist", "--apply")  # an admin's task
    assert code != 0 and "admin" in out.err and PAN in pg_dump(inst.dsn)
    code, out = await sira("admin", "--json")  # a dry run counts and changes nothing
    assert code == 0, out.err
    counted = json.loads(out.out)
    assert (counted["applied"], counted["card_tokens"], counted["events"]) == (False, 1, 3)
    assert PAN in pg_dump(inst.dsn)

    code, out = await sira("admin", "--apply", "--json")
    assert code == 0, out.err
    assert PAN not in out.out + out.err
    done = json.loads(out.out)
    assert (done["card_tokens"], done["events"], done["dead_letters"], done["feature_rows"]) == (1, 3, 1, 1)
    assert done["rebuilt"] == ["payments@1", "payments@2"] and done["redis"] == "cleaned (3 keys)"
    assert PAN not in pg_dump(inst.dsn)
    assert [cache.exists(k) for k in stale + kept] == [0, 0, 0, 1, 1]

    pool = await db.create_pool(inst.dsn, inst.settings)
    try:
        cards = await pool.fetch("SELECT card_token, count(*) AS n FROM sira_events GROUP BY 1 ORDER BY 1")
        assert {r["card_token"]: r["n"] for r in cards} == {token: 6, "card-opaque-77": 1}
        await assert_folded_once_into_v2(pool, n=7)  # the card's state is its six payments, under one key
        assert await pool.fetchval("SELECT count(*) FROM sira_entity_states WHERE entity_type = 'card' "
                                   "AND entity_id = $1", token) == 1
        # feature set v1's snapshot of the card holds its six payments (it held the three sent as a number)
        assert await pool.fetchval("SELECT jsonb_array_length(state->'rows') FROM sira_feature_snapshots "
                                   "WHERE entity_type = 'card' AND entity_id = $1", token) == 6
        assert await pool.fetchval("SELECT count(*) FROM sira_audit_log WHERE action = 'pii.rekey_cards'") == 1
    finally:
        await pool.close()
    # nothing is left to re-key; Redis is cleaned again (a run whose Redis step failed is retried this way)
    cache.set(stale[0], b"written back by a replica that had not heard")
    code, out = await sira("admin", "--apply", "--json")
    assert code == 0 and json.loads(out.out)["card_tokens"] == 0 and not cache.exists(stale[0])
    cache.close()


async def test_a_feature_row_changes_only_by_a_card_becoming_its_token(clean_db):
    """sql/019: under `sira.rekey` a v1 feature row's card id may become a token, nothing else; the audit log
    and any other change stay refused."""
    import asyncpg

    await clean_db.execute(
        "INSERT INTO sira_features (feature_set, feature_set_version, entity_type, entity_id, as_of, event_id, "
        "features) VALUES ('payments', 1, 'card', $1, now(), 'e1', '{}'), "
        "('payments', 1, 'customer', 'c1', now(), 'e1', '{}')", PAN)
    await clean_db.execute("INSERT INTO sira_audit_log (actor, actor_kind, action) VALUES ('a', 'api_key', 'x')")
    token = "tok_pan_" + "0" * 24
    refused = ["UPDATE sira_features SET entity_id = 'not-a-token' WHERE entity_type = 'card'",
               "UPDATE sira_features SET features = '{\"x\": 1}' WHERE entity_type = 'card'",
               f"UPDATE sira_features SET entity_id = '{token}' WHERE entity_type = 'customer'",
               "UPDATE sira_audit_log SET actor = 'mallory'"]
    for sql in refused:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            async with db.transaction(clean_db) as conn:
                await conn.execute("SET LOCAL sira.rekey = 'on'")
                await conn.execute(sql)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # without the switch, not even a token
        await clean_db.execute(f"UPDATE sira_features SET entity_id = '{token}' WHERE entity_type = 'card'")
    async with db.transaction(clean_db) as conn:
        await conn.execute("SET LOCAL sira.rekey = 'on'")
        await conn.execute(f"UPDATE sira_features SET entity_id = '{token}' WHERE entity_type = 'card'")
    assert await clean_db.fetchval("SELECT entity_id FROM sira_features WHERE entity_type = 'card'") == token
