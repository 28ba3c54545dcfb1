"""Data retention: ``sira retention plan|apply`` removes what SIRA no longer needs, table by table (admin).

Each kind of row has a cut-off from its ``SIRA_RETENTION_*_DAYS`` setting (docs/security.md, "Retention"):
events (and their per-event feature rows) by event time; feature states and daily checkpoints the feature
sets' longest lookback before that (a fold starting at the oldest kept event still starts right);
predictions by whole monthly partitions once the month ended before the cut-off (detached and dropped; the
default partition's old rows deleted); labels once neither their event nor their prediction is stored and
they became known before the cut-off (their history goes with them, kept by sql/029's trigger); the feature
rows, states and checkpoints of a feature set no model uses any more; dead letters and a spool's refused
records; serving's request claims; the audit log only by an explicit archive step, which writes the rows to
a JSON Lines file in the workspace before it deletes them and records that in the audit log.

Kept whatever the settings: what a production or staging version's monitoring reads (its events, labels
and predictions since its newest prediction less the label maturity and ``SIRA_RETENTION_MONITORING_DAYS``:
every cut-off above moves back to that), and what a pending erasure needs to find the person's data (their
events, dead letters and the predictions on their events, recognised by the request's keyed hash: an
erasure carried out later deletes them and gates their labels out). The audit log's production history
(``production.change``, which rollback reads) is never archived, nor anything while an erasure is pending
(it lists the batch outputs and reports to look at from the audit log).

``apply`` runs each step in a transaction of its own and audits it (``retention.apply``: who, the cut-off,
what each table lost): a run that stops keeps the steps it finished, and running it again finishes the rest;
a second run removes nothing more (but what aged past a cut-off meanwhile). The append-only tables (the
audit log, ``sira_features``) refuse DELETE but to a role that owns them inside
``sira.partition_maintenance`` (sql/032): the role that ran the migrations, as for partition maintenance.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from sira.core import audit, db
from sira.core.auth import Identity
from sira.core.errors import Conflict, InvalidInput, PermissionDenied, SiraError
from sira.core.outputs import publish
from sira.features.definitions import CURRENT_VERSIONS, FEATURE_SETS
from sira.monitoring.audit_archive import ARCHIVED, archive_folder, settle, write_archive
from sira.monitoring.retention_rules import (  # noqa: F401  # LOOKBACK, DAY: callers read them here
    DAY,
    LOOKBACK,
    TIMEOUT_S,
    Floor,
    Held,
    cutoffs,
    held_for_erasure,
    monitoring_floors,
)

# predictions before events: an event a kept prediction names is kept (see _events)
STEPS = ("predictions", "events", "labels", "features", "feature_state", "retired_feature_sets", "dead_letters",
         "request_claims", "spool", "audit_log")
LIVE_STATUSES = ("candidate", "validated", "staging", "production")
KEPT_ACTIONS = ["production.change"]  # the production history: `sira history` and rollback read it
DETACH_WAIT, DETACH_PAUSE_S, DETACH_TRIES = "200ms", 0.5, 20  # a partition's detach: short waits, tried again
LOCK_TIMEOUT = "10s"  # detaching a partition waits this long for scoring's inserts, then the step is retried
NEVER = datetime(1970, 1, 1, tzinfo=timezone.utc)  # "nothing counts as removed by an earlier step" (apply)


@dataclass
class Run:
    """One plan or apply: the cut-offs (fixed when it starts) and what earlier steps of a plan would remove."""

    settings: Any
    now: datetime
    floors: list[Floor]
    cut: dict[str, datetime]
    secret: str
    spool_dirs: list[Path]
    apply: bool
    held: Held | None = None
    gone: dict[str, Any] = field(default_factory=dict)  # a plan: what its earlier steps would remove

    async def hold(self, conn: Any) -> Held:
        """What pending erasures need kept: applying, as each step starts (a request made while a step runs is
        honoured from the next step on). No lock: a step never touches a held person's rows, so it never waits
        for an erasure being carried out that could wait for it (taking the erasure table's lock here did:
        a deadlock with an approval between its deletes and its update)."""
        if self.apply:
            return await held_for_erasure(conn, self.secret, self.cut)
        if self.held is None:
            self.held = await held_for_erasure(conn, self.secret, self.cut)
        return self.held


def authorize(identity: Identity, what: str) -> None:
    """Retention is an admin's (it removes governed data for good; an operator reads the plan from one)."""
    if "admin" not in identity.roles:
        raise audit.denied(PermissionDenied(f"{identity.name} may not {what}: it needs the role admin",
                                            details={"action": what, "roles": ["admin"]}), identity.actor(), what)


