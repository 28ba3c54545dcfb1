"""Subject access: everything SIRA stores about one person, and nothing about another (issue #25.2)."""

import asyncio
import json
import zipfile

import pytest

from sira.core import db
from sira.core.auth import Identity
from sira.monitoring.subject import SECTIONS, export_subject, subject_ref

ADMIN = Identity("root", frozenset({"admin"}))


async def _query(dsn, sql, *args):
    conn = await db.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _scored(fraud_model, spool, n: int = 3) -> None:
    """``n`` payments of the first entity scored and recorded by a serving service (approvals, mostly: their
    reasons deferred), stored before it returns."""
    from tests.conftest import scoring_client
    from tests.integration.test_scoring_service import auth, event

    async with scoring_client(fraud_model, spool) as (client, service):
        for i in range(n):
            r = await client.post("/v1/score", headers=auth(fraud_model, "service"),
                                  json={"model": "fraud", "event": event(fraud_model, len(fraud_model.entities) * i)})
            assert r.status_code == 200, r.text
        await service.flush()


def test_an_export_holds_every_row_about_the_person_and_nothing_about_another(fraud_model, tmp_path):
    asyncio.run(_scored(fraud_model, tmp_path / "spool"))
    a, b = fraud_model.entities[0]["customer_id"], fraud_model.entities[1]["customer_id"]
    secret = fraud_model.settings.secret("auth_secret")

    async def run():
        from sira.monitoring.explanation import explain_prediction

        conn = await db.connect(fraud_model.dsn)
        try:
            async with conn.transaction():  # an explanation report issued about one of their decisions
                explained = await conn.fetchval(
                    "SELECT p.prediction_id FROM sira_predictions p JOIN sira_events e ON e.event_id = p.event_id "
                    "WHERE e.customer_id = $1 LIMIT 1", a)
                report = await explain_prediction(conn, fraud_model.settings, ADMIN, str(explained))
            async with conn.transaction():
                return report, await export_subject(conn, ADMIN, a, fraud_model.settings)
        finally:
            await conn.close()

    report, bundle = asyncio.run(run())
    assert {(x["prediction_id"], x["report_id"]) for x in bundle["explanations"]} >= {
        (report["summary"]["prediction_id"], report["report_id"])}  # the reports issued about them were left out
    events = asyncio.run(_query(fraud_model.dsn, "SELECT event_id FROM sira_events WHERE customer_id = $1", a))
    ids = {e["event_id"] for e in events}
    assert ids and {e["event_id"] for e in bundle["events"]} == ids
    assert all(e["customer_id"] == a for e in bundle["events"])
    predictions = asyncio.run(_query(fraud_model.dsn, "SELECT prediction_id FROM sira_predictions "
                                                      "WHERE event_id = ANY($1::text[])", list(ids)))
    assert {p["prediction_id"] for p in bundle["predictions"]} == {str(p["prediction_id"]) for p in predictions}
    # an approval's reasons are deferred by serving: the export computes them (it gave `reasons: []`)
    deferred = [p for p in bundle["predictions"] if p["flags"].get("reasons_deferred")]
    assert deferred and all(p["reasons_computed_for_export"] and p["reasons"] for p in deferred)
    labels = asyncio.run(_query(fraud_model.dsn, "SELECT id FROM sira_feedback WHERE event_id = ANY($1::text[])",
                                list(ids)))
    assert {r["id"] for r in bundle["labels"]} >= {r["id"] for r in labels}
    # their own entities: the customer's state, their cards' (unless another customer's events carry them too)
    cards = {e["card_token"] for e in bundle["events"] if e["card_token"]}
    owned = {(s["entity_type"], s["entity_id"]) for s in bundle["entity_states"]}
    assert ("customer", a) in owned and {k for t, k in owned if t != "customer"} <= cards
    assert all(f["entity_id"] in cards | {a} for f in bundle["features"])
    assert "card_token" in bundle["tokens"]["kinds"]
    assert bundle["counts"] == {s: len(bundle[s]) for s in SECTIONS}
    # nothing about the other customer
    other = asyncio.run(_query(fraud_model.dsn, "SELECT event_id FROM sira_events WHERE customer_id = $1", b))
    text = json.dumps(bundle)
    assert b not in text and not any(f'"{e["event_id"]}"' in text for e in other)
    # audited, the subject named by a keyed hash only
    (row,) = asyncio.run(_query(fraud_model.dsn, "SELECT target_id, details FROM sira_audit_log WHERE action = "
                                                 "'subject.export' ORDER BY id DESC LIMIT 1"))
    assert row["target_id"] == subject_ref(secret, a) and a not in json.dumps(row["details"])


