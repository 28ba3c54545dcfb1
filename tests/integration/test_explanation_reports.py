"""Explanation reports and subject exports as the person and the operator read them: a shadow score is not
called a decision, amounts name their currency, the report states its score, thresholds and every factor,
and the files written with --out are the owner's only and recorded for a later erasure. A private database
with the session's model in production and a copy of it in shadow."""

from __future__ import annotations

import asyncio
import json
import stat
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from sira.core import db
from tests.conftest import cli_in_process, private_installation, run_sync, scoring_client

NOW = datetime.now(timezone.utc).replace(microsecond=0)


async def _shadow_copy(inst) -> int:
    """The production version's artifact registered again and staged: serving scores it in shadow."""
    from sira.core.artifacts import ArtifactRef
    from sira.core.auth import Identity
    from sira.registry import models as registry

    admin = Identity("test-admin", frozenset({"admin"}))
    conn = await db.connect(inst.dsn)
    try:
        async with conn.transaction():
            row = await conn.fetchrow("SELECT v.* FROM sira_model_versions v WHERE status = 'production'")
            model = await registry.get_model(conn, "fraud")
            version = await registry.register_candidate(
                conn, model, run_id=None, artifact=ArtifactRef(row["artifact_uri"], row["artifact_sha256"]),
                feature_schema=row["feature_schema"], params=row["params"], metrics=row["metrics"],
                thresholds=row["thresholds"], feature_set_version=row["feature_set_version"], actor=admin.actor())
            await registry.stage_version(conn, inst.settings, admin, "fraud", version, "shadow it")
            return version
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def scored(create_database, fraud_model, tmp_path_factory):
    """One payment in EUR scored by production and in shadow: the installation and both predictions."""
    inst = private_installation(create_database, fraud_model, "sira_explain_reports")
    shadow_version = run_sync(_shadow_copy(inst))
    e = fraud_model.entities[3]
    customer = f"cus-report-{uuid.uuid4().hex[:6]}"
    payment = {"event_id": f"rep-{uuid.uuid4().hex[:8]}", "occurred_at": (NOW - timedelta(minutes=5)).isoformat(),
               "customer_id": customer, "card_token": e["card_token"], "terminal_id": e["terminal_id"],
               "amount": 123.45, "currency": "EUR", "country": e["country"], "channel": e["channel"]}

    async def score() -> dict:
        async with scoring_client(inst, tmp_path_factory.mktemp("spool")) as (client, service):
            for _ in range(200):
                if service.slots["fraud"].shadow is not None:
                    break
                await asyncio.sleep(0.02)
            assert service.slots["fraud"].shadow.version == shadow_version
            r = await client.post("/v1/score", json={"model": "fraud", "request_id": f"rq-{customer}",
                                                     "event": payment},
                                  headers={"Authorization": f"Bearer {inst.keys['service']}"})
            assert r.status_code == 200, r.text
            for _ in range(500):  # the shadow scores after the answer, in a task of its own
                if not service.replica.running("shadow"):
                    break
                await asyncio.sleep(0.01)
            await service.flush()
            return r.json()

    answer = run_sync(score())

    async def rows():
        conn = await db.connect(inst.dsn)
        try:
            return {r["role"]: r for r in await conn.fetch(
                "SELECT role, prediction_id, decision, version FROM sira_predictions WHERE event_id = $1",
                payment["event_id"])}
        finally:
            await conn.close()

    stored = run_sync(rows())
    assert set(stored) == {"production", "shadow"}, stored
    return SimpleNamespace(inst=inst, answer=answer, customer=customer, payment=payment,
                           production=str(stored["production"]["prediction_id"]),
                           production_decision=stored["production"]["decision"],
                           shadow=str(stored["shadow"]["prediction_id"]), shadow_version=shadow_version)


def _env(inst, role: str) -> dict[str, str]:
    return {"SIRA_DATABASE_URL": inst.dsn, "SIRA_WORKSPACE": str(inst.settings.workspace),
            "SIRA_API_KEY": inst.keys[role]}


def _audit(inst, action: str, target: str) -> list[dict]:
    async def fetch():
        conn = await db.connect(inst.dsn)
        try:
            return [json.loads(r[0]) if isinstance(r[0], str) else r[0] for r in await conn.fetch(
                "SELECT details FROM sira_audit_log WHERE action = $1 AND target_id = $2 ORDER BY id", action, target)]
        finally:
            await conn.close()
    return run_sync(fetch())


