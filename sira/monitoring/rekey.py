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
  stored state is rebuilt (v2: states and checkpoints; v1: every snapshot), after the old keys' own
  states, checkpoints and snapshots are deleted. A customer's distinct-card counts and novelty are then
  right whether a card came as a number or as its token.

Without ``apply`` nothing changes: the counts of what would. Replicas drop their cached states (notified);
Redis entries under an old key are deleted after the commit.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from asyncpg import Connection

from sira.core import audit
from sira.core.auth import authorize
from sira.features.definitions import FEATURE_SETS
from sira.features.states import STATES_CHANNEL, rebuild
from sira.features.store import SNAPSHOT_CHANNEL, materialize
from sira.ingest.bulk import ERASURE_LOCK
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
    """Re-key the card tokens stored as sent (see the module); ``apply`` False: only count."""
    authorize(identity, "pii.rekey")
    started = time.perf_counter()
    await conn.execute("SELECT pg_advisory_xact_lock($1)", ERASURE_LOCK)
    mapping = await stored_as_sent(conn, redactor)
    old, new = list(mapping), list(mapping.values())
    events = await conn.fetchval("SELECT count(*) FROM sira_events WHERE card_token = ANY($1::text[])", old)
    result: dict[str, Any] = {"applied": apply, "card_tokens": len(mapping), "events": events, "dead_letters": 0,
                              "feature_rows": 0, "rebuilt": [], "_old": old}
    if not apply or not mapping:
        return result
    pairs = "unnest($1::text[], $2::text[]) AS m(old, new)"
    result["dead_letters"] = _count(await conn.execute(
        f"""UPDATE sira_rejected_events r SET payload = jsonb_set(r.payload, '{{card_token}}', to_jsonb(m.new))
              FROM {pairs} WHERE r.payload->>'card_token' = m.old""", old, new))  # noqa: S608
    await conn.execute("SET LOCAL sira.rekey = 'on'")  # sira_features is append-only but to this (019)
    result["feature_rows"] = _count(await conn.execute(
        f"""UPDATE sira_features f SET entity_id = m.new FROM {pairs}
             WHERE f.entity_type = $3 AND f.entity_id = m.old""", old, new, ENTITY))  # noqa: S608
    await conn.execute("SET LOCAL sira.rekey = 'off'")
    await conn.execute(f"UPDATE sira_events e SET card_token = m.new FROM {pairs} WHERE e.card_token = m.old",  # noqa: S608
                       old, new)
    for table in ("sira_entity_states", "sira_state_checkpoints", "sira_feature_snapshots"):
        await conn.execute(f"DELETE FROM {table} WHERE entity_type = $1 AND entity_id = ANY($2::text[])",  # noqa: S608
                           ENTITY, old)
    in_use = await conn.fetch(
        """SELECT feature_set, feature_set_version FROM sira_entity_states
           UNION SELECT feature_set, feature_set_version FROM sira_feature_snapshots""")
    for row in sorted(in_use, key=lambda r: (r["feature_set"], r["feature_set_version"])):
        fs = FEATURE_SETS.get((row["feature_set"], row["feature_set_version"]))
        if fs is None:
            continue
        if fs.engine == "tiles":
            await rebuild(conn, fs)
        else:
            await materialize(conn, fs, full=True)
        for spec in fs.entities:  # replicas drop what they cached (the rebuild notified the states it wrote)
            await conn.execute("SELECT pg_notify($1, $2)", STATES_CHANNEL,
                               orjson.dumps({"f": fs.name, "v": fs.version, "t": spec.entity, "all": True}).decode())
        result["rebuilt"].append(f"{fs.name}@{fs.version}")
    await conn.execute("SELECT pg_notify($1, $2)", SNAPSHOT_CHANNEL, orjson.dumps({"t": ENTITY, "all": True}).decode())
    result["seconds"] = round(time.perf_counter() - started, 3)
    await audit.record(conn, identity.actor(), "pii.rekey_cards", target_type="events", target_id="card_token",
                       details={k: result[k] for k in ("card_tokens", "events", "dead_letters", "feature_rows",
                                                        "rebuilt")})
    return result


async def forget_old_keys_in_redis(redis_url: str | None, old: list[str]) -> str:
    """After the commit: cached states and histories under an old key (values that held a card number)."""
    if not redis_url or not old:
        return "not configured" if not redis_url else "nothing to clean"
    import redis.asyncio as aioredis
    import redis.exceptions

    from sira.monitoring.erasure import glob_escaped

    client = aioredis.Redis.from_url(redis_url)
    try:
        for key in old:
            for pattern in (f"sira:state:*:{ENTITY}:{key}", f"sira:history:{ENTITY}:{key}"):
                found = [k async for k in client.scan_iter(match=glob_escaped(pattern), count=1000)]
                if found:
                    await client.delete(*found)
        return "cleaned"
    except (redis.exceptions.RedisError, OSError) as exc:
        log.warning("Redis not cleaned after re-keying card tokens: %s", type(exc).__name__)
        return f"failed: {type(exc).__name__}"
    finally:
        await client.aclose()


def _count(status: str) -> int:
    return int(status.split()[-1])
