"""Subject access: everything SIRA stores about one person, as one bundle (``sira subject export``, admin).

A person is named by the ``customer_id`` their events carry. The bundle holds their events, the events
refused as dead letters, the per-event feature rows and the online feature state of the entities that are
theirs, the predictions made on their events (score, decision, reasons: the stored explanation), the
explanation reports issued about them and the counterfactuals those gave, and the labels recorded for them
with every value each has had (``sira_feedback_history``).
A dead letter that names no customer, only a payment (a label refused, or pending until it expired), is
theirs when the payment is one of theirs, stored or refused. PII stays as SIRA holds it: tokens (keyed HMACs) that SIRA cannot reverse, with
the list of token kinds present, since SIRA never holds the raw values.

Which entities are "theirs": those whose key is one of the person's own identifiers (their customer id,
account, card, device, IP, email and phone tokens) as their events carry them. An identifier that another
customer's events also carry (a shared card or device) is withheld, counted, not exported: its feature
state aggregates someone else's payments too. Terminals and merchants are never the person's. So a
prediction's features of an entity that is not theirs (its terminal's, a shared card's) count other people's
payments: their values, and those of the reasons about them, are left out, and named.

Every export is recorded in the audit log; the subject is named there by a keyed hash of the id, never the
id itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import hmac
import json
import os
import re
import uuid
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from asyncpg import Connection

from sira.core import audit
from sira.core.auth import Identity, authorize
from sira.core.errors import InvalidInput

# the event columns that identify the person or their instruments (tokens where they are PII)
PERSONAL_COLUMNS = ("customer_id", "account_id", "card_token", "device_id", "ip_token", "email_token", "phone_token")
TOKEN_COLUMNS = ("card_token", "device_id", "ip_token", "email_token", "phone_token")
# A person's dead letters: by the customer id each names as sira_events would (sql/021); older rows by a
# payload field literally named customer_id.
REJECTED_OF = "(customer_id = $1 OR payload->>'customer_id' = $1)"
# and those that name no customer, only a payment of theirs: a label refused, or pending until it expired
REJECTED_ABOUT = ("customer_id IS NULL AND payload->>'customer_id' IS NULL AND event_id = ANY($1::text[]) "
                  "AND NOT id = ANY($2::bigint[])")
SECTIONS = ("events", "rejected_events", "features", "feature_snapshots", "entity_states", "state_checkpoints",
            "predictions", "explanations", "counterfactuals", "labels", "label_history")
WITHHELD_VALUE = "withheld: other people's payments count in it"


def subject_ref(secret: str, customer_id: str) -> str:
    """How the audit log names a subject: a keyed hash (the id cannot be read back, but the same id gives the
    same name, so an export and a later erasure are seen together)."""
    digest = hmac.new(secret.encode(), f"subject:{customer_id}".encode(), hashlib.sha256).hexdigest()
    return f"subject-{digest[:32]}"


def _plain(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _rows(records: list[Any]) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in dict(r).items()} for r in records]


async def shared_identifiers(conn: Connection, customer_id: str, events: list[Any]) -> set[tuple[str, str]]:
    """The (column, value) identifiers of the person's events that another customer's events also carry."""
    shared: set[tuple[str, str]] = set()
    for column in PERSONAL_COLUMNS:
        values = {e[column] for e in events if e[column]}
        if column == "customer_id" or not values:
            continue
        others = await conn.fetch(
            f"SELECT DISTINCT {column} AS v FROM sira_events WHERE {column} = ANY($1::text[]) "  # noqa: S608 - a constant
            "AND customer_id IS DISTINCT FROM $2", list(values), customer_id)
        shared |= {(column, r["v"]) for r in others}
    return shared


async def entities_of(conn: Connection, customer_id: str, events: list[Any]) -> tuple[list[tuple[str, str]], int]:
    """The (entity type, entity id) pairs that are the person's, and how many identifiers were withheld as
    shared with another customer."""
    from sira.features.definitions import FEATURE_SETS

    by_column: dict[str, set[str]] = {c: {e[c] for e in events if e[c]} for c in PERSONAL_COLUMNS}
    shared = await shared_identifiers(conn, customer_id, events)
    pairs = set()
    for fs in FEATURE_SETS.values():
        for spec in fs.entities:
            for value in by_column.get(spec.key_column, set()):
                if (spec.key_column, value) not in shared:
                    pairs.add((spec.entity, value))
    return sorted(pairs), len(shared)


async def rejected_of(conn: Connection, customer_id: str, event_ids: list[str]) -> list[Any]:
    """The person's dead letters: those naming them, then those naming only one of their payments (stored,
    or refused: a dead letter naming them)."""
    rows = list(await conn.fetch(f"SELECT * FROM sira_rejected_events WHERE {REJECTED_OF}",  # noqa: S608
                                 customer_id))
    payments = sorted(set(event_ids) | {r["event_id"] for r in rows if r["event_id"]})
    rows += await conn.fetch(f"SELECT * FROM sira_rejected_events WHERE {REJECTED_ABOUT}",  # noqa: S608
                             payments, [r["id"] for r in rows])
    return sorted(rows, key=lambda r: (r["rejected_at"], r["id"]))


def check_customer(customer_id: str) -> None:
    if not customer_id or len(customer_id) > 200 or "\x00" in customer_id:
        raise InvalidInput("--customer must be a customer id of 1 to 200 characters", code="invalid_value",
                           details={"field": "customer"})


def stored_customer(redactor: Any, customer_id: str) -> str:
    """The customer id as SIRA stores it: ingestion scrubs every id (an email, a phone number, a name as an id
    become keyed tokens), so a person is looked up by their id scrubbed with the installation's key."""
    return redactor.scrub_value(customer_id)


