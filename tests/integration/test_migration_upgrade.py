"""A database migrated at any commit of SIRA's history upgrades to today's schema with its rows kept, and ends with
the schema a fresh install has (pg_dump -s, and sira.core.migrations.drift); the tables themselves are compared
with what the migrations build (`sira db check`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import asyncpg
import pytest

from sira.core import db, migrations
from sira.core.errors import SchemaOutOfDate
from tests.conftest import cli_in_process, run_sync

ROOT = Path(__file__).resolve().parents[2]
HISTORY = ROOT / "tests" / "integration" / "migration_history"

# Every schema a commit of main's history leaves that is not today's first N files (those upgrade by applying
# the rest in order, as a fresh install does; 8b672aa's 001-013 stands for them). A number is today's file; a
# name is an earlier content kept in tests/integration/migration_history: a copy, so that this runs without the
# git history (an archive, a shallow CI checkout); test_every_schema_of_the_history_is_covered checks the list
# against the history where there is one. One commit of each; sql/manifest.toml names them all.
TODAY = [m.filename for m in migrations.discover()]
STATES: dict[str, list[int | str]] = {
    "6624de8": [1, "002_events_features.sql@6624de8", 3, 4, 5],  # 002 edited in 6418859
    "8e65e5b": [1, "002_events_features.sql@6624de8", 3, 4, 5, 6],
    "8b672aa": list(range(1, 14)),  # a first N of today's files: upgraded before too
    "af55753": [*range(1, 17), "017_erasure.sql@af55753"],  # 017 edited in cb9e241
    "84f4ed2": [*range(1, 19), "019_card_rekey.sql@84f4ed2"],  # 019 edited in 4f39016
    "4f39016": [*range(1, 19), "019_card_rekey.sql@4f39016"],  # and again in b6b50cd
    # branches merged into main, their migrations numbered as they were there
    "964b3f7": [*range(1, 26), 27],
    "0555b19": [*range(1, 26), 28],
    "50a360a": [*range(1, 26), "026_label_history.sql@50a360a"],  # 029 today
    "a92e040": [*range(1, 28), 29],
}

# Rows of the oldest tables, written with the columns they had at 6624de8 (each where its table exists).
SEED = {
    "sira_events": """INSERT INTO sira_events (event_id, occurred_at, source, customer_id, card_token, terminal_id,
                                               amount, currency, country, channel, attributes)
        SELECT 'ev' || g, now() - (g || ' hours')::interval, 'file:old.csv', 'cus-' || (g % 20),
               CASE WHEN g % 5 = 0 THEN '4111111111111111' ELSE 'tok_' || g END, 'term-' || (g % 7), g * 1.5, 'EUR',
               'DE', 'web', '{"memo": "x"}'
          FROM generate_series(1, 300) g""",
    "sira_feedback": """INSERT INTO sira_feedback (event_id, label, source, known_at, occurred_at)
        SELECT 'ev' || g, g % 10 = 0, 'chargebacks', now(), now() - (g || ' hours')::interval
          FROM generate_series(1, 100) g""",
    "sira_features": """INSERT INTO sira_features (feature_set, feature_set_version, entity_type, entity_id, as_of,
                                                   event_id, features)
        SELECT 'payments', 1, kind, kind || '-' || (g % 20), now() - (g || ' hours')::interval, 'ev' || g,
               '{"amount_sum_24h": 1.5}'
          FROM generate_series(1, 200) g, unnest(ARRAY['customer', 'terminal']) kind""",
    "sira_models": "INSERT INTO sira_models (name, model_type, created_by) VALUES ('fraud', 'fraud_detection', 'ann')",
    "sira_model_versions": """INSERT INTO sira_model_versions (model_id, version, status, artifact_uri, artifact_sha256,
                                                               created_by)
        SELECT id, 1, 'production', 'file:///a', repeat('a', 64), 'ann' FROM sira_models""",
    "sira_predictions": """INSERT INTO sira_predictions (prediction_id, scored_at, model_id, model_name, version,
                                                         event_id, score, decision, request_id)
        SELECT gen_random_uuid(), now() - (g || ' hours')::interval, m.id, 'fraud', 1, 'ev' || g, 0.1, 'approve',
               'req' || g
          FROM generate_series(1, 100) g, sira_models m""",
    "sira_audit_log": """INSERT INTO sira_audit_log (actor, actor_kind, action, target_type, target_id)
        VALUES ('ann', 'api_key', 'model.create', 'model', 'fraud')""",
    "sira_rejected_events": """INSERT INTO sira_rejected_events (event_id, source, reason_code, reason, payload)
        VALUES ('bad1', 'file:old.csv', 'invalid_field', 'amount bad', '{"amount": "x"}')""",
    "sira_erasure_requests": """INSERT INTO sira_erasure_requests (subject_ref, reason, requested_by)
        VALUES ('subject-' || repeat('a', 32), 'asked by the customer', 'ann')""",
}


def _state(commit: str) -> list[migrations.Migration]:
    today = {m.version: m for m in migrations.discover()}
    found = []
    for part in STATES[commit]:
        if isinstance(part, int):
            found.append(today[part])
        else:
            filename = part.split("@")[0]
            found.append(migrations.Migration(int(filename[:3]), filename[4:-4], (HISTORY / part).read_text("utf-8")))
    return found


async def _rows(conn: asyncpg.Connection) -> dict[str, list[dict]]:
    """Every row of every SIRA table (partitions read through their parent), as JSON objects."""
    tables = await conn.fetch(
        """SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r', 'p')
             AND NOT relispartition AND relname LIKE 'sira\\_%' AND relname <> $1 ORDER BY relname""",
        migrations.LEDGER,
    )
    return {
        t["relname"]: [json.loads(r[0]) for r in await conn.fetch(f'SELECT to_jsonb(t)::text FROM "{t["relname"]}" t')]
        for t in tables
    }


def _pg_dump(dsn: str, server_major: int) -> str | None:
    """``pg_dump -s`` of a database, comments, settings and monthly partitions left out, statements sorted (their
    order follows object ids); None without a pg_dump of the server's major version."""
    candidates = [shutil.which("pg_dump"), *map(str, Path("/usr/lib/postgresql").glob("*/bin/pg_dump"))]
    try:
        from pgserver import _commands

        candidates.append(str(_commands.POSTGRES_BIN_PATH / "pg_dump"))
    except ImportError:
        pass
    for binary in filter(None, candidates):
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        if (m := re.search(r"(\d+)\.\d+", version)) and int(m.group(1)) == server_major:
            text = subprocess.run([binary, "-s", dsn], capture_output=True, text=True, check=True).stdout
            break
    else:
        return None
    statements = []
    for chunk in text.split(";\n"):
        lines = [line for line in chunk.splitlines()
                 if line.strip() and not line.startswith(("--", "\\", "SET ", "SELECT pg_catalog.set_config"))]
        if lines and not re.search(r"_p\d{4}_\d{2}\b", "\n".join(lines)):
            statements.append("\n".join(lines))
    return "\n;\n".join(sorted(statements))


