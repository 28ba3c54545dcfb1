"""A database migrated at any commit of SIRA's history upgrades to today's schema with its rows kept, and ends with
the schema a fresh install has (pg_dump -s)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import asyncpg
import pytest

from sira.core import db, migrations
from tests.conftest import run_sync

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
SLOW = {"8e65e5b", "4f39016", "964b3f7", "0555b19", "a92e040"}  # like another state, one difference more

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
    await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
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


@pytest.mark.parametrize(
    "commit", [pytest.param(c, marks=[pytest.mark.slow] if c in SLOW else []) for c in STATES]
)
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
