"""Idempotency: the prediction id a client's request id names within a window, the request's digest,
and an earlier answer replayed (or refused as a conflict)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from sira.core import db
from sira.core.errors import Conflict
from sira.serving.replica import Replica
from sira.serving.resilience import LRU
from sira.serving.schemas import Item

log = logging.getLogger(__name__)

def prediction_namespace(secret: str) -> uuid.UUID:
    """The namespace of the prediction ids that clients' request ids name, keyed by the installation's secret
    (the API-key pepper, ``SIRA_AUTH_SECRET``: every replica of one installation holds the same): replicas
    name a retry's prediction alike, and no one without the secret computes the id a request id names. (A
    constant namespace in the source made any caller able to compute another client's prediction id from its
    request id, often an order number, and read its explanation's summary, until 2026-12-07.)"""
    return uuid.UUID(bytes=hmac.new(secret.encode("utf-8"), b"sira:prediction-ids", hashlib.sha256).digest()[:16])


def prediction_id_for(namespace: uuid.UUID, model: str, request_id: str, client_chosen: bool, epoch: int = 0) -> str:
    """A client's request id names the same prediction id within an idempotency window (``epoch``: which
    one, :func:`idempotency_epoch`) in one installation (``namespace``: :func:`prediction_namespace`): two
    replicas racing on a retry (before either answer is stored) give the same answer, and the audit trail keeps
    one row. A request id reused after the window names another prediction (stored, not dropped as a duplicate
    of the old one). Without a client's request id, a random one."""
    if not client_chosen:
        return str(uuid.uuid4())
    return str(uuid.uuid5(namespace, f"{model}\x00{request_id}\x00{epoch}"))


@dataclass(frozen=True)
class PredictionIds:
    """How the predictions of one idempotency window are named (:func:`prediction_id_for`)."""

    namespace: uuid.UUID
    epoch: int

    def of(self, model: str, request_id: str, client_chosen: bool) -> str:
        return prediction_id_for(self.namespace, model, request_id, client_chosen, self.epoch)


