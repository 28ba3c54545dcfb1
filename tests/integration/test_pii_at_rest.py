"""PII goes in through every write path (events, labels, governance text); no table, file or log holds it in
the clear."""

import asyncio
import glob
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sira.core import db
from sira.core.artifacts import save_artifact
from sira.core.auth import Identity, create_key
from sira.features.definitions import PAYMENTS_V1
from sira.features.store import materialize
from sira.ingest.bulk import ingest_files, ingest_records, redactor_for
from sira.ingest.labels import record_labels
from sira.registry import models as registry

PANS = ["4111111111111111", "5555555555554444", "378282246310005"]
EMAILS = ["jane.doe@example.com", "bob+fraud@example.org"]
ACCENTED_EMAIL = "núñez.josé@example.es"  # a local part beyond ASCII
PHONES = ["+221771234567", "+33 6 12 34 56 78"]
IPS = ["198.51.100.23", "2001:db8::1"]
NAMES = ["Jane Q. Cardholder"]
# one-word values no pattern finds, known only by their field's name (the CVV's key must not be stored either)
BY_NAME = {"card_cvv": "7391", "nameOnCard": "Zebediah", "taxId": "123-45-6789", "account_number": "00012345678"}
# payment identifiers: IBANs (found by value), bank, address and national-id fields (by name), track data
IBAN, IBAN_PRINTED, IBAN_DE = "GB82WEST12345698765432", "GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"
TRACK2, TRACK1 = ";4111111111111111=29121010000000000000?", "%B5555555555554444^ZEBEDIAH/Q^29121010000000000000000?"
BANKING = {"payee_account": "00734519", "sort_code": "60-16-13", "social": "078051120", "billing_zip": "SW1A 2AA",
           "home_city": "Ouagadougou", "latitude": "12.3714277", "card_exp": "12/29", "track2": TRACK2}
SECRETS = [*PANS, "4111 1111 1111 1111", *EMAILS, ACCENTED_EMAIL, "núñez", *PHONES, *IPS, *NAMES,
           *list(BY_NAME.values())[1:], "card_cvv", IBAN, IBAN.lower(), IBAN_PRINTED, IBAN_DE, "WEST1234",
           "29121010000000000000", "ZEBEDIAH/Q", *list(BANKING.values())[:-2]]


def pii_events(prefix):
    out = []
    for i in range(12):
        out.append({
            "event_id": f"{prefix}-{i}" if i % 4 else f"{prefix}-order-{PANS[0]}-{i}",
            "occurred_at": f"2026-09-0{1 + i % 9}T1{i % 10}:00:00Z",
            "customer_id": EMAILS[i % 2] if i % 3 == 0 else ACCENTED_EMAIL if i % 3 == 2 else "cust-1",
            "card_number": PANS[i % 3], "terminal_id": f"t{i % 2}", "amount": 10.0 + i,
            "email": EMAILS[i % 2], "phone": PHONES[i % 2], "ip_address": IPS[i % 2],
            "cardholder_name": NAMES[0], "device_id": f"device-of-{EMAILS[0]}",
            "note": f"customer {NAMES[0]} paid with {PANS[1][:4]} {PANS[1][4:8]} {PANS[1][8:12]} {PANS[1][12:]}",
            **BY_NAME, "channel": NAMES[0] if i % 2 else "web", f"{NAMES[0]} lives at 5 Elm St": i,  # free text
            **BANKING, "ref": IBAN.lower(), "memo": f"refund to {IBAN_PRINTED}", "swipe": TRACK1 if i % 2 else TRACK2,
            "refs": [IBAN_DE, {"deep": [TRACK2]}],
        })
        if i % 5 == 0:  # a source that sends the card number as its card token
            out[-1]["card_token"] = out[-1].pop("card_number")
        if i % 4 == 1:  # an IBAN in the ids
            out[-1].update(event_id=f"{prefix}-pay-{IBAN}-{i}", customer_id=IBAN_DE, terminal_id=f"t/{IBAN}")
        if i == 3:
            out[-1]["card_token"] = IBAN
    out.append({"event_id": f"{prefix}-bad", "email": EMAILS[0], "card_number": PANS[2], "amount": "n/a",
                "phone": PHONES[0], "customer_id": IBAN, "memo": TRACK2})  # rejected: stored, redacted
    return out


async def dump_all_tables(pool) -> str:
    names = await pool.fetch(
        "SELECT relname FROM pg_class WHERE relname LIKE 'sira\\_%' AND relkind IN ('r', 'p') AND NOT relispartition"
    )
    parts = []
    for r in names:
        parts.append(await pool.fetchval(f'SELECT coalesce(string_agg(t::text, E\'\\n\'), \'\') FROM "{r["relname"]}" t'))
    return "\n".join(parts)