# -- the pieces of a step -------------------------------------------------------------------------------------


async def _rows(conn: Any, run: Run, table: str, where: str, *args: Any) -> int:
    """Delete (apply) or count (plan) the rows of ``table`` that ``where`` selects (constant SQL, bound values)."""
    if run.apply:
        return db.rows_affected(await conn.execute(f"DELETE FROM {table} WHERE {where}", *args, timeout=TIMEOUT_S))
    return int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", *args, timeout=TIMEOUT_S))


PARTITIONS_SQL = r"""
SELECT c.oid, c.oid::regclass::text AS name, pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' AS is_default,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz AS lower,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = $1::regclass ORDER BY lower NULLS FIRST"""


async def _months(conn: Any, run: Run, parent: str, column: str, cut: datetime, *, hold: str = "false",
                  args: Sequence[Any] = (), switch: bool = False) -> dict[str, Any]:
    """A table partitioned by month on ``column``: each partition whose range ended by ``cut`` is to be dropped
    whole (by :func:`_drop`, last in the step: detaching locks the table), unless it holds a row ``hold`` keeps
    (then its other rows are deleted); the default partition loses its rows older than ``cut``. A partition
    holding any newer row is never touched. ``hold`` reads ``$2``... (``args``), ``$1`` being ``cut``;
    ``switch``: the table is append-only (sql/032)."""
    parts = await conn.fetch(PARTITIONS_SQL, parent)
    removed, dropped, trimmed = 0, [], []
    old = f"{column} < $1 AND NOT coalesce({hold}, false)"
    if switch and run.apply:
        await conn.execute("SET LOCAL sira.partition_maintenance = 'on'")
    for p in parts:
        whole = not p["is_default"] and p["upper"] is not None and p["upper"] <= cut
        if whole and not await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {p['name']} WHERE {column} < $1 "
                                             f"AND coalesce({hold}, false))", cut, *args, timeout=TIMEOUT_S):
            removed += await conn.fetchval(f"SELECT count(*) FROM {p['name']}", timeout=TIMEOUT_S)
            dropped.append(p)
        elif whole or p["is_default"]:
            removed += await _rows(conn, run, p["name"], old, cut, *args)
            trimmed.append(p)
    if switch and run.apply:
        await conn.execute("SET LOCAL sira.partition_maintenance = 'off'")
    return {"removed": removed, "partitions_dropped": [p["name"] for p in dropped],
            "oldest_kept": await _oldest_kept(conn, run, parts, dropped, trimmed, column, old, (cut, *args)),
            "_parent": parent, "_dropped": [p["oid"] for p in dropped], "_trimmed": [p["oid"] for p in trimmed]}


async def _drop(conn: Any, run: Run, months: dict[str, Any]) -> None:
    """Detach and drop the partitions :func:`_months` found wholly past the cut-off (applying): last in a step,
    since detaching holds the table's strongest lock (scoring's inserts wait) until the step commits."""
    if run.apply:
        for name in months["partitions_dropped"]:
            await _detach(conn, months["_parent"], name)
            await conn.execute(f"DROP TABLE {name}")


async def _detach(conn: Any, parent: str, name: str) -> None:
    """``DETACH PARTITION``, waiting at most :data:`DETACH_WAIT` at a time behind other transactions (a long read,
    an insert in flight) and trying again after a pause: while it waits in PostgreSQL's lock queue, every
    scoring insert into ``parent`` waits behind it. (It waited up to 10 s at once: a report running for 14 s
    held scoring's inserts for 8.7 s.) After :data:`DETACH_TRIES` the step is ``table_busy``."""
    for attempt in range(DETACH_TRIES):
        try:
            async with conn.transaction():  # a savepoint: a timed-out attempt leaves the step's work intact
                await conn.execute(f"SET LOCAL lock_timeout = '{DETACH_WAIT}'")
                await conn.execute(f"ALTER TABLE {parent} DETACH PARTITION {name}")
            break
        except asyncpg.LockNotAvailableError:
            if attempt == DETACH_TRIES - 1:
                raise
            await asyncio.sleep(DETACH_PAUSE_S)
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")