def test_a_shadow_score_is_explained_as_a_shadow_score_not_a_decision(scored, monkeypatch, capsys, tmp_path):
    """`sira explain --prediction <shadow id>` said "Decision REVIEW … by fraud v3" and offered what would have
    changed it, though the shadow decided nothing and production's answer stood. Now it says it plainly, names
    production's decision, and computes no counterfactual (none is kept for it)."""
    inst = scored.inst
    out = tmp_path / "shadow.md"
    done = cli_in_process(monkeypatch, capsys, _env(inst, "analyst"), "explain", "--prediction", scored.shadow,
                          "--out", str(out))
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert text.startswith("# Shadow score, not a decision: payment reference"), text
    assert "only scored the payment in shadow" in text and "decided nothing" in text
    assert f"the decision on this payment was {scored.production_decision.upper()}" in text
    assert "# Decision" not in text and "What would have changed it" not in text
    page = tmp_path / "shadow.html"
    assert cli_in_process(monkeypatch, capsys, _env(inst, "analyst"), "explain", "--prediction", scored.shadow,
                          "--out", str(page)).returncode == 0
    assert "<h1>Shadow score, not a decision" in page.read_text()
    report = json.loads(cli_in_process(monkeypatch, capsys, _env(inst, "analyst"), "explain", "--prediction",
                                       scored.shadow, "--format", "json").stdout)
    assert report["counterfactual"]["available"] is False and report["role"] == "shadow"

    async def pinned():
        conn = await db.connect(inst.dsn)
        try:
            return await conn.fetchval("SELECT count(*) FROM sira_counterfactuals WHERE prediction_id = $1",
                                       uuid.UUID(scored.shadow))
        finally:
            await conn.close()
    assert run_sync(pinned()) == 0

    async def summary():  # what a service key (the product showing its customer) reads
        async with scoring_client(inst, tmp_path / "spool") as (client, _):
            r = await client.get(f"/v1/predictions/{scored.shadow}/explanation",
                                 headers={"Authorization": f"Bearer {inst.keys['service']}"})
            assert r.status_code == 200, r.text
            return r.json()["summary"]
    s = run_sync(summary())
    assert s["scored_in_shadow"] is True and s["decision"] is None and "decided nothing" in s["note"]
    assert s["production_decision"]["decision"] == scored.production_decision
    assert s["what_would_change_it"] is None


def test_a_report_names_the_currency_and_states_score_thresholds_payment_and_every_factor(scored, monkeypatch,
                                                                                         capsys, tmp_path):
    """Amounts had no currency; the report gave the scoring time only, not the payment's time and amount, nor
    the score and the thresholds it was compared with, did not say contributions are log-odds, and cut the
    factors at 10 where the docs say every factor."""
    from sira.monitoring.explanation import _in_words

    inst = scored.inst
    report = json.loads(cli_in_process(monkeypatch, capsys, _env(inst, "analyst"), "explain", "--prediction",
                                       scored.production, "--format", "json").stdout)
    assert report["summary"]["payment"] == {"occurred_at": scored.payment["occurred_at"], "amount": 123.45,
                                            "currency": "EUR"}
    amount = [f for f in report["factors"] if f["feature"] == "amount"]
    assert not amount or (amount[0]["currency"] == "EUR" and amount[0]["text"].endswith(" EUR)"))
    text = cli_in_process(monkeypatch, capsys, _env(inst, "analyst"), "explain", "--prediction",
                          scored.production).stdout
    assert "The payment of 123.45 EUR was made " + scored.payment["occurred_at"][:19].replace("T", " ") in text
    assert "Amounts are in EUR, this payment's currency" in text
    ts = report["threshold_set"]
    assert f"Score {report['score']:.4f}; thresholds: review at {report['thresholds']['review']:.4f}" in text
    assert f"(threshold set {ts['id']}, revision {ts['revision']})" in text and "log-odds" in text
    listed = [line for line in text.splitlines() if line[:1].isdigit() and ". " in line[:4]]
    assert len(listed) == len(report["factors"]) > 0
    # the counterfactual in words names the payment's currency (amounts from and to)
    words = _in_words({"available": True, "decision": "approve", "change": {"amount": {"from": 120.0, "to": 80.0}}},
                      "EUR")
    assert words == ("The decision would have been approve if the amount had been 80.00 EUR instead of 120.00 EUR, "
                     "all else the same.")


