"""``sira pii rekey-cards``: card tokens stored as a source sent them, tokenised where they hold personal data.

Until 2026-12-06 the per-record ingest path kept ``card_token`` as sent: a card number (or free text) sent in
that field sits raw in ``sira_events`` and, as an entity id, in the card's feature rows, snapshots, states and
checkpoints. The fix scrubs new events; this re-keys what was stored before, with the installation's PII key
(a migration cannot: the key is not in the database). In one transaction, holding the lock every insert of
events takes shared (no ingest interleaves):

- each stored card token whose scrubbed form differs (the redactor's own rule: a card number becomes its
  keyed token, free text a token, an opaque id stays) is replaced in ``sira_events``, in dead letters'
  payloads and as the entity id of feature set v1's per-event feature rows;
- what was derived under the old key is rebuilt from the log as it now reads: every feature set with
  stored state is rebuilt (v2: states and checkpoints; v1: the snapshot of every entity with events), after
  the old keys' own states, checkpoints and snapshots are deleted, so a card sent both ways is one card
  again. Feature set v1's per-event feature rows keep the values computed when they were written (only
  their entity id changes): they record what was served.

Without ``apply`` nothing changes: the counts of what would. Replicas drop their cached states (notified);
Redis entries under an old key are deleted after the commit (and by any later ``--apply``, if that failed).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from asyncpg import Connection

from sira.core import audit, db
from sira.core.auth import authorize
from sira.features.definitions import FEATURE_SETS
from sira.features.states import drop_cached, rebuild
from sira.features.store import LOG_LOCK, materialize
from sira.ingest.pii import Redactor, is_token

log = logging.getLogger(__name__)

ENTITY = "card"


async def stored_as_sent(conn: Connection, redactor: Redactor) -> dict[str, str]:
    """Stored card tokens the redactor would change, with what they become."""
    found: dict[str, str] = {}
    async with conn.transaction():  # a cursor needs one (a savepoint inside the caller's)
        async for row in conn.cursor("SELECT DISTINCT card_token FROM sira_events WHERE card_token IS NOT NULL"):
            value = row[0]
            if not is_token(value):
                scrubbed = redactor.scrub_value(value)
                if scrubbed != value:
                    found[value] = scrubbed
    return found


async def rekey_cards(conn: Connection, identity: Any, redactor: Redactor, *, apply: bool = False) -> dict[str, Any]:
    """Re-key the card tokens stored as sent (see the module); ``apply`` False: only count (taking no lock:
    ingest goes on). The card numbers go to PostgreSQL through a temporary table (COPY), never as a
    statement's parameters, which its logs may show."""
    authorize(identity, "pii.rekey")
    started = time.perf_counter()
    in_use = [FEATURE_SETS[key] for key in sorted({(r["feature_set"], r["feature_set_version"]) for r in await conn.fetch(
        """SELECT DISTINCT feature_set, feature_set_version FROM sira_entity_states
           UNION SELECT DISTINCT feature_set, feature_set_version FROM sira_feature_snapshots""")}) if key in FEATURE_SETS]
    if apply:
        # no materialize or advance of a set runs meanwhile (one could write an old key back), then no insert
        for fs in in_use:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"rebuild:{fs.name}@{fs.version}")
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"materialize:{fs.name}:{fs.version}")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOG_LOCK)
    mapping = await stored_as_sent(conn, redactor)
    await conn.execute("CREATE TEMPORARY TABLE sira_rekey_map (old text PRIMARY KEY, new text NOT NULL) ON COMMIT DROP")
    await conn.copy_records_to_table("sira_rekey_map", records=list(mapping.items()))
    events = await conn.fetchval("SELECT count(*) FROM sira_events e JOIN sira_rekey_map m ON e.card_token = m.old")
    result: dict[str, Any] = {"applied": apply, "card_tokens": len(mapping), "events": events, "dead_letters": 0,
                              "feature_rows": 0, "rebuilt": []}
    if not apply or not mapping:
        await conn.execute("DROP TABLE sira_rekey_map")
        return result
    result["dead_letters"] = db.rows_affected(await conn.execute(
        """UPDATE sira_rejected_events r SET payload = jsonb_set(r.payload, '{card_token}', to_jsonb(m.new))
             FROM sira_rekey_map m WHERE r.payload->>'card_token' = m.old"""))
    await conn.execute("SET LOCAL sira.rekey = 'on'")  # sira_features is append-only but to this (019)
    result["feature_rows"] = db.rows_affected(await conn.execute(
        "UPDATE sira_features f SET entity_id = m.new FROM sira_rekey_map m WHERE f.entity_type = $1 "
        "AND f.entity_id = m.old", ENTITY))
    await conn.execute("SET LOCAL sira.rekey = 'off'")
    await conn.execute("UPDATE sira_events e SET card_token = m.new FROM sira_rekey_map m WHERE e.card_token = m.old")
    for table in ("sira_entity_states", "sira_state_checkpoints", "sira_feature_snapshots"):
        await conn.execute(f"DELETE FROM {table} t USING sira_rekey_map m "  # noqa: S608
                           "WHERE t.entity_type = $1 AND t.entity_id = m.old", ENTITY)
    for fs in in_use:
        if fs.engine == "tiles":
            await rebuild(conn, fs)
        else:
            await materialize(conn, fs, full=True)
        result["rebuilt"].append(f"{fs.name}@{fs.version}")
    for entity in sorted({spec.entity for fs in in_use for spec in fs.entities} | {ENTITY}):
        await drop_cached(conn, entity)  # replicas drop what they cached (old keys among it)
    result["seconds"] = round(time.perf_counter() - started, 3)
    await audit.record(conn, identity.actor(), "pii.rekey_cards", target_type="events", target_id="card_token",
                       details={k: result[k] for k in ("card_tokens", "events", "dead_letters", "feature_rows",
                                                        "rebuilt")})
    return result


async def clean_redis(redis_url: str | None, redactor: Redactor) -> str:
    """After the commit, on every ``--apply`` (so a run whose Redis step failed is retried by the next one,
    which finds nothing left in PostgreSQL): cached card states and histories whose key holds a value the
    redactor would change. One SCAN per kind of key."""
    if not redis_url:
        return "not configured"
    import redis.asyncio as aioredis
    import redis.exceptions

    client = aioredis.Redis.from_url(redis_url)
    try:
        removed = 0
        # sira:state:{database}:{set}@{version}:card:{id}, sira:history:{database}:card:{id} (and, as written
        # before 2026-12-06, sira:history:card:{id})
        for pattern, parts in ((f"sira:state:*:*:{ENTITY}:*", 5), (f"sira:history:*:{ENTITY}:*", 4),
                               (f"sira:history:{ENTITY}:*", 3)):
            stale = []
            async for key in client.scan_iter(match=pattern, count=1000):
                fields = key.decode("utf-8", "surrogateescape").split(":", parts)
                if len(fields) == parts + 1 and fields[parts - 1] == ENTITY:
                    value = fields[parts]
                    if not is_token(value) and redactor.scrub_value(value) != value:
                        stale.append(key)
            if stale:
                removed += await client.delete(*stale)
        return f"cleaned ({removed} keys)"
    except (redis.exceptions.RedisError, OSError) as exc:
        log.warning("Redis not cleaned after re-keying card tokens: %s (run the command again)", type(exc).__name__)
        return f"failed: {type(exc).__name__} (run again)"
    finally:
        await client.aclose()