async def _empty(dsn: str) -> asyncpg.Connection:
    """A connection to the module's database, its schema emptied (quicker than a database each: dropping one
    waits for a checkpoint)."""
    conn = await db.connect(dsn)
    await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public AUTHORIZATION pg_database_owner; "
                       "GRANT USAGE ON SCHEMA public TO PUBLIC")  # as CREATE DATABASE makes it
    return conn


@pytest.fixture(scope="module")
def scratch_dsn(create_database) -> str:
    return create_database("sira_upgrade")


@pytest.fixture(scope="module")
def fresh(create_database) -> tuple[str, str | None]:
    """A fresh install's database (its schema made as the tests' is) and its pg_dump."""
    dsn = create_database("sira_fresh")

    async def migrate() -> int:
        conn = await _empty(dsn)
        try:
            await migrations.migrate(conn)
            return int(await conn.fetchval("SHOW server_version_num")) // 10000
        finally:
            await conn.close()

    major = run_sync(migrate())
    return dsn, _pg_dump(dsn, major)


@pytest.mark.parametrize("commit", list(STATES))
async def test_a_database_migrated_at_an_earlier_commit_upgrades_to_a_fresh_installs_schema(
    scratch_dsn, fresh, commit
):
    conn = await _empty(scratch_dsn)
    try:
        await migrations.migrate(conn, _state(commit))  # what `sira db migrate` did at that commit
        for table, sql in SEED.items():
            if await conn.fetchval("SELECT to_regclass($1)", table) is not None:
                await conn.execute(sql)
        before = await _rows(conn)

        applied = await migrations.migrate(conn)  # today's `sira db migrate`
        assert applied and applied[-1].filename == TODAY[-1]
        await migrations.check(conn)
        assert await migrations.migrate(conn) == []
        assert [(s.version, s.name) for s in await migrations.status(conn)] == [
            (m.version, m.name) for m in migrations.discover()
        ]
        assert await migrations.drift(conn) == []
        after = await _rows(conn)
        server_major = int(await conn.fetchval("SHOW server_version_num")) // 10000
    finally:
        await conn.close()

    # Every row kept, as it was (columns added since hold their defaults).
    for table, rows in before.items():
        kept = [{k: row[k] for k in rows[0]} for row in after[table]] if rows else []
        assert sorted(map(json.dumps, kept)) == sorted(map(json.dumps, rows)), table
    assert sum(map(len, before.values())) > 0
    fresh_dump = fresh[1]
    if fresh_dump is not None:
        assert _pg_dump(scratch_dsn, server_major) == fresh_dump