def idempotency_epoch(ttl_s: float) -> int:
    """The idempotency window a request falls in (wall clock: the same on every replica)."""
    return int(time.time() // ttl_s)


DIGEST = "request_sha256"  # kept with an answer (and in its stored flags), never sent


def request_digest(model: str, payload: Any) -> str:
    """What a request asked, as a digest: of the redacted event (or the features), never of raw input."""
    return hashlib.sha256(orjson.dumps([model, payload], option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()[:32]


def public(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != DIGEST} if DIGEST in answer else answer


CLAIMED = "claimed_by"  # an "earlier answer" that is another replica's claim: it is scoring the request now


class ClaimedElsewhere(Exception):
    """The request id is being scored by another replica (its claim, same request): wait for its answer."""


def replay(earlier: dict[str, Any], item: Item) -> dict[str, Any]:
    """The earlier answer to the item's request id, unless the id was used for something else (409); with the
    request's digest (:func:`public` drops it before it is sent). Another replica's claim of the same request
    raises :class:`ClaimedElsewhere`."""
    if item.digest and earlier.get(DIGEST) and earlier[DIGEST] != item.digest:
        raise Conflict(f"request_id {item.request_id!r} was used for a different "
                       f"{'event' if item.event is not None else 'feature vector'} within the idempotency window; "
                       "send a new request_id for a new request", code="idempotency_conflict",
                       details={"field": "request_id"})
    if CLAIMED in earlier:
        raise ClaimedElsewhere(earlier[CLAIMED])
    return {**earlier, "replayed": True}  # the digest kept: a request waiting on this one checks it too


def answer_from_row(row: Any) -> dict[str, Any]:
    """A stored prediction as the answer it was (idempotent replays, GET /v1/predictions/{id}); the digest of
    the request, when stored, under :data:`DIGEST` (dropped by :func:`public`)."""
    flags = dict(row["flags"] or {})
    digest = flags.pop(DIGEST, None)
    degraded_reasons = flags.pop("degraded_reasons", [])
    deferred = bool(flags.pop("reasons_deferred", False))
    return {
        "prediction_id": str(row["prediction_id"]), "request_id": row["request_id"], "model": row["model_name"],
        "version": row["version"], "score": row["score"], "decision": row["decision"], "reasons": row["reasons"],
        "reasons_deferred": deferred, "flags": flags, "degraded": row["degraded"], "degraded_reasons": degraded_reasons,
        "latency_ms": row["latency_ms"], "scored_at": row["scored_at"].isoformat(), "event_id": row["event_id"],
        "replayed": False, **({DIGEST: digest} if digest else {}),
    }


def _cached(value: bytes) -> dict[str, Any]:
    """A value of the claim script: an answer, or another replica's claim (``claim|<claimant>|<digest>``)."""
    if value.startswith(b"claim|"):
        _, claimant, digest = value.decode().split("|", 2)
        return {CLAIMED: claimant, **({DIGEST: digest} if digest else {})}
    return orjson.loads(value)  # type: ignore[no-any-return]


ANSWERS_CHANNEL = "sira_answers"  # NOTIFY: a replica gave answers it could not write to Redis, or ...
# ... an erasure: every replica drops every answer it holds in memory (:meth:`Answers.on_gap`). All, not the
# person's: the payload names nobody (as the erasure's other notifications), and an answer of theirs still
# in a replica's spool is not known to the erasure by its request id; a replica only asks Redis (and
# PostgreSQL, whose rows of theirs are gone) again for the others' retries.
FORGET_ANSWERS = '{"forget": "all"}'

# Per request id: its answer if Redis holds one, else the claim on it (``claim|<claimant>|<digest>``) if another
# replica holds one, else (when ARGV[2] is "1") a claim of our own, set, and false; then the marker.
_CLAIM_LUA = """
local n, out = tonumber(ARGV[1]), {}
for i = 1, n do
  local answer = redis.call('GET', KEYS[i])
  if answer then out[i] = answer else
    local claim = redis.call('GET', KEYS[n + i])
    if claim and claim ~= ARGV[3 + i] then out[i] = 'claim|' .. claim
    else
      if ARGV[2] == '1' then redis.call('SET', KEYS[n + i], ARGV[3 + i], 'PX', ARGV[3]) end
      out[i] = false
    end
  end
end
out[n + 1] = redis.call('GET', KEYS[2 * n + 1]) or false
return out
"""

# The same in PostgreSQL (one statement, in place of a lookup of sira_predictions): a claim is ours when
# there was none, it is older than the window, or it is of the same request and ours or stale (its replica
# presumed gone); with each id's stored answer within the window and the claim standing when not ours.
_CLAIM_SQL = """
WITH q AS (SELECT DISTINCT ON (request_id) request_id, digest
             FROM unnest($2::text[], $3::text[]) AS q (request_id, digest) ORDER BY request_id),
     mine AS (
         INSERT INTO sira_request_claims AS c (model_name, request_id, digest, claimant, claimed_at)
         SELECT $1, request_id, digest, $4, now() FROM q
         ON CONFLICT (model_name, request_id) DO UPDATE
            SET digest = EXCLUDED.digest, claimant = EXCLUDED.claimant, claimed_at = EXCLUDED.claimed_at
          WHERE c.claimed_at < now() - make_interval(secs => $5)
             OR (c.digest = EXCLUDED.digest
                 AND (c.claimant = EXCLUDED.claimant OR c.claimed_at < now() - make_interval(secs => $6)))
         RETURNING request_id)
SELECT q.request_id, mine.request_id IS NOT NULL AS ours, c.digest AS claim_digest, c.claimant,
       s.prediction_id, s.model_name, s.version, s.event_id, s.score, s.decision, s.reasons, s.flags,
       s.degraded, s.latency_ms, s.scored_at
  FROM q LEFT JOIN mine USING (request_id)
  LEFT JOIN LATERAL (  -- (LIMIT: an index probe per id; a join's generic plan read every claim of the model)
      SELECT digest, claimant FROM sira_request_claims k
       WHERE k.model_name = $1 AND k.request_id = q.request_id LIMIT 1) c ON true
  LEFT JOIN LATERAL (
      SELECT * FROM sira_predictions p
       WHERE p.model_name = $1 AND p.request_id = q.request_id AND p.role = 'production'
         AND p.scored_at > now() - make_interval(secs => $5)
       ORDER BY p.scored_at LIMIT 1) s ON true
"""


class Answers:
    """The answers given to clients' request ids within the idempotency window: in this replica (an LRU,
    and the requests being scored now, so a retry waits for the first answer instead of scoring twice),
    in Redis (written as each answer is given: another replica sees a retry at once) and in
    ``sira_predictions`` (what Redis lost).

    PostgreSQL is asked only when Redis cannot answer: it is unreachable, or it may have lost an answer
    given within the window. Redis holds a marker, ``since``: every answer given from that time on was
    written to Redis. A Redis that restarted or was flushed has no marker, and the first replica to see
    that writes a new one; a replica that gave answers it could not write to Redis moves the marker to
    the time it reaches Redis again (and tells the others at once by ``NOTIFY sira_answers``). A miss
    in Redis is a new request only when nothing answered in the window can be missing from it: the
    marker is older than the window, or PostgreSQL holds no answer of the model from the window's start
    to the marker (asked once per marker and model, once the answers given before the marker have left
    the replicas' spools: :meth:`settle_s` after it), and Redis does not evict keys (its
    ``maxmemory_policy``). A request whose first answer is still in another replica's spool when the
    retry arrives is caught, as before, by its prediction id (:func:`prediction_id_for`): the audit trail
    keeps one row.
    """

    def __init__(self, replica: Replica):
        self.replica = replica
        self.recent = LRU(100_000, replica.config.idempotency_ttl_s)
        self._inflight: dict[tuple[str, str], asyncio.Future] = {}
        self.marker_key = f"sira:answers:{replica.namespace}:since"
        self.gaps = 0  # answers this replica gave and could not write to Redis (counted; the marker moves next)
        self._gaps_covered = 0  # ... the count the last marker move covered
        self.distrust_until = 0.0  # another replica's answers missed Redis: PostgreSQL until the marker moves
        # the request ids of erased people whose answers Redis may still hold (the erasure deletes them after its
        # commit, and not at all while Redis is down: `cleanup`, until it has), read on each erasure's notification
        self.forgotten: frozenset[str] = frozenset()
        self._forgetting: asyncio.Task | None = None
        self._trusted_from: dict[tuple[str, float], float] = {}  # (model, marker) -> when misses are new requests
        self._checking: set[tuple[str, float]] = set()
        self.evicting: bool | None = None  # Redis may evict answers (None: not known yet)
        self.claimant = uuid.uuid4().hex[:16]  # names this replica's claims of request ids
        self._claim_script: Any = None
        self._swept = 0.0  # when expired claims were last deleted (monotonic)

    @functools.cached_property
    def ids_namespace(self) -> uuid.UUID:
        """The installation's namespace of prediction ids (:func:`prediction_namespace`), read when first needed
        (the secret may be generated into the workspace then)."""
        return prediction_namespace(self.replica.settings.secret("auth_secret"))

    def ids(self, epoch: int) -> PredictionIds:
        """How the predictions of the idempotency window ``epoch`` are named."""
        return PredictionIds(self.ids_namespace, epoch)

    def _key(self, model: str, request_id: str) -> str:
        return f"sira:answer:{self.replica.namespace}:{model}:{request_id}"

    def _claim_key(self, model: str, request_id: str) -> str:
        return f"sira:claim:{self.replica.namespace}:{model}:{request_id}"

    def claim_s(self) -> float:
        """How long a claim stands without an answer (its replica presumed gone after): twice the wait for
        another replica's answer (:meth:`settle_s`, the spools' flush included)."""
        return 2 * (1.0 + 5 * self.replica.config.flush_interval_s)

    def settle_s(self) -> float:
        """How long after a marker its check waits: a few of the spools' flush intervals, and a second."""
        return 1.0 + 5 * self.replica.config.flush_interval_s

    async def once(self, item: Item, score: Any) -> dict[str, Any]:
        """``score(item)``'s answer, unless this replica has answered (or is answering) the request id."""
        key = (item.runtime.model_name, item.request_id)
        if item.client_request_id:
            earlier = self.recent.get(key)
            if earlier is not None:
                return public(replay(earlier, item))
            pending = self._inflight.get(key)
            if pending is not None:
                try:
                    return public(replay(await asyncio.shield(pending), item))
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if not pending.cancelled() or (task is not None and task.cancelling()):
                        raise  # this caller's own cancellation
                    # the first caller went away before its answer: answer this one (from the cache
                    # when that answer was given meanwhile)
                    return await self.once(item, score)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._after_claims(item, score)
            future.set_result(result)
            return public(result)
        except asyncio.CancelledError:
            future.cancel()  # a waiter with the same request id sees this, not a cancellation of its own
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        finally:
            if self._inflight.get(key) is future:
                self._inflight.pop(key, None)

    async def _after_claims(self, item: Item, score: Any) -> dict[str, Any]:
        """``score(item)``; while another replica holds a claim on the same request, asked again (backing off)
        until its answer is there to replay, for :meth:`settle_s` at most: then 409 ``request_in_progress``."""
        deadline, delay = None, 0.02
        while True:
            try:
                result = await score(item)
                if isinstance(result, BaseException):
                    raise result
                return result  # type: ignore[no-any-return]
            except ClaimedElsewhere:
                now = time.monotonic()
                deadline = deadline or now + self.settle_s()
                if now >= deadline:
                    raise Conflict(f"request_id {item.request_id!r} is being answered by another replica; retry "
                                   "the same request later for its answer", code="request_in_progress",
                                   details={"field": "request_id"}) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)

    async def earlier(self, items: list[Item], degraded: set[str],
                      claim: bool = True) -> dict[tuple[str, str], dict[str, Any]]:
        """Answers already given to these request ids by any replica, from Redis, and from ``sira_predictions``
        for what Redis cannot answer (see the class docstring); in the same round trips, each id not answered
        is claimed (``claim``) or found claimed by another replica (then its entry holds :data:`CLAIMED`
        and that request's digest: :func:`replay` raises a conflict or :class:`ClaimedElsewhere`)."""
        if not items:
            return {}
        r = self.replica
        digests = {(i.runtime.model_name, i.request_id): i.digest or "" for i in reversed(items)}  # the first's
        keys = list(digests)
        cached: dict[tuple[str, str], dict[str, Any]] | None = None
        marker: bytes | None = None
        if r.redis is not None:
            if r.redis_breaker.available:
                try:
                    if self._claim_script is None:
                        self._claim_script = r.redis.register_script(_CLAIM_LUA)
                    values = await self._claim_script(
                        keys=[*(self._key(m, q) for m, q in keys), *(self._claim_key(m, q) for m, q in keys),
                              self.marker_key],
                        args=[len(keys), "1" if claim else "0", int(self.claim_s() * 1000),
                              *(f"{self.claimant}|{digests[k]}" for k in keys)])
                    r.redis_breaker.succeeded()
                    marker = values[-1] or None
                    cached = {k: _cached(v) for k, v in zip(keys, values) if v}
                except Exception as exc:  # noqa: BLE001
                    r.redis_breaker.failed(exc)
            if cached is None:
                degraded.add("cache_unavailable")
        erased = await self._erased(cached) if cached else []
        for key in erased:
            del cached[key]  # type: ignore[union-attr]
        missed = [k for k in keys if cached is None or k not in cached]
        if not missed or (cached is not None and not erased and self._complete(marker, {m for m, _ in missed})):
            return cached or {}
        found = await (self._claim_stored(missed, digests) if claim else self._stored(missed))
        if found is None:
            if cached is None:  # neither could say: answered anyway (flagged)
                degraded.update(("database_unavailable", "idempotency_unchecked"))
            found = {}
        return {**found, **(cached or {})}

    async def _erased(self, cached: dict[tuple[str, str], dict[str, Any]]) -> list[tuple[str, str]]:
        """The answers Redis gave of an erased person's request ids (:attr:`forgotten`, waited for while they are
        read): PostgreSQL, whose rows of theirs are gone, answers for them (a retry of their request id was
        replayed from Redis until the erasure deleted the keys after its commit, or for the idempotency window
        when Redis was down then). Only theirs: another answer may still be in a replica's spool only."""
        if self._forgetting is not None and not self._forgetting.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._forgetting), self.replica.config.db_timeout_s)
        if not self.forgotten:
            return []
        return [key for key, answer in cached.items() if CLAIMED not in answer and key[1] in self.forgotten]

    async def _claim_stored(self, keys: list[tuple[str, str]],
                            digests: dict[tuple[str, str], str]) -> dict[tuple[str, str], dict[str, Any]] | None:
        """:meth:`_stored`, claiming in ``sira_request_claims`` each id with no stored answer (one statement per
        model); another replica's claim is returned as such. None when Postgres is unavailable."""
        r = self.replica
        if not r.pg.available:
            return None
        found: dict[tuple[str, str], dict[str, Any]] = {}
        try:
            async with r.pool.acquire(timeout=r.config.db_timeout_s) as conn:
                for model in sorted({m for m, _ in keys}):
                    ids = [q for m, q in keys if m == model]
                    rows = await conn.fetch(_CLAIM_SQL, model, ids, [digests[(model, q)] for q in ids],
                                            self.claimant, float(r.config.idempotency_ttl_s), self.claim_s(),
                                            timeout=r.config.db_timeout_s)
                    for row in rows:
                        if row["prediction_id"] is not None:
                            found[(model, row["request_id"])] = answer_from_row(row)
                        elif not row["ours"]:  # (a claim committed during the statement is not seen: no digest)
                            found[(model, row["request_id"])] = {
                                CLAIMED: row["claimant"] or "?",
                                **({DIGEST: row["claim_digest"]} if row["claim_digest"] else {})}
            r.pg.succeeded()
        except db.UNAVAILABLE as exc:
            r.pg.failed(exc)
            return None
        if time.monotonic() - self._swept > 60:
            self._swept = time.monotonic()
            r.spawn(self._sweep(), "claims-sweep")
        return found

    async def _sweep(self) -> None:
        """Delete the claims older than the idempotency window (off the request path)."""
        r = self.replica
        with contextlib.suppress(Exception):
            async with r.pool.acquire(timeout=r.config.db_timeout_s) as conn:
                await conn.execute("DELETE FROM sira_request_claims WHERE claimed_at < now() - make_interval(secs => $1)",
                                   float(r.config.idempotency_ttl_s))

    async def refuse_conflicts(self, items: list[Item], prefix: str = "requests.") -> None:
        """Raise the 409 a batch's row would get for a request id used for something else (earlier, within
        the window, or by another row of the batch) before any row is scored: a batch is answered whole or
        refused whole. (A conflict arriving between this check and the scoring still fails the batch.)"""
        first: dict[tuple[str, str], Item] = {}
        for item in items:
            if item.client_request_id:
                first.setdefault((item.runtime.model_name, item.request_id), item)
        if not first:
            return
        known = {k: a for k in first if (a := self.recent.get(k)) is not None}
        unknown = [i for k, i in first.items() if k not in known]
        known.update(await self.earlier(unknown, set(), claim=False) if unknown else {})
        for n, item in enumerate(items):
            if not item.client_request_id:
                continue
            key = (item.runtime.model_name, item.request_id)
            earlier = known.get(key) or ({DIGEST: first[key].digest} if first[key] is not item else None)
            try:
                if earlier is not None:
                    replay(earlier, item)
            except ClaimedElsewhere:
                pass  # the same request, being answered elsewhere: this row waits for that answer
            except Conflict as exc:
                exc.details["field"] = f"{prefix}{n}.request_id"
                raise

    def _complete(self, marker: bytes | None, models: set[str]) -> bool:
        """Whether Redis holds every answer of these models given within the window (its misses are new
        requests); when not known yet, the check is started in the background and the answer is no."""
        r = self.replica
        if marker is None:
            r.spawn(self._mark(), "answers-mark")  # a new Redis, or one that lost its keys
            return False
        now = time.time()
        if self.evicting is None:
            r.spawn(self._check_eviction(), "answers-eviction")
        complete = not (self.gaps > self._gaps_covered or now < self.distrust_until or self.evicting is not False)
        since = float(marker)
        if now >= since + self.replica.config.idempotency_ttl_s:
            return complete  # Redis has held every answer for longer than the window
        for model in models:
            trusted_from = self._trusted_from.get((model, since))
            if trusted_from is None:
                complete = False
                if now >= since + self.settle_s() and (model, since) not in self._checking and not r.pg.failing:
                    self._checking.add((model, since))
                    r.spawn(self._check(model, since), "answers-check")
            elif now < trusted_from:
                complete = False
        return complete

    async def _check(self, model: str, since: float) -> None:
        """When the misses of ``model`` become new requests under the marker ``since``: at once when
        PostgreSQL holds none of its answers from the window's start to the marker, else when the newest
        of those leaves the window."""
        r = self.replica
        ttl = float(r.config.idempotency_ttl_s)
        await self._check_eviction()  # once per marker: a policy may have changed
        try:
            async with r.pool.acquire(timeout=r.config.db_timeout_s) as conn:
                newest = await conn.fetchval(
                    """SELECT max(p.at) FROM sira_models m JOIN sira_model_versions v ON v.model_id = m.id
                       CROSS JOIN LATERAL (
                           SELECT max(scored_at) AS at FROM sira_predictions s
                            WHERE s.model_name = m.name AND s.version = v.version AND s.role = 'production'
                              AND s.scored_at >= to_timestamp($2) AND s.scored_at < to_timestamp($3)) p
                      WHERE m.name = $1""",
                    model, since - ttl, since, timeout=r.config.db_timeout_s)
            self._trusted_from[(model, since)] = since if newest is None else newest.timestamp() + ttl
            if len(self._trusted_from) > 10_000:
                self._trusted_from.clear()
        except Exception as exc:  # noqa: BLE001 - PostgreSQL stays the answer until this succeeds
            if db.is_unavailable(exc):
                r.pg.failed(exc)
            else:
                log.exception("checking the answers missing from Redis failed")
        finally:
            self._checking.discard((model, since))

    async def _check_eviction(self) -> None:
        """Whether Redis may evict keys (a ``maxmemory`` with a policy other than ``noeviction``): then a
        lost answer would go unnoticed, and its misses are never taken as new requests."""
        r = self.replica
        self.evicting = True  # until known otherwise (and no second check meanwhile)
        try:
            memory = await r.redis.info("memory")
            self.evicting = int(memory.get("maxmemory", 0)) > 0 and memory.get("maxmemory_policy") != "noeviction"
        except Exception as exc:  # noqa: BLE001 - checked again later
            log.warning("cannot read Redis's eviction policy (%s): idempotency checks stay on PostgreSQL", exc)
            self.evicting = None

    async def _mark(self) -> None:
        """A marker where Redis has none: now (a replica's own marker move goes with its answers: :meth:`queue`)."""
        with contextlib.suppress(Exception):
            await self.replica.redis.set(self.marker_key, repr(time.time()), nx=True)

    def on_gap(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        """Another replica gave answers Redis does not hold: PostgreSQL is asked until the marker moves
        (the replica moves it when it reaches Redis again, and the new marker is checked as any other).
        :data:`FORGET_ANSWERS` instead: a person was erased, and the answers this replica holds in memory
        go (a retry of their request id was answered with their old answer from here until 2026-12-07)."""
        if payload == FORGET_ANSWERS:
            self.forget()
            return
        self.distrust_until = time.time() + self.replica.config.idempotency_ttl_s
        self._trusted_from.clear()

    def forget(self) -> None:
        """A person was erased (or may have been, unnoticed: the listener was away): no answer this replica holds
        in memory is replayed, nor one Redis holds of a request id an erasure has not removed from it yet."""
        self.recent.clear()
        self._forgetting = self.replica.spawn(self._read_forgotten(), "answers-forgotten")

    async def _read_forgotten(self) -> None:
        """:attr:`forgotten`: the request ids the executed erasures have still to remove from Redis (kept as
        they were unless PostgreSQL answers)."""
        r = self.replica
        try:
            async with r.pool.acquire(timeout=r.config.db_timeout_s) as conn:
                ids = await conn.fetchval(
                    """SELECT coalesce(array_agg(DISTINCT r.request_id), '{}') FROM sira_erasure_requests e,
                              jsonb_array_elements_text(e.cleanup->'request_ids') AS r(request_id)
                        WHERE e.status = 'executed' AND e.cleanup IS NOT NULL""", timeout=r.config.db_timeout_s)
            self.forgotten = frozenset(ids)
        except Exception as exc:  # noqa: BLE001 - an outage: the next notification or reconnect reads them
            log.warning("the erased request ids could not be read: %s", type(exc).__name__)

    async def _stored(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]] | None:
        """The production answers of these (model, request id) within the idempotency window in
        ``sira_predictions``; None when Postgres is unavailable."""
        r = self.replica
        if not r.pg.available:
            return None
        found: dict[tuple[str, str], dict[str, Any]] = {}
        try:
            async with r.pool.acquire(timeout=r.config.db_timeout_s) as conn:
                for model in sorted({m for m, _ in keys}):
                    rows = await conn.fetch(
                        """SELECT prediction_id, request_id, model_name, version, event_id, score, decision, reasons,
                                  flags, degraded, latency_ms, scored_at
                             FROM sira_predictions
                            WHERE model_name = $1 AND request_id = ANY($2::text[]) AND role = 'production'
                              AND scored_at > now() - make_interval(secs => $3)""",
                        model, [q for m, q in keys if m == model], float(r.config.idempotency_ttl_s),
                        timeout=r.config.db_timeout_s,
                    )
                    for row in rows:
                        found[(model, row["request_id"])] = answer_from_row(row)
            r.pg.succeeded()
        except db.UNAVAILABLE as exc:
            r.pg.failed(exc)
            return None
        return found

    def remember(self, answered: list[tuple[Item, dict[str, Any]]]) -> None:
        """New answers to clients' request ids, for a retry reaching this replica."""
        for item, answer in answered:
            if item.client_request_id:
                self.recent.put((item.runtime.model_name, item.request_id), answer)

    def queue(self, pipe: Any, answered: list[tuple[Item, dict[str, Any]]]) -> int:
        """The same into a Redis pipeline (sent after answering), for a retry reaching another replica;
        first the marker's move when this replica gave answers Redis does not hold. Returns the gaps
        the pipeline covers, for :meth:`sent`."""
        if self.gaps > self._gaps_covered:
            pipe.set(self.marker_key, repr(time.time()))
        for item, answer in answered:
            if item.client_request_id:
                pipe.set(self._key(item.runtime.model_name, item.request_id), orjson.dumps(answer),
                         ex=self.replica.config.idempotency_ttl_s, nx=True)
        return self.gaps

    def sent(self, answered: list[tuple[Item, dict[str, Any]]], covers: int | None) -> None:
        """How writing ``answered`` to Redis went (``covers``: :meth:`queue`'s count when the pipeline was
        stored, None when it was not): answers to clients' request ids that Redis does not hold are a gap,
        announced to the other replicas."""
        if covers is not None:
            self._gaps_covered = max(self._gaps_covered, covers)
            return
        if any(item.client_request_id for item, _ in answered):
            self.gaps += 1
            self.replica.spawn(self._announce_gap(), "answers-gap")

    async def _announce_gap(self) -> None:
        r = self.replica
        with contextlib.suppress(Exception):
            async with r.pool.acquire(timeout=r.config.db_timeout_s) as conn:
                await conn.execute("SELECT pg_notify($1, '')", ANSWERS_CHANNEL, timeout=r.config.db_timeout_s)