async def _oldest_kept(conn: Any, run: Run, parts: Sequence[Any], dropped: Sequence[Any], trimmed: Sequence[Any],
                       column: str, old: str, args: Sequence[Any]) -> datetime | None:
    """The oldest row a partitioned table keeps: in the first kept partition holding any (their ranges ascend)
    and in the default partition (a plan leaves out what the step would delete)."""
    async def least(p: Any) -> datetime | None:
        plan_trim = p in trimmed and not run.apply
        return await conn.fetchval(f"SELECT min({column}) FROM {p['name']}" + (f" WHERE NOT ({old})" if plan_trim
                                   else ""), *(args if plan_trim else ()), timeout=TIMEOUT_S)

    found = [await least(p) for p in parts if p["is_default"]]
    for p in parts:
        if not p["is_default"] and p not in dropped:
            first = await least(p)
            if first is not None:
                found.append(first)
                break
    return min((t for t in found if t is not None), default=None)


# -- the steps ----------------------------------------------------------------------------------------------


async def _events(conn: Any, run: Run) -> dict[str, Any]:
    held, cut = await run.hold(conn), run.cut["events"]
    # an event a kept prediction names stays until that prediction goes (its month's partition, the predictions
    # step, which runs first): an erasure finds a person's predictions and labels through their events, and an
    # event removed before them left them where `sira subject forget` could not reach them
    where = ("occurred_at < $1 AND NOT coalesce(customer_id = ANY($2::text[]), false) AND "
             + no_prediction_kept("sira_events.event_id", 3))
    removed = await _rows(conn, run, "sira_events", where, cut, held.customers, *_gone_predictions(run))
    oldest = await conn.fetchval(
        """SELECT least((SELECT min(occurred_at) FROM sira_events WHERE occurred_at >= $1),
                        (SELECT min(occurred_at) FROM sira_events WHERE customer_id = ANY($2::text[])))""",
        cut, held.customers)
    if not run.apply:  # what the labels step of a plan counts as gone
        run.gone["events"] = (cut, held.customers)
    return {"removed": {"sira_events": removed}, "oldest_kept": oldest, "held": held.summary()}


def _kept(n: int) -> str:
    """SQL: a stored prediction ``p`` this run keeps; ``$n``..``$n+3``: what a plan's predictions step would
    remove (its dropped and its trimmed partitions, its cut-off, its held events; nothing applying, as
    :func:`_gone_predictions` gives them)."""
    return (f"NOT (p.tableoid = ANY(${n}::oid[]) OR (p.tableoid = ANY(${n + 1}::oid[])"
            f" AND p.scored_at < ${n + 2} AND NOT coalesce(p.event_id = ANY(${n + 3}::text[]), false)))")


def prediction_kept(ref: str, n: int) -> str:
    """SQL: a stored prediction with id ``ref`` that this run keeps (``$n``..: :func:`_kept`)."""
    return f"p.prediction_id = {ref} AND {_kept(n)}"


def no_prediction_kept(event: str, n: int) -> str:
    """SQL: no prediction this run keeps names the event ``event`` (``$n``..: :func:`_kept`)."""
    return f"NOT EXISTS (SELECT 1 FROM sira_predictions p WHERE p.event_id = {event} AND {_kept(n)})"


def _gone_predictions(run: Run) -> tuple[Any, ...]:
    return run.gone.get("predictions", ([], [], NEVER, []))


async def _predictions(conn: Any, run: Run) -> dict[str, Any]:
    held, cut = await run.hold(conn), run.cut["predictions"]
    months = await _months(conn, run, "sira_predictions", "scored_at", cut, hold="event_id = ANY($2::text[])",
                           args=(held.events,))
    gone = (months["_dropped"], months["_trimmed"], cut, held.events)  # still attached: read before the drop
    if not run.apply:
        run.gone["predictions"] = gone
    counterfactuals = await _rows(conn, run, "sira_counterfactuals c", "NOT EXISTS (SELECT 1 FROM sira_predictions p"
                                  f" WHERE {prediction_kept('c.prediction_id', 1)})", *gone)
    await _drop(conn, run, months)
    return {"removed": {"sira_predictions": months["removed"], "sira_counterfactuals": counterfactuals},
            "partitions_dropped": months["partitions_dropped"], "oldest_kept": months["oldest_kept"],
            "held": held.summary()}


