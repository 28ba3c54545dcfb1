"""The schema enforces SIRA's rules itself, against a real PostgreSQL."""

import asyncio
import uuid
from datetime import datetime, timezone

import asyncpg
import pytest

from sira.core import db, migrations
from sira.core.config import Settings
from sira.core.errors import SchemaOutOfDate

SHA = "a" * 64


async def test_migrations_apply_to_an_empty_database_and_rerun_is_a_no_op(create_database):
    dsn = create_database()
    conn = await db.connect(dsn)
    try:
        applied = await migrations.migrate(conn)
        assert [m.version for m in applied] == [m.version for m in migrations.discover()]
        assert await migrations.migrate(conn) == []
        await migrations.check(conn)
        ledger = await conn.fetch("SELECT version, checksum FROM sira_schema_migrations ORDER BY version")
        assert [(r["version"], r["checksum"]) for r in ledger] == [(m.version, m.checksum) for m in applied]
    finally:
        await conn.close()


async def test_concurrent_migrators_apply_each_migration_once(create_database):
    dsn = create_database()
    conns = [await db.connect(dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrations.migrate(c) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, len(migrations.discover())]
    finally:
        for c in conns:
            await c.close()


async def test_out_of_date_schema_is_refused_with_the_fix(create_database):
    dsn = create_database()
    known = migrations.discover()
    conn = await db.connect(dsn)
    try:
        await migrations.migrate(conn, known[:2])
        with pytest.raises(SchemaOutOfDate, match="run `sira db migrate`") as info:
            await migrations.check(conn, known)
        assert info.value.details["pending"] == [m.version for m in known[2:]]
        # the fix first, and a short line however many are pending (it listed every file: ~700 characters)
        assert info.value.message.startswith("the database schema is out of date: run `sira db migrate`")
        assert len(info.value.one_line()) < 200 and known[2].filename in info.value.message
        # A database that is ahead of the code is refused too.
        with pytest.raises(SchemaOutOfDate, match="upgrade SIRA"):
            await migrations.check(conn, known[:1])
        # An applied migration whose file changed is refused.
        edited = [migrations.Migration(known[0].version, known[0].name, known[0].sql + "\n-- edited")] + known[1:2]
        with pytest.raises(SchemaOutOfDate, match="changed after it was applied"):
            await migrations.check(conn, edited)
    finally:
        await conn.close()


async def test_open_pool_refuses_an_unmigrated_database(create_database, tmp_path):
    settings = Settings(database_url=create_database(), workspace=tmp_path)
    with pytest.raises(SchemaOutOfDate, match="sira db migrate"):
        async with db.open_pool(settings):
            pass


async def _model(conn, name="fraud", creator="alice") -> int:
    return await conn.fetchval(
        "INSERT INTO sira_models (name, model_type, created_by) VALUES ($1, 'fraud_detection', $2) RETURNING id",
        name, creator,
    )


async def _version(conn, model_id, version, status="candidate", creator="alice") -> int:
    return await conn.fetchval(
        """INSERT INTO sira_model_versions (model_id, version, status, artifact_uri, artifact_sha256, created_by)
           VALUES ($1, $2, $3, 'file:///a', $4, $5) RETURNING id""",
        model_id, version, status, SHA, creator,
    )


async def test_second_production_version_is_refused(clean_db):
    async with db.transaction(clean_db) as conn:
        model = await _model(conn)
        await _version(conn, model, 1, "production")
        await _version(conn, model, 2, "candidate")
    with pytest.raises(asyncpg.UniqueViolationError, match="sira_model_versions_one_production"):
        await clean_db.execute(
            "UPDATE sira_model_versions SET status = 'production' WHERE model_id = $1 AND version = 2", model
        )
    # Another model may have its own production version.
    async with db.transaction(clean_db) as conn:
        other = await _model(conn, "churn")
        await _version(conn, other, 1, "production")


async def test_concurrent_promotions_leave_exactly_one_production(clean_db):
    async with db.transaction(clean_db) as conn:
        model = await _model(conn)
        for v in range(1, 9):
            await _version(conn, model, v)

    async def promote(v):
        try:
            async with db.transaction(clean_db) as conn:
                await conn.execute(
                    "UPDATE sira_model_versions SET status = 'production' WHERE model_id = $1 AND version = $2",
                    model, v,
                )
            return True
        except asyncpg.UniqueViolationError:
            return False

    outcomes = await asyncio.gather(*(promote(v) for v in range(1, 9)))
    assert sum(outcomes) == 1
    assert await clean_db.fetchval(
        "SELECT count(*) FROM sira_model_versions WHERE model_id = $1 AND status = 'production'", model
    ) == 1


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE sira_model_versions SET status = 'shipped'",
        "UPDATE sira_models SET model_type = 'astrology'",
        "UPDATE sira_models SET required_approvals = -1",
    ],
)
async def test_invalid_values_are_refused(clean_db, sql):
    async with db.transaction(clean_db) as conn:
        model = await _model(conn)
        await _version(conn, model, 1)
    with pytest.raises(asyncpg.CheckViolationError):
        await clean_db.execute(sql)