async def export_subject(conn: Connection, identity: Identity, customer_id: str, settings: Any,
                         out: str | None = None) -> dict[str, Any]:
    """Everything stored about ``customer_id`` (as the person gives it: looked up as ingestion stored it, scrubbed
    with the installation's key), by section, with counts and the token kinds present; ``out``: the file it is
    written to, kept in the audit entry (a later erasure of the person lists it)."""
    from sira.ingest.bulk import redactor_for

    authorize(identity, "subject.access")
    check_customer(customer_id)
    redactor = redactor_for(settings)
    asked, customer_id = customer_id, stored_customer(redactor, customer_id)
    events = await conn.fetch("SELECT * FROM sira_events WHERE customer_id = $1 ORDER BY occurred_at, seq",
                              customer_id)
    ids = [e["event_id"] for e in events]
    entities, withheld = await entities_of(conn, customer_id, events)
    types, keys = [t for t, _ in entities], [k for _, k in entities]
    owned = "(entity_type, entity_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
    predictions = await conn.fetch("SELECT * FROM sira_predictions WHERE event_id = ANY($1::text[]) "
                                   "ORDER BY scored_at", ids)
    rejected = await rejected_of(conn, customer_id, ids)
    # labels of their payments, stored or refused (a chargeback on a payment SIRA set aside is theirs too)
    labelled = ids + [r["event_id"] for r in rejected if r["event_id"]]
    bundle: dict[str, Any] = {
        "subject": {"customer_id": customer_id, "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                    "exported_by": identity.name},
        "events": _rows(events),
        "rejected_events": _rows(rejected),
        "features": _rows(await conn.fetch(
            f"SELECT * FROM sira_features WHERE event_id = ANY($3::text[]) AND {owned} ORDER BY as_of",  # noqa: S608
            types, keys, ids)),
        "feature_snapshots": _rows(await conn.fetch(
            f"SELECT * FROM sira_feature_snapshots WHERE {owned}", types, keys)),  # noqa: S608 - constant text
        "entity_states": _rows(await conn.fetch(
            f"SELECT * FROM sira_entity_states WHERE {owned}", types, keys)),  # noqa: S608 - constant text
        "state_checkpoints": _rows(await conn.fetch(
            f"SELECT * FROM sira_state_checkpoints WHERE {owned} ORDER BY as_of", types, keys)),  # noqa: S608
        "predictions": _withheld(await _with_reasons(conn, settings, _rows(predictions)), events, entities),
        # the explanation reports issued about their decisions: when, to whom, which report
        "explanations": _rows(await conn.fetch(
            """SELECT target_id AS prediction_id, occurred_at AS issued_at, actor AS issued_to,
                      details->>'report_id' AS report_id, (details->>'summary_only')::boolean AS summary_only
                 FROM sira_audit_log WHERE action = 'explanation.issue' AND target_type = 'prediction'
                  AND target_id = ANY($1::text[]) ORDER BY id""", [str(p["prediction_id"]) for p in predictions])),
        "counterfactuals": _rows(await conn.fetch(
            "SELECT * FROM sira_counterfactuals WHERE prediction_id = ANY($1::uuid[]) ORDER BY computed_at",
            [p["prediction_id"] for p in predictions])),
        "labels": _rows(await conn.fetch(
            "SELECT * FROM sira_feedback WHERE event_id = ANY($1::text[]) OR prediction_id = ANY($2::uuid[]) "
            "ORDER BY id", labelled, [p["prediction_id"] for p in predictions])),
    }
    # every value each label has had and from when (sql/029: a chargeback reversed keeps what it said before)
    bundle["label_history"] = _rows(await conn.fetch(
        "SELECT * FROM sira_feedback_history WHERE event_id = ANY($1::text[]) ORDER BY id",
        sorted(set(labelled) | {r["event_id"] for r in bundle["labels"]})))
    bundle["tokens"] = {
        "note": "PII is held only as keyed tokens (HMAC): SIRA cannot turn them back into the values",
        "kinds": sorted({c for c in TOKEN_COLUMNS for e in events if e[c]}),
    }
    bundle["counts"] = {s: len(bundle[s]) for s in SECTIONS}
    bundle["withheld"] = {"shared_identifiers": withheld,
                          "why": "a card, device, IP, email or phone another customer's events also carry: its feature "
                                 "state aggregates their payments too",
                          "prediction_features": sum(len(p.get("features_withheld", ())) for p in bundle["predictions"]),
                          "prediction_features_why": "a prediction's features of a terminal, a merchant or an identifier "
                                                     "another customer's events also carry count other people's "
                                                     "payments: their values (and their reasons' values) are left out; "
                                                     "the explanation report shows them as ranges"}
    await audit.record(conn, identity.actor(), "subject.export", target_type="subject",
                       target_id=subject_ref(settings.secret("auth_secret"), asked),
                       details={"counts": bundle["counts"],
                                **({"out": recorded_path(out, redactor, asked, customer_id)} if out else {})})
    return bundle


async def _with_reasons(conn: Connection, settings: Any, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Predictions whose reasons serving deferred (an approval's, by default) with them: the exact ones, from
    the stored features and the version that scored them, as ``GET /v1/predictions/{id}`` gives them."""
    import asyncio

    from sira.serving.records import read_version_row
    from sira.serving.scoring import ModelRuntime

    runtimes: dict[tuple[str, int], Any] = {}
    for p in predictions:
        if p["reasons"] or not (p["flags"] or {}).get("reasons_deferred"):
            continue
        key = (p["model_name"], p["version"])
        if key not in runtimes:
            row = await read_version_row(conn, *key)
            runtimes[key] = None if row is None else await asyncio.to_thread(ModelRuntime.load, settings, row)
        runtime = runtimes[key]
        if runtime is not None:
            x = runtime.matrix([p["features"]])
            p["reasons"] = runtime.reasons(x[0], runtime.contributions(x)[0])
            p["reasons_computed_for_export"] = True
    return predictions


def _withheld(predictions: list[dict[str, Any]], events: list[Any], entities: list[tuple[str, str]]
              ) -> list[dict[str, Any]]:
    """Predictions without the values of their features that count other people's payments (each prediction
    names them in ``features_withheld``), and without those values in their reasons: the features of every
    entity of the payment that is not the person's own (:func:`entities_of`: a terminal, a merchant, a card
    or device another customer's events also carry)."""
    from sira.features.definitions import FEATURE_SETS
    from sira.serving.scoring import describe

    owned = set(entities)
    by_event = {e["event_id"]: e for e in events}
    specs = {spec.entity: spec for fs in FEATURE_SETS.values() for spec in fs.entities}
    for p in predictions:
        event = by_event.get(p["event_id"]) or {}
        others = {name for entity, spec in specs.items() if event.get(spec.key_column) is not None
                  and (entity, event[spec.key_column]) not in owned for name in spec.names()}
        features = p.get("features") or {}
        hidden = sorted(others & set(features))
        if not hidden:
            continue
        p["features"] = {k: v for k, v in features.items() if k not in others}
        p["features_withheld"] = hidden
        p["reasons"] = [{**r, "value": None, "text": describe(r["feature"], WITHHELD_VALUE)}
                        if r.get("feature") in others else r for r in p.get("reasons") or []]
    return predictions


CUSTOMER_IN_PATH = "[customer]"


def recorded_path(out: str, redactor: Any, *ids: str | None) -> str:
    """A file's path as the audit log keeps it, which is forever: PII in it redacted (``redactor``: the
    installation's) and the person's id (``ids``: as given and as stored) written :data:`CUSTOMER_IN_PATH`
    (an export named after the customer would have kept their id in the log)."""
    for form in (i for i in ids if i):
        out = re.sub(re.escape(form), CUSTOMER_IN_PATH, out, flags=re.IGNORECASE)
    out = redactor.scrub_text(out)
    for form in (i for i in ids if i):
        out = re.sub(re.escape(form), CUSTOMER_IN_PATH, out, flags=re.IGNORECASE)
    return out


def private_file(out: Path) -> BinaryIO:
    """``out`` opened for writing, readable by its owner only (0600, as artifacts and the workspace's secrets
    are), an existing file's mode included: a subject export or an explanation report holds a person's data
    (they were written 0644, world-readable, until 2026-12-07)."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "wb")


def write_bundle(bundle: dict[str, Any], out: Path) -> Path:
    """The bundle as one JSON file, or (``.zip``) one JSON file per section beside a manifest (0600)."""
    with private_file(out) as fh:
        if out.suffix == ".zip":
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                manifest = {k: v for k, v in bundle.items() if k not in SECTIONS}
                archive.writestr("manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
                for section in SECTIONS:
                    archive.writestr(f"{section}.json", json.dumps(bundle[section], indent=1, sort_keys=True))
        else:
            fh.write((json.dumps(bundle, indent=1, sort_keys=True) + "\n").encode())
    return out
