"""Erasure: ``sira subject forget`` deletes what SIRA holds about one person, under a two-person rule.

An admin asks (``--customer ID --reason ...``): a pending request that names the person only by the keyed
hash the audit log uses (:func:`sira.monitoring.subject.subject_ref`), never the id. A second admin, not the
requester, carries it out by typing the id again (``--approve REQUEST``): it must hash to the request's
subject. Then, in one transaction: the person's events, the events refused as dead letters, the per-event
feature rows, the states, snapshots and daily checkpoints of the entities that are theirs (as the export
decides: their own identifiers, not one another customer's events also carry), the predictions made on
their events (production and shadow, with their reasons and features) and the labels about them are
deleted; the person's digest goes to the erasure gate (``sira_erased_subjects``: an event of theirs that
happened before now is never stored again, whichever path brings it back: a replayed spool, a re-imported
file, a late stream entry; a later one starts a fresh history); every replica drops its cached states of the
entity types touched and every answer it holds in memory (``NOTIFY``, "all": no id in the payload), and the
claims of their request ids are deleted. After the commit, what SIRA keeps outside
PostgreSQL: the cached states, histories and answers in Redis, the Redis stream's entries still held, and
the records of this machine's serving spool that a live replica does not hold (a live replica's records are
stopped by the gate when it stores them). A tombstone stays: who asked, who carried it out, when, why, what
counts. The audit log names the subject by its keyed hash only.

Kept, on purpose: aggregates that name nobody (a terminal's or a shared card's state, which sums other
people's payments too; drift and performance results; a model's reference quantiles). Model artifacts are
not rewritten (their checksums are what the registry verifies and governance approved) but they are not
free of the person: ``reference_sample.npy`` holds a sample of the training matrix, rows of people, and
LightGBM's split thresholds are values of the training rows. The artifacts of the versions trained on a
window that holds one of the person's events are listed in the erasure's ``files`` (until 2026-12-07 the
docs said an artifact held "no row of anyone"), for the operator to retire and retrain. Files SIRA wrote
outside its stores (batch outputs, explanation reports, subject exports) are listed for the operator, since
SIRA cannot know where they went; so is a Kafka topic, which SIRA cannot rewrite.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from asyncpg import Connection

from sira.core import audit, db
from sira.core.auth import Identity, authorize, principals
from sira.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied, SiraError
from sira.features.definitions import FEATURE_SETS
from sira.features.states import drop_cached
from sira.features.store import LOG_LOCK
from sira.ingest import gate
from sira.monitoring.subject import (
    PERSONAL_COLUMNS,
    REJECTED_OF,
    check_customer,
    entities_of,
    rejected_of,
    shared_identifiers,
    stored_customer,
    subject_ref,
)
from sira.serving.idempotency import ANSWERS_CHANNEL, FORGET_ANSWERS

log = logging.getLogger(__name__)
SPOOL_SUFFIX = ".spool"


async def holds_data(conn: Connection, stored: str) -> bool:
    """Whether SIRA holds anything about the customer id ``stored`` (as ingestion stored it): an event, a
    dead letter, their feature state."""
    return bool(await conn.fetchval(
        f"""SELECT EXISTS (SELECT 1 FROM sira_events WHERE customer_id = $1)
                OR EXISTS (SELECT 1 FROM sira_rejected_events WHERE {REJECTED_OF})
                OR EXISTS (SELECT 1 FROM sira_entity_states WHERE entity_type = 'customer' AND entity_id = $1)
                OR EXISTS (SELECT 1 FROM sira_feature_snapshots WHERE entity_type = 'customer' AND entity_id = $1)""",  # noqa: S608
        stored))


async def request_forget(conn: Connection, identity: Identity, customer_id: str, reason: str, *,
                         secret: str, redactor: Any, force: bool = False) -> dict[str, Any]:
    """The first admin's request: pending, the subject named by its keyed hash. Refused (``no_data``) when
    SIRA holds nothing about the id, a mistyped one most likely, unless ``force`` (the gate then still keeps
    the person's older events out, should they arrive)."""
    authorize(identity, "subject.access")
    check_customer(customer_id)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("--reason: say why", code="missing_field", details={"field": "reason"})
    if len(reason) > 2000:
        raise InvalidInput("--reason: at most 2000 characters", code="field_too_long", details={"field": "reason"})
    stored = stored_customer(redactor, customer_id)
    if not force and not await holds_data(conn, stored):
        raise NotFound("SIRA holds nothing about this customer id (no event, dead letter or feature state): check "
                       "the id, or give --force to ask for the erasure anyway", code="no_data")
    ref = subject_ref(secret, customer_id)
    reason = without_subject(reason, customer_id, stored, ref, redactor)
    try:
        async with conn.transaction():
            request_id = await conn.fetchval(
                "INSERT INTO sira_erasure_requests (subject_ref, reason, requested_by) VALUES ($1, $2, $3) "
                "RETURNING id", ref, reason, identity.name)
    except asyncpg.UniqueViolationError:
        raise Conflict("an erasure of this person is already waiting for a second admin",
                       code="request_pending") from None
    await audit.record(conn, identity.actor(), "subject.forget.request", target_type="subject", target_id=ref,
                       details={"request_id": request_id, "reason": reason})
    return {"request_id": request_id, "subject": ref, "status": "pending",
            "next": f"a second admin runs: sira subject forget --customer <id> --approve {request_id}"}


# a PII token inside text (sira.ingest.pii's form: tok_<kind>_<24 hex>), and the placeholder it becomes
_TOKEN_IN_TEXT = re.compile(r"(?<![A-Za-z0-9])tok_([a-z]{1,16})_[0-9a-f]{24}(?![0-9A-Za-z])")
PLACEHOLDERS = {"pan": "card", "email": "email", "phone": "phone", "ip": "ip", "iban": "iban"}


def without_subject(text: str, customer_id: str, stored: str, ref: str, redactor: Any) -> str:
    """``text`` as the audit log and the tombstone keep it, which is forever: the person's id replaced by
    ``ref`` (their keyed hash) however it is written there: as given, in another case, or as redaction turns
    it into the token their rows were stored under (``stored``: an id that is an email or a phone number);
    other personal data (an email, a phone or card number...: what ``redactor``, the installation's, finds)
    and any token already in it by a placeholder of its kind (``[email]``, ``[phone]``, ``[card]``): a token
    is the installation's own, the one the person's events carry, and linked the reason to them (until
    2026-12-07)."""
    mark = "\ue000"  # a character no redaction pattern touches, where the id was, until the hash goes in
    text = re.sub(re.escape(customer_id), mark, text, flags=re.IGNORECASE)
    text = redactor.scrub_text(text)
    for form in (stored, customer_id):
        text = re.sub(re.escape(form), mark, text, flags=re.IGNORECASE)
    text = _TOKEN_IN_TEXT.sub(lambda m: f"[{PLACEHOLDERS.get(m.group(1), 'personal data')}]", text)
    return text.replace(mark, ref)


async def forget(conn: Connection, identity: Identity, customer_id: str, request_id: int, *,
                 secret: str, redactor: Any) -> dict[str, Any]:
    """The second admin's approval: delete everything of the person in PostgreSQL (call in a transaction).
    ``customer_id`` as the person gives it (``redactor``: the installation's, which ingestion scrubbed it with).
    Returns the counts and, for :func:`forget_outside` only, what to look for in Redis and the spool."""
    authorize(identity, "subject.access")
    check_customer(customer_id)
    stored = stored_customer(redactor, customer_id)
    request = await conn.fetchrow("SELECT * FROM sira_erasure_requests WHERE id = $1 FOR UPDATE", request_id)
    if request is None:
        raise NotFound(f"no erasure request {request_id}", code="unknown_request")
    ref = subject_ref(secret, customer_id)
    if ref != request["subject_ref"]:
        raise InvalidInput(f"--customer is not the person erasure request {request_id} names",
                           code="subject_mismatch")
    asker, approver = await principals(conn, request["requested_by"], identity.name)
    if asker == approver:  # people, not names: a key's owner and their JWT (jwt:<sub>), a job's key and its minter
        raise audit.denied(PermissionDenied("the admin who asked for an erasure cannot carry it out: a second "
                                            "admin must", code="self_approval"), identity.actor(), "subject.access")
    if request["status"] == "executed":  # the database part is done: Redis and the spool again
        return {"request_id": request_id, "subject": ref, "status": "executed", "counts": {}, "files": [],
                "withheld_shared_identifiers": 0, "retry": True,
                "_outside": request["cleanup"] or {"entities": [["customer", stored]], "event_ids": [],
                                                   "request_ids": [], "customer_id": stored}}
    if request["status"] != "pending":
        raise Conflict(f"erasure request {request_id} is {request['status']}", code="request_closed")
    # no ingest commits meanwhile: one storing the person's events after these deletes and before the gate
    # is visible would bring them back (every insert of events or labels holds this lock shared)
    await conn.execute("SELECT pg_advisory_xact_lock($1)", LOG_LOCK)
    customer_id = stored  # from here on, as the tables hold it (and as the gate compares stored ids)
    events = await conn.fetch("SELECT * FROM sira_events WHERE customer_id = $1", customer_id)
    ids = [e["event_id"] for e in events]
    entities, withheld = await entities_of(conn, customer_id, events)
    # their identifiers no other customer's events carry: those a shared history loses (a shared card stays)
    own = _identifiers(events) - {v for _, v in await shared_identifiers(conn, customer_id, events)}
    types, keys = [t for t, _ in entities], [k for _, k in entities]
    owned = "(entity_type, entity_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
    predictions = await conn.fetch("SELECT prediction_id, request_id, model_name FROM sira_predictions "
                                   "WHERE event_id = ANY($1::text[])", ids)
    prediction_ids = [p["prediction_id"] for p in predictions]
    rejected = await rejected_of(conn, customer_id, ids)  # naming them, or only a payment of theirs
    labelled = sorted(set(ids) | {r["event_id"] for r in rejected if r["event_id"]})  # and of payments refused
    await gate.close(conn, "sira_erased_events", labelled)  # their payments' labels arriving later: never kept
    await conn.execute("SET LOCAL sira.erasure = 'on'")  # sira_features is append-only but to an erasure (017)
    counts = {
        "labels": await _deleted(conn, "DELETE FROM sira_feedback WHERE event_id = ANY($1::text[]) "
                                       "OR prediction_id = ANY($2::uuid[])", labelled, prediction_ids),
        "predictions": await _deleted(conn, "DELETE FROM sira_predictions WHERE event_id = ANY($1::text[])", ids),
        "counterfactuals": await _deleted(conn, "DELETE FROM sira_counterfactuals WHERE prediction_id = ANY($1::uuid[])",
                                          prediction_ids),
        "features": await _deleted(conn, f"DELETE FROM sira_features WHERE event_id = ANY($3::text[]) "  # noqa: S608
                                         f"OR {owned}", types, keys, ids),
        "feature_snapshots": await _deleted(conn, f"DELETE FROM sira_feature_snapshots WHERE {owned}", types, keys),  # noqa: S608
        "entity_states": await _deleted(conn, f"DELETE FROM sira_entity_states WHERE {owned}", types, keys),  # noqa: S608
        "state_checkpoints": await _deleted(conn, f"DELETE FROM sira_state_checkpoints WHERE {owned}",  # noqa: S608
                                            types, keys),
        "rejected_events": await _deleted(conn, "DELETE FROM sira_rejected_events WHERE id = ANY($1::bigint[])",
                                          [r["id"] for r in rejected]),
        "events": await _deleted(conn, "DELETE FROM sira_events WHERE customer_id = $1", customer_id),
        # (model, request id, digest of their request) was kept until the claims' sweep, up to the window later
        "request_claims": await _deleted(
            conn, "DELETE FROM sira_request_claims WHERE (model_name, request_id) IN "
                  "(SELECT * FROM unnest($1::text[], $2::text[]))",
            [p["model_name"] for p in predictions if p["request_id"]],
            [p["request_id"] for p in predictions if p["request_id"]]),
        "shared_histories_deidentified": await _deidentify_shared(conn, set(ids), own),
    }
    await conn.execute("SET LOCAL sira.erasure = 'off'")
    if await gate.close(conn, "sira_erased_subjects", [customer_id]) != 1:  # no salt: every old event back in
        raise SiraError("the erasure gate has no salt (sira_erasure_salt is empty): nothing was erased; "
                        "restore its row (sql/017) and run the --approve again", code="erasure_gate_unavailable")
    for entity in sorted({t for t, _ in _touched(events)}):  # replicas drop what they cached; names nobody
        await drop_cached(conn, entity)
    # and every answer they hold in memory: a retry of the person's request id was answered from there with
    # their old answer (until 2026-12-07); now it is scored afresh
    await conn.execute("SELECT pg_notify($1, $2)", ANSWERS_CHANNEL, FORGET_ANSWERS)
    files = await _files(conn, events, prediction_ids, ref)
    outside = {"entities": _touched(events), "event_ids": ids, "customer_id": customer_id,
               "request_ids": sorted({p["request_id"] for p in predictions if p["request_id"]})}
    await conn.execute(  # `cleanup` keeps what Redis and the spool are to lose until they have (record_outside)
        """UPDATE sira_erasure_requests SET status = 'executed', decided_by = $2, decided_at = now(), counts = $3,
                  files = $4, cleanup = $5 WHERE id = $1""", request_id, identity.name, counts, files, outside)
    await audit.record(conn, identity.actor(), "subject.forget", target_type="subject", target_id=ref,
                       details={"request_id": request_id, "requested_by": request["requested_by"],
                                "reason": request["reason"], "counts": counts,
                                "withheld_shared_identifiers": withheld})
    return {"request_id": request_id, "subject": ref, "status": "executed", "counts": counts, "files": files,
            "withheld_shared_identifiers": withheld,
            "_outside": outside}


def _identifiers(events: list[Any]) -> set[str]:
    return {e[c] for e in events for c in PERSONAL_COLUMNS if e[c]}


def _touched(events: list[Any]) -> list[tuple[str, str]]:
    """Every (entity type, id) the person's events name, theirs or shared (a terminal): caches to drop."""
    return sorted({(spec.entity, e[spec.key_column]) for fs in FEATURE_SETS.values() for spec in fs.entities
                   for e in events if e.get(spec.key_column)})


async def _deidentify_shared(conn: Connection, event_ids: set[str], identifiers: set[str]) -> int:
    """Feature set v1's snapshot of an entity the person shares with others (a terminal, a shared card) keeps
    its recent events as rows: the person's rows keep their time and amount (the entity's aggregates stay
    right) but their event id and the person's own identifiers (``identifiers``: not one another customer's
    events carry too, which stays as it is) become random placeholders (one per value, so distinct counts
    stay right). Returns the snapshots rewritten."""
    if not event_ids:
        return 0
    rows = await conn.fetch(
        """SELECT entity_type, entity_id, feature_set, feature_set_version, state, last_event_id
             FROM sira_feature_snapshots s
            WHERE s.last_event_id = ANY($1::text[])
               OR EXISTS (SELECT 1 FROM jsonb_array_elements(s.state->'rows') r WHERE r->>2 = ANY($1::text[]))""",
        list(event_ids))
    placeholders: dict[str, str] = {}

    def placeholder(value: str) -> str:
        return placeholders.setdefault(value, f"erased-{uuid.uuid4().hex}")

    for row in rows:
        state = row["state"] if isinstance(row["state"], dict) else orjson.loads(row["state"])
        for r in state.get("rows") or []:
            if len(r) > 2 and r[2] in event_ids:
                r[2] = placeholder(r[2])
                r[3:-1] = [placeholder(v) if isinstance(v, str) and v in identifiers else v for v in r[3:-1]]
        last = row["last_event_id"]
        await conn.execute(
            """UPDATE sira_feature_snapshots SET state = $5, last_event_id = $6
                WHERE entity_type = $1 AND entity_id = $2 AND feature_set = $3 AND feature_set_version = $4""",
            row["entity_type"], row["entity_id"], row["feature_set"], row["feature_set_version"], state,
            placeholder(last) if last in event_ids else last)
    return len(rows)


async def _deleted(conn: Connection, sql: str, *args: Any) -> int:
    return db.rows_affected(await conn.execute(sql, *args))


async def _files(conn: Connection, events: list[Any], prediction_ids: list[Any], ref: str) -> list[dict[str, Any]]:
    """What SIRA wrote outside its stores that may hold the person's rows: subject exports of them (``ref``:
    their keyed hash) and explanation reports issued on their predictions (with the file each was written to,
    ``--out``), batch outputs written since their first event, model artifacts trained on their events."""
    exports = await conn.fetch(
        """SELECT occurred_at AS at, details->>'out' AS out FROM sira_audit_log
            WHERE action = 'subject.export' AND target_type = 'subject' AND target_id = $1 ORDER BY occurred_at""",
        ref)
    listed = [{"kind": "subject_export", "path": e["out"], "written_at": e["at"].isoformat()} for e in exports]
    if not events:
        return listed
    first = min(e["occurred_at"] for e in events)
    batches = await conn.fetch(
        """SELECT occurred_at AS at, details->>'out' AS out, details->>'input' AS input FROM sira_audit_log
            WHERE action = 'batch.score' AND outcome = 'success' AND occurred_at >= $1 ORDER BY occurred_at""", first)
    reports = await conn.fetch(
        """SELECT occurred_at AS at, details->>'report_id' AS report_id, details->>'out' AS out FROM sira_audit_log
            WHERE action = 'explanation.issue' AND target_id = ANY($1::text[]) ORDER BY occurred_at""",
        [str(p) for p in prediction_ids])
    return (listed + [{"kind": "batch_output", "path": b["out"], "input": b["input"],
                       "written_at": b["at"].isoformat()} for b in batches]
            + [{"kind": "explanation_report", "report_id": r["report_id"], "issued_at": r["at"].isoformat(),
                **({"path": r["out"]} if r["out"] else {})} for r in reports]
            + await _artifacts(conn, [e["occurred_at"] for e in events]))


TRAINING_ROW_FILES = ("reference_sample.npy", "model.txt")  # rows of the training matrix; values of them


async def _artifacts(conn: Connection, times: list[Any]) -> list[dict[str, Any]]:
    """The model versions trained on the feature store over a window holding one of the person's events (its
    ``train_from``..``train_to``, as the run recorded it): their artifacts hold rows of the training matrix
    (``reference_sample.npy``) and split values taken from them (``model.txt``). Listed, not rewritten:
    the checksums are what the registry verifies."""
    rows = await conn.fetch(
        """SELECT m.name, v.version, v.status, v.artifact_uri,
                  (r.dataset_fingerprint->'windows'->>'train_from')::timestamptz AS train_from,
                  (r.dataset_fingerprint->'windows'->>'train_to')::timestamptz AS train_to
             FROM sira_model_versions v JOIN sira_models m ON m.id = v.model_id
             JOIN sira_training_runs r ON r.run_id = v.run_id
            WHERE r.dataset_fingerprint->>'source' = 'feature_store'
              AND r.dataset_fingerprint->'windows'->>'train_from' IS NOT NULL
              AND r.dataset_fingerprint->'windows'->>'train_to' IS NOT NULL
            ORDER BY m.name, v.version""")
    return [{"kind": "model_artifact", "model": r["name"], "version": r["version"], "status": r["status"],
             "path": r["artifact_uri"], "files": list(TRAINING_ROW_FILES),
             "trained_on": {"from": r["train_from"].isoformat(), "to": r["train_to"].isoformat()},
             "note": "training rows of the person may be in it: retire the version and retrain without them "
                     "(SIRA does not rewrite an artifact: its checksums are governance's)"}
            for r in rows if any(r["train_from"] <= t < r["train_to"] for t in times)]


async def record_outside(conn: Connection, identity: Identity, request_id: int, counts: dict[str, Any]) -> None:
    """Add what :func:`forget_outside` removed to the erasure's tombstone; once nothing failed, forget what
    it was to remove (the person's keys)."""
    authorize(identity, "subject.access")
    done = not any(str(v).startswith("failed") for v in counts.values())
    before = await conn.fetchval("SELECT counts FROM sira_erasure_requests WHERE id = $1 AND status = 'executed' "
                                 "FOR UPDATE", request_id) or {}
    merged = {**before, **{k: before[k] + v if isinstance(v, int) and isinstance(before.get(k), int) else v
                           for k, v in counts.items()}}  # a retry adds to what the first run removed
    await conn.execute("UPDATE sira_erasure_requests SET counts = $2, cleanup = CASE WHEN $3 THEN NULL "
                       "ELSE cleanup END WHERE id = $1 AND status = 'executed'", request_id, merged, done)


async def forget_outside(redis_url: str | None, spool_dirs: list[Path], customer_id: str,
                         outside: dict[str, Any]) -> dict[str, Any]:
    """After the commit: the person's entries in Redis (cached states, histories and answers; stream entries
    still held) and in the records of the spool folders that no live replica holds."""
    import redis.exceptions

    counts: dict[str, Any] = {}
    stored = outside.get("customer_id", customer_id)  # as the spool and Redis's caches hold it (scrubbed)
    if redis_url:
        try:
            counts.update(await _forget_in_redis(redis_url, customer_id, outside), redis="cleaned")
        except (redis.exceptions.RedisError, OSError) as exc:
            counts["redis"] = f"failed: {type(exc).__name__}"
    else:
        counts["redis"] = "not configured"
    try:
        counts["spool_records"], counts["spool_segments_held_live"] = _forget_in_spools(
            spool_dirs, stored, set(outside["event_ids"]))
        counts["spool"] = "cleaned"
    except OSError as exc:
        counts["spool"] = f"failed: {type(exc).__name__}"
    return counts


async def _forget_in_redis(url: str, customer_id: str, outside: dict[str, Any]) -> dict[str, int]:
    import redis.asyncio as aioredis

    from sira.ingest.stream import MAPPINGS, STREAM

    client = aioredis.Redis.from_url(url)
    try:
        entities = [(glob_literal(entity), glob_literal(key)) for entity, key in outside["entities"]]
        patterns = [f"sira:state:*:{entity}:{key}" for entity, key in entities]
        patterns += [f"sira:history:*:{entity}:{key}" for entity, key in entities]
        patterns += [f"sira:history:{entity}:{key}" for entity, key in entities]  # as written before 2026-12-06
        patterns += [f"sira:answer:*:{glob_literal(request_id)}" for request_id in outside["request_ids"]]
        cached = 0
        for pattern in patterns:
            found = [k async for k in client.scan_iter(match=pattern, count=1000)]
            if found:
                cached += await client.delete(*found)
        stream = 0
        if await client.exists(STREAM):
            # the ids under the source's own column names too, where a consumer renamed them (--map)
            mappings = [orjson.loads(m) for m in await client.smembers(MAPPINGS)]
            columns = {name: {name} | {m[name] for m in mappings if isinstance(m.get(name), str)}
                       for name in ("customer_id", "event_id")}
            start = "-"
            while True:
                entries = await client.xrange(STREAM, min=start, max="+", count=1000)
                mine = [entry_id for entry_id, fields in entries if _names(fields, customer_id, outside, columns)]
                if mine:
                    stream += await client.xdel(STREAM, *mine)
                if len(entries) < 1000:
                    break
                start = "(" + entries[-1][0].decode()
        return {"redis_cached_entries": cached, "stream_entries": stream}
    finally:
        await client.aclose()


def glob_literal(text: str) -> str:
    """``text`` (an id: it may hold ``*?[]\\``) as a part of a SCAN pattern that matches only itself."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _names(fields: dict[bytes, bytes], customer_id: str, outside: dict[str, Any],
           columns: dict[str, set[str]] | None = None) -> bool:
    """A stream entry about the person: an event of theirs (the stream holds them as sent, before scrubbing),
    or a label of one of their events; ``columns``: where an entry may hold the customer's id and the event's
    (SIRA's names, and the source's a consumer mapped from)."""
    raw = fields.get(b"data")
    if not raw:
        return False
    ids = {customer_id, outside.get("customer_id", customer_id)}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return any(orjson.dumps(i) in raw for i in ids)
    if not isinstance(data, dict):
        return False
    columns = columns or {"customer_id": {"customer_id"}, "event_id": {"event_id"}}
    events = set(outside["event_ids"])
    return (any(_as_id(data.get(c)) in ids for c in columns["customer_id"])
            or any(_as_id(data.get(c)) in events for c in columns["event_id"]))


def _as_id(value: Any) -> str | None:
    """An id as ingestion reads it (:class:`sira.ingest.events.EventIn`): a number is its text, spaces around
    it are dropped; anything else (a list, an object, true) is no id."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return str(value).strip()


def _forget_in_spools(folders: list[Path], customer_id: str, event_ids: set[str]) -> tuple[int, int]:
    """Rewrite each spool segment (and set-aside file) no live process holds without the person's records;
    count the segments a live replica holds (its records meet the gate when stored)."""
    removed = held = 0
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted([*folder.glob(f"*{SPOOL_SUFFIX}"), *(folder / "refused").glob("*")]):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except (FileNotFoundError, IsADirectoryError):
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    held += 1
                    continue
                with os.fdopen(os.dup(fd), "rb") as fh:
                    lines = fh.read().splitlines(keepends=True)
                theirs = event_ids | _spooled_events(lines, customer_id)  # events not stored yet, and answers
                kept = [line for line in lines if not _spooled_about(line, customer_id, theirs)]
                if len(kept) != len(lines):  # a new file in its place: a crash leaves the old one whole
                    removed += len(lines) - len(kept)
                    fresh = path.with_name(path.name + ".erasing")
                    with open(fresh, "wb") as out:
                        out.write(b"".join(kept))
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(fresh, path)
            finally:
                os.close(fd)
    return removed, held


def _spooled_events(lines: list[bytes], customer_id: str) -> set[str]:
    """The ids of the person's events among spooled records (their answers name them)."""
    found = set()
    for line in lines:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        row = record.get("row") if isinstance(record, dict) else None
        if isinstance(row, dict) and row.get("customer_id") == customer_id and row.get("event_id"):
            found.add(row["event_id"])
    return found


def _spooled_about(line: bytes, customer_id: str, event_ids: set[str]) -> bool:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return orjson.dumps(customer_id) in line  # a torn line: by the id as a JSON string, quotes included
    if not isinstance(record, dict):
        return False
    row = record.get("row") or {}
    return row.get("customer_id") == customer_id or record.get("event_id") in event_ids \
        or row.get("event_id") in event_ids

