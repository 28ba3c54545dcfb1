"""Data retention (``sira retention plan|apply``): each table loses what is past its cut-off and nothing else,
predictions a whole monthly partition at a time; what a production version's monitoring and a pending erasure
need is kept; the audit log leaves only through its archive, written first; only an admin may do it. A
private database: partitions are dropped, the session's shared database is left alone."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from sira.core import db
from sira.core.auth import Identity, create_key
from sira.core.config import Settings
from sira.monitoring import retention
from sira.monitoring.subject import subject_ref
from tests.conftest import cli_in_process, migrate_database, run_sync

NOW = datetime(2030, 3, 15, 12, tzinfo=timezone.utc)  # the cut-offs of the module-level runs: events 2029-02-08
ADMIN = Identity("k-admin", frozenset({"admin"}))
SECRET = "a retention test's auth secret, long enough"
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def installation(create_database, tmp_path_factory):
    """A database of its own with an admin and a service key; its workspace."""
    from types import SimpleNamespace

    dsn = create_database("sira_retention")
    run_sync(migrate_database(dsn))
    settings = Settings(database_url=dsn, workspace=tmp_path_factory.mktemp("retention-ws"))

    async def keys() -> dict[str, str]:
        conn = await db.connect(dsn)
        try:
            pepper = settings.secret("auth_secret")
            async with conn.transaction():
                admin, _ = await create_key(conn, name="k-admin", roles=["admin"], pepper=pepper, creator=None)
                service, _ = await create_key(conn, name="k-service", roles=["service"], pepper=pepper, creator=ADMIN)
            return {"admin": admin, "service": service}
        finally:
            await conn.close()

    return SimpleNamespace(dsn=dsn, settings=settings, keys=run_sync(keys()))


@pytest.fixture
async def fresh(installation):
    """A pool on the private database with every table emptied but the keys (and the ledger, the salt)."""
    p = await db.create_pool(installation.dsn, installation.settings)
    names = [r["relname"] for r in await p.fetch(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = current_schema() AND c.relname LIKE 'sira\\_%' AND c.relkind IN ('r', 'p')
              AND NOT c.relispartition
              AND c.relname <> ALL(ARRAY['sira_schema_migrations', 'sira_erasure_salt', 'sira_api_keys'])""")]
    async with p.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")  # append-only tables refuse TRUNCATE
        await conn.execute(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE")
    yield p
    await p.close()


def settings_with(installation, **days: int) -> Settings:
    return Settings(database_url=installation.dsn, workspace=installation.settings.workspace,
                    **{f"retention_{k}_days": v for k, v in days.items()})


# -- what SIRA comes to hold ----------------------------------------------------------------------------------


async def model(conn, name: str = "fraud", *, version_status: str | None = None, maturity: int = 30,
                feature_set_version: int = 1, setting: int | None = None, archived_at: datetime | None = None) -> int:
    """A model (its feature set's version ``setting``, by default its version's) and its version 1."""
    model_id = await conn.fetchval(
        "INSERT INTO sira_models (name, model_type, feature_set, feature_set_version, label_maturity_days, created_by)"
        " VALUES ($1, 'fraud_detection', 'payments', $2, $3, 'k-ds') RETURNING id", name,
        setting or feature_set_version, maturity)
    if version_status:
        await conn.execute(
            "INSERT INTO sira_model_versions (model_id, version, status, artifact_uri, artifact_sha256, "
            "feature_set_version, created_by, status_changed_at) VALUES ($1, 1, $2, 'file:///m', $3, $4, 'k-ds', $5)",
            model_id, version_status, "0" * 64, feature_set_version, archived_at or NOW)
    return model_id


async def event(conn, event_id: str, at: datetime, customer: str = "cus-1") -> None:
    await conn.execute("INSERT INTO sira_events (event_id, occurred_at, customer_id, amount) VALUES ($1, $2, $3, 10)",
                       event_id, at, customer)


async def prediction(conn, model_id: int, at: datetime, event_id: str | None = None, *,
                     partition: bool = True, version: int = 1) -> uuid.UUID:
    if partition:
        await conn.execute("SELECT sira_ensure_month_partitions('sira_predictions', $1, $1)", at)
    pid = uuid.uuid4()
    await conn.execute(
        "INSERT INTO sira_predictions (prediction_id, scored_at, model_id, model_name, version, event_id, score, "
        "decision) VALUES ($1, $2, $3, 'fraud', $4, $5, 0.1, 'approve')", pid, at, model_id, version, event_id)
    return pid


async def label(conn, event_id: str, known_at: datetime, prediction_id: uuid.UUID | None = None) -> None:
    await conn.execute("INSERT INTO sira_feedback (event_id, prediction_id, label, source, known_at, created_at) "
                       "VALUES ($1, $2, true, 'chargeback', $3, $3)", event_id, prediction_id, known_at)


async def dead_letter(conn, at: datetime, customer: str = "cus-1") -> None:
    await conn.execute("INSERT INTO sira_rejected_events (source, reason_code, reason, payload, rejected_at, "
                       "customer_id) VALUES ('file:x.csv', 'invalid_field', 'amount: negative', $1, $2, $3)",
                       {"customer_id": customer}, at, customer)


async def feature_row(conn, event_id: str, at: datetime, *, partition: bool = True, version: int = 1) -> None:
    if partition:
        await conn.execute("SELECT sira_ensure_month_partitions('sira_features', $1, $1)", at)
    await conn.execute("INSERT INTO sira_features (feature_set, feature_set_version, entity_type, entity_id, as_of, "
                       "event_id, features) VALUES ('payments', $3, 'customer', 'cus-1', $2, $1, '{}')",
                       event_id, at, version)


async def state(conn, entity: str, newest: datetime, *, version: int = 2) -> None:
    day = newest.replace(hour=0, minute=0, second=0, microsecond=0)
    await conn.execute("SELECT sira_ensure_month_partitions('sira_state_checkpoints', $1, $1)", day)
    await conn.execute("INSERT INTO sira_entity_states (feature_set, feature_set_version, entity_type, entity_id, "
                       "state, newest_at) VALUES ('payments', $3, 'customer', $1, '\\x00', $2)", entity, newest, version)
    await conn.execute("INSERT INTO sira_state_checkpoints (feature_set, feature_set_version, entity_type, entity_id, "
                       "as_of, state) VALUES ('payments', $3, 'customer', $1, $2, '\\x00')", entity, day, version)
    await conn.execute("INSERT INTO sira_feature_snapshots (entity_type, entity_id, feature_set, feature_set_version, "
                       "features, as_of) VALUES ('customer', $1, 'payments', $3, '{}', $2)", entity, newest, version)


async def ids(pool, sql: str, *args) -> set:
    return {r[0] for r in await pool.fetch(sql, *args)}


def removed(result: dict, step: str) -> dict[str, int]:
    return next(s for s in result["steps"] if s["step"] == step)["removed"]


def step(result: dict, name: str) -> dict:
    return next(s for s in result["steps"] if s["step"] == name)


async def run(pool, settings, what: str, **options):
    return await getattr(retention, what)(pool, ADMIN, settings, secret=SECRET, spool_dirs=options.pop("spool", []),
                                          now=NOW, **options)


# -- the rules ----------------------------------------------------------------------------------------------


async def test_each_table_loses_only_what_is_past_its_cut_off_and_a_partition_goes_only_whole(installation, fresh,
                                                                                               tmp_path):
    settings = installation.settings  # the defaults: events, labels, predictions 400 days; dead letters 90
    cut = NOW - timedelta(days=400)  # 2029-02-08 12:00
    async with fresh.acquire() as conn:
        fraud = await model(conn)  # feature set payments@1 in use: not a retired set
        await event(conn, "ev-old", NOW - timedelta(days=500))
        await event(conn, "ev-kept", NOW - timedelta(days=399))
        old = await prediction(conn, fraud, datetime(2028, 12, 10, tzinfo=timezone.utc), "ev-old")  # its month: gone
        straddling = await prediction(conn, fraud, datetime(2029, 2, 3, tzinfo=timezone.utc))  # the cut-off's month
        await prediction(conn, fraud, datetime(2027, 5, 3, tzinfo=timezone.utc), partition=False)  # default, old
        in_default = await prediction(conn, fraud, datetime(2029, 9, 3, tzinfo=timezone.utc), partition=False)
        for pid in (old, straddling):
            await conn.execute("INSERT INTO sira_counterfactuals (prediction_id, result) VALUES ($1, '{}')", pid)
        await label(conn, "ev-old", NOW - timedelta(days=450), old)  # its event and prediction go, known long ago
        await label(conn, "ev-gone-late", NOW - timedelta(days=100))  # no event, but known recently
        await label(conn, "ev-kept", NOW - timedelta(days=420))  # known long ago, its event kept
        await feature_row(conn, "ev-old", datetime(2028, 12, 10, tzinfo=timezone.utc))
        await feature_row(conn, "ev-straddling", datetime(2029, 2, 3, tzinfo=timezone.utc))
        await feature_row(conn, "ev-default", datetime(2027, 5, 3, tzinfo=timezone.utc), partition=False)
        await state(conn, "cus-idle", datetime(2028, 11, 10, 8, tzinfo=timezone.utc))  # before the state cut-off
        await state(conn, "cus-active", NOW - timedelta(days=3))
        await dead_letter(conn, NOW - timedelta(days=100))
        await dead_letter(conn, NOW - timedelta(days=10))
        await conn.execute("INSERT INTO sira_request_claims (model_name, request_id, digest, claimant, claimed_at) "
                           "VALUES ('fraud', 'r-old', 'd', 'replica', $1), ('fraud', 'r-new', 'd', 'replica', $2)",
                           NOW - timedelta(days=40), NOW - timedelta(days=1))
        await conn.execute("INSERT INTO sira_audit_log (occurred_at, actor, actor_kind, action) "
                           "VALUES ($1, 'k-admin', 'api_key', 'models.create')", NOW - timedelta(days=3000))
    # a serving spool's records PostgreSQL refused, set aside: the old file goes, by when it was last written
    refused = tmp_path / "spool" / "refused"
    refused.mkdir(parents=True)
    for name, age in (("old", 100), ("recent", 1)):
        (refused / f"{name}.jsonl").write_text('{"kind": "event"}\n{"kind": "prediction"}\n')
        when = (NOW - timedelta(days=age)).timestamp()
        os.utime(refused / f"{name}.jsonl", (when, when))
    expected = {"events": {"sira_events": 1}, "predictions": {"sira_predictions": 2, "sira_counterfactuals": 1},
                "labels": {"sira_feedback": 1, "sira_feedback_history": 1}, "features": {"sira_features": 2},
                "feature_state": {"sira_state_checkpoints": 1, "sira_entity_states": 1, "sira_feature_snapshots": 1},
                "dead_letters": {"sira_rejected_events": 1}, "request_claims": {"sira_request_claims": 1},
                "spool": {"spool_refused_files": 1, "spool_refused_records": 2}}

    plan = await run(fresh, settings, "plan", spool=[tmp_path / "spool"])
    assert {s: removed(plan, s) for s in expected} == expected
    assert step(plan, "events")["cutoff"] == cut and step(plan, "feature_state")["cutoff"] == cut - retention.LOOKBACK
    assert step(plan, "events")["oldest_kept"] == NOW - timedelta(days=399)
    assert step(plan, "predictions")["oldest_kept"] == datetime(2029, 2, 3, tzinfo=timezone.utc)  # kept with its month
    assert "sira_predictions_p2028_12" in step(plan, "predictions")["partitions_dropped"]
    assert "sira_predictions_p2029_02" not in step(plan, "predictions")["partitions_dropped"]
    assert removed(plan, "audit_log") == {"sira_audit_log": 1} and "--archive-audit" in step(plan, "audit_log")["note"]
    assert await fresh.fetchval("SELECT count(*) FROM sira_events") == 2  # a plan changes nothing

    done = await run(fresh, settings, "apply", spool=[tmp_path / "spool"])
    assert {s: removed(done, s) for s in expected} == expected
    assert sorted(f.name for f in refused.iterdir()) == ["recent.jsonl"]
    assert await ids(fresh, "SELECT event_id FROM sira_events") == {"ev-kept"}
    assert await ids(fresh, "SELECT prediction_id FROM sira_predictions") == {straddling, in_default}
    assert await ids(fresh, "SELECT prediction_id FROM sira_counterfactuals") == {straddling}
    assert await ids(fresh, "SELECT event_id FROM sira_feedback") == {"ev-gone-late", "ev-kept"}
    assert await ids(fresh, "SELECT event_id FROM sira_feedback_history") == {"ev-gone-late", "ev-kept"}
    assert await ids(fresh, "SELECT event_id FROM sira_features") == {"ev-straddling"}
    for table in ("sira_entity_states", "sira_state_checkpoints"):
        assert await ids(fresh, f"SELECT entity_id FROM {table}") == {"cus-active"}
    assert await ids(fresh, "SELECT request_id FROM sira_request_claims") == {"r-new"}
    assert await fresh.fetchval("SELECT count(*) FROM sira_rejected_events") == 1
    assert await fresh.fetchval("SELECT to_regclass('sira_predictions_p2028_12')") is None  # detached and dropped
    assert await fresh.fetchval("SELECT to_regclass('sira_predictions_p2029_02')") is not None
    assert await fresh.fetchval("SELECT count(*) FROM sira_audit_log WHERE action = 'models.create'") == 1  # no archive

    entries = await fresh.fetch("SELECT actor, target_id, details FROM sira_audit_log WHERE action = 'retention.apply' "
                               "ORDER BY id")
    assert [e["target_id"] for e in entries] == [s for s in retention.STEPS if s != "audit_log"]
    assert {e["actor"] for e in entries} == {"k-admin"} and {e["details"]["run_id"] for e in entries} == {done["run_id"]}
    assert next(e for e in entries if e["target_id"] == "events")["details"]["removed"] == {"sira_events": 1}

    again = await run(fresh, settings, "apply")  # idempotent: nothing more to remove
    assert all(not any(s["removed"].values()) for s in again["steps"]), again["steps"]


async def test_a_production_versions_monitoring_and_a_pending_erasure_keep_their_rows(installation, fresh):
    settings = settings_with(installation, events=60, predictions=30, labels=60)
    async with fresh.acquire() as conn:
        fraud = await model(conn, version_status="production")  # label maturity 30 days, margin 90
        newest = NOW - timedelta(days=70)
        await prediction(conn, fraud, newest)
        watched = await prediction(conn, fraud, NOW - timedelta(days=150))  # the version's monitoring reads it
        gone = await prediction(conn, fraud, NOW - timedelta(days=400), "ev-someone")
        await event(conn, "ev-watched", NOW - timedelta(days=150))
        await event(conn, "ev-someone", NOW - timedelta(days=400), "cus-someone")
        # a person whose erasure waits for its second admin: what it needs to find stays
        await event(conn, "ev-held", NOW - timedelta(days=400), "cus-held")
        held_prediction = await prediction(conn, fraud, NOW - timedelta(days=400), "ev-held")
        await dead_letter(conn, NOW - timedelta(days=400), "cus-held")
        await dead_letter(conn, NOW - timedelta(days=400), "cus-someone")
        await conn.execute("INSERT INTO sira_erasure_requests (subject_ref, reason, requested_by) "
                           "VALUES ($1, 'art. 17', 'k-admin')", subject_ref(SECRET, "cus-held"))
        await conn.execute("INSERT INTO sira_audit_log (occurred_at, actor, actor_kind, action) "
                           "VALUES ($1, 'k-admin', 'api_key', 'models.create')", NOW - timedelta(days=3000))

    floor = newest - timedelta(days=30 + 90)
    done = await run(fresh, settings, "apply", archive_audit=True)
    assert done["kept_for_monitoring"] == [
        {"model": "fraud", "version": 1, "status": "production", "keeps_from": floor},
        # and its training: events whose labels matured (30 days) of 60 days more (retention_rules.TRAINING_DAYS)
        # (version None: the model's, no version's; it said version 0, which no model has)
        {"model": "fraud", "version": None, "status": "training", "keeps_from": NOW - timedelta(days=30 + 60)}]
    assert step(done, "events")["cutoff"] == floor and step(done, "predictions")["cutoff"] == floor
    assert await ids(fresh, "SELECT event_id FROM sira_events") == {"ev-watched", "ev-held"}
    assert await ids(fresh, "SELECT prediction_id FROM sira_predictions") >= {watched, held_prediction}
    assert gone not in await ids(fresh, "SELECT prediction_id FROM sira_predictions")
    assert await ids(fresh, "SELECT customer_id FROM sira_rejected_events") == {"cus-held"}
    for name in ("events", "predictions", "dead_letters"):
        assert step(done, name)["held"]["pending_erasures"] == 1 and step(done, name)["held"]["customers"] == 1
    assert "erasure" in step(done, "audit_log")["skipped"]  # the audit log waits for the erasure too
    assert await fresh.fetchval("SELECT count(*) FROM sira_audit_log WHERE action = 'models.create'") == 1

    # carried out (the erasure deletes them itself): nothing holds them back any more
    await fresh.execute("UPDATE sira_erasure_requests SET status = 'executed', decided_by = 'k-admin-b', "
                       "decided_at = now()")
    again = await run(fresh, settings, "apply")
    assert removed(again, "events") == {"sira_events": 1} and removed(again, "dead_letters") == {
        "sira_rejected_events": 1}
    assert held_prediction not in await ids(fresh, "SELECT prediction_id FROM sira_predictions")


async def test_a_feature_set_no_model_uses_loses_its_rows_states_and_checkpoints(installation, fresh):
    async with fresh.acquire() as conn:
        # its setting moved on to v2; its version trained on v1 was archived longer ago than the setting's 90 days
        await model(conn, "old-fraud", version_status="archived", setting=2, archived_at=NOW - timedelta(days=100))
        await feature_row(conn, "ev-1", NOW - timedelta(days=5))
        await state(conn, "cus-v1", NOW - timedelta(days=5), version=1)
        await state(conn, "cus-v2", NOW - timedelta(days=5), version=2)  # the current version: kept
    done = await run(fresh, installation.settings, "apply", only=["retired_feature_sets"])
    assert [s["step"] for s in done["steps"]] == ["retired_feature_sets"]
    assert step(done, "retired_feature_sets")["feature_sets"] == ["payments@1"]
    assert removed(done, "retired_feature_sets") == {"sira_features": 1, "sira_entity_states": 1,
                                                     "sira_state_checkpoints": 1, "sira_feature_snapshots": 1}
    assert await ids(fresh, "SELECT entity_id FROM sira_entity_states") == {"cus-v2"}

    # a version archived recently may be rolled back to: its feature set stays
    async with fresh.acquire() as conn:
        await model(conn, "recent", version_status="archived", setting=2, archived_at=NOW - timedelta(days=10))
        await state(conn, "cus-v1", NOW - timedelta(days=5), version=1)
    kept = await run(fresh, installation.settings, "plan")
    assert step(kept, "retired_feature_sets")["feature_sets"] == []


# -- the command line -----------------------------------------------------------------------------------------


async def sira(installation, monkeypatch, capsys, key: str, *args: str):
    """The command line as the key's owner, in a thread (it runs its own event loop)."""
    env = {"SIRA_DATABASE_URL": installation.dsn, "SIRA_WORKSPACE": str(installation.settings.workspace),
           "SIRA_API_KEY": installation.keys[key]}
    return await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, *args)