# a label this run removes: known (and written) before the cut-off ($1), neither its event nor its prediction
# kept (a plan: $2 the events step's cut-off and $3 its held customers, $4..$7 what its predictions step removes)
LABEL_GONE = ("f.known_at < $1 AND f.created_at < $1"
              " AND NOT EXISTS (SELECT 1 FROM sira_events WHERE sira_events.event_id = f.event_id"
              "  AND NOT (sira_events.occurred_at < $2 AND NOT coalesce(sira_events.customer_id = ANY($3::text[]),"
              " false) AND " + no_prediction_kept("sira_events.event_id", 4) + "))"
              " AND (f.prediction_id IS NULL OR NOT EXISTS (SELECT 1 FROM sira_predictions p WHERE "
              + prediction_kept("f.prediction_id", 4) + "))")


async def _labels(conn: Any, run: Run) -> dict[str, Any]:
    cut = run.cut["labels"]
    args = (cut, *run.gone.get("events", (NEVER, [])), *_gone_predictions(run))
    history = await conn.fetchval(  # deleted with their labels by sql/029's trigger
        f"""SELECT count(*) FROM sira_feedback_history h JOIN sira_feedback f USING (event_id, label_name, source)
             WHERE {LABEL_GONE}""", *args, timeout=TIMEOUT_S)
    labels = await _rows(conn, run, "sira_feedback f", LABEL_GONE, *args)
    orphans = await _rows(conn, run, "sira_feedback_history h", "h.known_at < $1 AND NOT EXISTS (SELECT 1 FROM "
                          "sira_feedback f WHERE f.event_id = h.event_id AND f.label_name = h.label_name "
                          "AND f.source = h.source)", cut)
    kept = "" if run.apply else f" WHERE NOT ({LABEL_GONE})"
    oldest = await conn.fetchval(f"SELECT min(known_at) FROM sira_feedback f{kept}", *(() if run.apply else args),
                                 timeout=TIMEOUT_S)
    return {"removed": {"sira_feedback": labels, "sira_feedback_history": history + orphans}, "oldest_kept": oldest}


async def _features(conn: Any, run: Run) -> dict[str, Any]:
    months = await _months(conn, run, "sira_features", "as_of", run.cut["features"], switch=True)
    await _drop(conn, run, months)
    return {"removed": {"sira_features": months["removed"]}, "partitions_dropped": months["partitions_dropped"],
            "oldest_kept": months["oldest_kept"]}


async def _feature_state(conn: Any, run: Run) -> dict[str, Any]:
    """Checkpoints, and the states and v1 snapshots of entities whose newest event is that old (empty states
    give the same vectors: the lookback holds none of their events)."""
    cut = run.cut["feature_state"]
    months = await _months(conn, run, "sira_state_checkpoints", "as_of", cut)
    types = sorted({r["entity_type"] for r in await conn.fetch(
        """SELECT DISTINCT entity_type FROM sira_entity_states WHERE newest_at < $1
           UNION SELECT DISTINCT entity_type FROM sira_feature_snapshots WHERE as_of < $1""", cut, timeout=TIMEOUT_S)})
    removed = {"sira_state_checkpoints": months["removed"],
               "sira_entity_states": await _rows(conn, run, "sira_entity_states", "newest_at < $1", cut),
               "sira_feature_snapshots": await _rows(conn, run, "sira_feature_snapshots", "as_of < $1", cut)}
    if run.apply:
        await _drop_cached(conn, types)
    await _drop(conn, run, months)
    return {"removed": removed, "partitions_dropped": months["partitions_dropped"], "oldest_kept": months["oldest_kept"],
            "entity_types": types}


async def _drop_cached(conn: Any, entity_types: Sequence[str]) -> None:
    """Replicas drop their cached states of these entity types (they read the stored ones again)."""
    from sira.features.states import drop_cached

    for entity in entity_types:
        await drop_cached(conn, entity)


