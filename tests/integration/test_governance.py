"""Promotion with N distinct approvers, rejection, one-step rollback and its history, on the real database."""

import asyncio
from datetime import datetime

import asyncpg
import pytest

from sira.cli.governance import _policy_note
from sira.core import db
from sira.core.artifacts import save_artifact
from sira.core.auth import Identity
from sira.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from sira.registry.models import (
    decide,
    production_history,
    request_promotion,
    rollback,
    rollback_target,
    validate_version,
)

DANA = Identity("dana", frozenset({"data_scientist"}))
ANN, BOB, CAT = (Identity(n, frozenset({"approver"})) for n in ("ann", "bob", "cat"))
OLI = Identity("oli", frozenset({"operator"}))
METRICS = {"validation": {"average_precision": 0.8}, "test": {"average_precision": 0.7}}


async def make_version(pool, settings, version, *, model="fraud", creator="dana", required=2, thresholds=None,
                       metrics=METRICS):
    ref = save_artifact(settings, f"{model}/runs/v{version}", {"model.txt": f"tree {version}\n".encode()},
                        {"format": "sira-model/1"})
    async with db.transaction(pool) as conn:
        model_id = await conn.fetchval(
            """INSERT INTO sira_models (name, model_type, created_by, required_approvals) VALUES ($1, 'fraud_detection',
               'admin', $2) ON CONFLICT (name) DO UPDATE SET required_approvals = EXCLUDED.required_approvals
               RETURNING id""", model, required)
        await conn.execute(
            """INSERT INTO sira_model_versions (model_id, version, artifact_uri, artifact_sha256, feature_schema, metrics,
                                                thresholds, created_by)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            model_id, version, ref.uri, ref.sha256, [{"name": "amount", "type": "numeric"}], metrics,
            thresholds if thresholds is not None else {"review": 0.2, "block": 0.9}, creator)
    return ref


async def judged(pool, version, *, model="fraud", champion=None, ap=0.8, champion_ap=0.7):
    """A finished retraining run that judged ``version`` against ``champion`` (its evaluate and drift steps, as
    the run stores them): the evidence a model's policy decides a promotion on."""
    challenger = {"n": 500, "positives": 40, "average_precision": ap, "expected_calibration_error": 0.01}
    evaluation = {"challenger": challenger, "score_psi": 0.01 if champion else None,
                  "champion": {**challenger, "average_precision": champion_ap} if champion else None}
    await pool.execute(
        """INSERT INTO sira_retrain_runs (model_id, input_key, inputs, status, steps, champion_version,
                                          challenger_version, decision, started_by, finished_at)
           SELECT id, $2, '{}', 'succeeded', $3, $4, $5, 'stage', 'ops', now() FROM sira_models WHERE name = $1""",
        model, f"{version:064x}", {"evaluate": evaluation, "drift": {"status": "ran", "verdict": "ok"}}, champion,
        version)


async def promote_by_policy(pool, settings, version, reason=None, *, model="fraud"):
    """``version``'s promotion request, of a model that requires no approvals, with a retraining run's evidence
    against production now that the default policy passes: the policy promotes it on its own."""
    production = await pool.fetchval("SELECT v.version FROM sira_model_versions v JOIN sira_models m ON m.id ="
                                     " v.model_id WHERE m.name = $1 AND v.status = 'production'", model)
    await judged(pool, version, model=model, champion=production)
    return await run(pool, request_promotion, settings, DANA, model, version, reason)


async def status_of(pool, version, model="fraud"):
    return await pool.fetchval(
        "SELECT v.status FROM sira_model_versions v JOIN sira_models m ON m.id = v.model_id"
        " WHERE m.name = $1 AND v.version = $2", model, version)


async def run(pool, fn, *args):
    async with db.transaction(pool) as conn:
        return await fn(conn, *args)


async def test_two_distinct_approvers_promote_then_rollback_is_one_step(clean_db, settings):
    await make_version(clean_db, settings, 1)
    req = await run(clean_db, request_promotion, settings, DANA, "fraud", 1, "first model")
    assert req["status"] == "pending" and await status_of(clean_db, 1) == "validated"
    first = await run(clean_db, decide, ANN, "fraud", 1, "approve", "looks good")
    assert first["outcome"] == "pending" and first["approvals"] == 1
    with pytest.raises(Conflict, match="already decided"):
        await run(clean_db, decide, ANN, "fraud", 1, "approve")
    with pytest.raises(PermissionDenied):
        await run(clean_db, decide, DANA, "fraud", 1, "approve")  # not an approver
    second = await run(clean_db, decide, BOB, "fraud", 1, "approve")
    assert second["outcome"] == "approved" and await status_of(clean_db, 1) == "production"

    await make_version(clean_db, settings, 2)
    await run(clean_db, request_promotion, settings, DANA, "fraud", 2)
    await run(clean_db, decide, ANN, "fraud", 2, "approve")
    done = await run(clean_db, decide, CAT, "fraud", 2, "approve")
    assert done["previous_production"] == 1
    assert (await status_of(clean_db, 1), await status_of(clean_db, 2)) == ("archived", "production")

    with pytest.raises(InvalidInput, match="^reason: a rollback needs one$") as blank:
        await run(clean_db, rollback, OLI, "fraud", " ", 2)
    assert blank.value.code == "missing_field" and blank.value.details == {"field": "reason"}  # as HTTP names fields
    with pytest.raises(PermissionDenied):
        await run(clean_db, rollback, DANA, "fraud", "oops", 2)
    back = await run(clean_db, rollback, OLI, "fraud", "v2 blocks good customers", 2)
    assert back == {"model": "fraud", "production": 1, "archived": 2, "reason": "v2 blocks good customers"}
    assert (await status_of(clean_db, 1), await status_of(clean_db, 2)) == ("production", "archived")

    async with clean_db.acquire() as conn:
        history = await production_history(conn, "fraud")
    assert [(h["from"], h["to"], h["via"], h["actor"]) for h in history] == [
        (None, 1, "approval", "bob"), (1, 2, "approval", "cat"), (2, 1, "rollback", "oli")]
    assert history[2]["reason"] == "v2 blocks good customers"


async def test_rejection_closes_the_request_and_self_approval_is_refused(clean_db, settings):
    await make_version(clean_db, settings, 1, creator="ann")  # an approver who trained the version
    await run(clean_db, request_promotion, settings, DANA, "fraud", 1)
    with pytest.raises(PermissionDenied, match="creator of a version cannot approve or reject its promotion"):
        await run(clean_db, decide, ANN, "fraud", 1, "approve")
    with pytest.raises(PermissionDenied, match="creator of a version cannot approve or reject"):  # not "approve"
        await run(clean_db, decide, ANN, "fraud", 1, "reject", "my own, withdrawn")
    outcome = await run(clean_db, decide, CAT, "fraud", 1, "reject", "calibration is off")
    assert outcome["outcome"] == "rejected" and await status_of(clean_db, 1) == "validated"
    with pytest.raises(Conflict, match="closed \\(rejected\\)"):
        await run(clean_db, decide, BOB, "fraud", 1, "approve")
    with pytest.raises(NotFound, match="no version 9"):
        await run(clean_db, decide, BOB, "fraud", 9, "approve")
    with pytest.raises(NotFound, match="unknown model"):
        await run(clean_db, decide, BOB, "churn", 1, "approve")


async def test_validation_gates_and_rollback_without_history(clean_db, settings):
    await make_version(clean_db, settings, 1, thresholds={})
    with pytest.raises(InvalidInput, match="thresholds"):
        await run(clean_db, validate_version, settings, DANA, "fraud", 1)
    ref = await make_version(clean_db, settings, 2)
    with open(f"{ref.uri}/model.txt", "a") as handle:
        handle.write("tampered\n")
    with pytest.raises(InvalidInput, match="does not match its registered checksum"):
        await run(clean_db, request_promotion, settings, DANA, "fraud", 2)
    assert await status_of(clean_db, 2) == "candidate"
    # each refusal is in the audit log (its row was written inside the refused transaction, and rolled back)
    denied = await clean_db.fetch("SELECT actor, target_id, details FROM sira_audit_log WHERE action = "
                                  "'version.validate' AND outcome = 'denied' ORDER BY id")
    assert [(r["actor"], r["target_id"]) for r in denied] == [("dana", "fraud:v1"), ("dana", "fraud:v2")]
    assert any("checksum" in f for f in denied[1]["details"]["failures"])
    from sira.registry.thresholds import decide_change

    with pytest.raises(NotFound) as never_asked:  # training's thresholds only: no change to decide on
        await run(clean_db, decide_change, ANN, "fraud", 2, "approve")
    assert never_asked.value.code == "no_pending_request"
    with pytest.raises(Conflict, match="no production version"):
        await run(clean_db, rollback, OLI, "fraud", "why not", 1)
    await make_version(clean_db, settings, 3, required=0)
    await judged(clean_db, 3)  # a retraining run's evidence the policy passes
    auto = await run(clean_db, request_promotion, settings, DANA, "fraud", 3)
    assert auto["status"] == "approved" and await status_of(clean_db, 3) == "production"
    actor = await clean_db.fetchval("SELECT actor FROM sira_audit_log WHERE action = 'production.change'")
    assert actor == "policy:fraud"  # required_approvals = 0: the policy is the actor
    with pytest.raises(Conflict, match="no previous production version"):
        await run(clean_db, rollback, OLI, "fraud", "no way back", 3)


async def test_concurrent_final_approvals_promote_exactly_once(clean_db, settings):
    await make_version(clean_db, settings, 1, required=1)
    await run(clean_db, request_promotion, settings, DANA, "fraud", 1)
    approvers = [Identity(f"approver{i}", frozenset({"approver"})) for i in range(6)]

    async def attempt(who):
        try:
            return (await run(clean_db, decide, who, "fraud", 1, "approve"))["outcome"]
        except Conflict as exc:
            return exc.code

    outcomes = await asyncio.gather(*(attempt(a) for a in approvers))
    assert outcomes.count("approved") == 1 and outcomes.count("request_closed") == 5
    assert await clean_db.fetchval("SELECT count(*) FROM sira_audit_log WHERE action = 'production.change'") == 1


async def test_staging_a_version_while_its_last_approval_lands_is_no_deadlock(clean_db, settings):
    """Staging locked the version, then the model; the final approval locked the model (to change
    production), then the version: run together, PostgreSQL aborted one of them as a deadlock, an HTTP 500,
    the approval lost. Both take the version first now: the approval waits, then promotes the staged version."""
    from sira.registry.models import stage_version

    await make_version(clean_db, settings, 1, required=1)
    await run(clean_db, request_promotion, settings, DANA, "fraud", 1)
    async with db.transaction(clean_db) as staging:
        await staging.execute("SELECT 1 FROM sira_model_versions WHERE version = 1 FOR UPDATE")  # stage's first lock
        approval = asyncio.create_task(run(clean_db, decide, ANN, "fraud", 1, "approve"))
        for _ in range(200):  # until the approval waits on a lock
            if await staging.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"):
                break
            await asyncio.sleep(0.02)
        staged = await stage_version(staging, settings, DANA, "fraud", 1, "shadow first")
    assert staged["status"] == "staging"
    assert (await approval)["outcome"] == "approved"
    assert await status_of(clean_db, 1) == "production"


async def test_a_transaction_postgresql_aborts_for_a_concurrent_one_is_a_conflict_to_retry(clean_db, settings):
    """A deadlock (or a serialization failure) left the unit of work as asyncpg's error: HTTP 500, `internal`
    on the command line. Nothing of it was kept, so it is a 409 ``concurrent_change`` the caller may retry."""
    await make_version(clean_db, settings, 1, model="a")
    await make_version(clean_db, settings, 1, model="b")
    both_hold_one = asyncio.Barrier(2)

    async def lock(first, second):
        async with db.transaction(clean_db) as conn:
            await conn.execute("SELECT 1 FROM sira_models WHERE name = $1 FOR UPDATE", first)
            await both_hold_one.wait()
            await conn.execute("SELECT 1 FROM sira_models WHERE name = $1 FOR UPDATE", second)
        return "done"

    outcomes = await asyncio.gather(lock("a", "b"), lock("b", "a"), return_exceptions=True)
    assert sorted(o if isinstance(o, str) else type(o).__name__ for o in outcomes) == ["Conflict", "done"], outcomes
    assert next(o for o in outcomes if isinstance(o, Conflict)).code == "concurrent_change"


async def test_concurrent_rollbacks_expecting_the_same_version_step_back_once(clean_db, settings):
    for version in (1, 2, 3):  # required_approvals = 0: each becomes production on request
        await make_version(clean_db, settings, version, required=0)
        await promote_by_policy(clean_db, settings, version)
    assert await status_of(clean_db, 3) == "production"

    async def attempt():
        try:
            return (await run(clean_db, rollback, OLI, "fraud", "v3 misbehaves", 3))["production"]
        except Conflict as exc:
            return exc.code

    outcomes = await asyncio.gather(attempt(), attempt())
    assert sorted(outcomes, key=str) == [2, "production_moved"]  # not 3 → 2 → 3
    assert await status_of(clean_db, 2) == "production"
    with pytest.raises(Conflict, match="production is v2, not v3") as refused:
        await run(clean_db, rollback, OLI, "fraud", "stale page", 3)
    assert refused.value.code == "production_moved"
    assert refused.value.details == {"expected_version": 3, "production_version": 2}
    async with clean_db.acquire() as conn:
        history = await production_history(conn, "fraud")
    assert [(h["from"], h["to"]) for h in history] == [(None, 1), (1, 2), (2, 3), (3, 2)]


async def test_history_times_agree_with_its_order_when_changes_overlap(clean_db, settings):
    for version in (1, 2):
        await make_version(clean_db, settings, version, required=0)
    await promote_by_policy(clean_db, settings, 1)
    async with clean_db.acquire() as slow:
        async with slow.transaction():  # begins first, changes production last
            await slow.execute("SELECT 1")
            await asyncio.sleep(0.05)
            await promote_by_policy(clean_db, settings, 2)
            await asyncio.sleep(0.05)
            await rollback(slow, OLI, "fraud", "overlapping change", 2)
    async with clean_db.acquire() as conn:
        history = await production_history(conn, "fraud")
    assert [(h["from"], h["to"]) for h in history] == [(None, 1), (1, 2), (2, 1)]
    times = [datetime.fromisoformat(h["at"]) for h in history]
    assert times == sorted(times), times  # the row written last is not dated before the one it follows


async def test_the_approval_queue_shows_the_evidence_and_who_may_decide(clean_db, settings):
    """GET /v1/approvals' rows: the pending requests, champion against challenger, decisions so far, and for
    the caller whether it may decide and why not (the rules decide() enforces: role, creator, requester, twice)."""
    from sira.registry.views import approval_queue, models_overview

    PAT = Identity("pat", frozenset({"approver", "data_scientist"}))
    await make_version(clean_db, settings, 1, required=0)
    await promote_by_policy(clean_db, settings, 1, "first")  # no approvals needed
    await make_version(clean_db, settings, 2, required=2, metrics={"validation": {"average_precision": 0.85},
                                                                   "test": {"average_precision": 0.75}})
    await run(clean_db, request_promotion, settings, PAT, "fraud", 2, "better <b>recall</b>")
    await run(clean_db, decide, ANN, "fraud", 2, "approve", "fine")

    async def queue(who):
        async with clean_db.acquire() as conn:
            return await approval_queue(conn, who)

    (row,) = await queue(BOB)
    assert (row["model"], row["version"], row["requested_by"], row["created_by"]) == ("fraud", 2, "pat", "dana")
    assert (row["challenger_ap"], row["champion_ap"], row["production_version"]) == (0.75, 0.7, 1)
    assert row["reason"] == "better <b>recall</b>" and row["required_approvals"] == 2
    assert [(d["approver"], d["decision"], d["comment"]) for d in row["decisions"]] == [("ann", "approve", "fine")]
    assert row["may_decide"] and row["may_decide_reason"] is None
    standing = {who.name: (await queue(who))[0]["may_decide_reason"] for who in (ANN, PAT, DANA, OLI)}
    assert "already decided" in standing["ann"]
    assert "requester" in standing["pat"]
    assert "approver role" in standing["dana"] and "approver role" in standing["oli"]
    with pytest.raises(PermissionDenied, match="requester"):  # what the queue says is what decide() does
        await run(clean_db, decide, PAT, "fraud", 2, "approve")
    await run(clean_db, decide, BOB, "fraud", 2, "approve")
    assert await queue(BOB) == []
    async with clean_db.acquire() as conn:
        (model,) = await models_overview(conn, OLI)
    assert (model["production_version"], model["training_ap"], model["staging_version"]) == (2, 0.75, None)
    assert model["live_ap"] is None and model["drift_verdict"] is None
    assert model["retrain_decision"] == "stage"  # the retraining run whose evidence the policy promoted v1 on


async def test_a_models_drift_is_its_production_versions_not_a_rejected_challengers(clean_db, settings):
    """A retrain checks each challenger's drift: the newest drift run may be a challenger's the retrain then
    rejected. The overview and `GET /v1/models/{name}/drift` report production's (was: the newest of any)."""
    from sira.monitoring import exporter
    from sira.monitoring.drift import latest_drift
    from sira.registry.views import models_overview

    await make_version(clean_db, settings, 1, required=0)
    await promote_by_policy(clean_db, settings, 1)
    await make_version(clean_db, settings, 2, required=0)  # a challenger, never promoted
    async with db.transaction(clean_db) as conn:
        model_id = await conn.fetchval("SELECT id FROM sira_models WHERE name = 'fraud'")
        # both after v1's promotion (a run before it would be a challenger's check: never production's), the
        # challenger's the newer
        for version, severity, job in ((1, "ok", "prod-run"), (2, "alert", "challenger-run")):
            await conn.execute(
                """INSERT INTO sira_data_drift (model_id, version, feature, window_start, window_end, severity, job_id,
                                                computed_at)
                   VALUES ($1, $2, '__dataset__', now() - interval '8 days', now() - interval '1 day', $3, $4,
                           clock_timestamp())""", model_id, version, severity, job)
    async with clean_db.acquire() as conn:
        (model,) = await models_overview(conn, OLI)
        assert (model["production_version"], model["drift_verdict"]) == (1, "ok")
        assert (await latest_drift(conn, "fraud"))["latest"]["job_id"] == "prod-run"
        assert (await latest_drift(conn, "fraud", 2))["latest"]["job_id"] == "challenger-run"  # when asked for
        # /metrics: production's run (the alert on production's drift joins on its version; the challenger's
        # newer run once replaced it), and production's drift job as the one that last succeeded
        rows = await exporter.read(conn)
        runs = {r["kind"]: r["at"] for r in rows["runs"]}
        prod_at = await conn.fetchval("SELECT extract(epoch FROM computed_at) FROM sira_data_drift "
                                      "WHERE job_id = 'prod-run'")
    assert {(r["version"], r["severity"]) for r in rows["drift"]} == {(1, "ok")}
    assert runs["drift"] == prod_at


async def test_the_overview_reports_productions_newest_mature_window_not_a_provisional_one(clean_db, settings):
    """The newest window is mostly provisional (young unlabelled events left out, chargebacks counted: AP
    flattering, never flagged): the models overview showed its AP and hid the older mature window's "below
    margin" flag. It reports the newest mature window, as the exporter does."""
    from sira.registry.views import models_overview

    await make_version(clean_db, settings, 1, required=0)
    await promote_by_policy(clean_db, settings, 1)
    async with db.transaction(clean_db) as conn:
        model_id = await conn.fetchval("SELECT id FROM sira_models WHERE name = 'fraud'")
        for ends, ap, flagged, provisional in ((14, 0.4, True, False), (7, 0.95, False, True)):
            await conn.execute(
                """INSERT INTO sira_model_performance (model_id, version, role, window_start, window_end, n, n_positive,
                                                       average_precision, metrics, flagged)
                   VALUES ($1, 1, 'production', now() - make_interval(days => $2 + 7), now() - make_interval(days => $2),
                           100, 5, $3, $4, $5)""", model_id, ends, ap, {"provisional": provisional}, flagged)
    async with clean_db.acquire() as conn:
        (model,) = await models_overview(conn, OLI)
    assert (model["live_ap"], model["live_flagged"]) == (0.4, True)


async def test_the_approval_queue_reports_the_approvals_a_decision_will_need(clean_db, settings):
    """An admin raised the model's required approvals from 1 to 3 while a promotion and a threshold change
    waited: decisions count max(the request's, the model's), the queue said 1 (what the request stored), so an
    approver read "0 / 1 approvals" and saw the request stay pending after approving. Lowering it again does not
    lower what a pending request needs."""
    from sira.registry.models import update_model
    from sira.registry.thresholds import decide_change, request_change
    from sira.registry.views import approvals

    admin = Identity("root", frozenset({"admin"}))
    await make_version(clean_db, settings, 1, required=1)
    await run(clean_db, request_promotion, settings, DANA, "fraud", 1, "first")
    async with db.transaction(clean_db) as conn:
        await request_change(conn, DANA, "fraud", 1, review=0.3, block=0.8, reason="fewer false alarms")
        await update_model(conn, admin, "fraud", required_approvals=3)
    async with clean_db.acquire() as conn:
        queues = await approvals(conn, BOB)
    assert [r["required_approvals"] for r in queues["requests"]] == [3]
    assert [c["required_approvals"] for c in queues["threshold_changes"]] == [3]
    from sira.registry.thresholds import history

    async with clean_db.acquire() as conn:  # the version's threshold history says the same of its pending change
        sets = (await history(conn, BOB, "fraud", 1))["sets"]
    assert [(s["status"], s["required_approvals"]) for s in sets if s["status"] == "pending"] == [("pending", 3)]
    decided = await run(clean_db, decide, ANN, "fraud", 1, "approve")
    assert (decided["outcome"], decided["required_approvals"]) == ("pending", 3)  # what the queue now says
    decided = await run(clean_db, decide_change, ANN, "fraud", 1, "approve")
    assert (decided["outcome"], decided["required_approvals"]) == ("pending", 3)
    async with db.transaction(clean_db) as conn:
        await update_model(conn, admin, "fraud", required_approvals=0)
    async with clean_db.acquire() as conn:
        queues = await approvals(conn, BOB)
    assert [r["required_approvals"] for r in queues["requests"] + queues["threshold_changes"]] == [1, 1]


async def test_a_second_rollback_goes_further_back_never_forward_to_the_version_rolled_back(clean_db, settings):
    """v1 → v2 → v3 by approval, rollback v3 → v2, rollback again: v1. It went to v3 (the newest change to v2
    was the rollback itself, whose 'from' is v3): one operator put back the version just rolled back."""
    for version in (1, 2, 3):
        await make_version(clean_db, settings, version, required=0)
        await promote_by_policy(clean_db, settings, version)
    first = await run(clean_db, rollback, OLI, "fraud", "v3 blocks good customers", 3)
    assert (first["production"], first["archived"]) == (2, 3)
    # what GET /v1/models/fraud/history says a rollback would restore (the UI's button names it): v1, not v3
    assert await run(clean_db, rollback_target, "fraud", 2) == 1
    second = await run(clean_db, rollback, OLI, "fraud", "v2 too", 2)
    assert (second["production"], second["archived"]) == (1, 2) and await status_of(clean_db, 3) != "production"
    with pytest.raises(Conflict, match="no previous production version"):
        await run(clean_db, rollback, OLI, "fraud", "and again", 1)


async def test_a_job_key_acts_for_its_submitter_under_the_four_eyes_rules(clean_db, settings):
    """Carol (data scientist and approver) mints a job key: the version her job registers, or the promotion
    her job's key requests, is hers — she cannot approve it (the names differed: job-... against carol, so
    her approval counted), neither in the application nor past it in the database."""
    from datetime import timedelta

    from sira.core.auth import authenticate, create_job_key, create_key
    from sira.core.errors import InvalidInput, PermissionDenied
    from sira.core.ray_runtime import JOBS
    from sira.registry.views import approval_queue

    pepper = settings.secret("auth_secret")
    async with db.transaction(clean_db) as conn:
        root = Identity("root", frozenset({"admin"}))
        carol_key, _ = await create_key(conn, name="carol", roles=["data_scientist", "approver"], pepper=pepper,
                                        creator=root)
        carol = await authenticate(conn, carol_key, pepper=pepper)
        job_key, info = await create_job_key(conn, carol, actions=JOBS["train"].actions, job_name="sira-train-9",
                                             ttl=timedelta(hours=1), pepper=pepper)
        job = await authenticate(conn, job_key, pepper=pepper)
        with pytest.raises(InvalidInput, match="reserved for jobs"):  # no one may pose as a job
            await create_key(conn, name="job-carol", roles=["approver"], pepper=pepper, creator=root)
    await make_version(clean_db, settings, 1, creator=info["name"], required=2)  # registered by carol's job
    await run(clean_db, request_promotion, settings, DANA, "fraud", 1)
    with pytest.raises(PermissionDenied, match="creator of a version"):
        await run(clean_db, decide, carol, "fraud", 1, "approve")
    await make_version(clean_db, settings, 2, required=2)  # dana's; its promotion asked with carol's job key
    await run(clean_db, request_promotion, settings, job, "fraud", 2)
    with pytest.raises(PermissionDenied, match="requester of a promotion"):
        await run(clean_db, decide, carol, "fraud", 2, "approve")
    async with clean_db.acquire() as conn:  # the approval queue says so (it enabled her buttons: names differ)
        standing = {r["version"]: r["may_decide_reason"] for r in await approval_queue(conn, carol)}
    assert "creator of a version" in standing[1] and "requester of a promotion" in standing[2]
    async with db.transaction(clean_db) as conn:  # the database holds the rule whatever the application does
        request_id = await conn.fetchval("SELECT r.id FROM sira_promotion_requests r JOIN sira_model_versions v "
                                         "ON v.id = r.version_id WHERE v.version = 1")
        with pytest.raises(asyncpg.CheckViolationError, match="creator of a version"):
            await conn.execute("INSERT INTO sira_approvals (request_id, approver, decision) "
                               "VALUES ($1, 'carol', 'approve')", request_id)


async def test_promoting_a_version_supersedes_the_pending_requests_of_older_ones(clean_db, settings):
    """v1 and v2 wait for approval; v2 reaches production first. A late approval of v1 archived the newer v2
    (200, previous_production 2): v1's request is closed as superseded instead, and says so."""
    for version in (1, 2):
        await make_version(clean_db, settings, version, required=1)
        await run(clean_db, request_promotion, settings, DANA, "fraud", version)
    assert (await run(clean_db, decide, ANN, "fraud", 2, "approve"))["outcome"] == "approved"
    with pytest.raises(Conflict, match="closed \\(superseded\\)"):
        await run(clean_db, decide, BOB, "fraud", 1, "approve")
    assert (await status_of(clean_db, 1), await status_of(clean_db, 2)) == ("validated", "production")
    details = await clean_db.fetchval("SELECT details FROM sira_audit_log WHERE action = 'promotion.superseded' "
                                      "AND target_id = 'fraud:v1'")
    assert details["by_version"] == 2
    # a newer version's request stays open: it may still replace v2
    await make_version(clean_db, settings, 3, required=1)
    await run(clean_db, request_promotion, settings, DANA, "fraud", 3)
    assert (await run(clean_db, decide, ANN, "fraud", 3, "approve"))["previous_production"] == 2


async def test_required_approvals_raised_after_a_request_apply_to_it(clean_db, settings):
    """An admin raises a model's required approvals from 2 to 3 while a promotion waits: two approvals no
    longer promote it (the request kept the number it was opened with)."""
    await make_version(clean_db, settings, 1, required=2)
    await run(clean_db, request_promotion, settings, DANA, "fraud", 1)
    await clean_db.execute("UPDATE sira_models SET required_approvals = 3 WHERE name = 'fraud'")
    await run(clean_db, decide, ANN, "fraud", 1, "approve")
    second = await run(clean_db, decide, BOB, "fraud", 1, "approve")
    assert (second["outcome"], second["required_approvals"]) == ("pending", 3)
    third = await run(clean_db, decide, CAT, "fraud", 1, "approve")
    assert third["outcome"] == "approved" and await status_of(clean_db, 1) == "production"


async def test_a_tampered_artifact_never_reaches_production_by_approval_rollback_or_policy(clean_db, settings):
    from sira.core.artifacts import ArtifactTampered

    ref1 = await make_version(clean_db, settings, 1, required=1)
    await run(clean_db, request_promotion, settings, DANA, "fraud", 1)
    await run(clean_db, decide, ANN, "fraud", 1, "approve")
    ref2 = await make_version(clean_db, settings, 2)
    await run(clean_db, request_promotion, settings, DANA, "fraud", 2, "better")
    await run(clean_db, decide, ANN, "fraud", 2, "approve")
    with open(f"{ref2.uri}/model.txt", "ab") as handle:  # after the request, before the last approval
        handle.write(b"!")
    with pytest.raises(ArtifactTampered) as refused:
        await run(clean_db, decide, BOB, "fraud", 2, "approve")
    assert refused.value.code == "artifact_checksum_mismatch" and refused.value.http_status == 409
    assert (await status_of(clean_db, 1), await status_of(clean_db, 2)) == ("production", "validated")
    denied = await clean_db.fetchrow("SELECT actor, target_id FROM sira_audit_log WHERE action = 'production.change'"
                                     " AND outcome = 'denied'")
    assert (denied["actor"], denied["target_id"]) == ("bob", "fraud:v2")

    with open(f"{ref2.uri}/model.txt", "rb") as handle:  # restored: the approval goes through
        restored = handle.read()[:-1]
    with open(f"{ref2.uri}/model.txt", "wb") as handle:
        handle.write(restored)
    await run(clean_db, decide, BOB, "fraud", 2, "approve")
    with open(f"{ref1.uri}/model.txt", "ab") as handle:  # the version a rollback would restore
        handle.write(b"!")
    with pytest.raises(ArtifactTampered):
        await run(clean_db, rollback, OLI, "fraud", "v2 misbehaves", 2)
    assert (await status_of(clean_db, 1), await status_of(clean_db, 2)) == ("archived", "production")

    ref3 = await make_version(clean_db, settings, 3, required=0)
    await judged(clean_db, 3, champion=2)
    await run(clean_db, validate_version, settings, DANA, "fraud", 3)
    with open(f"{ref3.uri}/model.txt", "ab") as handle:  # validated, then changed: the policy refuses it too
        handle.write(b"!")
    with pytest.raises(ArtifactTampered):
        await run(clean_db, request_promotion, settings, DANA, "fraud", 3)
    assert await status_of(clean_db, 3) == "validated" and await status_of(clean_db, 2) == "production"


async def test_a_model_that_requires_no_approvals_promotes_only_when_its_policy_says_so(clean_db, settings):
    await make_version(clean_db, settings, 1, required=0)
    await judged(clean_db, 1)
    first = await run(clean_db, request_promotion, settings, DANA, "fraud", 1, "first model")
    assert first["status"] == "approved" and first["policy"]["promotes"] and await status_of(clean_db, 1) == "production"
    change = await clean_db.fetchrow("SELECT actor, actor_kind, details FROM sira_audit_log"
                                     " WHERE action = 'production.change'")
    assert (change["actor"], change["actor_kind"], change["details"]["requested_by"]) == ("policy:fraud", "policy",
                                                                                           "dana")
    assert any("AP-gain rule passes" in r for r in change["details"]["policy_reasons"])
    async with clean_db.acquire() as conn:
        assert (await production_history(conn, "fraud"))[0]["requested_by"] == "dana"

    # the admin asks for a large AP gain: v2's +0.05 over v1 falls short, so the policy leaves it to a person
    await clean_db.execute("UPDATE sira_models SET promotion_policy = $1 WHERE name = 'fraud'", {"min_ap_gain": 0.5})
    await make_version(clean_db, settings, 2, required=0)
    await judged(clean_db, 2, champion=1, ap=0.75)
    second = await run(clean_db, request_promotion, settings, DANA, "fraud", 2, "slightly better")
    assert second["status"] == "pending" and second["policy"]["outcome"] == "reject"
    assert any("is below the minimum +0.500" in r for r in second["policy"]["reasons"])
    # what decided it is the rule that failed, and that is what `sira promote` quotes (it quoted the first
    # reasons, rules that had passed)
    assert second["policy"]["deciding"] == ["AP gain +0.050 over the champion (0.700 → 0.750) is below the minimum "
                                            "+0.500"]
    assert _policy_note(second) == ("\npolicy: did not promote it (reject): AP gain +0.050 over the champion "
                                    "(0.700 → 0.750) is below the minimum +0.500")
    assert await status_of(clean_db, 2) == "validated" and await status_of(clean_db, 1) == "production"
    decided = await run(clean_db, decide, ANN, "fraud", 2, "approve", "worth it anyway")  # one person suffices
    assert (decided["outcome"], decided["required_approvals"]) == ("approved", 1)
    assert await status_of(clean_db, 2) == "production"

    # auto_promote off: the policy passes v3 but does not promote it on its own
    await clean_db.execute("UPDATE sira_models SET promotion_policy = $1 WHERE name = 'fraud'", {"auto_promote": False})
    await make_version(clean_db, settings, 3, required=0)
    await judged(clean_db, 3, champion=2, ap=0.9, champion_ap=0.75)
    third = await run(clean_db, request_promotion, settings, DANA, "fraud", 3)
    assert third["status"] == "pending" and third["policy"]["outcome"] == "stage" and not third["policy"]["promotes"]
    assert "does not promote on its own" in third["policy"]["reasons"][-1]
    assert third["policy"]["deciding"] == [third["policy"]["reasons"][-1]]
    # no retraining run judged v4 against production: the policy's rules cannot be checked
    await clean_db.execute("UPDATE sira_models SET promotion_policy = '{}' WHERE name = 'fraud'")
    await make_version(clean_db, settings, 4, required=0)
    fourth = await run(clean_db, request_promotion, settings, DANA, "fraud", 4)
    assert fourth["status"] == "pending" and fourth["policy"]["outcome"] == "hold"
    assert fourth["policy"]["deciding"] == fourth["policy"]["reasons"] and "no retraining run evaluated v4" in \
        _policy_note(fourth)
    assert await status_of(clean_db, 2) == "production"
    asked = await clean_db.fetchval("SELECT details FROM sira_audit_log WHERE action = 'promotion.request'"
                                    " AND target_id = 'fraud:v2'")
    assert asked["reason"] == "slightly better" and asked["policy"]["outcome"] == "reject"


async def test_a_jwt_and_a_key_of_the_same_person_are_one_person_under_the_four_eyes_rules(clean_db, settings):
    """Key ds2 asks for production; a JWT whose sub is ds2 (named jwt:ds2) approved it (200): the names
    differed. People are compared, in the application and in the database."""
    from sira.registry.views import approval_queue

    ds2 = Identity("ds2", frozenset({"data_scientist"}))
    ds2_jwt, ann_jwt = (Identity(f"jwt:{n}", frozenset({"approver"}), "jwt") for n in ("ds2", "ann"))
    await make_version(clean_db, settings, 1, required=2)
    await run(clean_db, request_promotion, settings, ds2, "fraud", 1)
    with pytest.raises(PermissionDenied, match="requester of a promotion"):
        await run(clean_db, decide, ds2_jwt, "fraud", 1, "approve")
    await run(clean_db, decide, ANN, "fraud", 1, "approve")
    with pytest.raises(Conflict, match="already decided") as twice:  # ann's key, then ann's JWT
        await run(clean_db, decide, ann_jwt, "fraud", 1, "approve")
    assert twice.value.code == "already_decided"
    await make_version(clean_db, settings, 2, creator="ds2", required=2)
    await run(clean_db, request_promotion, settings, DANA, "fraud", 2)
    with pytest.raises(PermissionDenied, match="creator of a version"):
        await run(clean_db, decide, ds2_jwt, "fraud", 2, "approve")
    async with clean_db.acquire() as conn:  # the queue says what decide() does
        standing = {r["version"]: r["may_decide_reason"] for r in await approval_queue(conn, ds2_jwt)}
    assert "requester of a promotion" in standing[1] and "creator of a version" in standing[2]
    requests = dict(await clean_db.fetch("SELECT v.version, r.id FROM sira_promotion_requests r"
                                         " JOIN sira_model_versions v ON v.id = r.version_id"))
    insert = "INSERT INTO sira_approvals (request_id, approver, decision) VALUES ($1, $2, 'approve')"
    with pytest.raises(asyncpg.CheckViolationError, match="requester of a promotion"):  # past the application
        await clean_db.execute(insert, requests[1], "jwt:ds2")
    with pytest.raises(asyncpg.UniqueViolationError, match="ann has already decided"):
        await clean_db.execute(insert, requests[1], "jwt:ann")
    with pytest.raises(asyncpg.CheckViolationError, match="creator of a version"):
        await clean_db.execute(insert, requests[2], "jwt:ds2")
    await clean_db.execute(insert, requests[1], "jwt:cat")  # another person still may


async def test_audit_rows_say_why_and_what_a_request_or_a_refusal_was_about(clean_db, settings):
    """promotion.request rows carried no reason; a refused decision's row named no version (target null)."""
    await make_version(clean_db, settings, 1)
    await run(clean_db, request_promotion, settings, DANA, "fraud", 1, "recall up 4 points")
    asked = await clean_db.fetchval("SELECT details FROM sira_audit_log WHERE action = 'promotion.request'")
    assert asked["reason"] == "recall up 4 points"
    with pytest.raises(PermissionDenied):
        await run(clean_db, decide, Identity("dana", frozenset({"approver"})), "fraud", 1, "approve")
    denied = await clean_db.fetchrow("SELECT target_type, target_id, details FROM sira_audit_log"
                                     " WHERE action = 'promotion.decide' AND outcome = 'denied'")
    assert (denied["target_type"], denied["target_id"]) == ("model_version", "fraud:v1")
    assert denied["details"]["code"] == "self_approval" and "creator of a version" in denied["details"]["reason"]


async def test_a_refusal_for_want_of_a_role_names_what_it_was_about_and_its_code(clean_db, settings):
    """A decision, request or rollback refused for want of the role wrote a row with no target and no code
    (docs/governance.md says a refused decision names the version it was about and the refusal's code)."""
    from sira.registry.models import rollback

    await make_version(clean_db, settings, 1)
    viewer = Identity("vic", frozenset({"viewer"}))
    for call, args in ((decide, ("fraud", 1, "approve")), (request_promotion, (settings, "fraud", 1, "why")),
                       (rollback, ("fraud", "why", 1))):
        with pytest.raises(PermissionDenied):
            if call is request_promotion:
                await run(clean_db, call, args[0], viewer, *args[1:])
            else:
                await run(clean_db, call, viewer, *args)
    rows = await clean_db.fetch("SELECT action, target_type, target_id, details FROM sira_audit_log "
                                "WHERE outcome = 'denied' AND actor = 'vic' ORDER BY id")
    assert [(r["action"], r["target_type"], r["target_id"]) for r in rows] == [
        ("promotion.decide", "model_version", "fraud:v1"), ("promotion.request", "model_version", "fraud:v1"),
        ("rollback", "model", "fraud")]
    assert all(r["details"]["code"] == "forbidden" for r in rows), rows
