"""A rebuild after data retention removed events (review finding): retention keeps the v2 daily checkpoints
so a fold that starts at the oldest kept event still finds its checkpoint, but `sira features rebuild` folded
the remaining log alone, replacing the states and checkpoints with ones that had forgotten everything before
the cut-off (a card's 7-day count at its newest event 12 -> 2), silently. It starts from those checkpoints."""

import asyncio
import json
import random
from datetime import datetime, timedelta, timezone

from sira.core import db
from sira.core.auth import Identity
from sira.core.config import Settings
from sira.features.definitions import PAYMENTS_V2
from sira.features.engine import engine_of
from sira.features.states import rebuild
from sira.monitoring import retention
from tests.conftest import cli_in_process

ENGINE = engine_of(PAYMENTS_V2)
UTC = timezone.utc
T0 = datetime(2026, 6, 1, 5, tzinfo=UTC)
NOW = T0 + timedelta(days=95)  # events' cut-off at 60 days: T0 + 35 days
ADMIN = Identity("k-admin", frozenset({"admin"}))


def payments(n=1_500, seed=11, days=90):
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        at = T0 + timedelta(seconds=rnd.randrange(days * 86_400))
        out.append({"event_id": f"r{i:05d}", "occurred_at": at, "customer_id": f"c{rnd.randrange(20)}",
                    "card_token": f"k{rnd.randrange(30)}", "terminal_id": f"t{rnd.randrange(6)}",
                    "amount": round(rnd.uniform(1, 900), 2), "country": rnd.choice(["SN", "CI", "FR"]),
                    "device_id": f"d{rnd.randrange(12)}"})
    # a card seen 12 times in the days around the cut-off, the last two after it (as the review's card)
    cut = NOW - timedelta(days=60)
    out += [{"event_id": f"x{i:02d}", "occurred_at": cut - timedelta(hours=100) + timedelta(hours=10 * i),
             "customer_id": "cx", "card_token": "kx", "terminal_id": "tx", "amount": 87.5, "country": "SN",
             "device_id": "dx"} for i in range(12)]
    return out


