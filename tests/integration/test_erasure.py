"""Erasure (``sira subject forget``): two admins, and afterwards nothing of the person anywhere SIRA writes:
a ``pg_dump`` of the database, Redis (cached states, answers, the event stream), the serving spool, the
logs. Another customer's data stays; the person's old events are never stored again, a new one starts a
fresh history. A private database: the session's shared one is left alone."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from sira.core import db
from sira.core.config import reset_settings
from tests.conftest import private_installation, run_sync, scoring_client

NOW = datetime.now(timezone.utc).replace(microsecond=0)


@pytest.fixture(scope="module")
def installation(create_database, fraud_model, redis_url, tmp_path_factory):
    """A database of its own (the session's model in production), Redis, two admins' keys, a spool folder."""
    inst = private_installation(create_database, fraud_model, "sira_erasure", redis_url)
    inst.spool = tmp_path_factory.mktemp("erasure-spool")
    return inst


def payment(customer: str, card: str, device: str, k: int, at: datetime | None = None) -> dict:
    return {"event_id": f"ev-{customer}-{k}", "occurred_at": (at or NOW - timedelta(hours=5 - k)).isoformat(),
            "customer_id": customer, "card_token": card, "device_id": device, "terminal_id": "t-erasure",
            "amount": 30.0 + k, "country": "FR", "channel": "web"}


def pg_dump(dsn: str) -> str:
    import pgserver

    binary = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump"
    done = subprocess.run([str(binary), "--data-only", "--no-owner", dsn], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode("utf-8", "replace")


def redis_text(url: str) -> bytes:
    """Every key and value of the Redis database, as bytes."""
    import redis

    client = redis.Redis.from_url(url)
    out = []
    try:
        for key in client.scan_iter(count=1000):
            out.append(key)
            kind = client.type(key)
            if kind == b"string":
                out.append(client.get(key) or b"")
            elif kind == b"hash":
                out += [b"%s=%s" % kv for kv in client.hgetall(key).items()]
            elif kind == b"stream":
                out += [b"%s" % orjson.dumps({k.decode(): v.decode() for k, v in fields.items()})
                        for _, fields in client.xrange(key)]
            elif kind in (b"list",):
                out += client.lrange(key, 0, -1)
            elif kind in (b"set",):
                out += list(client.smembers(key))
            elif kind == b"zset":
                out += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
    finally:
        client.close()
    return b"\n".join(out)


async def test_forget_needs_two_admins_and_leaves_nothing_of_the_person(installation, monkeypatch, capsys, caplog,
                                                                       tmp_path):
    inst = installation
    run = uuid.uuid4().hex[:8]
    person, other = f"cus-forget-{run}", f"cus-stays-{run}"
    card, device = f"tok_card_{run}", f"dev-{run}"
    email = f"jo-{run}@example.com"
    needles = [person, card, device, f"ev-{person}-", email]
    service_key = {"Authorization": f"Bearer {inst.keys['service']}"}

    # what SIRA comes to hold about them: events (HTTP), scored payments (spool, Redis), a label, a dead letter
    monkeypatch.setenv("SIRA_DATABASE_URL", inst.dsn)
    monkeypatch.setenv("SIRA_WORKSPACE", str(inst.settings.workspace))
    monkeypatch.setenv("SIRA_REDIS_URL", inst.redis_url)
    reset_settings()
    async with scoring_client(inst, tmp_path / "live-spool") as (client, service):
        stored = await client.post("/v1/events", json={"events": [
            payment(person, card, device, 0), payment(person, card, device, 1),
            payment(other, f"tok_other_{run}", f"dev-other-{run}", 0)]}, headers=service_key)
        assert stored.status_code == 200, stored.text
        bad = await client.post("/v1/events", json={"events": [{**payment(person, card, device, 9), "amount": -1}]},
                                headers=service_key)
        assert bad.json()["rejected"] == 1
        answers = [(await client.post("/v1/score", json={"model": "fraud", "request_id": f"req-{run}-{k}",
                                                          "event": payment(who, c, d, k + 2)}, headers=service_key)).json()
                   for k, (who, c, d) in enumerate([(person, card, device), (person, card, device),
                                                    (other, f"tok_other_{run}", f"dev-other-{run}")])]
        assert all("prediction_id" in a for a in answers), answers
        label = await client.post("/v1/feedback", json={"event_id": answers[0]["event_id"], "label": True,
                                                        "source": "chargeback"}, headers=service_key)
        assert label.status_code in (200, 201), label.text
        await service.flush()
    # a dead replica's spool segment, and a stream entry not consumed yet
    inst.spool.joinpath("dead-00000001.spool").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in [
        {"kind": "event", "feature_set": "payments", "feature_set_version": 2,
         "row": {**payment(person, card, device, 7), "event_id": f"ev-{person}-spooled"}},
        {"kind": "prediction", "event_id": f"ev-{person}-spooled", "model_name": "fraud"},
        {"kind": "event", "feature_set": "payments", "feature_set_version": 2, "row": payment(other, "x", "y", 7)}]))
    import redis

    r = redis.Redis.from_url(inst.redis_url)
    r.xadd("sira:events", {"kind": "event", "data": json.dumps(payment(person, card, device, 8))})
    r.xadd("sira:events", {"kind": "event", "data": json.dumps(payment(other, "x", "y", 8))})
    r.close()
    # a counterfactual an explanation report settled for one of their decisions (sira_counterfactuals)
    await _one(inst.dsn, "INSERT INTO sira_counterfactuals (prediction_id, result) VALUES ($1, $2) RETURNING 1",
               uuid.UUID(answers[0]["prediction_id"]), {"available": True, "tries": 3, "change": {"amount": {}}})
    before = pg_dump(inst.dsn)
    assert person in before and card in before and person.encode() in redis_text(inst.redis_url)

    from sira.cli.main import main

    async def sira(who: str, *args: str):
        """The command line, in a thread (it runs its own event loop)."""
        monkeypatch.setenv("SIRA_API_KEY", inst.keys[who])
        reset_settings()
        try:
            return await asyncio.to_thread(main, list(args)), capsys.readouterr()
        finally:
            reset_settings()

    caplog.set_level(logging.DEBUG)
    reason = f"art. 17 request from {person}, reply to {email}"  # the id and an email: neither is kept
    code, out = await sira("analyst", "subject", "forget", "--customer", person, "--reason", reason)
    assert code == 2 and out.err.startswith("error: forbidden:"), out.err
    code, out = await sira("admin", "subject", "forget", "--customer", person, "--reason", reason, "--json")
    assert code == 0, out.err
    request = json.loads(out.out)
    assert request["status"] == "pending" and person not in out.out
    code, out = await sira("admin", "subject", "forget", "--customer", person, "--approve", str(request["request_id"]))
    assert code == 2 and "self_approval" in out.err, out.err  # the requester cannot carry it out
    code, out = await sira("admin-b", "subject", "forget", "--customer", other, "--approve", str(request["request_id"]))
    assert code == 2 and "subject_mismatch" in out.err, out.err  # the id must be the one asked for
    # Redis unreachable: the database part is done, the command says what is left and fails
    monkeypatch.setenv("SIRA_REDIS_URL", "redis://127.0.0.1:1/0")
    approve = ("subject", "forget", "--customer", person, "--approve", str(request["request_id"]),
               "--spool-dir", str(inst.spool), "--json")
    code, first = await sira("admin-b", *approve)
    assert code == 1 and first.err.startswith("error: erasure_incomplete:") and "run the same --approve" in first.err
    # the same command again, Redis back: what it holds goes too
    monkeypatch.setenv("SIRA_REDIS_URL", inst.redis_url)
    code, out = await sira("admin-b", *approve)
    assert code == 0, out.err
    done = json.loads(out.out)
    assert done["retry"] and done["counts"]["redis"] == "cleaned" and done["counts"]["redis_cached_entries"] >= 1
    assert done["counts"]["stream_entries"] == 1
    logged = first.out + first.err + out.out + out.err + caplog.text

    # nothing of the person anywhere SIRA writes; the other customer's data stays
    after = pg_dump(inst.dsn)
    for needle in needles:
        assert needle not in after, f"{needle} is still in the database"
        assert needle.encode() not in redis_text(inst.redis_url), f"{needle} is still in Redis"
        assert all(needle.encode() not in p.read_bytes() for p in inst.spool.rglob("*") if p.is_file())
        assert needle not in logged
    assert other in after and other.encode() in inst.spool.joinpath("dead-00000001.spool").read_bytes()
    tombstone = await _one(inst.dsn, "SELECT * FROM sira_erasure_requests WHERE id = $1", request["request_id"])
    assert tombstone["status"] == "executed" and tombstone["requested_by"] == "k-admin"
    assert tombstone["decided_by"] == "k-admin-b" and tombstone["cleanup"] is None  # nothing left to clean
    assert tombstone["reason"].startswith(f"art. 17 request from {done['subject']}, reply to [email]")
    counts = tombstone["counts"]
    assert counts["events"] == 4 and counts["predictions"] >= 2 and counts["labels"] == 1
    assert counts["counterfactuals"] == 1
    # the customer's and their card's states; the terminal is not theirs
    assert counts["rejected_events"] == 1 and counts["entity_states"] == 2 and counts["stream_entries"] == 1
    assert counts["shared_histories_deidentified"] >= 1 and (counts["redis"], counts["spool"]) == ("cleaned", "cleaned")
    assert counts["spool_records"] == 2  # the dead replica's event and its answer, on the first run
    audit = await _one(inst.dsn, "SELECT target_id, details FROM sira_audit_log WHERE action = 'subject.forget'")
    assert audit["target_id"] == done["subject"] == request["subject"]

    # an old event of theirs is never stored again; a new one starts a fresh history
    async with scoring_client(inst, tmp_path / "spool-2") as (client, service):
        again = await client.post("/v1/events", json={"events": [payment(person, card, device, 0)]},
                                  headers=service_key)
        assert again.status_code == 200 and again.json()["accepted"] == 0
        fresh = (await client.post("/v1/score", json={"model": "fraud", "event": {
            **payment(person, card, device, 20, at=datetime.now(timezone.utc) + timedelta(seconds=5)),
            "event_id": f"new-{run}"}}, headers=service_key)).json()
        await service.flush()
    assert await _one(inst.dsn, "SELECT count(*) AS n FROM sira_events WHERE customer_id = $1", person) == {"n": 1}
    features = await _one(inst.dsn, "SELECT features FROM sira_predictions WHERE prediction_id = $1",
                          uuid.UUID(fresh["prediction_id"]))
    assert features["features"]["customer_count_30d"] == 1  # nothing of before
    reset_settings()
    os.environ.pop("SIRA_API_KEY", None)


async def _one(dsn: str, sql: str, *args):
    conn = await db.connect(dsn)
    try:
        row = await conn.fetchrow(sql, *args)
        return {k: (json.loads(v) if k in ("counts", "details") and isinstance(v, str) else v)
                for k, v in dict(row).items()} if row is not None else None
    finally:
        await conn.close()

async def _erase(pool, settings, customer: str, reason: str = "the person asked") -> dict:
    """One person erased as the two-admin flow does it: ann asks, bob carries it out; bob's answer."""
    from sira.core.auth import Identity
    from sira.ingest.bulk import redactor_for
    from sira.monitoring.erasure import forget, request_forget

    secret, redactor = settings.secret("auth_secret"), redactor_for(settings)
    ann, bob = Identity("ann", frozenset({"admin"})), Identity("bob", frozenset({"admin"}))
    async with db.transaction(pool) as conn:
        request = await request_forget(conn, ann, customer, reason, secret=secret, redactor=redactor)
        return await forget(conn, bob, customer, request["request_id"], secret=secret, redactor=redactor)



async def test_dead_letters_of_a_mapped_import_are_found_exported_and_erased(clean_db, settings):
    """A dead letter keeps its record with the source's column names (for replay): a file mapped with --map
    (CUST -> customer_id) stored the person's refused row under CUST, where neither the export nor the erasure
    looked (payload->>'customer_id'): it survived the erasure with the person's id in it. Dead letters now
    name the customer as sira_events does."""
    from sira.core.auth import Identity
    from sira.ingest.bulk import redactor_for, store_events
    from sira.ingest.labels import record_labels
    from sira.monitoring.subject import export_subject

    rows = [{"TX": "m-1", "AT": "2026-09-01T10:00:00Z", "CUST": "C-777", "AMT": 12.0},
            {"TX": "m-2", "AT": "2026-09-01T11:00:00Z", "CUST": "C-777", "AMT": -5.0},  # refused: negative
            {"TX": "m-3", "AT": "2026-09-01T12:00:00Z", "CUST": "C-778", "AMT": -1.0}]  # another person's
    mapping = {"event_id": "TX", "occurred_at": "AT", "customer_id": "CUST", "amount": "AMT"}
    async with db.transaction(clean_db) as conn:
        summary, _ = await store_events(conn, rows, redactor=redactor_for(settings), source="file", mapping=mapping)
        # a chargeback on the payment SIRA refused: pending (no stored event), and the person's
        await record_labels(conn, [{"event_id": "m-2", "label": True, "source": "chargeback",
                                    "known_at": "2026-09-20T00:00:00Z"}], redactor=redactor_for(settings))
    assert (summary.accepted, summary.rejected) == (1, 2)
    ann = Identity("ann", frozenset({"admin"}))
    async with db.transaction(clean_db) as conn:
        bundle = await export_subject(conn, ann, "C-777", settings)
    assert [r["event_id"] for r in bundle["rejected_events"]] == ["m-2"]
    assert [r["event_id"] for r in bundle["labels"]] == ["m-2"]  # was left out (labels of stored events only)
    done = await _erase(clean_db, settings, "C-777")
    assert done["counts"]["rejected_events"] == 1 and done["counts"]["labels"] == 1
    assert await clean_db.fetchval("SELECT count(*) FROM sira_feedback") == 0
    left = await clean_db.fetch("SELECT payload FROM sira_rejected_events")
    assert len(left) == 1 and "C-777" not in json.dumps([r["payload"] for r in left])
    # the same file again: their refused row is counted, not kept (it came back as a dead letter)
    async with db.transaction(clean_db) as conn:
        again, _ = await store_events(conn, rows, redactor=redactor_for(settings), source="file", mapping=mapping)
    assert (again.accepted, again.rejected, again.reasons["erased_subject"]) == (0, 2, 1)
    assert await clean_db.fetchval("SELECT count(*) FROM sira_rejected_events WHERE customer_id = 'C-777'") == 0


async def test_a_person_whose_customer_id_ingestion_tokenised_is_found_exported_erased_and_gated(clean_db, settings):
    """A customer id that is an email (or a phone number, a name) is stored as a keyed token: export and
    erasure looked it up as given, found nothing (an empty bundle, an erasure deleting nothing marked
    executed) and the gate's digest never matched a re-import. They now look it up as ingestion stored it."""
    from sira.core.auth import Identity
    from sira.ingest.bulk import redactor_for, store_events
    from sira.ingest.labels import record_labels
    from sira.monitoring.subject import export_subject

    person, redactor = "jane.doe@example.com", redactor_for(settings)
    rows = [{"event_id": f"tk-{k}", "occurred_at": f"2026-09-01T1{k}:00:00Z", "customer_id": person, "amount": 10.0,
             "phone": "+44 7700 900123"} for k in range(2)]
    async with db.transaction(clean_db) as conn:
        summary, _ = await store_events(conn, rows, redactor=redactor, source="file")
    assert summary.accepted == 2
    stored = await clean_db.fetchval("SELECT DISTINCT customer_id FROM sira_events")
    assert stored != person and stored.startswith("tok_")  # what the lookups must use
    ann = Identity("ann", frozenset({"admin"}))
    async with db.transaction(clean_db) as conn:
        bundle = await export_subject(conn, ann, person, settings)
    assert bundle["counts"]["events"] == 2 and "phone_token" in bundle["tokens"]["kinds"]  # phone was left out
    done = await _erase(clean_db, settings, person)
    assert done["counts"]["events"] == 2 and done["_outside"]["customer_id"] == stored
    assert await clean_db.fetchval("SELECT count(*) FROM sira_events") == 0
    async with db.transaction(clean_db) as conn:  # the same file again: the gate keeps them out
        again, _ = await store_events(conn, rows, redactor=redactor, source="file")
    assert again.accepted == 0 and await clean_db.fetchval("SELECT count(*) FROM sira_events") == 0
    # a chargeback of one of their payments arriving after the erasure: counted, never kept (it was stored as a
    # label pending its event, then a dead letter naming the payment)
    async with db.transaction(clean_db) as conn:
        late = await record_labels(conn, [{"event_id": "tk-1", "label": True, "known_at": "2026-10-01T00:00:00Z"},
                                          {"event_id": "someone-else", "label": True,
                                           "known_at": "2026-10-01T00:00:00Z"}],
                                   redactor=redactor, source="chargeback", pending_ttl_days=0)
    assert late.rejected == 1 and late.reasons == {"erased_subject": 1} and late.inserted == 1
    assert await clean_db.fetchval("SELECT count(*) FROM sira_feedback WHERE event_id = 'tk-1'") == 0
    assert await clean_db.fetchval("SELECT count(*) FROM sira_rejected_events WHERE event_id = 'tk-1'") == 0


async def test_the_reason_keeps_no_form_of_the_persons_id(clean_db, settings):
    """The reason is redacted, then the id was replaced as typed: an id that is an email had become its token
    by then, the very token the person's rows were stored under, and stayed in the tombstone and the audit
    log (3 times in a pg_dump); an id written in another case stayed as written. Every form goes now."""
    from sira.ingest.bulk import redactor_for, store_events

    redactor = redactor_for(settings)
    people = {"john.roe@example.org": "Erasure request received by email from John.Roe@Example.org, who wrote "
                                      "from john.roe@example.org too",
              "cus-0000081": "ticket CUS-0000081: the person (cus-0000081) asked by phone"}
    async with db.transaction(clean_db) as conn:
        summary, _ = await store_events(conn, [
            {"event_id": f"rs-{k}", "occurred_at": "2026-09-01T10:00:00Z", "customer_id": who, "amount": 10.0}
            for k, who in enumerate(people)], redactor=redactor, source="file")
    assert summary.accepted == 2
    subjects = [(await _erase(clean_db, settings, person, reason=reason))["subject"]
                for person, reason in people.items()]
    # (`cleanup` holds the stored id until Redis and the spool are cleaned, then is emptied: not run here)
    kept = [r[0] for r in await clean_db.fetch("SELECT (to_jsonb(t) - 'cleanup')::text FROM sira_erasure_requests t")]
    kept += [r[0] for r in await clean_db.fetch("SELECT t::text FROM sira_audit_log t WHERE action LIKE 'subject.forget%'")]
    assert all(sum(subject in text for text in kept) == 3 for subject in subjects)  # tombstone, request, execution
    forms = [form.lower() for person in people for form in (person, redactor.scrub_value(person))]
    assert all(form not in text.lower() for form in forms for text in kept), kept
    reasons = [r[0] for r in await clean_db.fetch("SELECT reason FROM sira_erasure_requests ORDER BY id")]
    assert reasons[0].startswith("Erasure request received by email from subject-")
    assert reasons[1].startswith("ticket subject-")


async def test_the_admin_who_asked_cannot_carry_it_out_under_another_name(clean_db, settings):
    """The two-person rule compared names: ann, who asked with her key, carried the erasure out as jwt:ann
    (her JWT). It compares people now, as promotions do: in the application and in the database."""
    import asyncpg

    from sira.core.auth import Identity
    from sira.core.errors import PermissionDenied
    from sira.ingest.bulk import redactor_for, store_events
    from sira.monitoring.erasure import forget, request_forget

    secret, redactor = settings.secret("auth_secret"), redactor_for(settings)
    async with db.transaction(clean_db) as conn:
        await store_events(conn, [{"event_id": "fe-1", "occurred_at": "2026-09-01T10:00:00Z",
                                   "customer_id": "C-4711", "amount": 10.0}], redactor=redactor, source="file")
        request = await request_forget(conn, Identity("ann", frozenset({"admin"})), "C-4711", "the person asked",
                                       secret=secret, redactor=redactor)
    with pytest.raises(PermissionDenied) as refused:
        async with db.transaction(clean_db) as conn:
            await forget(conn, Identity("jwt:ann", frozenset({"admin"})), "C-4711", request["request_id"],
                         secret=secret, redactor=redactor)
    assert refused.value.code == "self_approval"
    with pytest.raises(asyncpg.CheckViolationError, match="cannot carry it out"):  # whoever writes the table
        await clean_db.execute("UPDATE sira_erasure_requests SET status = 'executed', decided_by = 'jwt:ann', "
                               "decided_at = now() WHERE id = $1", request["request_id"])
    assert await clean_db.fetchval("SELECT count(*) FROM sira_events") == 1


def test_redis_patterns_of_an_erasure_match_only_the_persons_own_keys(redis_url):
    """An id may hold glob characters: `a*b` must not match another customer's `axb` (it did: `*` was left
    unescaped, and a customer id `*` matched every customer's cached state)."""
    import redis

    from sira.monitoring.erasure import glob_literal

    run = uuid.uuid4().hex[:8]
    client = redis.Redis.from_url(redis_url)
    keys = [f"sira:state:test-{run}:customer:{k}" for k in ("a*b?[c]", "axb?[c]", "a*bx[c]", "other")]
    try:
        for key in keys:
            client.set(key, b"1")
        for mine in ("a*b?[c]", "*"):
            pattern = f"sira:state:*:customer:{glob_literal(mine)}"
            found = {k.decode() for k in client.scan_iter(match=pattern, count=1000)} & set(keys)
            assert found == ({keys[0]} if mine != "*" else set()), (mine, found)
    finally:
        client.delete(*keys)
        client.close()


def test_a_persons_entries_still_in_a_mapped_stream_are_erased(pg_dsn, workspace, redis_url, monkeypatch, capsys):
    """A stream consumer run with --map reads the source's own column names: the person's entries not read yet
    are found under them (they were kept: the erasure looked for `customer_id` and `event_id` only)."""
    import redis

    from sira.ingest.stream import MAPPINGS, STREAM
    from sira.monitoring.erasure import forget_outside
    from tests.conftest import cli_in_process

    run = uuid.uuid4().hex[:8]
    person, other = f"cus-mapped-{run}", f"cus-mapped-other-{run}"

    def entry(customer: str, k: int) -> dict:
        row = payment(customer, f"tok_{customer}", f"dev-{customer}", k)
        return {"cust": row.pop("customer_id"), "txn": row.pop("event_id"), **row}

    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(STREAM, MAPPINGS)  # what other tests left: this consumer's group reads from the start
        client.xadd(STREAM, {"kind": "event", "data": json.dumps(entry(other, 0))})
        done = cli_in_process(monkeypatch, capsys, {"SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(workspace),
                                                    "SIRA_REDIS_URL": redis_url},
                              "ingest", "--stream", "--map", "customer_id=cust,event_id=txn", "--max-events", "1",
                              "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["accepted"] == 1
        # sent after the consumer stopped: held in the stream, as the source wrote them
        held = [client.xadd(STREAM, {"kind": "event", "data": json.dumps(entry(who, 1))}) for who in (person, other)]
        outside = {"entities": [], "request_ids": [], "event_ids": [f"ev-{person}-0"]}
        counts = run_sync(forget_outside(redis_url, [], person, outside))
        assert counts["redis"] == "cleaned" and counts["stream_entries"] == 1
        left = [entry_id for entry_id, _ in client.xrange(STREAM)]
        assert held[0] not in left and held[1] in left  # the other customer's entry stays
    finally:
        client.delete(STREAM, MAPPINGS)
        client.close()


async def test_an_erasure_without_the_gates_salt_fails_and_erases_nothing(clean_db, settings):
    """The gate's digest is salted by the one row of sira_erasure_salt: without it the gate's insert wrote
    nothing and the erasure still said `executed` (the test database's cleanup once emptied the table)."""
    from sira.core.auth import Identity
    from sira.core.errors import SiraError
    from sira.ingest.bulk import redactor_for
    from sira.monitoring.erasure import forget, request_forget

    ann, bob = Identity("ann", frozenset({"admin"})), Identity("bob", frozenset({"admin"}))
    conn = await clean_db.acquire()
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute("DELETE FROM sira_erasure_salt")
        request = await request_forget(conn, ann, "C-1", "asked", secret="s", redactor=redactor_for(settings),
                                        force=True)  # nothing stored about C-1
        with pytest.raises(SiraError, match="no salt") as refused:
            await forget(conn, bob, "C-1", request["request_id"], secret="s", redactor=redactor_for(settings))
        assert refused.value.code == "erasure_gate_unavailable"
    finally:
        await tr.rollback()
        await clean_db.release(conn)


async def test_dead_letters_of_a_persons_labels_are_exported_erased_and_not_stored_again(clean_db, settings):
    """A label that fails validation, or a pending label that expires, is a dead letter naming only its
    payment (event_id; no customer_id): the export left them out and the erasure kept them, and a malformed
    label about an erased payment was stored again as a dead letter with its payload. They are now matched by
    the person's payments' ids, and the erasure gate keeps such a record out."""
    from sira.core.auth import Identity
    from sira.ingest.bulk import redactor_for, store_events
    from sira.ingest.labels import expire_pending_labels, record_labels
    from sira.monitoring.subject import export_subject

    redactor = redactor_for(settings)
    rows = [{"event_id": "dl-1", "occurred_at": "2026-09-01T10:00:00Z", "customer_id": "C-901", "amount": 12.0},
            {"event_id": "dl-2", "occurred_at": "2026-09-01T11:00:00Z", "customer_id": "C-901", "amount": -5.0},
            {"event_id": "dl-9", "occurred_at": "2026-09-01T12:00:00Z", "customer_id": "C-902", "amount": 7.0}]
    async with db.transaction(clean_db) as conn:
        summary, _ = await store_events(conn, rows, redactor=redactor, source="file")
        assert (summary.accepted, summary.rejected) == (2, 1)
        # malformed labels of their stored payment and of another person's; a chargeback on their refused
        # payment, pending (no stored event) until it expires
        bad = await record_labels(conn, [{"event_id": "dl-1", "label": "maybe", "note": "card ending 4242"},
                                         {"event_id": "dl-9", "label": "maybe"}], redactor=redactor)
        assert bad.rejected == 2
        await record_labels(conn, [{"event_id": "dl-2", "label": True, "known_at": "2026-09-20T00:00:00Z"}],
                            redactor=redactor, source="chargeback")
    async with db.transaction(clean_db) as conn:
        assert await expire_pending_labels(conn, 0) == 1  # the pending one expires
    letters = {(r["event_id"], r["reason_code"]) for r in await clean_db.fetch(
        "SELECT event_id, reason_code FROM sira_rejected_events WHERE customer_id IS NULL")}
    refused = await clean_db.fetchval("SELECT reason_code FROM sira_rejected_events WHERE customer_id = 'C-901'")
    assert {("dl-1", "invalid_field"), ("dl-2", "pending_label_expired"), ("dl-9", "invalid_field")} <= letters
    ann = Identity("ann", frozenset({"admin"}))
    async with db.transaction(clean_db) as conn:
        bundle = await export_subject(conn, ann, "C-901", settings)
    assert sorted((r["event_id"], r["reason_code"]) for r in bundle["rejected_events"]) == sorted(
        [("dl-1", "invalid_field"), ("dl-2", refused), ("dl-2", "pending_label_expired")]), bundle["rejected_events"]
    done = await _erase(clean_db, settings, "C-901")
    assert done["counts"]["rejected_events"] == 3
    left = await clean_db.fetch("SELECT event_id, payload FROM sira_rejected_events")
    assert [r["event_id"] for r in left] == ["dl-9"]  # another person's stays
    # a malformed label about their erased payment, later: counted, never kept
    async with db.transaction(clean_db) as conn:
        late = await record_labels(conn, [{"event_id": "dl-1", "label": "maybe", "note": "card ending 4242"}],
                                   redactor=redactor)
    assert late.rejected == 1 and late.reasons == {"erased_subject": 1}
    assert await clean_db.fetchval("SELECT count(*) FROM sira_rejected_events WHERE event_id = 'dl-1'") == 0


async def test_an_erasure_leaves_an_identifier_shared_with_another_customer_in_a_shared_history(clean_db, settings):
    """A v1 snapshot of a shared entity (a terminal counting its distinct cards) keeps the person's rows with
    their identifiers replaced by placeholders. A card the person shares with another customer was replaced
    too: the terminal then counted two cards where there is one. Shared identifiers stay, as the export
    withholds them; the person's own ones still go."""
    from sira.ingest.bulk import redactor_for, store_events

    redactor = redactor_for(settings)
    rows = [{"event_id": f"sh-{who}", "occurred_at": f"2026-09-01T1{k}:00:00Z", "customer_id": who,
             "card_token": "tok_card_shared", "device_id": f"dev-{who}", "terminal_id": "T-1", "amount": 10.0}
            for k, who in enumerate(["C-931", "C-932"])]
    async with db.transaction(clean_db) as conn:
        summary, _ = await store_events(conn, rows, redactor=redactor, source="file")
    assert summary.accepted == 2
    stored = await clean_db.fetch("SELECT event_id, card_token, device_id FROM sira_events ORDER BY event_id")
    card = stored[0]["card_token"]
    assert card == stored[1]["card_token"]  # one card, two customers
    state = {"columns": ["ts", "amount", "event_id", "card_token", "device_id", "label_known_at"],
             "rows": [[k, 10.0, r["event_id"], r["card_token"], r["device_id"], None] for k, r in enumerate(stored)]}
    await clean_db.execute(
        """INSERT INTO sira_feature_snapshots (entity_type, entity_id, feature_set, feature_set_version, features,
                                               as_of, last_event_id, event_count, state)
           VALUES ('terminal', 'T-1', 'payments', 1, '{}', now(), 'sh-C-932', 2, $1)""", state)
    done = await _erase(clean_db, settings, "C-931")
    assert done["counts"]["shared_histories_deidentified"] == 1
    after = await clean_db.fetchval("SELECT state FROM sira_feature_snapshots WHERE entity_id = 'T-1'")
    after = after if isinstance(after, dict) else json.loads(after)
    mine, theirs = after["rows"]
    assert mine[2].startswith("erased-") and mine[4].startswith("erased-")  # their event id, their own device
    assert {mine[3], theirs[3]} == {card}  # the terminal still saw one card
    assert theirs[2:5] == ["sh-C-932", card, stored[1]["device_id"]]


async def test_forget_or_export_of_an_id_sira_holds_nothing_about_says_so(installation, monkeypatch, capsys,
                                                                          tmp_path):
    """A mistyped id: `forget` asked for (and a second admin carried out) an erasure of no one and `export`
    wrote an empty bundle, both quietly. The request is now refused unless --force, and the export says so."""
    from sira.cli.main import main

    inst, nobody = installation, f"cus-nobody-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SIRA_DATABASE_URL", inst.dsn)
    monkeypatch.setenv("SIRA_WORKSPACE", str(inst.settings.workspace))
    monkeypatch.setenv("SIRA_API_KEY", inst.keys["admin"])

    async def sira(*args: str):
        reset_settings()
        try:
            return await asyncio.to_thread(main, list(args)), capsys.readouterr()
        finally:
            reset_settings()

    code, out = await sira("subject", "forget", "--customer", nobody, "--reason", "the person asked")
    assert code == 2 and out.out == "" and len(out.err.strip().splitlines()) == 1, out.err
    assert out.err.startswith("error: no_data: SIRA holds nothing about this customer id") and nobody not in out.err
    assert await _one(inst.dsn, "SELECT count(*) AS n FROM sira_erasure_requests WHERE status = 'pending'") == {"n": 0}
    code, out = await sira("subject", "forget", "--customer", nobody, "--reason", "the person asked", "--force",
                           "--json")
    assert code == 0 and json.loads(out.out)["status"] == "pending", out.err
    code, out = await sira("subject", "export", "--customer", nobody, "--out", str(tmp_path / "b.json"), "--json")
    assert code == 0 and json.loads(out.out)["found"] is False
    assert "nothing is stored about this customer id" in out.err
    os.environ.pop("SIRA_API_KEY", None)