async def retired_feature_sets(conn: Any, run: Run) -> list[tuple[str, int]]:
    """Registered feature sets no model uses: not a name's current version, not a model's setting, not the set
    of a version that is live or was archived less than the setting's days ago (a rollback target)."""
    used = {(r[0], r[1]) for r in await conn.fetch(
        """SELECT feature_set, feature_set_version FROM sira_models WHERE feature_set IS NOT NULL
           UNION SELECT m.feature_set, v.feature_set_version FROM sira_model_versions v JOIN sira_models m ON m.id = v.model_id
            WHERE m.feature_set IS NOT NULL AND (v.status = ANY($1::text[])
               OR (v.status = 'archived' AND v.status_changed_at >= $2))""",
        list(LIVE_STATUSES), run.cut["retired_feature_sets"])}
    return sorted(k for k in FEATURE_SETS if k not in used and CURRENT_VERSIONS.get(k[0]) != k[1])


async def _retired_feature_sets(conn: Any, run: Run) -> dict[str, Any]:
    retired = await retired_feature_sets(conn, run)
    removed = dict.fromkeys(("sira_features", "sira_entity_states", "sira_state_checkpoints",
                             "sira_feature_snapshots"), 0)
    if retired and run.apply:
        await conn.execute("SET LOCAL sira.partition_maintenance = 'on'")
    for name, version in retired:
        for table in removed:
            removed[table] += await _rows(conn, run, table, "feature_set = $1 AND feature_set_version = $2",
                                          name, version)
    if retired and run.apply:
        await conn.execute("SET LOCAL sira.partition_maintenance = 'off'")
        await _drop_cached(conn, sorted({s.entity for key in retired for s in FEATURE_SETS[key].entities}))
    return {"removed": removed, "feature_sets": [f"{n}@{v}" for n, v in retired]}


async def _dead_letters(conn: Any, run: Run) -> dict[str, Any]:
    held, cut = await run.hold(conn), run.cut["dead_letters"]
    where = ("rejected_at < $1 AND NOT coalesce(customer_id = ANY($2::text[]) OR payload->>'customer_id' = "
             "ANY($2::text[]) OR event_id = ANY($3::text[]), false)")
    removed = await _rows(conn, run, "sira_rejected_events", where, cut, held.customers, held.events)
    oldest = await conn.fetchval(f"SELECT min(rejected_at) FROM sira_rejected_events WHERE NOT ({where})",
                                 cut, held.customers, held.events, timeout=TIMEOUT_S)
    return {"removed": {"sira_rejected_events": removed}, "oldest_kept": oldest, "held": held.summary()}


async def _request_claims(conn: Any, run: Run) -> dict[str, Any]:
    cut = run.cut["request_claims"]
    removed = await _rows(conn, run, "sira_request_claims", "claimed_at < $1", cut)
    oldest = await conn.fetchval("SELECT min(claimed_at) FROM sira_request_claims WHERE claimed_at >= $1", cut)
    return {"removed": {"sira_request_claims": removed}, "oldest_kept": oldest}


async def _spool(conn: Any, run: Run) -> dict[str, Any]:
    """Records a serving spool set aside as refused by PostgreSQL (``<spool>/refused/*.jsonl``), by the time
    their file was last written: the dead letters of serving, on this machine."""
    cut = run.cut["spool"].timestamp()
    files = records = 0
    for folder in run.spool_dirs:
        for path in sorted((folder / "refused").glob("*.jsonl")) if (folder / "refused").is_dir() else []:
            try:
                if path.stat().st_mtime >= cut:
                    continue
                with open(path, "rb") as fh:
                    records += sum(1 for _ in fh)
                if run.apply:
                    path.unlink()
            except FileNotFoundError:
                continue
            files += 1
    return {"removed": {"spool_refused_files": files, "spool_refused_records": records},
            "folders": [str(f) for f in run.spool_dirs]}