def test_every_schema_of_the_history_is_covered():
    """Each commit's sql/ is today's first N files or one of STATES (or the history is not here: skipped)."""
    if not (ROOT / ".git").exists():
        pytest.skip("no git history here (an archive): STATES was checked where there was one")
    git = ["git", "-C", str(ROOT)]
    if subprocess.run([*git, "rev-parse", "--is-shallow-repository"], capture_output=True, text=True).stdout.strip() \
            != "false":
        pytest.skip("a shallow clone: its history is cut")
    commits = subprocess.run([*git, "rev-list", "HEAD"], capture_output=True, text=True, check=True).stdout.split()
    trees = _batch(git, [f"{c}:sql" for c in commits])
    blobs: dict[str, str] = {}
    for tree in trees.values():
        blobs.update({sha: name for name, sha in tree.items()})
    contents = _batch(git, list(blobs), raw=True)
    known = {tuple((m.filename, m.checksum) for m in _state(c)) for c in STATES}
    today = [(m.filename, m.checksum) for m in migrations.discover()]
    for commit, tree in zip(commits, trees.values()):
        state = tuple(sorted((name, migrations.Migration(0, "", contents[sha].decode()).checksum)
                             for name, sha in tree.items() if name.endswith(".sql")))
        assert state in known or list(state) == today[:len(state)], (
            f"{commit[:7]}'s sql/ is neither today's first {len(state)} files nor one of STATES: add it")


def _batch(git: list[str], names: list[str], raw: bool = False) -> dict:
    """``git cat-file --batch`` of many objects: trees as {name: blob sha}, blobs as their bytes (``raw``)."""
    out = subprocess.run([*git, "cat-file", "--batch"], input="\n".join(names).encode() + b"\n",
                         capture_output=True, check=True).stdout
    found: dict = {}
    pos = 0
    for name in names:
        end = out.index(b"\n", pos)
        header = out[pos:end].split()
        pos = end + 1
        if header[-1] == b"missing":
            found[name] = {}
            continue
        body, pos = out[pos:pos + int(header[2])], pos + int(header[2]) + 1
        if raw:
            found[name] = body
            continue
        entries, i = {}, 0
        while i < len(body):
            nul = body.index(b"\0", i)
            entries[body[i:nul].split(b" ", 1)[1].decode()] = body[nul + 1:nul + 21].hex()
            i = nul + 21
        found[name] = entries
    return found


