"""``sira_job_last_success_timestamp_seconds`` (sira/monitoring/exporter.py) across production changes: when the
model's drift and performance jobs last ran, whichever version was in production then."""

from test_governance import DANA, OLI, make_version, promote_by_policy, run  # noqa: F401  (shared helpers)

from sira.core import db
from sira.monitoring import exporter
from sira.registry.models import rollback


async def _drift(conn, model_id: int, version: int, job: str) -> float:
    return await conn.fetchval(
        """INSERT INTO sira_data_drift (model_id, version, feature, window_start, window_end, severity, job_id, computed_at)
           VALUES ($1, $2, '__dataset__', now() - interval '8 days', now() - interval '1 day', 'ok', $3, clock_timestamp())
           RETURNING extract(epoch FROM computed_at)::float8""", model_id, version, job)


async def _performance(conn, model_id: int, version: int, role: str) -> float:
    return await conn.fetchval(
        """INSERT INTO sira_model_performance (model_id, version, role, window_start, window_end, n, n_positive,
                                               computed_at)
           VALUES ($1, $2, $3, now() - interval '30 days', now() - interval '23 days', 100, 5, clock_timestamp())
           RETURNING extract(epoch FROM computed_at)::float8""", model_id, version, role)


async def _runs(pool) -> dict[str, float]:
    async with pool.acquire() as conn:
        return {r["kind"]: float(r["at"]) for r in (await exporter.read(conn))["runs"] if r["model"] == "fraud"}


async def test_the_last_drift_and_performance_runs_survive_a_promotion_and_a_rollback(clean_db, settings):
    """The jobs ran last night for v1, then v2 was promoted: v2 has no run yet, and the "no run in 26 hours"
    alerts fired 30 minutes after every promotion (and after a rollback to a version whose runs are old)."""
    await make_version(clean_db, settings, 1, required=0)
    await promote_by_policy(clean_db, settings, 1)
    model_id = await clean_db.fetchval("SELECT id FROM sira_models WHERE name = 'fraud'")
    async with db.transaction(clean_db) as conn:
        drift_v1 = await _drift(conn, model_id, 1, "nightly-v1")
        performance_v1 = await _performance(conn, model_id, 1, "production")
    await make_version(clean_db, settings, 2, required=0)
    await make_version(clean_db, settings, 3, required=0)
    async with db.transaction(clean_db) as conn:  # a retrain checks its challenger, serving shadow-scores it
        await _drift(conn, model_id, 3, "challenger-v3")
        await _performance(conn, model_id, 3, "shadow")
    await promote_by_policy(clean_db, settings, 2)
    runs = await _runs(clean_db)
    assert (runs["drift"], runs["performance"]) == (drift_v1, performance_v1)  # neither missing nor v3's
    async with db.transaction(clean_db) as conn:
        drift_v2 = await _drift(conn, model_id, 2, "nightly-v2")
    await run(clean_db, rollback, OLI, "fraud", "v2 misbehaves", 2)  # back to v1, whose own runs are older
    runs = await _runs(clean_db)
    assert (runs["drift"], runs["performance"]) == (drift_v2, performance_v1)


async def test_a_challengers_check_never_counts_as_a_drift_run_even_once_it_is_promoted(clean_db, settings):
    """The last drift run counted every run of the current production version, whenever it ran: a retrain's
    check of its challenger (before the promotion) counted once the challenger was promoted, and the time went
    backwards when it was rolled back. Only runs made while the version was production count."""
    await make_version(clean_db, settings, 1, required=0)
    await promote_by_policy(clean_db, settings, 1)
    model_id = await clean_db.fetchval("SELECT id FROM sira_models WHERE name = 'fraud'")
    async with db.transaction(clean_db) as conn:
        nightly_v1 = await _drift(conn, model_id, 1, "nightly-v1")
    await make_version(clean_db, settings, 2, required=0)
    async with db.transaction(clean_db) as conn:  # the retrain checks its challenger, after v1's nightly run
        challenger = await _drift(conn, model_id, 2, "challenger-v2")
    assert challenger > nightly_v1
    await promote_by_policy(clean_db, settings, 2)
    assert (await _runs(clean_db))["drift"] == nightly_v1  # production's last run: v1's, not the challenger's
    async with db.transaction(clean_db) as conn:
        nightly_v2 = await _drift(conn, model_id, 2, "nightly-v2")
    assert (await _runs(clean_db))["drift"] == nightly_v2
    await run(clean_db, rollback, OLI, "fraud", "v2 misbehaves", 2)
    assert (await _runs(clean_db))["drift"] == nightly_v2  # v2's run while it was production still counts


async def test_a_look_at_a_chosen_window_neither_replaces_productions_drift_nor_counts_as_its_job(clean_db, settings):
    """`sira drift --from 2026-09-18 --to 2026-10-02` (a look back at the training period) became the model's
    drift: its WARN replaced last night's ALERT in sira_drift_severity (silencing the alert), in GET …/drift's
    `latest`, and in the job's last-run time (hiding a nightly job that had stopped)."""
    from sira.monitoring.drift import latest_drift

    await make_version(clean_db, settings, 1, required=0)
    await promote_by_policy(clean_db, settings, 1)
    model_id = await clean_db.fetchval("SELECT id FROM sira_models WHERE name = 'fraud'")
    async with db.transaction(clean_db) as conn:
        nightly = await _drift(conn, model_id, 1, "nightly")
        await conn.execute("UPDATE sira_data_drift SET severity = 'alert', details = '{\"ad_hoc\": false}' "
                           "WHERE job_id = 'nightly'")
        await conn.execute(  # the look back, made after it
            """INSERT INTO sira_data_drift (model_id, version, feature, window_start, window_end, severity, job_id,
                                            details, computed_at)
               VALUES ($1, 1, '__dataset__', now() - interval '80 days', now() - interval '66 days', 'warn',
                       'look-back', '{"ad_hoc": true}', clock_timestamp())""", model_id)
    async with clean_db.acquire() as conn:
        rows = await exporter.read(conn)
        latest = await latest_drift(conn, "fraud")
    assert [(r["feature"], r["severity"]) for r in rows["drift"]] == [("__dataset__", "alert")]
    assert _runs_of(rows)["drift"] == nightly
    assert latest["latest"]["job_id"] == "nightly" and latest["latest"]["verdict"] == "alert"


def _runs_of(rows) -> dict[str, float]:
    return {r["kind"]: float(r["at"]) for r in rows["runs"] if r["model"] == "fraud"}