async def test_invalid_api_key_role_and_prediction_score_are_refused(clean_db):
    with pytest.raises(asyncpg.CheckViolationError):
        await clean_db.execute(
            "INSERT INTO sira_api_keys (name, key_prefix, key_hash, roles, created_by)"
            " VALUES ('k', 'p', 'h', ARRAY['superuser'], 'admin')"
        )
    model = await _model(clean_db)
    with pytest.raises(asyncpg.CheckViolationError):
        await clean_db.execute(
            "INSERT INTO sira_predictions (prediction_id, model_id, model_name, version, score, decision)"
            " VALUES ($1, $2, 'fraud', 1, 1.5, 'approve')",
            uuid.uuid4(), model,
        )


async def test_approvals_are_unique_per_approver_and_never_by_the_creator(clean_db):
    async with db.transaction(clean_db) as conn:
        model = await _model(conn)
        version = await _version(conn, model, 1, creator="alice")
        request = await conn.fetchval(
            """INSERT INTO sira_promotion_requests (model_id, version_id, artifact_sha256, required_approvals, requested_by)
               VALUES ($1, $2, $3, 2, 'alice') RETURNING id""",
            model, version, SHA,
        )
    insert = "INSERT INTO sira_approvals (request_id, approver, decision) VALUES ($1, $2, 'approve')"
    await clean_db.execute(insert, request, "bob")
    with pytest.raises(asyncpg.UniqueViolationError):
        await clean_db.execute(insert, request, "bob")
    with pytest.raises(asyncpg.CheckViolationError, match="creator of a version cannot approve"):
        await clean_db.execute(insert, request, "alice")
    # Only one pending request per version.
    with pytest.raises(asyncpg.UniqueViolationError):
        await clean_db.execute(
            """INSERT INTO sira_promotion_requests (model_id, version_id, artifact_sha256, required_approvals, requested_by)
               VALUES ($1, $2, $3, 2, 'carol')""",
            model, version, SHA,
        )


async def test_partitions_exist_for_a_requested_range(clean_db):
    created = await clean_db.fetchval(
        "SELECT sira_ensure_month_partitions('sira_predictions', '2031-01-15', '2031-04-02')"
    )
    assert created == 4
    names = {
        r["relname"]
        for r in await clean_db.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'sira_predictions'::regclass"
        )
    }
    assert {"sira_predictions_p2031_01", "sira_predictions_p2031_02", "sira_predictions_p2031_03",
            "sira_predictions_p2031_04"} <= names
    assert await clean_db.fetchval(
        "SELECT sira_ensure_month_partitions('sira_predictions', '2031-01-15', '2031-04-02')"
    ) == 0


async def test_a_caller_that_waited_for_another_making_the_same_partition_finds_it_made(clean_db):
    """Bulk ingest's shards make sure of their months' partitions at once. One that looked for a month's
    partition before another created it, then waited on the creator's lock, looked again after it in its
    catalog cache (an advisory lock does not refresh it), still saw none and failed on CREATE TABLE:
    'relation "sira_features_p2026_09" already exists', which ended the whole ingest."""
    ensure = "SELECT sira_ensure_month_partitions('sira_features', $1, $1)"
    march = datetime(2034, 3, 5, tzinfo=timezone.utc)
    first, second = await clean_db.acquire(), await clean_db.acquire()
    try:
        one = first.transaction()
        await one.start()
        # the first caller is about to make March (it holds the month's lock, has not created it yet)
        await first.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.sira_features_p2034_03'))")
        waiting = asyncio.ensure_future(second.fetchval(ensure, march))  # looks, finds none, waits
        await asyncio.sleep(0.5)
        assert not waiting.done()
        assert await first.fetchval(ensure, march) == 1
        await one.commit()
        assert await waiting == 0  # made by the first
    finally:
        await clean_db.release(first)
        await clean_db.release(second)
    assert await clean_db.fetchval("SELECT count(*) FROM pg_inherits WHERE inhrelid = "
                                   "to_regclass('sira_features_p2034_03')") == 1