def test_db_check_reports_each_change_made_by_hand_and_no_monthly_partition(scratch_dsn, monkeypatch, capsys):
    async def setup() -> None:
        conn = await _empty(scratch_dsn)
        try:
            await migrations.migrate(conn)
            for table in ("sira_features", "sira_predictions", "sira_state_checkpoints"):  # months of 2025
                await conn.execute("SELECT sira_ensure_month_partitions($1, '2025-01-01', '2025-03-01')", table)
        finally:
            await conn.close()

    async def change() -> None:
        conn = await db.connect(scratch_dsn)
        try:
            await conn.execute("""
                DROP TRIGGER sira_audit_log_append_only ON sira_audit_log;
                ALTER TABLE sira_erasure_requests DROP COLUMN cleanup;
                DROP INDEX sira_events_customer;
            """)
        finally:
            await conn.close()

    run_sync(setup())
    env = {"SIRA_DATABASE_URL": scratch_dsn}
    clean = cli_in_process(monkeypatch, capsys, env, "db", "check")
    assert clean.returncode == 0, clean.stderr
    assert "the ledger and the tables match what migrations 001-" in clean.stderr

    run_sync(change())
    # the ledger still says every migration was applied; status says the tables differ
    status = cli_in_process(monkeypatch, capsys, env, "db", "status", "--json")
    assert json.loads(status.stdout)["up_to_date"] is True and len(json.loads(status.stdout)["drift"]) == 3
    assert "the tables differ in 3 places" in cli_in_process(monkeypatch, capsys, env, "db", "status").stderr

    drifted = cli_in_process(monkeypatch, capsys, env, "db", "check")
    assert drifted.returncode == 1
    lines = drifted.stderr.strip().splitlines()
    assert lines[:3] == [
        "missing column sira_erasure_requests.cleanup: jsonb",
        "missing index sira_events_customer on sira_events: CREATE INDEX sira_events_customer ON sira_events USING "
        "btree (customer_id, occurred_at) WHERE (customer_id IS NOT NULL)",
        "missing trigger sira_audit_log_append_only on sira_audit_log: CREATE TRIGGER sira_audit_log_append_only "
        "BEFORE DELETE OR UPDATE ON sira_audit_log FOR EACH ROW EXECUTE FUNCTION sira_refuse_change()",
    ]
    assert lines[3].startswith("error: schema_drift: ") and len(lines) == 4
    as_json = cli_in_process(monkeypatch, capsys, env, "db", "check", "--json")
    assert as_json.returncode == 1
    assert [(d["problem"], d["kind"], d["name"], d["on"]) for d in json.loads(as_json.stdout)["drift"]] == [
        ("missing", "column", "cleanup", "sira_erasure_requests"),
        ("missing", "index", "sira_events_customer", "sira_events"),
        ("missing", "trigger", "sira_audit_log_append_only", "sira_audit_log"),
    ]
    # migrate has nothing to apply, and says the tables are not what it would have made
    migrated = cli_in_process(monkeypatch, capsys, env, "db", "migrate")
    assert migrated.returncode == 1
    assert "schema is up to date" in migrated.stderr and "error: schema_drift: " in migrated.stderr