async def _audit_log(conn: Any, run: Run) -> dict[str, Any]:
    """What an archive would take (a plan, and the archive's first look): entries older than the cut-off but
    the production history; nothing while an erasure is pending."""
    cut = run.cut["audit_log"]
    row = await conn.fetchrow("""SELECT count(*) AS n, min(id) AS first, max(id) AS last, min(occurred_at) AS oldest,
                                        max(occurred_at) AS newest
                                   FROM sira_audit_log WHERE occurred_at < $1 AND NOT action = ANY($2::text[])""",
                              cut, KEPT_ACTIONS, timeout=TIMEOUT_S)
    pending = await conn.fetchval("SELECT count(*) FROM sira_erasure_requests WHERE status = 'pending'")
    oldest = await conn.fetchval("SELECT min(occurred_at) FROM sira_audit_log WHERE occurred_at >= $1 OR "
                                 "action = ANY($2::text[])", cut, KEPT_ACTIONS, timeout=TIMEOUT_S)
    out = {"removed": {"sira_audit_log": row["n"]}, "oldest_kept": oldest, "kept_actions": KEPT_ACTIONS,
           "_range": dict(row)}
    if pending and row["n"]:
        out.update(removed={"sira_audit_log": 0}, held={"pending_erasures": pending},
                   skipped=f"{pending} erasure request(s) pending: an erasure lists the files to look at from the "
                           "audit log; carry them out first")
    elif not run.apply and row["n"]:
        out["note"] = "archived only by `sira retention apply --archive-audit`"
    return out


StepFn = Callable[[Any, Run], Awaitable[dict[str, Any]]]
STEP_FNS: dict[str, StepFn] = {
    "events": _events, "predictions": _predictions, "labels": _labels, "features": _features,
    "feature_state": _feature_state, "retired_feature_sets": _retired_feature_sets, "dead_letters": _dead_letters,
    "request_claims": _request_claims, "spool": _spool, "audit_log": _audit_log}


def _public(step: str, run: Run, result: dict[str, Any]) -> dict[str, Any]:
    return {"step": step, "cutoff": run.cut[step], **{k: v for k, v in result.items() if not k.startswith("_")}}


async def _start(pool: Any, identity: Identity, settings: Any, secret: str, spool_dirs: Sequence[Path],
                 now: datetime | None, apply: bool, what: str) -> Run:
    now = now or datetime.now(timezone.utc)
    async with db.transaction(pool) as conn:  # a refusal is audited after its rollback
        authorize(identity, what)
        floors = await monitoring_floors(conn, settings, now)
    return Run(settings, now, floors, cutoffs(settings, now, floors), secret, list(spool_dirs), apply)