async def test_insert_into_a_month_without_partition_works_and_moves_later(clean_db):
    when = datetime(2033, 7, 9, 12, tzinfo=timezone.utc)
    await clean_db.execute(
        "INSERT INTO sira_features (feature_set, feature_set_version, entity_type, entity_id, as_of, event_id, features)"
        " VALUES ('payments', 1, 'customer', 'c1', $1, 'e1', $2)",
        when, {"amount_sum_1d": 12.5},
    )
    assert await clean_db.fetchval("SELECT tableoid::regclass::text FROM sira_features") == "sira_features_default"
    await clean_db.fetchval("SELECT sira_ensure_month_partitions('sira_features', $1, $1)", when)
    row = await clean_db.fetchrow("SELECT tableoid::regclass::text AS part, features FROM sira_features")
    assert row["part"] == "sira_features_p2033_07"
    assert row["features"] == {"amount_sum_1d": 12.5}


async def test_append_only_tables_refuse_changes(clean_db):
    await clean_db.execute(
        "INSERT INTO sira_audit_log (actor, actor_kind, action) VALUES ('alice', 'api_key', 'model.create')"
    )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await clean_db.execute("UPDATE sira_audit_log SET actor = 'mallory'")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await clean_db.execute("DELETE FROM sira_audit_log")


async def test_only_the_tables_owner_may_switch_append_only_off(create_database):
    """The switches that let rows of the audit log and the per-event feature rows change (partition
    maintenance, an erasure, a card rekey) were custom settings any session may make: a role granted only
    DML deleted and rewrote audit rows with `SET LOCAL sira.partition_maintenance = 'on'`. sql/032 honours
    them only for a role that owns the table (which could drop the trigger anyway): SIRA's own role, which
    ran the migrations; its maintenance works as before."""
    suffix = uuid.uuid4().hex[:8]
    owner, app = f"sira_owner_{suffix}", f"sira_app_{suffix}"
    dsn = create_database()
    conn = await db.connect(dsn)
    try:
        await conn.execute(f'CREATE ROLE "{owner}" NOLOGIN; CREATE ROLE "{app}" NOLOGIN; '
                           f'GRANT CREATE ON SCHEMA public TO "{owner}"')
        await conn.execute(f'SET ROLE "{owner}"')  # SIRA's role (no superuser) migrates and owns the tables
        await migrations.migrate(conn)
        await conn.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{app}"; '
                           f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{app}"')
        await conn.execute("INSERT INTO sira_audit_log (actor, actor_kind, action) "
                           "VALUES ('alice', 'api_key', 'serving.reload')")
        march = datetime(2035, 3, 9, tzinfo=timezone.utc)  # no partition yet: the row waits in the default one
        await conn.execute(
            "INSERT INTO sira_features (feature_set, feature_set_version, entity_type, entity_id, as_of, event_id,"
            " features) VALUES ('payments', 1, 'card', '4111111111111111', $1, 'e1', '{}')", march)
        token = "tok_pan_" + "0" * 24
        attempts = [
            ("sira.partition_maintenance", "DELETE FROM sira_audit_log WHERE action = 'serving.reload'"),
            ("sira.partition_maintenance", "UPDATE sira_audit_log SET actor = 'someone-else'"),
            ("sira.partition_maintenance", "DELETE FROM sira_features"),
            ("sira.erasure", "DELETE FROM sira_features"),
            ("sira.rekey", f"UPDATE sira_features SET entity_id = '{token}' WHERE entity_type = 'card'"),
        ]
        for setting, sql in attempts:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                async with conn.transaction():
                    await conn.execute(f'SET LOCAL ROLE "{app}"')
                    await conn.execute(f"SET LOCAL {setting} = 'on'")
                    await conn.execute(sql)
        assert await conn.fetchval("SELECT actor FROM sira_audit_log WHERE action = 'serving.reload'") == "alice"
        assert await conn.fetchval("SELECT entity_id FROM sira_features") == "4111111111111111"

        # the owner's maintenance: a late partition takes the default partition's row, a rekey, an erasure
        assert await conn.fetchval("SELECT sira_ensure_month_partitions('sira_features', $1, $1)", march) == 1
        assert await conn.fetchval("SELECT tableoid::regclass::text FROM sira_features") == "sira_features_p2035_03"
        for setting, sql in attempts[4:2:-1]:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL {setting} = 'on'")
                await conn.execute(sql)
        assert await conn.fetchval("SELECT count(*) FROM sira_features") == 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):  # nor by the owner unswitched
            await conn.execute("DELETE FROM sira_audit_log")
    finally:
        await conn.execute("RESET ROLE")
        await conn.execute(f'DROP OWNED BY "{owner}", "{app}" CASCADE')
        await conn.execute(f'DROP ROLE "{owner}"; DROP ROLE "{app}"')
        await conn.close()