def test_the_cli_writes_a_zip_for_an_admin_and_refuses_anyone_else(fraud_model, tmp_path, monkeypatch, capsys):
    from sira.cli.main import main
    from sira.core.config import reset_settings

    customer = fraud_model.entities[2]["customer_id"]
    monkeypatch.setenv("SIRA_DATABASE_URL", fraud_model.dsn)
    monkeypatch.setenv("SIRA_WORKSPACE", str(fraud_model.settings.workspace))

    def sira(role, *args):
        monkeypatch.setenv("SIRA_API_KEY", fraud_model.keys[role])
        reset_settings()
        try:
            return main(list(args)), capsys.readouterr()
        finally:
            reset_settings()

    code, out = sira("admin", "subject", "export", "--customer", customer, "--out", str(tmp_path / "s.zip"), "--json")
    assert code == 0, out.err
    summary = json.loads(out.out)
    with zipfile.ZipFile(tmp_path / "s.zip") as archive:
        assert set(archive.namelist()) == {"manifest.json", *(f"{s}.json" for s in SECTIONS)}
        events = json.loads(archive.read("events.json"))
        manifest = json.loads(archive.read("manifest.json"))
    assert len(events) == summary["counts"]["events"] > 0 and manifest["subject"]["customer_id"] == customer
    for role in ("analyst", "operator", "viewer"):
        code, out = sira(role, "subject", "export", "--customer", customer, "--out", str(tmp_path / "x.json"))
        assert code == 2 and out.err.startswith("error: forbidden:"), out.err
    code, out = sira("admin", "subject", "export", "--customer", customer, "--out", str(tmp_path / "x.csv"))
    assert code == 2 and out.err.startswith("error: invalid_value: --out must end in .json or .zip")
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("customer", ["", "x" * 201])
def test_a_bad_customer_id_is_refused(fraud_model, customer):
    from sira.core.errors import InvalidInput

    async def run():
        conn = await db.connect(fraud_model.dsn)
        try:
            return await export_subject(conn, ADMIN, customer, fraud_model.settings)
        finally:
            await conn.close()

    with pytest.raises(InvalidInput, match="--customer"):
        asyncio.run(run())



@pytest.fixture(scope="module")
def shared_card(fraud_model, tmp_path_factory):
    """A person pays 12.00 with a card another customer paid 1,000.00 with ten minutes before, at a terminal
    they share; a chargeback of the person's payment is recorded, then reversed. The person's export, and the
    report of their decision."""
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace
    from uuid import uuid4

    from sira.monitoring.explanation import explain_prediction
    from tests.conftest import scoring_client
    from tests.integration.test_scoring_service import auth

    run = uuid4().hex[:8]
    a, b = f"cus-share-a-{run}", f"cus-share-b-{run}"
    t = datetime(2026, 10, 11, 9, tzinfo=timezone.utc)
    common = {"card_token": f"tok_pan_share_{run}", "terminal_id": f"ter-share-{run}", "country": "GB", "channel": "pos"}
    theirs = {"event_id": f"share-b-{run}", "occurred_at": (t - timedelta(minutes=10)).isoformat(), "customer_id": b,
              "amount": 1000.0, **common}
    mine = {"event_id": f"share-a-{run}", "occurred_at": t.isoformat(), "customer_id": a, "amount": 12.0, **common}

    async def build():
        async with scoring_client(fraud_model, tmp_path_factory.mktemp("shared-card")) as (client, service):
            answers = []
            for event in (theirs, mine):
                r = await client.post("/v1/score", headers=auth(fraud_model, "service"),
                                      json={"model": "fraud", "event": event, "explain": True})
                assert r.status_code == 200, r.text
                answers.append(r.json())
            await service.flush()
            for label in (True, False):  # a chargeback, then reversed
                r = await client.post("/v1/feedback", headers=auth(fraud_model, "service"),
                                      json={"event_id": mine["event_id"], "label": label, "source": "chargeback"})
                assert r.status_code in (200, 201), r.text
        conn = await db.connect(fraud_model.dsn)
        try:
            async with conn.transaction():
                report = await explain_prediction(conn, fraud_model.settings, ADMIN, answers[1]["prediction_id"])
                return report, await export_subject(conn, ADMIN, a, fraud_model.settings)
        finally:
            await conn.close()

    report, bundle = asyncio.run(build())
    return SimpleNamespace(event=mine, report=report, bundle=bundle)


def test_an_export_and_a_report_show_nothing_of_another_persons_payments(shared_card):
    """The prediction's card and terminal features count the other customer's payment: the export carried
    them whole (card_max_amount_1d 1000.0, card_sum_amount_1d 1012.0) and the report printed "Largest amount
    for the card in the last day (1,000)". The export now leaves their values out and names them; the report
    shows them as ranges of the training data."""
    bundle, report = shared_card.bundle, shared_card.report
    (p,) = bundle["predictions"]
    assert p["features"]["amount"] == 12.0 and p["features"]["customer_sum_amount_1d"] == 12.0  # theirs: exact
    assert not any(k.startswith(("card_", "terminal_")) for k in p["features"])
    assert {"card_max_amount_1d", "card_sum_amount_1d", "terminal_mean_amount_1d"} <= set(p["features_withheld"])
    assert bundle["withheld"]["prediction_features"] == len(p["features_withheld"])
    for reason in p["reasons"]:
        if reason["feature"].startswith(("card_", "terminal_")):
            assert reason["value"] is None and "withheld" in reason["text"], reason
    text = json.dumps(p)
    assert not any(v in text for v in ("1000.0", "1012.0", "506.0", "1,000", "1,012")), text

    shared = [f for f in report["factors"] if f["feature"].startswith(("card_", "terminal_"))]
    assert shared, report["factors"]
    for f in shared:  # a range of the training data, never the other customer's sums
        assert not isinstance(f["value"], float) and f["exact"] is False, f
        assert not any(v in f["text"] for v in ("(1,000)", "(1,012)", "(506)")), f["text"]
    own = [f for f in report["factors"] if f["feature"] == "amount"]
    assert all(f["value"] == 12.0 and "exact" not in f for f in own)


def test_an_export_holds_every_value_each_label_had(shared_card):
    """The label history (sql/029) was left out: a chargeback reversed showed only its last word."""
    history = [(h["event_id"], h["label"]) for h in shared_card.bundle["label_history"]]
    assert history == [(shared_card.event["event_id"], True), (shared_card.event["event_id"], False)]
    assert shared_card.bundle["counts"]["label_history"] == 2