@pytest.mark.parametrize(
    "change, line",
    [
        ("ALTER TABLE sira_models ALTER COLUMN created_by TYPE varchar(50)",
         "differs column sira_models.created_by: expected text not null; found character varying(50) not null"),
        ("ALTER TABLE sira_events ALTER COLUMN source DROP NOT NULL",
         "differs column sira_events.source: expected text not null default 'unknown'::text; "
         "found text default 'unknown'::text"),
        ("CREATE TABLE sira_extra (a int)", "extra table sira_extra: table"),
        ("DROP TABLE sira_counterfactuals", "missing table sira_counterfactuals: table"),
        ("ALTER TABLE sira_threshold_sets DROP CONSTRAINT sira_threshold_sets_order",
         "missing constraint sira_threshold_sets_order on sira_threshold_sets: CHECK "),
        ("ALTER TABLE sira_audit_log DISABLE TRIGGER sira_audit_log_no_truncate",
         "differs trigger sira_audit_log_no_truncate on sira_audit_log: expected CREATE TRIGGER"),
        ("CREATE OR REPLACE FUNCTION sira_refuse_truncate() RETURNS trigger LANGUAGE plpgsql "
         "AS $$ BEGIN RETURN NULL; END $$", "differs function sira_refuse_truncate(): expected returns trigger"),
        ("CREATE INDEX sira_features_entity ON sira_features (entity_id)",
         "extra index sira_features_entity on sira_features: CREATE INDEX sira_features_entity ON ONLY sira_features"),
        # a monthly partition (made as rows arrive) is held to what every one carries
        ("SELECT sira_ensure_month_partitions('sira_features', '2025-02-01', '2025-02-01');"
         "DROP TRIGGER sira_features_no_truncate ON sira_features_p2025_02",
         "missing trigger sira_features_no_truncate on sira_features_p2025_02: CREATE TRIGGER "
         "sira_features_no_truncate BEFORE TRUNCATE ON sira_features_p2025_02 FOR EACH STATEMENT EXECUTE FUNCTION "
         "sira_refuse_truncate()"),
        ("CREATE TABLE other_app (a int)", None),  # not SIRA's
        ("SELECT sira_ensure_month_partitions('sira_state_checkpoints', '2024-01-01', '2024-03-01')", None),
    ],
)
async def test_drift_names_what_changed(fresh, change, line):
    conn = await db.connect(fresh[0])
    try:
        async with conn.transaction():  # undone: the next case starts from a fresh install again
            await conn.execute(change)
            found = [d.line() for d in await migrations.drift(conn)]
            raise _Undo
    except _Undo:
        pass
    finally:
        await conn.close()
    if line is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(line), found


class _Undo(Exception):
    pass


def test_a_role_that_may_not_create_a_schema_is_told_what_the_check_needs(scratch_dsn, monkeypatch, capsys):
    """The check builds the expected schema in a scratch schema: a role with CREATE on the schema only (enough to
    migrate and own the tables) is told so in one line, rather than given a half comparison; migrate and status
    say the tables were not compared."""
    role = f"sira_role_{uuid.uuid4().hex[:8]}"

    async def setup() -> None:
        conn = await _empty(scratch_dsn)
        try:
            await conn.execute(f'CREATE ROLE "{role}" NOLOGIN; GRANT CREATE ON SCHEMA public TO "{role}"')
            await conn.execute(f'SET ROLE "{role}"')  # SIRA's role migrates and owns the tables
            await migrations.migrate(conn)
            with pytest.raises(SchemaOutOfDate, match="may not create a scratch schema") as info:
                await migrations.drift(conn)
            assert info.value.code == "schema_check_refused" and "GRANT CREATE ON DATABASE" in info.value.one_line()
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await db.connect(scratch_dsn)
        try:
            await conn.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')
        finally:
            await conn.close()

    try:
        run_sync(setup())
        env = {"SIRA_DATABASE_URL": f"{scratch_dsn}?role={role}"}  # the session's role, set as it starts
        check = cli_in_process(monkeypatch, capsys, env, "db", "check")
        assert check.returncode == 1 and check.stderr.startswith("error: schema_check_refused: "), check.stderr
        migrated = cli_in_process(monkeypatch, capsys, env, "db", "migrate", "--json")
        assert migrated.returncode == 0, migrated.stderr
        assert json.loads(migrated.stdout)["drift"] is None and json.loads(migrated.stdout)["drift_not_checked"]
        status = cli_in_process(monkeypatch, capsys, env, "db", "status")
        assert "not compared: cannot compare" in status.stderr, status.stderr
        assert "the tables differ" not in status.stderr, status.stderr
    finally:
        run_sync(drop())