def _summary(run: Run, steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    days = {k.removeprefix("retention_"): v for k, v in run.settings.model_dump().items() if k.startswith("retention_")}
    return {"now": run.now, "settings": days, "lookback_days": LOOKBACK / DAY, **extra,
            "kept_for_monitoring": [dataclasses.asdict(f) for f in run.floors], "steps": steps}


async def plan(pool: Any, identity: Identity, settings: Any, *, secret: str, spool_dirs: Sequence[Path],
               now: datetime | None = None) -> dict[str, Any]:
    """What ``apply`` would remove now, per step and table, and the oldest row each keeps (one snapshot)."""
    run = await _start(pool, identity, settings, secret, spool_dirs, now, False, "retention.plan")
    steps = []
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        for step in STEPS:
            steps.append(_public(step, run, await STEP_FNS[step](conn, run)))
    return _summary(run, steps)


async def apply(pool: Any, identity: Identity, settings: Any, *, secret: str, spool_dirs: Sequence[Path],
                only: Sequence[str] | None = None, archive_audit: bool = False,
                now: datetime | None = None) -> dict[str, Any]:
    """Remove what is past its cut-off: each step in a transaction of its own with its audit entry (who, the
    cut-off, the counts); the audit log only with ``archive_audit``."""
    unknown = sorted(set(only or ()) - set(STEPS))
    if unknown:
        raise InvalidInput(f"unknown step(s) {', '.join(unknown)}; steps: {', '.join(STEPS)}", code="invalid_value")
    run = await _start(pool, identity, settings, secret, spool_dirs, now, True, "retention.apply")
    async with pool.acquire() as lock:  # one apply at a time: two archives of the audit log at once removed
        # each other's file mid-write and published a file the other wrote
        if not await lock.fetchval("SELECT pg_try_advisory_lock(hashtext('sira retention apply'))"):
            raise Conflict("another `sira retention apply` is running on this database: wait for it to end",
                           code="retention_running")
        try:
            return await _apply_steps(pool, identity, run, only, archive_audit)
        finally:
            await lock.execute("SELECT pg_advisory_unlock(hashtext('sira retention apply'))")


async def _apply_steps(pool: Any, identity: Identity, run: Run, only: Sequence[str] | None,
                       archive_audit: bool) -> dict[str, Any]:
    run_id, steps = uuid.uuid4().hex[:12], []
    for step in [s for s in STEPS if not only or s in only]:
        if step == "audit_log":
            steps.append(await archive_audit_log(pool, identity, run, run_id) if archive_audit else
                         {"step": step, "cutoff": run.cut[step], "removed": {"sira_audit_log": 0},
                          "skipped": "the audit log is archived only with --archive-audit"})
            continue
        try:
            async with db.transaction(pool) as conn:
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                done = _public(step, run, await STEP_FNS[step](conn, run))
                await audit.record(conn, identity.actor(), "retention.apply", target_type="retention_step",
                                   target_id=step, details={"run_id": run_id, **orjson.loads(orjson.dumps(done))})
        except asyncpg.LockNotAvailableError:
            raise Conflict(f"retention step {step}: a table stayed busy (another transaction held it: scoring's "
                           "inserts, or a long read such as a report); "
                           f"nothing of this step was removed, the steps before it were: run apply again",
                           code="table_busy", details={"done": [s["step"] for s in steps]}) from None
        except asyncpg.InsufficientPrivilegeError as exc:
            raise SiraError(f"retention step {step}: {exc}: run retention as the role that owns SIRA's tables (the "
                            "one that ran `sira db migrate`)", code="not_table_owner") from None
        steps.append(done)
    return _summary(run, steps, run_id=run_id)


# -- the audit log's archive --------------------------------------------------------------------------------


async def archive_audit_log(pool: Any, identity: Identity, run: Run, run_id: str) -> dict[str, Any]:
    """Write the audit entries past the cut-off to ``<workspace>/archive/audit-log/audit-log-FIRST-LAST.jsonl``
    (fsynced, as ``.partial``), then delete exactly those in one transaction that records the archive
    (``retention.audit_archived``: file, sha256, rows, id range); the file takes its name once that commits.
    A ``.partial`` left by a run that stopped is renamed when its deletion committed, else removed."""
    folder = archive_folder(run.settings)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    async with db.transaction(pool) as conn:
        settled = await settle(conn, folder)
        found = await _audit_log(conn, run)
    rows, out = found.pop("_range"), _public("audit_log", run, found)
    out["settled_files"] = settled
    if found.get("skipped") or not rows["n"]:
        return out
    path = folder / f"audit-log-{rows['first']:012d}-{rows['last']:012d}.jsonl"
    partial = path.with_name(path.name + ".partial")
    where = "occurred_at < $1 AND NOT action = ANY($2::text[]) AND id BETWEEN $3 AND $4"
    args = (run.cut["audit_log"], KEPT_ACTIONS, rows["first"], rows["last"])
    try:
        written, digest = await write_archive(pool, partial, where, args)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    try:
        async with db.transaction(pool) as conn:
            await conn.execute("SET LOCAL sira.partition_maintenance = 'on'")  # the owner's switch (sql/032)
            deleted = db.rows_affected(await conn.execute(f"DELETE FROM sira_audit_log WHERE {where}", *args,
                                                          timeout=TIMEOUT_S))
            await conn.execute("SET LOCAL sira.partition_maintenance = 'off'")
            if deleted != written:
                raise SiraError(f"the audit archive holds {written} entries but {deleted} matched: nothing was "
                                "removed; run it again", code="archive_mismatch")
            details = {"run_id": run_id, "file": str(path), "sha256": digest, "rows": written,
                       "first_id": rows["first"], "last_id": rows["last"], "oldest": rows["oldest"].isoformat(),
                       "newest": rows["newest"].isoformat(), "cutoff": run.cut["audit_log"].isoformat(),
                       "kept_actions": KEPT_ACTIONS}
            await audit.record(conn, identity.actor(), ARCHIVED, target_type="table", target_id="sira_audit_log",
                               details=details)
    except (SiraError, asyncpg.PostgresError) as exc:  # rolled back: the entries are still in the table
        partial.unlink(missing_ok=True)
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            raise SiraError(f"archiving the audit log: {exc}: run retention as the role that owns SIRA's tables",
                            code="not_table_owner") from None
        raise
    # any other failure (the connection lost at the commit): the .partial stays for the next run to settle
    publish(partial, path)
    return {**out, "removed": {"sira_audit_log": written}, "archive": {"file": str(path), "sha256": digest}}