def pg_dump(settings) -> str:
    """The whole test database as ``pg_dump`` writes it: every table, partition and column."""
    binary = shutil.which("pg_dump") or max(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"), default=None)
    if binary is None:
        pytest.skip("pg_dump not found: install the postgresql-client package")
    done = subprocess.run([binary, "--no-owner", settings.database_url.get_secret_value()], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def ray_logs() -> str:
    folder = Path("/tmp/ray/session_latest/logs")
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file()) if folder.exists() else ""


def files_under(folder: Path) -> str:
    """Every file below ``folder`` (spool, logs, reports, artifacts), decoded leniently."""
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file())


async def test_no_raw_pii_in_any_table_or_log(clean_db, ray_session, settings, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    rows = pii_events("file")
    # Parquet types its columns: amounts are numbers (the bad row's "n/a" is left out), the rest text
    typed = [{k: (v if isinstance(v, float) else None) if k == "amount" else str(v) for k, v in r.items()}
             for r in rows]
    pq.write_table(pa.Table.from_pylist(typed), tmp_path / "pii.parquet")
    file_summary = await asyncio.to_thread(ingest_files, settings, [tmp_path / "pii.parquet"], feature_sets=[PAYMENTS_V1],
                                           progress=True)
    api_summary = await ingest_records(clean_db, pii_events("api"), redactor=redactor_for(settings),
                                       feature_sets=[PAYMENTS_V1], source="api")
    assert file_summary.accepted == api_summary.accepted == 12
    assert file_summary.rejected == api_summary.rejected == 1
    async with clean_db.acquire() as conn:
        await record_labels(conn, [{"event_id": f"api-order-{PANS[0]}-0", "label": True,
                                    "known_at": "2026-09-20T00:00:00Z", "note": EMAILS[1]},
                                   {"event_id": EMAILS[0], "label": "??", "known_at": "2026-09-20"}],
                            redactor=redactor_for(settings))
        await materialize(conn, PAYMENTS_V1)

    everything = await dump_all_tables(clean_db)
    assert "tok_pan_" in everything and "tok_email_" in everything  # tokens are there...
    assert "-pay-tok_iban_" in everything and "t/tok_iban_" in everything  # IBANs in ids: tokens, the rest kept
    leaks = [s for s in SECRETS if s in everything]
    assert not leaks, f"raw PII at rest: {leaks}"  # ...the values are not
    dump = await asyncio.to_thread(pg_dump, settings)
    assert "tok_pan_" in dump
    leaks = [s for s in SECRETS if s in dump]
    assert not leaks, f"raw PII in pg_dump: {leaks}"

    out, err = capfd.readouterr()
    for where, text in (("log records", caplog.text), ("stdout/stderr", out + err), ("ray logs", ray_logs())):
        leaks = [s for s in SECRETS if s in text]
        assert not leaks, f"raw PII in {where}: {leaks}"


# -- governance text and label sources ---------------------------------------------------------------

GOV_EMAIL, GOV_PAN, GOV_PHONE, GOV_IP = "dana.owner@example.net", "6011111111111117", "+44 20 7946 0958", "192.0.2.44"
GOV_IBAN = "FR1420041010050500013M02606"
GOV_SECRETS = [GOV_EMAIL, GOV_PAN, GOV_PHONE, GOV_IP, GOV_IBAN]
ROOT = Identity("root", frozenset({"admin"}))


def prose(where: str) -> str:
    return f"{where}: write to {GOV_EMAIL} or call {GOV_PHONE}; card {GOV_PAN} seen from {GOV_IP}, paid to {GOV_IBAN}"


async def add_version(pool, settings, model: str, version: int) -> None:
    ref = save_artifact(settings, f"{model}/runs/v{version}", {"model.txt": f"tree {version}\n".encode()},
                        {"format": "sira-model/1"})
    await pool.execute(
        """INSERT INTO sira_model_versions (model_id, version, artifact_uri, artifact_sha256, feature_schema, metrics,
                                            thresholds, created_by)
           SELECT id, $2, $3, $4, $5, $6, $7, 'dana' FROM sira_models WHERE name = $1""",
        model, version, ref.uri, ref.sha256, [{"name": "amount", "type": "numeric"}],
        {"validation": {"average_precision": 0.8}, "test": {"average_precision": 0.7}}, {"review": 0.2, "block": 0.9})


def sira_cli(settings, key: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SIRA_DATABASE_URL": settings.database_url.get_secret_value(),
           "SIRA_WORKSPACE": str(settings.workspace), "SIRA_API_KEY": key}
    done = subprocess.run([sys.executable, "-m", "sira", *args], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return done


async def test_governance_text_and_label_sources_are_stored_redacted(clean_db, settings, tmp_path, caplog, capfd):
    """Every free-text field of every governance and label write path, over HTTP, the CLI and the domain
    functions both use: card numbers, emails, phones and IPs become tokens; the text stays readable."""
    from sira.http.app import create_app
    from sira.serving.config import ServingConfig
    from sira.serving.service import ScoringService

    caplog.set_level(logging.DEBUG)
    pepper = settings.secret("auth_secret")
    keys = {}
    async with db.transaction(clean_db) as conn:
        keys["root"], _ = await create_key(conn, name="root", roles=["admin"], pepper=pepper, creator=None)
        for name, role in (("dana", "data_scientist"), ("ann", "approver"), ("bob", "approver"),
                           ("oli", "operator"), ("svc", "service")):
            keys[name], _ = await create_key(conn, name=name, roles=[role], pepper=pepper, creator=ROOT)

    spool = settings.workspace / "spool-pii-at-rest"
    app = create_app(settings, scoring=ScoringService(settings, ServingConfig(models=["fraud"], spool_dir=spool)))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            async def call(who: str, method: str, path: str, body: dict) -> dict:
                r = await client.request(method, path, json=body, headers={"Authorization": f"Bearer {keys[who]}"})
                assert r.status_code in (200, 201), r.text
                return r.json()

            models = "/v1/models/pii-gov"
            await call("root", "POST", "/v1/models", {"name": "pii-gov", "description": prose("model"),
                                                      "required_approvals": 1})
            await call("root", "PATCH", models, {"description": prose("described")})
            for version in (1, 2, 3):
                await add_version(clean_db, settings, "pii-gov", version)
            await call("dana", "POST", f"{models}/versions/1/promote", {"reason": prose("promote v1")})
            await call("ann", "POST", f"{models}/versions/1/approve", {"comment": prose("approve v1")})
            await call("dana", "POST", f"{models}/versions/2/stage", {"reason": prose("stage v2")})
            await call("dana", "POST", f"{models}/versions/2/promote", {"reason": prose("promote v2")})
            await call("bob", "POST", f"{models}/versions/2/approve", {"comment": prose("approve v2")})
            await call("dana", "POST", f"{models}/versions/3/promote", {"reason": prose("promote v3")})
            await call("ann", "POST", f"{models}/versions/3/reject", {"comment": prose("reject v3")})
            back = await call("oli", "POST", f"{models}/rollback",
                              {"reason": prose("roll back"), "expected_version": 2})
            assert back["production"] == 1
            await call("svc", "POST", "/v1/events", {"source": f"pos {GOV_EMAIL}", "events": [
                {"event_id": "gov-e1", "occurred_at": "2026-09-01T10:00:00Z", "customer_id": "c1",
                 "terminal_id": "t1", "amount": 12.5}]})
            labelled = await call("svc", "POST", "/v1/feedback", {"event_id": "gov-e1", "label": True,
                                                                 "source": f"crm {GOV_EMAIL} {GOV_IP}"})
            assert labelled["status"] == "recorded"
            again = await call("svc", "POST", "/v1/feedback", {"event_id": "gov-e1", "label": True,
                                                              "source": f"crm {GOV_EMAIL} {GOV_IP}"})
            assert again["status"] == "unchanged"  # the resend is recognised by its redacted source
            await call("oli", "POST", "/v1/serving/reload", {"reason": prose("reload")})  # was stored as sent

    async with db.transaction(clean_db) as conn:  # settings with no HTTP route, and a failed run's error
        await registry.update_model(conn, ROOT, "pii-gov", display_name=prose("display"), owner=GOV_EMAIL)
        model = await registry.get_model(conn, "pii-gov")
        run_id = await registry.start_run(conn, model["id"], kind="train", params={}, actor=ROOT.actor(),
                                          code_version=None)
        await registry.fail_run(conn, run_id, error=prose("training failed"), timings={})

    with_source = tmp_path / "with-source.csv"
    with_source.write_text(f"event_id,label,known_at,source\ngov-e1,1,2026-09-20T00:00:00Z,bank {GOV_PHONE}\n")
    without_source = tmp_path / "without-source.csv"
    without_source.write_text("event_id,label,known_at\ngov-e1,0,2026-09-21T00:00:00Z\ngov-e2,maybe,2026-09-21\n")
    cli_output = [sira_cli(settings, keys["svc"], "feedback", "import", str(with_source), "--json"),
                  sira_cli(settings, keys["svc"], "feedback", "import", str(without_source), "--json",
                           "--source", f"desk {GOV_EMAIL} {GOV_PAN}"),
                  sira_cli(settings, keys["oli"], "serve", "reload", "--reason", prose("cli reload"))]
    assert await clean_db.fetchval("SELECT count(*) FROM sira_feedback") == 3
    assert await clean_db.fetchval("SELECT count(*) FROM sira_rejected_events") == 1

    dump = await asyncio.to_thread(pg_dump, settings)
    out, err = capfd.readouterr()
    places = {"pg_dump": dump, "workspace": files_under(settings.workspace), "ray logs": ray_logs(),
              "log records": caplog.text, "stdout/stderr": out + err,
              "cli output": "\n".join(c.stdout + c.stderr for c in cli_output)}
    leaks = {where: [s for s in GOV_SECRETS if s in text] for where, text in places.items()}
    assert not any(leaks.values()), f"raw PII at rest: {leaks}"
    for readable in ("promote v1: write to tok_email_", "roll back: write to tok_email_", "crm tok_email_",
                     "desk tok_email_", "bank tok_phone_", "model: write to", "display: write to", "pos tok_email_",
                     "reload: write to tok_email_", "cli reload: write to tok_email_"):
        assert readable in dump, f"{readable!r} not stored"  # kept, readable, redacted