async def test_append_only_tables_refuse_truncate_too(clean_db):
    """UPDATE and DELETE were refused row by row, but TRUNCATE fires no row trigger: the audit log (which
    production history and rollback read) and the per-event feature rows could be emptied in one statement.
    So could one partition of the feature rows, the parent's statement trigger not firing for it."""
    await clean_db.execute(
        "INSERT INTO sira_audit_log (actor, actor_kind, action) VALUES ('alice', 'api_key', 'model.create')"
    )
    await clean_db.fetchval("SELECT sira_ensure_month_partitions('sira_features', '2034-03-01', '2034-03-01')")
    partitions = [r["name"] for r in await clean_db.fetch(
        "SELECT inhrelid::regclass::text AS name FROM pg_inherits WHERE inhparent = 'sira_features'::regclass")]
    assert {"sira_features_default", "sira_features_p2034_03"} <= set(partitions)
    for table in ("sira_audit_log", "sira_features", *partitions, "sira_audit_log, sira_api_keys"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only: TRUNCATE refused"):
            await clean_db.execute(f"TRUNCATE {table}")
    assert await clean_db.fetchval("SELECT count(*) FROM sira_audit_log") == 1


async def test_updated_at_follows_changes(clean_db):
    model = await _model(clean_db)
    before = await clean_db.fetchval("SELECT updated_at FROM sira_models WHERE id = $1", model)
    async with db.transaction(clean_db) as conn:  # now() is the transaction's start: use a new one
        await conn.execute("UPDATE sira_models SET description = 'x' WHERE id = $1", model)
    after = await clean_db.fetchval("SELECT updated_at FROM sira_models WHERE id = $1", model)
    assert after > before


async def test_transaction_rolls_back_as_a_unit(clean_db):
    with pytest.raises(asyncpg.CheckViolationError):
        async with db.transaction(clean_db) as conn:
            await _model(conn, "first")
            await conn.execute("UPDATE sira_models SET required_approvals = -5")
    assert await clean_db.fetchval("SELECT count(*) FROM sira_models") == 0


async def test_events_need_an_entity_and_payments_an_amount(clean_db):
    with pytest.raises(asyncpg.CheckViolationError, match="sira_events_has_entity"):
        await clean_db.execute(
            "INSERT INTO sira_events (event_id, occurred_at, amount) VALUES ('e1', now(), 10)"
        )
    with pytest.raises(asyncpg.CheckViolationError, match="sira_events_payment_amount"):
        await clean_db.execute(
            "INSERT INTO sira_events (event_id, occurred_at, customer_id) VALUES ('e1', now(), 'c1')"
        )


async def test_the_performance_join_finds_labels_through_indexes(clean_db):
    """Each prediction looks up its labels by event and by prediction id through indexes, not by reading
    every label of the model once per prediction (that made the performance job quadratic)."""
    from datetime import datetime, timezone

    from sira.monitoring.performance import PREDICTIONS_SQL

    async with clean_db.acquire() as conn:
        tx = conn.transaction()  # rolled back: the labels are only there to be planned on
        await tx.start()
        try:
            await conn.execute(
                """INSERT INTO sira_feedback (event_id, prediction_id, label_name, label, source, known_at)
                   SELECT 'e' || i, CASE WHEN i % 2 = 0 THEN gen_random_uuid() END, 'fraud', i % 7 = 0, 'test',
                          now() FROM generate_series(1, 5000) AS i""")
            await conn.execute("ANALYZE sira_feedback")
            plan = "\n".join(r[0] for r in await conn.fetch(
                "EXPLAIN " + PREDICTIONS_SQL, "fraud", datetime(2026, 1, 1, tzinfo=timezone.utc),
                datetime(2026, 2, 1, tzinfo=timezone.utc), "fraud", datetime(2026, 3, 1, tzinfo=timezone.utc), None))
        finally:
            await tx.rollback()
    assert "(event_id = p.event_id)" in plan and "(prediction_id = p.prediction_id)" in plan, plan
    assert "Filter: ((event_id = p.event_id) OR" not in plan, plan
    assert all("Index" in line or "Bitmap" in line for line in plan.splitlines()
               if "on sira_feedback" in line), plan
    assert "Index Scan using sira_feedback_history_event" in plan, plan  # what each source said by the cut-off
