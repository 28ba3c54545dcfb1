"""Counterfactuals in explanation reports, on a planted case: a blocked payment whose amount alone drives its
score gets the nearest amount that changes the decision, verified by re-scoring through the serving path,
changing only what the person controls."""

from __future__ import annotations

import asyncio
import functools
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from sira.core import db
from sira.core.auth import Identity
from sira.core.errors import Conflict
from sira.features.engine import engine_of
from sira.ingest.bulk import ingest_records, redactor_for
from sira.monitoring import counterfactual
from sira.monitoring.counterfactual import ACTIONABLE
from sira.monitoring.explanation import deciding_set, explain_prediction, to_markdown
from sira.registry import thresholds as threshold_sets
from sira.registry.models import get_version
from sira.serving.scoring import ModelRuntime
from tests.conftest import private_installation, run_in_transaction, scoring_client

SCIENTIST = Identity("cf-scientist", frozenset({"data_scientist"}))
ANALYST = Identity("cf-analyst", frozenset({"analyst"}))
NOW = datetime(2026, 10, 10, 12, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def fraud_model(create_database, fraud_model):
    """A database of this module's own serving the session's model; no approvals needed: the planted
    thresholds apply at once."""
    return private_installation(create_database, fraud_model, "sira_counterfactual")


@pytest.fixture(scope="module")
def model() -> str:
    return "fraud"


def payment(fraud_model, k: int, amount: float) -> dict:
    e = fraud_model.entities[k]
    return {"event_id": f"cf-{uuid.uuid4().hex[:12]}", "occurred_at": (NOW + timedelta(minutes=k)).isoformat(),
            "customer_id": e["customer_id"], "card_token": e["card_token"], "terminal_id": e["terminal_id"],
            "amount": amount, "country": e["country"], "channel": e["channel"]}


async def score_payment(client, fraud_model, model: str, event: dict, record: bool = False) -> dict:
    """The answer of `/v1/score` to ``event``, as the service scores it (a fresh request id each time)."""
    answer = await client.post("/v1/score", json={"model": model, "event": event, "record": record,
                                                  "request_id": uuid.uuid4().hex},
                               headers={"Authorization": f"Bearer {fraud_model.keys['service']}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_a_blocked_payment_driven_by_its_amount_gets_a_verified_counterfactual(fraud_model, model, tmp_path):
    base = payment(fraud_model, 7, 20.0)
    async with scoring_client(fraud_model, tmp_path, models=(model,)) as (client, service):
        score = functools.partial(score_payment, client, fraud_model, model)

        # the plant: the same payment, only its amount larger, scores higher; the thresholds sit between
        low = (await score(base))["score"]
        for factor in (10, 50, 200, 1000):
            high = (await score({**base, "amount": base["amount"] * factor}))["score"]
            if high > low + 1e-3:
                break
        assert high > low + 1e-3, "the amount never raised this payment's score"
        cut = (low + high) / 2
        await plant(fraud_model, service, model, review=cut, block=cut)
        big = {**base, "amount": base["amount"] * factor}
        blocked = await score(big, record=True)
        assert blocked["decision"] == "block"
        await service.flush()

        report = await run_in_transaction(fraud_model.dsn, explain_prediction, fraud_model.settings, ANALYST, blocked["prediction_id"])
        cf = report["counterfactual"]
        assert cf["available"], cf
        assert set(cf["change"]) == {"amount"} <= set(ACTIONABLE)  # only what the person controls
        to = cf["change"]["amount"]["to"]
        assert cf["change"]["amount"]["from"] == big["amount"] and base["amount"] <= to < big["amount"]
        assert cf["decision"] == "approve" and cf["score"] < cut
        # the features that moved are the amount's own and its aggregates; history is untouched
        assert "amount" in cf["features_changed"]
        assert all("amount" in name for name in cf["features_changed"]), cf["features_changed"]

        # re-scored by the serving path (the stored event replaced by the changed copy, folded from the log):
        # the reported amount changes the decision, a cent more does not
        rescored = await score({**big, "amount": to})
        kept = await score({**big, "amount": round(to + 0.01, 2)})
        assert rescored["decision"] == "approve" and rescored["score"] == pytest.approx(cf["score"], abs=1e-12)
        assert kept["decision"] == "block"

    summary = report["summary"]["what_would_change_it"]
    assert f"{to:,.2f}" in summary and "approve" in summary
    assert "## What would have changed it" in to_markdown(report)
    again = await run_in_transaction(fraud_model.dsn, explain_prediction, fraud_model.settings, ANALYST, blocked["prediction_id"])
    assert again["report_id"] == report["report_id"]  # reproducible, counterfactual included

    # a payment of the same person arriving late, made a minute before the blocked one: a refold of the log
    # no longer gives the features the decision was scored with; the report it had is still the report
    late = {**base, "event_id": f"cf-late-{uuid.uuid4().hex[:8]}", "amount": 912.0,
            "occurred_at": (datetime.fromisoformat(big["occurred_at"]) - timedelta(minutes=1)).isoformat()}
    async with db.open_pool(fraud_model.settings) as pool:
        stored = await ingest_records(pool, [late], redactor=redactor_for(fraud_model.settings), source="late")
    assert stored.accepted == 1
    refold = await run_in_transaction(fraud_model.dsn, counterfactual_now, fraud_model.settings, blocked)
    assert not refold["available"] and "no longer reproduces" in refold["why"]  # the late event counts now
    after = await run_in_transaction(fraud_model.dsn, explain_prediction, fraud_model.settings, ANALYST, blocked["prediction_id"])
    assert after["counterfactual"] == cf and after["report_id"] == report["report_id"]


async def plant(fraud_model, service, model, *, review, block):
    """Thresholds of the test's choosing, in force in ``service`` (the model needs no approvals)."""
    version = (await run_in_transaction(fraud_model.dsn, threshold_sets.history, ANALYST, model, 1))["version"]
    try:
        change = await run_in_transaction(fraud_model.dsn, threshold_sets.request_change, SCIENTIST, model, version,
                                          review=review, block=block, reason="the counterfactual plant")
    except Conflict as exc:  # planted by an earlier test already: in force in this service since it started
        assert exc.code == "no_change", exc
        return
    for _ in range(300):
        if service.models.slots[model].production.threshold_set == change["set"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no swap within 15 s")


async def test_the_nearest_amount_that_changes_a_decision_is_found_however_many_ranges_lie_between(
        fraud_model, model, tmp_path):
    """Every amount is covered: the thresholds are planted so that only amounts far from the paid one (with
    many of the trees' amount ranges between) approve. Before, the search tried 97 amounts nearest first
    and said its budget ran out; now it finds the nearest approving amount, which the serving path
    confirms, and no amount of a grid nearer to the paid one approves."""
    paid = payment(fraud_model, 17, 300.0)
    async with scoring_client(fraud_model, tmp_path, models=(model,)) as (client, service):
        score = functools.partial(score_payment, client, fraud_model, model)

        grid = sorted({*np.geomspace(0.5, 20_000, 90).round(2).tolist(), 300.0}, key=lambda a: abs(a - 300.0))
        scores = {a: (await score({**paid, "amount": a}))["score"] for a in grid}
        # the farthest grid amount scoring below every amount nearer to the paid one: the review threshold just
        # above it leaves it (and amounts like it) the only approvals
        target = next(a for a in reversed(grid[1:]) if scores[a] < min(scores[b] for b in grid[:grid.index(a)]))
        nearer = min(scores[b] for b in grid[:grid.index(target)])
        review = (scores[target] + nearer) / 2
        await plant(fraud_model, service, model, review=review, block=1.0)
        decided = await score(paid, record=True)
        assert decided["decision"] == "review"
        await service.flush()

        report = await run_in_transaction(fraud_model.dsn, explain_prediction, fraud_model.settings, ANALYST,
                                          decided["prediction_id"])
        cf = report["counterfactual"]
        assert cf["available"], cf
        to = cf["change"]["amount"]["to"]
        assert abs(to - 300.0) <= abs(target - 300.0) and cf["decision"] == "approve"
        assert all(scores[a] >= review for a in grid if abs(a - 300.0) < abs(to - 300.0))
        rescored = await score({**paid, "amount": to})
        assert rescored["decision"] == "approve" and rescored["score"] == pytest.approx(cf["score"], abs=1e-12)
        toward = round(to + (0.01 if to < 300.0 else -0.01), 2)  # a cent nearer the paid amount: still a review
        assert (await score({**paid, "amount": toward}))["decision"] == "review"


async def test_that_no_amount_changes_a_decision_is_concluded_and_the_report_stays(fraud_model, model, tmp_path):
    """Under a review threshold of 0 every payment is a review: no amount and no hour approves it. The search
    concludes so (before: "the search budget ran out", never that), and that answer is the report's from then
    on, a late payment of the same customer notwithstanding (before: the report changed with it)."""
    headers = {"Authorization": f"Bearer {fraud_model.keys['service']}"}
    paid = payment(fraud_model, 19, 1000.0)
    async with scoring_client(fraud_model, tmp_path, models=(model,)) as (client, service):
        await plant(fraud_model, service, model, review=0.0, block=1.0)
        decided = (await client.post("/v1/score", json={"model": model, "event": paid, "request_id": uuid.uuid4().hex},
                                     headers=headers)).json()
        assert decided["decision"] == "review"
        await service.flush()
    report = await run_in_transaction(fraud_model.dsn, explain_prediction, fraud_model.settings, ANALYST,
                                      decided["prediction_id"])
    cf = report["counterfactual"]
    assert not cf["available"] and cf["why"].startswith("no amount from 0.01 to 1,000,000,000,000 and no other hour")
    assert cf["amount_ranges"] > 100, cf  # every range of amounts the trees tell apart was scored
    late = {**paid, "event_id": f"cf-late-{uuid.uuid4().hex[:8]}", "amount": 12.0,
            "occurred_at": (datetime.fromisoformat(paid["occurred_at"]) - timedelta(minutes=2)).isoformat()}
    async with db.open_pool(fraud_model.settings) as pool:
        assert (await ingest_records(pool, [late], redactor=redactor_for(fraud_model.settings),
                                     source="late")).accepted == 1
    again = await run_in_transaction(fraud_model.dsn, explain_prediction, fraud_model.settings, ANALYST,
                                     decided["prediction_id"])
    assert again["counterfactual"] == cf and again["report_id"] == report["report_id"]


async def test_the_first_answer_stands_when_the_payment_is_stored_after_the_first_report(fraud_model, model, tmp_path):
    """A payment scored without recording, explained, then stored (the product's event stream brings it): the
    first report said there was no counterfactual; it stays the report (it was recomputed, and changed, before:
    only an answer with re-scorings was kept)."""
    headers = {"Authorization": f"Bearer {fraud_model.keys['service']}"}
    paid = payment(fraud_model, 23, 640.0)
    async with scoring_client(fraud_model, tmp_path, models=(model,)) as (client, service):
        await plant(fraud_model, service, model, review=0.0, block=1.0)
        decided = (await client.post("/v1/score", json={"model": model, "event": paid, "record": False,
                                                        "request_id": uuid.uuid4().hex}, headers=headers)).json()
        await service.flush()
    first = await run_in_transaction(fraud_model.dsn, explain_prediction, fraud_model.settings, ANALYST,
                                     decided["prediction_id"])
    assert "not stored" in first["counterfactual"]["why"]
    async with db.open_pool(fraud_model.settings) as pool:
        assert (await ingest_records(pool, [paid], redactor=redactor_for(fraud_model.settings),
                                     source="stream")).accepted == 1
    again = await run_in_transaction(fraud_model.dsn, explain_prediction, fraud_model.settings, ANALYST,
                                     decided["prediction_id"])
    assert again["counterfactual"] == first["counterfactual"] and again["report_id"] == first["report_id"]


async def counterfactual_now(conn, settings, answer):
    """What a refold of the log gives for a prediction today (the search, without the stored answer)."""
    row = await conn.fetchrow("SELECT * FROM sira_predictions WHERE prediction_id = $1", uuid.UUID(answer["prediction_id"]))
    version = dict(await get_version(conn, row["model_name"], row["version"]))
    version["model_name"] = row["model_name"]
    runtime = await asyncio.to_thread(ModelRuntime.load, settings, version)
    decided = await deciding_set(conn, row["threshold_set"], version["id"])
    event = await conn.fetchrow("SELECT * FROM sira_events WHERE event_id = $1", row["event_id"])
    return await counterfactual.find(conn, runtime, dict(event), row["features"],
                                     {"review": decided["review"], "block": decided["block"]}, row["decision"])


async def test_no_counterfactual_is_claimed_for_an_approval_or_an_unstored_payment(fraud_model, model, tmp_path):
    headers = {"Authorization": f"Bearer {fraud_model.keys['service']}"}
    async with scoring_client(fraud_model, tmp_path, models=(model,)) as (client, service):
        answers = [(await client.post("/v1/score", json={"model": model, "event": payment(fraud_model, k, 12.5)},
                                      headers=headers)).json() for k in (9, 10)]
        await service.flush()
    approved, unstored = (uuid.UUID(a["prediction_id"]) for a in answers)
    conn = await db.connect(fraud_model.dsn)
    try:
        await conn.execute("UPDATE sira_predictions SET decision = 'approve' WHERE prediction_id = $1", approved)
        report = await explain_prediction(conn, fraud_model.settings, ANALYST, str(approved))
        assert report["counterfactual"] == {"available": False,
                                            "why": "the payment was approved: nothing needed to change"}
        await conn.execute("UPDATE sira_predictions SET event_id = 'never-stored', decision = 'block' "
                           "WHERE prediction_id = $1", unstored)
    finally:
        await conn.close()
    report = await run_in_transaction(fraud_model.dsn, explain_prediction, fraud_model.settings, ANALYST, str(unstored))
    assert report["counterfactual"]["available"] is False and "not stored" in report["counterfactual"]["why"]
    assert report["summary"]["what_would_change_it"] is None


class Planted:
    """A version's runtime whose scores come from ``predict`` instead of its trees."""

    def __init__(self, runtime, predict):
        self.runtime, self.predict = runtime, predict

    def __getattr__(self, name):
        return getattr(self.runtime, name)


async def velocity_counterfactual(conn, settings, event_id, count_feature):
    """The counterfactual of a block that only the payer's recent payments explain: the model, planted, blocks
    a payment when ``count_feature`` (the payer's payments in the last hour, itself included) is 4 or more."""
    version = dict(await get_version(conn, "fraud", 1))
    version["model_name"] = "fraud"
    runtime = await asyncio.to_thread(ModelRuntime.load, settings, version)
    column = runtime.names.index(count_feature)
    planted = Planted(runtime, lambda x: np.where(x[:, column] >= 4, 0.9, 0.1))
    event = dict(await conn.fetchrow("SELECT * FROM sira_events WHERE event_id = $1", event_id))
    refold = await counterfactual.Refold.load(conn, engine_of(runtime.feature_set), event)
    scorer = counterfactual.Scorer(planted, refold, {"review": 0.5, "block": 0.5})
    _, decision, vector = scorer()
    assert decision == "block" and vector[refold.engine.names.index(count_feature)] >= 4
    stored = {n: None if np.isnan(v) else float(v) for n, v in zip(refold.engine.names, vector.tolist())}
    return await asyncio.to_thread(counterfactual.search, scorer, event, stored, decision), refold.engine


async def test_moving_the_hour_never_changes_the_payers_history(fraud_model):
    """A payment blocked for the payer's velocity: moved an hour earlier, the copy would come before the
    payer's own payments of the last hour and its counts drop; that is no change the person could make."""
    e = fraud_model.entities[11]
    t = datetime(2026, 10, 10, 14, 0, tzinfo=timezone.utc)
    tag = uuid.uuid4().hex[:8]
    events = [{"event_id": f"cf-v{k}-{tag}", "occurred_at": (t - timedelta(minutes=10 * (5 - k))).isoformat(),
               "customer_id": e["customer_id"], "card_token": e["card_token"], "terminal_id": e["terminal_id"],
               "amount": 20.0 + k, "country": e["country"], "channel": e["channel"]} for k in range(6)]
    async with db.open_pool(fraud_model.settings) as pool:
        assert (await ingest_records(pool, events, redactor=redactor_for(fraud_model.settings),
                                     source="velocity")).accepted == 6
    found, engine = await run_in_transaction(fraud_model.dsn, velocity_counterfactual, fraud_model.settings,
                                             events[-1]["event_id"], "customer_count_1h")
    history = set(engine.names) - set(engine.fs.event_features)
    assert not found["available"] or not history & set(found["features_changed"]), found
    assert not found["available"], found  # neither the amount nor the hour, as the person could change them


async def test_editing_the_models_description_does_not_change_an_issued_report(fraud_model, model, tmp_path):
    """The report's id hashed the model's description as the registry holds it now, which an admin may edit at
    any time: the same prediction then gave another report. The report quotes the description the version was
    registered with."""
    headers = {"Authorization": f"Bearer {fraud_model.keys['service']}"}
    async with scoring_client(fraud_model, tmp_path, models=(model,)) as (client, service):
        answer = (await client.post("/v1/score", json={"model": model, "event": payment(fraud_model, 13, 40.0)},
                                    headers=headers)).json()
        await service.flush()
    first = await run_in_transaction(fraud_model.dsn, explain_prediction, fraud_model.settings, ANALYST,
                                     answer["prediction_id"])
    conn = await db.connect(fraud_model.dsn)
    try:
        before = await conn.fetchval("SELECT description FROM sira_models WHERE name = $1", model)
        await conn.execute("UPDATE sira_models SET description = 'edited after the decision' WHERE name = $1", model)
        again = await explain_prediction(conn, fraud_model.settings, ANALYST, answer["prediction_id"])
    finally:
        await conn.execute("UPDATE sira_models SET description = $2 WHERE name = $1", model, before)
        await conn.close()
    assert again["report_id"] == first["report_id"] and again["description"] == first["description"]