def test_reports_and_exports_written_with_out_are_the_owners_only_and_recorded(scored, monkeypatch, capsys, tmp_path):
    """`sira subject export --out` and `sira explain --out` wrote world-readable files (0644) and the audit
    entries did not say where: an erasure could not list them. 0600 now, the path in the audit entry, and the
    erasure lists both."""
    inst, who = scored.inst, scored.customer
    report, bundle, zipped = (tmp_path / f"report-{who}.md", tmp_path / f"bundle-{who}.json",
                              tmp_path / f"bundle-{who.upper()}.zip")  # named after the person, as people do
    report.write_text("an older report")  # an existing file loses its mode too
    report.chmod(0o644)
    assert cli_in_process(monkeypatch, capsys, _env(inst, "analyst"), "explain", "--prediction", scored.production,
                          "--out", str(report)).returncode == 0
    for out in (bundle, zipped):
        done = cli_in_process(monkeypatch, capsys, _env(inst, "admin"), "subject", "export", "--customer",
                              scored.customer, "--out", str(out))
        assert done.returncode == 0, done.stderr
    for path in (report, bundle, zipped):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert json.loads(bundle.read_text())["counts"]["events"] == 1
    def recorded(path):  # the person's id is not kept in the audit log (append-only), a placeholder instead
        return str(path.resolve().parent / path.name.replace(who, "[customer]").replace(who.upper(), "[customer]"))
    issued = _audit(inst, "explanation.issue", scored.production)
    assert any(d.get("out") == recorded(report) for d in issued) and who not in json.dumps(issued)

    done = cli_in_process(monkeypatch, capsys, _env(inst, "admin"), "subject", "forget", "--customer",
                          scored.customer, "--reason", "the person asked", "--json")
    assert done.returncode == 0, done.stderr
    request = json.loads(done.stdout)["request_id"]
    done = cli_in_process(monkeypatch, capsys, _env(inst, "admin-b"), "subject", "forget", "--customer",
                          scored.customer, "--approve", str(request), "--spool-dir", str(tmp_path / "spool"),
                          "--json")
    assert done.returncode == 0, done.stderr
    files = json.loads(done.stdout)["files"]
    assert {f["path"] for f in files if f["kind"] == "subject_export"} == {recorded(bundle), recorded(zipped)}
    assert recorded(report) in {f.get("path") for f in files if f["kind"] == "explanation_report"}
    assert who not in json.dumps(files)


def test_a_report_whose_artifact_is_missing_is_a_503_without_the_servers_path(scored, tmp_path):
    """`GET …/explanation` of a prediction whose version's artifact is gone answered 404 artifact_missing with
    the server's file path in the message: a server's state, not the caller's mistake, and no path now."""
    from sira.core.artifacts import ArtifactRef
    from sira.core.auth import Identity
    from sira.registry import models as registry
    from sira.serving.records import write_predictions

    inst, gone = scored.inst, tmp_path / "gone-artifact-folder"

    async def plant() -> str:
        conn = await db.connect(inst.dsn)
        try:
            async with conn.transaction():
                model = await registry.get_model(conn, "fraud")
                row = await conn.fetchrow("SELECT * FROM sira_model_versions WHERE status = 'production'")
                version = await registry.register_candidate(
                    conn, model, run_id=None, artifact=ArtifactRef(f"file://{gone}", "1" * 64),
                    feature_schema=row["feature_schema"], params={}, metrics={}, thresholds=row["thresholds"],
                    feature_set_version=row["feature_set_version"],
                    actor=Identity("test-admin", frozenset({"admin"})).actor())
                prediction = str(uuid.uuid4())
                await write_predictions(conn, [{
                    "prediction_id": prediction, "scored_at": NOW.isoformat(), "request_id": None,
                    "model_id": model["id"], "model_name": "fraud", "version": version, "role": "production",
                    "event_id": None, "features": {}, "score": 0.5, "decision": "review", "reasons": [], "flags": {},
                    "degraded": False, "latency_ms": 1.0}])
                return prediction
        finally:
            await conn.close()

    prediction = run_sync(plant())

    async def ask():
        async with scoring_client(inst, tmp_path / "spool") as (client, _):
            return await client.get(f"/v1/predictions/{prediction}/explanation",
                                    headers={"Authorization": f"Bearer {inst.keys['analyst']}"})
    r = run_sync(ask())
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable", r.text
    assert str(gone) not in r.text and "gone-artifact-folder" not in r.text