async def audit_rows(dsn: str, occurred_at: datetime, actions: list[str]) -> None:
    conn = await db.connect(dsn)
    try:
        for action in actions:
            await conn.execute("INSERT INTO sira_audit_log (occurred_at, actor, actor_kind, action, target_type, "
                               "target_id, details) VALUES ($1, 'k-admin', 'api_key', $2, 'model', 'fraud', $3)",
                               occurred_at, action, {"from": 1, "to": 2} if action == "production.change" else {})
    finally:
        await conn.close()


async def test_the_audit_log_leaves_only_through_its_archive_written_first(installation, fresh, monkeypatch, capsys):
    eight_years = datetime.now(timezone.utc) - timedelta(days=8 * 365)
    await audit_rows(installation.dsn, eight_years, ["models.create", "promotion.request", "production.change"])
    folder = retention.archive_folder(installation.settings)

    plan = await sira(installation, monkeypatch, capsys, "admin", "retention", "--json")  # `sira retention` is the plan
    assert plan.returncode == 0, plan.stderr
    assert removed(json.loads(plan.stdout), "audit_log") == {"sira_audit_log": 2}
    plain = await sira(installation, monkeypatch, capsys, "admin", "retention", "apply", "--json")
    assert plain.returncode == 0, plain.stderr
    assert "--archive-audit" in step(json.loads(plain.stdout), "audit_log")["skipped"]
    assert await fresh.fetchval("SELECT count(*) FROM sira_audit_log WHERE occurred_at < now() - interval '7 years'") == 3

    # what a stopped archive left: one whose deletion never committed (removed), one whose did (takes its name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "audit-log-000000000001-000000000002.jsonl.partial").write_text("{}\n")
    finished = folder / "audit-log-000000000090-000000000091.jsonl"
    finished.with_name(finished.name + ".partial").write_text("{}\n")
    await fresh.execute("INSERT INTO sira_audit_log (actor, actor_kind, action, details) VALUES ('k-admin', 'api_key', "
                       "$1, $2)", retention.ARCHIVED, {"file": str(finished)})

    archived = await sira(installation, monkeypatch, capsys, "admin", "retention", "apply", "--only", "audit_log",
                    "--archive-audit", "--json")
    assert archived.returncode == 0, archived.stderr
    result = step(json.loads(archived.stdout), "audit_log")
    assert result["removed"] == {"sira_audit_log": 2} and result["settled_files"] == [str(finished)]
    path = Path(result["archive"]["file"])
    assert path.parent == folder and path.exists() and finished.exists() and not list(folder.glob("*.partial"))
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert sorted(r["action"] for r in lines) == ["models.create", "promotion.request"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == result["archive"]["sha256"]
    assert path.stat().st_mode & 0o077 == 0  # the entries name people and addresses: the owner's only
    # the production history stays (rollback reads it); the archive is itself in the audit log
    assert await ids(fresh, "SELECT action FROM sira_audit_log WHERE occurred_at < now() - interval '7 years'") == {
        "production.change"}
    entry = await fresh.fetchrow("SELECT actor, details FROM sira_audit_log WHERE action = $1 AND details->>'file' = $2",
                                retention.ARCHIVED, str(path))
    assert entry["actor"] == "k-admin" and entry["details"]["rows"] == 2
    assert entry["details"]["sha256"] == result["archive"]["sha256"]

    again = await sira(installation, monkeypatch, capsys, "admin", "retention", "apply", "--only", "audit_log",
                 "--archive-audit", "--json")
    assert removed(json.loads(again.stdout), "audit_log") == {"sira_audit_log": 0}


async def test_only_an_admin_may_plan_or_apply_retention(installation, fresh, monkeypatch, capsys):
    await audit_rows(installation.dsn, datetime.now(timezone.utc) - timedelta(days=8 * 365), ["models.create"])
    for args in (("retention", "plan"), ("retention", "apply", "--archive-audit")):
        refused = await sira(installation, monkeypatch, capsys, "service", *args)
        assert refused.returncode == 2 and refused.stderr.startswith("error: forbidden: k-service may not retention")
    denied = await fresh.fetch("SELECT action FROM sira_audit_log WHERE outcome = 'denied' ORDER BY id")
    assert [d["action"] for d in denied] == ["retention.plan", "retention.apply"]
    assert await fresh.fetchval("SELECT count(*) FROM sira_audit_log WHERE action = 'models.create'") == 1
    unknown = await sira(installation, monkeypatch, capsys, "admin", "retention", "apply", "--only", "everything")
    assert unknown.returncode == 2 and "unknown step(s) everything" in unknown.stderr


async def test_the_plan_names_a_models_training_window_by_no_version(installation, fresh, monkeypatch, capsys):
    """`sira retention plan` printed a model's training floor as "kept for monitoring fraud v0 (training)": there
    is no v0. It names the model's training window; a version's monitoring floor still names its version."""
    async with fresh.acquire() as conn:
        await model(conn, version_status="production")
        await model(conn, "churn", maturity=120)  # no version yet: its training floor only
    plan = await sira(installation, monkeypatch, capsys, "admin", "retention", "plan")
    assert plan.returncode == 0, plan.stderr
    said = [line for line in plan.stderr.splitlines() if line.startswith("kept for ")]
    assert [line.split(":")[0] for line in said] == ["kept for monitoring fraud v1 (production)",
                                                     "kept for churn (training window)",
                                                     "kept for fraud (training window)"], plan.stderr
    assert " v0" not in plan.stderr
    floors = json.loads((await sira(installation, monkeypatch, capsys, "admin", "retention", "plan", "--json")).stdout)
    assert [(f["model"], f["version"], f["status"]) for f in floors["kept_for_monitoring"]] == [
        ("fraud", 1, "production"), ("churn", None, "training"), ("fraud", None, "training")]


def test_the_retention_section_documents_every_setting_and_its_default():
    text = (DOCS / "security.md").read_text()
    section = text[text.index("## Retention"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    for name, info in Settings.model_fields.items():
        if name.startswith("retention_"):
            row = re.search(rf"`SIRA_{name.upper()}` \| `([\d,]+)`", section)
            assert row, f"SIRA_{name.upper()} is not in docs/security.md's Retention table"
            assert int(row.group(1).replace(",", "")) == info.default, name
    for step_name in retention.STEPS:
        assert f"`{step_name}`" in section, step_name
    assert "sira retention" in (DOCS / "cli.md").read_text()


# -- found by an outside review (2026-12-07) ----------------------------------------------------------------


async def test_an_event_stays_while_a_prediction_names_it_so_an_erasure_still_reaches_both(installation, fresh):
    """The events step removed an event at its cut-off while its prediction (and the label kept with it) stayed
    until their month's partition went: `sira subject forget` finds predictions and labels through the person's
    events, and said `no_data` about a customer whose prediction, features included, was still stored. Now an
    event a kept prediction names stays with it (and goes in the run that drops its prediction's partition)."""
    settings = settings_with(installation, events=60, predictions=400, labels=60)
    async with fresh.acquire() as conn:
        fraud = await model(conn)
        await event(conn, "ev-scored", NOW - timedelta(days=200), "cus-scored")
        scored = await prediction(conn, fraud, NOW - timedelta(days=200), "ev-scored")
        await label(conn, "ev-scored", NOW - timedelta(days=190), scored)
        await event(conn, "ev-unscored", NOW - timedelta(days=200))
        await event(conn, "ev-old", NOW - timedelta(days=500), "cus-old")  # its prediction's month goes this run
        await prediction(conn, fraud, NOW - timedelta(days=500), "ev-old")
    plan = await run(fresh, settings, "plan")
    done = await run(fresh, settings, "apply")
    assert removed(plan, "events") == removed(done, "events") == {"sira_events": 2}
    assert await ids(fresh, "SELECT event_id FROM sira_events") == {"ev-scored"}
    assert await ids(fresh, "SELECT prediction_id FROM sira_predictions") == {scored}
    assert await ids(fresh, "SELECT event_id FROM sira_feedback") == {"ev-scored"}


async def test_a_models_training_keeps_the_events_beyond_its_label_maturity(installation, fresh):
    """SIRA_RETENTION_EVENTS_DAYS=60 removed every event a model with a 120-day label maturity could learn from
    (no version in production yet, so no monitoring floor): the events of 60 days beyond its maturity stay."""
    settings = settings_with(installation, events=60, labels=60)
    async with fresh.acquire() as conn:
        await model(conn, "churn", maturity=120)  # no version yet
        await event(conn, "ev-matured", NOW - timedelta(days=150))
        await event(conn, "ev-too-old", NOW - timedelta(days=200))
    done = await run(fresh, settings, "apply")
    assert step(done, "events")["cutoff"] == NOW - timedelta(days=120 + 60)
    assert await ids(fresh, "SELECT event_id FROM sira_events") == {"ev-matured"}


async def test_one_apply_at_a_time(installation, fresh):
    """Two `apply --archive-audit` at once: one removed the other's archive file mid-write and the other
    published a file it had not written. Now a second apply is refused while one runs."""
    async with fresh.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock(hashtext('sira retention apply'))")  # as a running apply
        try:
            with pytest.raises(Exception) as caught:
                await run(fresh, installation.settings, "apply")
            assert getattr(caught.value, "code", None) == "retention_running", caught.value
        finally:
            await holder.execute("SELECT pg_advisory_unlock(hashtext('sira retention apply'))")
    assert (await run(fresh, installation.settings, "apply"))["steps"]  # and runs once the other ended


async def test_a_partitions_detach_does_not_hold_scorings_inserts_behind_a_long_read(installation, fresh,
                                                                                     monkeypatch):
    """DETACH PARTITION waited up to 10 s behind a long read (a report), and every scoring insert queued behind
    it: 8.7 s for one. Now it waits 200 ms at a time and tries again: an insert that waits at most 2 s gets in,
    and a read that outlasts the tries ends the step as table_busy, nothing of it removed."""
    monkeypatch.setattr(retention, "DETACH_TRIES", 4)
    async with fresh.acquire() as conn:
        fraud = await model(conn)
        await prediction(conn, fraud, NOW - timedelta(days=500))
        await prediction(conn, fraud, NOW - timedelta(days=1))  # its month's partition exists for the insert
    reader, writer = await fresh.acquire(), await fresh.acquire()
    try:
        read = reader.transaction()
        await read.start()
        await reader.fetchval("SELECT count(*) FROM sira_predictions")  # a report's read, held open
        applying = asyncio.ensure_future(run(fresh, installation.settings, "apply", only=["predictions"]))
        for _ in range(200):  # until the detach waits in the lock queue
            if await fresh.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                    "AND query LIKE '%DETACH PARTITION%'"):
                break
            await asyncio.sleep(0.02)
        async with writer.transaction():
            await writer.execute("SET LOCAL lock_timeout = '2s'")
            await writer.execute(
                "INSERT INTO sira_predictions (prediction_id, scored_at, model_id, model_name, version, score, "
                "decision) VALUES ($1, $2, $3, 'fraud', 1, 0.1, 'approve')", uuid.uuid4(), NOW, fraud)
        with pytest.raises(Exception) as caught:
            await applying
        assert getattr(caught.value, "code", None) == "table_busy", caught.value
        await read.rollback()
    finally:
        await fresh.release(reader)
        await fresh.release(writer)
    assert await fresh.fetchval("SELECT count(*) FROM sira_predictions") == 3  # the step rolled back whole


async def test_a_rollback_to_a_version_whose_feature_set_retention_removed_is_refused_until_rebuilt(
        installation, fresh, monkeypatch, capsys):
    """Retention removes the states of a feature set no live version uses, a version archived long ago included;
    a rollback to that version was then accepted, and it served every entity as if it had no history."""
    from sira.core.errors import SiraError
    from sira.registry import models as registry

    async with fresh.acquire() as conn:
        model_id = await model(conn, "old-fraud", version_status="archived", setting=2,
                               archived_at=NOW - timedelta(days=100))
        await conn.execute(
            "INSERT INTO sira_model_versions (model_id, version, status, artifact_uri, artifact_sha256, "
            "feature_set_version, created_by) VALUES ($1, 2, 'production', 'file:///m2', $2, 2, 'k-ds')",
            model_id, "0" * 64)
        await conn.execute("INSERT INTO sira_audit_log (actor, actor_kind, action, target_type, target_id, details) "
                           "VALUES ('k-ops', 'api_key', 'production.change', 'model', 'old-fraud', $1)",
                           {"from": 1, "to": 2, "via": "approval"})
        await state(conn, "cus-v1", NOW - timedelta(days=5), version=1)
    done = await run(fresh, installation.settings, "apply", only=["retired_feature_sets"])
    assert step(done, "retired_feature_sets")["feature_sets"] == ["payments@1"]

    operator = Identity("k-ops", frozenset({"operator"}))
    from sira.registry.history import history

    async with fresh.acquire() as conn:  # the history says so before anyone tries (it offered v1 as is)
        said = await history(conn, operator, "old-fraud")
    assert said["rollback_to"] == 1 and said["rollback_blocked"]["code"] == "feature_set_retired"
    shown = await sira(installation, monkeypatch, capsys, "admin", "history", "--model", "old-fraud")
    assert shown.returncode == 0 and "that rollback would be refused now (feature_set_retired)" in " ".join(
        shown.stderr.split()), shown.stderr
    with pytest.raises(SiraError) as refused:
        async with db.transaction(fresh) as conn:
            await registry.rollback(conn, operator, "old-fraud", "v2 misbehaves", expected_version=2)
    assert refused.value.code == "feature_set_retired", refused.value.message
    assert "sira features materialize --full --feature-set payments@1" in refused.value.message
    assert refused.value.details["retention_run"] == done["run_id"]
    assert await fresh.fetchval("SELECT status FROM sira_model_versions WHERE version = 2") == "production"
    (denied,) = await fresh.fetch("SELECT target_type, target_id, outcome FROM sira_audit_log "
                                  "WHERE action = 'production.change' AND outcome <> 'success'")
    assert tuple(denied) == ("model_version", "old-fraud:v1", "denied")  # refused, and audited (it was not)

    # rebuilt since: the check lets it through (to the artifact's, which this test's file:///m fails)
    await fresh.execute("INSERT INTO sira_audit_log (actor, actor_kind, action, target_type, target_id, details) "
                        "VALUES ('k-ops', 'api_key', 'features.materialize', 'feature_set', 'payments@1', $1)",
                        {"full": True, "entities": {}})
    with pytest.raises(SiraError) as other:
        async with db.transaction(fresh) as conn:
            await registry.rollback(conn, operator, "old-fraud", "v2 misbehaves", expected_version=2)
    assert other.value.code == "artifact_missing", other.value.message
    # the store lost a file it registered: a failure of the system (exit 1, was 2), a 409 (was 404) that names the
    # file by its key in the store, not the server's path
    assert (other.value.exit_code, other.value.http_status) == (1, 409)
    assert other.value.details == {"file": "m/manifest.json"}, other.value.details
    assert await fresh.fetchval("SELECT count(*) FROM sira_audit_log WHERE action = 'production.change' "
                                "AND outcome = 'denied'") == 2  # a missing artifact's refusal audited too
    async with fresh.acquire() as conn:
        assert (await history(conn, operator, "old-fraud"))["rollback_blocked"] is None
