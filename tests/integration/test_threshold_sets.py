"""Decision thresholds as a governed history: a change is requested with its evidence, needs the model's
approvals from people other than the requester, reaches serving without a reload, and every prediction
names the set that decided it, so an old decision's explanation keeps its own thresholds."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from sira.core import db
from sira.core.auth import Identity
from sira.core.errors import Conflict, InvalidInput, PermissionDenied
from sira.monitoring.explanation import explain_prediction
from sira.registry import models as registry
from sira.registry import thresholds as threshold_sets
from sira.registry.views import approvals
from tests.conftest import private_installation, run_in_transaction, run_sync, scoring_client

ADMIN = Identity("th-admin", frozenset({"admin"}))
SCIENTIST = Identity("th-scientist", frozenset({"data_scientist"}))
APPROVERS = [Identity(f"th-approver-{k}", frozenset({"approver"})) for k in "ab"]
ANALYST = Identity("th-analyst", frozenset({"analyst"}))
NOW = datetime(2026, 10, 9, 12, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def fraud_model(create_database, fraud_model):
    """A database of this module's own serving the session's model, two approvals required."""
    inst = private_installation(create_database, fraud_model, "sira_thresholds")

    async def two_approvals():
        conn = await db.connect(inst.dsn)
        try:
            async with conn.transaction():
                await registry.update_model(conn, ADMIN, "fraud", required_approvals=2)
        finally:
            await conn.close()

    run_sync(two_approvals())
    return inst


@pytest.fixture(scope="module")
def model() -> str:
    return "fraud"


def payment(fraud_model, k: int) -> dict:
    e = fraud_model.entities[k % len(fraud_model.entities)]
    return {"event_id": f"th-{uuid.uuid4().hex[:12]}", "occurred_at": (NOW + timedelta(seconds=k)).isoformat(),
            "customer_id": e["customer_id"], "card_token": e["card_token"], "terminal_id": e["terminal_id"],
            "amount": e["amount"], "country": e["country"], "channel": e["channel"]}


async def test_a_threshold_change_is_governed_swapped_into_serving_and_named_by_each_prediction(
        fraud_model, model, tmp_path):
    headers = {role: {"Authorization": f"Bearer {fraud_model.keys[role]}"} for role in fraud_model.keys}
    async with scoring_client(fraud_model, tmp_path, models=(model,)) as (client, service):
        before = (await client.post("/v1/score", json={"model": model, "event": payment(fraud_model, 1)},
                                    headers=headers["service"])).json()
        await service.flush()
        version = await service.pool.fetchrow(
            """SELECT v.version, v.thresholds, v.threshold_set FROM sira_model_versions v
                 JOIN sira_models m ON m.id = v.model_id WHERE m.name = $1""", model)
        original = dict(version["thresholds"])
        assert await service.pool.fetchval("SELECT threshold_set FROM sira_predictions WHERE prediction_id = $1",
                                           uuid.UUID(before["prediction_id"])) == version["threshold_set"]
        report = await run_in_transaction(fraud_model.dsn, explain_prediction, fraud_model.settings, ANALYST, before["prediction_id"])
        assert report["thresholds"] == original and report["threshold_set"]["revision"] == 1

        # asked over HTTP by a data scientist (an analyst may not), with the what-if as evidence
        path = f"/v1/models/{model}/versions/{version['version']}/thresholds"
        body = {"review": 0.0, "block": 0.0, "reason": "block everything during an attack"}
        refused = await client.post(path, json=body, headers=headers["analyst"])
        assert refused.status_code == 403
        bad = await client.post(path, json={**body, "review": 0.5, "block": 0.2}, headers=headers["data_scientist"])
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_value"
        asked = await client.post(path, json=body, headers=headers["data_scientist"])
        assert asked.status_code == 201, asked.text
        change = asked.json()
        assert change["status"] == "pending" and change["revision"] == 2 and change["from"] == original
        assert change["evidence"]["window"] is None or change["evidence"]["requested"]["block"]["threshold"] == 0.0
        again = await client.post(path, json=body, headers=headers["data_scientist"])
        assert again.status_code == 409 and again.json()["error"]["code"] == "request_pending"

        # four eyes: the requester may not decide; each approver once; two approvals activate it
        requester = Identity("k-data_scientist", frozenset({"approver"}))
        with pytest.raises(PermissionDenied):
            await run_in_transaction(fraud_model.dsn, threshold_sets.decide_change, requester, model, version["version"], "approve")
        first = await run_in_transaction(fraud_model.dsn, threshold_sets.decide_change, APPROVERS[0], model, version["version"],
                            "approve", "seen the evidence")
        assert first["outcome"] == "pending" and first["approvals"] == 1
        with pytest.raises(Conflict):
            await run_in_transaction(fraud_model.dsn, threshold_sets.decide_change, APPROVERS[0], model, version["version"], "approve")
        assert (await service.pool.fetchval("SELECT thresholds FROM sira_model_versions WHERE threshold_set = $1",
                                            version["threshold_set"])) == original  # nothing changed yet
        done = await run_in_transaction(fraud_model.dsn, threshold_sets.decide_change, APPROVERS[1], model, version["version"],
                           "approve")
        assert done["outcome"] == "approved" and done["status"] == "active"

        # serving hears of it (NOTIFY at commit) and decides with the new set, without reloading the artifact
        loaded = service.models.slots[model].production
        for _ in range(300):  # the listener runs on this loop: wait without blocking it
            if service.models.slots[model].production.threshold_set == change["set"]:
                break
            await asyncio.sleep(0.05)
        assert service.models.slots[model].production.threshold_set == change["set"], "no swap within 15 s"
        swapped = service.models.slots[model].production
        assert swapped.booster is loaded.booster and swapped.thresholds == {"review": 0.0, "block": 0.0}
        after = (await client.post("/v1/score", json={"model": model, "event": payment(fraud_model, 2)},
                                   headers=headers["service"])).json()
        assert after["decision"] == "block"
        await service.flush()
        stored = await service.pool.fetchval("SELECT threshold_set FROM sira_predictions WHERE prediction_id = $1",
                                             uuid.UUID(after["prediction_id"]))
        assert stored == change["set"]

    # the old decision's report is the same report: its own thresholds, not today's
    again_report = await run_in_transaction(fraud_model.dsn, explain_prediction, fraud_model.settings, ANALYST, before["prediction_id"])
    assert again_report["thresholds"] == original and again_report["report_id"] == report["report_id"]
    new_report = await run_in_transaction(fraud_model.dsn, explain_prediction, fraud_model.settings, ANALYST, after["prediction_id"])
    assert new_report["thresholds"] == {"review": 0.0, "block": 0.0} and new_report["threshold_set"]["revision"] == 2

    # the history, the audit trail and the webhook outbox say who, when, why
    history = await run_in_transaction(fraud_model.dsn, threshold_sets.history, ANALYST, model, version["version"])
    assert history["active"] == change["set"]
    async with scoring_client(fraud_model, tmp_path / "read") as (client, _):
        shown = await client.get(f"/v1/models/{model}/versions/{version['version']}", headers=headers["analyst"])
        listed = await client.get(path, headers=headers["analyst"])
    assert shown.status_code == 200, shown.text
    assert shown.json()["threshold_set"] == change["set"] and shown.json()["thresholds"] == {"review": 0.0, "block": 0.0}
    assert listed.status_code == 200 and [s["revision"] for s in listed.json()["sets"]] == [2, 1]
    assert [(s["revision"], s["status"]) for s in history["sets"]] == [(2, "active"), (1, "superseded")]
    assert {d["approver"] for d in history["sets"][0]["decisions"]} == {a.name for a in APPROVERS}
    conn = await db.connect(fraud_model.dsn)
    try:
        actions = [r["action"] for r in await conn.fetch(
            "SELECT action FROM sira_audit_log WHERE target_id = $1 AND action LIKE 'thresholds.%' ORDER BY id",
            f"{model}:v{version['version']}")]
        outbox = await conn.fetchval("SELECT count(*) FROM sira_webhook_outbox WHERE event = 'thresholds.change' "
                                     "AND payload->>'model' = $1", model)
    finally:
        await conn.close()
    assert actions == ["thresholds.request", "thresholds.approve", "thresholds.approve", "thresholds.change"]
    assert outbox == 1

    # an analyst reviews the old decision (a label, recorded as analyst:<name>): the report says a person did
    assert report["summary"]["human_review"]["reviewed"] is False
    async with scoring_client(fraud_model, tmp_path / "review") as (client, _):
        reviewed = await client.post("/v1/feedback", json={"prediction_id": before["prediction_id"], "label": False},
                                     headers=headers["analyst"])
    assert reviewed.status_code in (200, 201), reviewed.text
    after_review = await run_in_transaction(fraud_model.dsn, explain_prediction, fraud_model.settings, ANALYST,
                                            before["prediction_id"])
    assert after_review["summary"]["human_review"]["reviewed"] is True  # was False: only "analyst" matched


async def test_a_rejection_closes_a_change_and_bad_requests_are_refused(fraud_model, model):
    version = (await run_in_transaction(fraud_model.dsn, threshold_sets.history, ANALYST, model, 1))["version"]
    with pytest.raises(InvalidInput):
        await run_in_transaction(fraud_model.dsn, threshold_sets.request_change, SCIENTIST, model, version, review=0.2, block=0.9,
                    reason=" ")
    with pytest.raises(PermissionDenied):
        await run_in_transaction(fraud_model.dsn, threshold_sets.request_change, ANALYST, model, version, review=0.2, block=0.9,
                    reason="no role")
    with pytest.raises(Conflict, match=r"closed \(active\)"):  # the module's first test's change, approved
        await run_in_transaction(fraud_model.dsn, threshold_sets.decide_change, APPROVERS[0], model, version, "approve")
    asked = await run_in_transaction(fraud_model.dsn, threshold_sets.request_change, SCIENTIST, model, version, review=0.2, block=0.9,
                        reason="calmer")
    # the approvals queue shows it, the thresholds in force beside it, and who may decide and why not
    (queued,) = (await run_in_transaction(fraud_model.dsn, approvals, APPROVERS[0]))["threshold_changes"]
    current = (await run_in_transaction(fraud_model.dsn, registry.get_version, model, version))["thresholds"]
    assert (queued["set_id"], queued["model"], queued["version"], queued["review"], queued["block"]) == \
        (asked["set"], model, version, 0.2, 0.9)
    assert (queued["current_review"], queued["current_block"]) == (current["review"], current["block"])
    assert queued["requested_by"] == SCIENTIST.name and queued["reason"] == "calmer" and queued["may_decide"]
    standing = {who.name: (await run_in_transaction(fraud_model.dsn, approvals, who))["threshold_changes"][0]
                for who in (APPROVERS[0], ANALYST, Identity(SCIENTIST.name, frozenset({"approver"})))}
    assert "approver role" in standing[ANALYST.name]["may_decide_reason"]
    assert "requester" in standing[SCIENTIST.name]["may_decide_reason"]  # what decide_change enforces
    rejected = await run_in_transaction(fraud_model.dsn, threshold_sets.decide_change, APPROVERS[0], model, version, "reject", "no")
    assert rejected["outcome"] == "rejected" and rejected["status"] == "rejected"
    assert (await run_in_transaction(fraud_model.dsn, approvals, APPROVERS[1]))["threshold_changes"] == []
    history = await run_in_transaction(fraud_model.dsn, threshold_sets.history, ANALYST, model, version)
    assert history["active"] != asked["set"]
    assert next(s for s in history["sets"] if s["id"] == asked["set"])["status"] == "rejected"
    # a second approver too late: the change is closed (409, as a promotion's), not "never asked" (404)
    with pytest.raises(Conflict) as late:
        await run_in_transaction(fraud_model.dsn, threshold_sets.decide_change, APPROVERS[1], model, version, "approve")
    assert late.value.code == "request_closed" and late.value.details["status"] == "rejected"


async def test_a_pending_change_of_a_version_that_leaves_service_is_cancelled(fraud_model, model):
    """Archived (or rejected) while a change waits: the change is cancelled (decide_change could only refuse
    it), so the approvals queue does not offer it for good. Rolled back: the module's version stays."""
    conn = await db.connect(fraud_model.dsn)
    tr = conn.transaction()
    await tr.start()
    try:
        version = (await threshold_sets.history(conn, ANALYST, model, 1))["version"]
        asked = await threshold_sets.request_change(conn, SCIENTIST, model, version, review=0.3, block=0.8,
                                                    reason="before the archive")
        assert [c["set_id"] for c in (await approvals(conn, APPROVERS[0]))["threshold_changes"]] == [asked["set"]]
        await conn.execute("UPDATE sira_model_versions v SET status = 'archived' FROM sira_models m"
                           " WHERE m.id = v.model_id AND m.name = $1 AND v.version = $2", model, version)
        row = await conn.fetchrow("SELECT status, decided_at FROM sira_threshold_sets WHERE id = $1", asked["set"])
        assert row["status"] == "cancelled" and row["decided_at"] is not None
        assert (await approvals(conn, APPROVERS[0]))["threshold_changes"] == []
        with pytest.raises(Conflict, match=r"closed \(cancelled, the version being archived now\)"):
            await threshold_sets.decide_change(conn, APPROVERS[0], model, version, "approve")
    finally:
        await tr.rollback()
        await conn.close()


async def test_required_approvals_raised_after_a_change_was_asked_apply_to_it(fraud_model, model):
    """Raised from 2 to 3 while a change waits: two approvals no longer activate it (they did: a promotion
    honoured the raise, a threshold change kept the number it was asked with). Rolled back."""
    conn = await db.connect(fraud_model.dsn)
    tr = conn.transaction()
    await tr.start()
    try:
        version = (await threshold_sets.history(conn, ANALYST, model, 1))["version"]
        await threshold_sets.request_change(conn, SCIENTIST, model, version, review=0.3, block=0.8, reason="raise")
        await registry.update_model(conn, ADMIN, model, required_approvals=3)
        for approver in APPROVERS:
            decided = await threshold_sets.decide_change(conn, approver, model, version, "approve")
        assert (decided["outcome"], decided["approvals"], decided["required_approvals"]) == ("pending", 2, 3)
    finally:
        await tr.rollback()
        await conn.close()