async def store(conn, events):
    await conn.executemany(
        """INSERT INTO sira_events (event_id, occurred_at, amount, customer_id, card_token, terminal_id, country,
                                    device_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        [(e["event_id"], e["occurred_at"], e["amount"], e["customer_id"], e["card_token"], e["terminal_id"],
          e["country"], e["device_id"]) for e in events])
    rnd = random.Random(5)  # positives known hours to days later: some of events retention removes, known after it
    await conn.executemany(
        "INSERT INTO sira_feedback (event_id, label_name, label, source, known_at) VALUES ($1, 'fraud', true, 't', $2)",
        [(e["event_id"], e["occurred_at"] + timedelta(hours=rnd.randrange(1, 240))) for e in events[::7]])


async def stored(conn):
    states = {(r["entity_type"], r["entity_id"]): (r["state"], r["newest_at"]) for r in await conn.fetch(
        "SELECT entity_type, entity_id, state, newest_at FROM sira_entity_states")}
    checkpoints = {(r["entity_type"], r["entity_id"], r["as_of"]): r["state"] for r in await conn.fetch(
        "SELECT entity_type, entity_id, as_of, state FROM sira_state_checkpoints")}
    return states, checkpoints


def features_at_newest(states):
    out = {}
    for (entity, key), (packed, _) in states.items():
        state = ENGINE.decode(entity, packed)
        out[(entity, key)] = ENGINE.features_at(entity, state, int(state[0, 1]))
    return out


async def test_a_rebuild_after_retention_starts_from_the_checkpoints_it_kept_and_loses_no_history(clean_db, settings):
    events = payments()
    async with db.transaction(clean_db) as conn:
        await store(conn, events)
        await rebuild(conn, PAYMENTS_V2)  # the uninterrupted fold
    async with clean_db.acquire() as conn:
        before_states, before_checkpoints = await stored(conn)

    kept_settings = Settings(database_url=settings.database_url, workspace=settings.workspace,
                             retention_events_days=60, retention_labels_days=60)
    done = await retention.apply(clean_db, ADMIN, kept_settings, secret="a test's auth secret, long enough",
                                 spool_dirs=[], now=NOW, only=["events", "labels", "feature_state"])
    removed = {s["step"]: s["removed"] for s in done["steps"]}
    assert removed["events"]["sira_events"] > 300, removed
    async with clean_db.acquire() as conn:
        # retention kept every state and every checkpoint here (none is older than the cut-off less 39 days)
        assert await stored(conn) == (before_states, before_checkpoints)
        assert await conn.fetchval("SELECT count(*) FROM sira_feedback_history h WHERE NOT EXISTS "
                                   "(SELECT 1 FROM sira_events e WHERE e.event_id = h.event_id)") > 0

    async with db.transaction(clean_db) as conn:
        again = await rebuild(conn, PAYMENTS_V2)
    async with clean_db.acquire() as conn:
        after_states, after_checkpoints = await stored(conn)
    assert features_at_newest(before_states)[("card", "kx")]["card_count_7d"] == 12
    assert features_at_newest(after_states) == features_at_newest(before_states)  # 12 -> 2 it was
    assert after_states == before_states  # bit for bit what the uninterrupted fold gave
    assert after_checkpoints == before_checkpoints  # none deleted, none replaced by a shorter log's
    assert again.kept_from is not None and again.kept_from > T0 + timedelta(days=35)


async def test_sira_features_rebuild_says_where_it_started_from(clean_db, pg_dsn, settings, monkeypatch, capsys):
    events = payments(n=600)
    async with db.transaction(clean_db) as conn:
        await store(conn, events)
        await rebuild(conn, PAYMENTS_V2)
    kept_settings = Settings(database_url=settings.database_url, workspace=settings.workspace,
                             retention_events_days=60, retention_labels_days=60)
    await retention.apply(clean_db, ADMIN, kept_settings, secret="a test's auth secret, long enough",
                          spool_dirs=[], now=NOW, only=["events"])
    async with clean_db.acquire() as conn:
        before = await stored(conn)
    env = {"SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(settings.workspace)}
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, "features", "rebuild",
                                   "--feature-set", "payments@2", "--json")
    assert done.returncode == 0, done.stderr
    async with clean_db.acquire() as conn:
        assert await stored(conn) == before
    report = json.loads(done.stdout)
    assert report["kept_from"] is not None, report
    assert datetime.fromisoformat(report["kept_from"]) > T0 + timedelta(days=35), report
    audited = await clean_db.fetchval("SELECT details->>'kept_from' FROM sira_audit_log"
                                      " WHERE action = 'features.rebuild' ORDER BY id DESC LIMIT 1")
    assert datetime.fromisoformat(audited) == datetime.fromisoformat(report["kept_from"])
    full = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, "features", "materialize", "--full",
                                   "--feature-set", "payments@2", "--json")  # the same fold
    assert full.returncode == 0, full.stderr
    async with clean_db.acquire() as conn:
        assert await stored(conn) == before


async def test_events_stored_after_the_checkpoints_are_folded_in_before_the_rebuild_starts_from_them(clean_db,
                                                                                                     settings):
    """An event stored since the last rebuild or materialize, older than where the rebuild starts (the checkpoints
    there lack it): brought into the checkpoints first, so the states are those of the whole log folded once."""
    events = payments(n=900, seed=13)
    cut = NOW - timedelta(days=60)
    later = [{**e, "event_id": f"n{i:03d}", "occurred_at": cut + timedelta(hours=5 + 7 * i)}
             for i, e in enumerate(events[:40])]  # after the cut-off, before and after where the rebuild starts
    async with db.transaction(clean_db) as conn:  # the reference: every event, nothing removed
        await store(conn, events + later)
        await rebuild(conn, PAYMENTS_V2)
        reference, _ = await stored(conn)
        await conn.execute("TRUNCATE sira_events, sira_feedback, sira_feedback_history, sira_entity_states,"
                           " sira_state_checkpoints, sira_job_watermarks")
        await store(conn, events)
        await rebuild(conn, PAYMENTS_V2)
    kept_settings = Settings(database_url=settings.database_url, workspace=settings.workspace,
                             retention_events_days=60, retention_labels_days=60)
    await retention.apply(clean_db, ADMIN, kept_settings, secret="a test's auth secret, long enough",
                          spool_dirs=[], now=NOW, only=["events", "labels", "feature_state"])
    async with db.transaction(clean_db) as conn:
        await conn.executemany(
            """INSERT INTO sira_events (event_id, occurred_at, amount, customer_id, card_token, terminal_id,
                                        country, device_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            [(e["event_id"], e["occurred_at"], e["amount"], e["customer_id"], e["card_token"], e["terminal_id"],
              e["country"], e["device_id"]) for e in later])
        again = await rebuild(conn, PAYMENTS_V2)
        states, _ = await stored(conn)
    assert again.kept_from is not None and min(e["occurred_at"] for e in later) < again.kept_from
    assert states == reference


async def test_with_no_checkpoint_kept_a_rebuild_folds_the_log_it_has(clean_db, settings):
    """Retention removed every checkpoint of a set (a retired one): the log is all there is to rebuild from, as
    the registry's feature_set_retired refusal asks (`sira features rebuild`)."""
    async with db.transaction(clean_db) as conn:
        await store(conn, payments(n=300))
        await rebuild(conn, PAYMENTS_V2)
    kept_settings = Settings(database_url=settings.database_url, workspace=settings.workspace,
                             retention_events_days=60)
    await retention.apply(clean_db, ADMIN, kept_settings, secret="a test's auth secret, long enough",
                          spool_dirs=[], now=NOW, only=["events"])
    async with db.transaction(clean_db) as conn:
        await conn.execute("DELETE FROM sira_state_checkpoints")
        await conn.execute("DELETE FROM sira_entity_states")
        again = await rebuild(conn, PAYMENTS_V2)
        left = await conn.fetchval("SELECT count(*) FROM sira_events")
    assert again.kept_from is None and again.events == left and again.checkpoints > 0
    assert sum(again.entities.values()) > 0
