"""Explanation reports: one decision, for the person it was about, a support agent or a compliance officer.

``sira explain --prediction ID`` and ``GET /v1/predictions/{id}/explanation``. From the stored prediction
(the features it was scored with, its score and decision) and the version's verified artifact, the report
gives: the decision and when; the model's purpose and version; every factor that moved the score, in plain
language, ranked by its exact TreeSHAP contribution (LightGBM ``pred_contrib``, the same numbers the
answer's reasons come from), with its direction and the person's value against the typical range of the
training data (quantiles of the reference the version was trained on, never another person's row); the
categories of data used; whether a person reviewed the decision and how to ask for one; the thresholds of
the set that decided it (:mod:`sira.registry.thresholds`); for a review or block, the smallest change in
what the person controls that would have changed it, verified by re-scoring (:mod:`counterfactual`). The
same prediction gives the same report (its ``report_id`` is a hash of everything but the issue time). Each report
issued is recorded in the audit log. An analyst reads it whole; a ``service`` key (the product that shows
it to its customer) gets the plain-language summary only.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np
from asyncpg import Connection

from sira.core import audit
from sira.core.artifacts import ArtifactRef, load_manifest
from sira.core.auth import Identity, authorize, may
from sira.core.errors import InvalidInput, NotFound, ServiceUnavailable
from sira.monitoring import counterfactual
from sira.registry.models import get_model, get_version
from sira.serving.scoring import (
    ModelRuntime,
    describe,
    display_value,
    middle_half,
    reference_bins,
    value_side,
    yes_no_share,
)

PURPOSES = {"fraud_detection": "estimates the probability that a payment is fraudulent, so that it is approved, "
                               "sent to a person for review, or blocked",
            "churn": "estimates the probability that a customer will leave",
            "anomaly": "flags unusual activity for a person to look at"}
REVIEW_SOURCES = ("review", "analyst", "manual_review")


TYPICAL_FEW_ROWS, TYPICAL_FEW_SHARE = 10, 0.01  # rows beyond a range's bound that would make it tell theirs


def _typical(reference: dict[str, Any] | None) -> str | None:
    """The middle half of the training data (numeric: from the lower edge of the reference's bin that holds its
    25th percentile to the upper edge of the one that holds its 75th: a range that holds the middle half;
    open above, "X or more", when that edge would be the training maximum) or its most common values
    (categorical)."""
    if not reference:
        return None
    if reference.get("type") == "categorical":
        common = sorted((reference.get("frequencies") or {}).items(), key=lambda kv: -kv[1])[:3]
        return ", ".join(f"{c} ({f:.0%})" for c, f in common) or None
    bins = reference_bins(reference)
    if bins is None:
        return None
    edges, counts = bins
    mean = yes_no_share(reference, edges)
    if mean is not None:
        # a yes/no feature (a country new for the customer): its range read "0.00 or more", as if a person's 1
        # were typical
        usual, other, share = ("no", "yes", mean) if mean < 0.5 else ("yes", "no", 1 - mean)
        return f"{usual} ({other} in {f'{share:.0%}' if share >= 0.005 else 'under 1%'} of the training data)"
    # the bins holding the 25th and 75th percentiles (as middle_half), from their counts: bins are not of equal
    # share (a value many rows share is a bin of its own, sira.core.stats.reference_bin_edges)
    share = np.cumsum(counts) / sum(counts)
    bottom, top = int(np.searchsorted(share, 0.25)), int(np.searchsorted(share, 0.75)) + 1
    # An edge is halfway between two training values: one with only a few rows beyond it (a lone maximum
    # or minimum, someone's payment, next to a value many rows share) would tell that row's value, and the
    # last edge is the training maximum: the range is left open there. (The first edge is the minimum, but
    # it bounds the range only when its bin holds a quarter of the rows: a value many rows share.)
    few = max(TYPICAL_FEW_ROWS, TYPICAL_FEW_SHARE * sum(counts))
    open_above = top == len(edges) - 1 or sum(counts[top:]) < few
    open_below = bottom > 0 and sum(counts[:bottom]) < few
    if open_above and open_below:
        return None
    if open_above:
        return f"{_num(edges[bottom])} or more"
    if open_below:
        return f"{_num(edges[top])} or less"
    return f"{_num(edges[bottom])} to {_num(edges[top])}"


def _num(value: float) -> str:
    return f"{value:,.2f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"


def factor(spec: Any, x: float, contribution: float, reference: dict[str, Any] | None, *,
           others: bool = False) -> dict[str, Any]:
    """One factor of a report: its words follow where its value lies against the typical range (a high
    count is "many payments", a low one "few", one within the range or against no range in neutral
    words), never the factor's direction: a small amount that raised the risk is still a small amount.
    ``others``: a feature whose value counts other people's payments too (:func:`others_features`): its
    value is shown only as the range of the training data's reference bins that holds it."""
    value = display_value(spec, x)
    shown = value
    if others and value is not None:
        shown = value_range(reference, value) or NOT_SHOWN
    return {"feature": spec.name, "value": shown, "contribution": contribution,
            "direction": "increases_risk" if contribution > 0 else "decreases_risk",
            "text": describe(spec.name, shown, value_side(middle_half(reference), value)),
            "typical": _typical(reference), **({"exact": False} if shown is not value else {})}


OWN_ENTITY = "customer"  # the entity that is the person a decision is about: its history is theirs alone
NOT_SHOWN = "not shown: other people's payments count in it"


def others_features(runtime: ModelRuntime) -> frozenset[str]:
    """The features whose values may count other people's payments: every entity's but the customer's (a card
    or a device may be shared, a terminal or a merchant always is). A report shows them as ranges only."""
    fs = runtime.feature_set
    if fs is None:
        return frozenset()
    return frozenset(n for spec in fs.entities if spec.entity != OWN_ENTITY for n in spec.names())


def value_range(reference: dict[str, Any] | None, value: Any) -> str | None:
    """The range of the training data's reference bins (about ten, of equal share) that holds ``value``, in
    words: "X to Y", open at the first and last bins ("X or less", "X or more": their outer edges are the
    training minimum and maximum, one row's value); None without usable statistics."""
    bins = reference_bins(reference)
    if bins is None or not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        return None
    edges = bins[0]
    if len(edges) < 3:  # one bin: its edges are the minimum and the maximum
        return None
    k = min(max(int(np.searchsorted(edges, value, side="right")) - 1, 0), len(edges) - 2)
    if k == len(edges) - 2:
        return f"{_num(edges[k])} or more"
    if k == 0:
        return f"{_num(edges[1])} or less"
    return f"{_num(edges[k])} to {_num(edges[k + 1])}"


def _categories(runtime: ModelRuntime) -> list[str]:
    fs = runtime.feature_set
    if fs is None:
        return ["the columns of the table the model was trained on: " + ", ".join(runtime.names)]
    out = ["this payment's details (" + ", ".join(fs.event_features) + ")"] if fs.event_features else []
    for spec in fs.entities:
        out.append(f"the recent history of the {spec.entity} (counts, amounts and novelty over time windows)")
    return out


async def deciding_set(conn: Connection, set_id: int | None, version_id: int) -> dict[str, Any]:
    """The threshold set that decided a prediction: the one it names, else (stored before threshold sets
    existed, when a version's thresholds never changed) the version's first."""
    found = await conn.fetchrow("SELECT id, revision, review, block FROM sira_threshold_sets WHERE id = $1 "
                                "OR ($1::bigint IS NULL AND version_id = $2 AND revision = 1)", set_id, version_id)
    if found is None:
        raise NotFound("the thresholds that decided this prediction are not recorded", code="unknown_threshold_set")
    return dict(found)


def report_action(identity: Identity) -> str:
    """What an explanation is read as: ``predictions.read`` (the whole report), else ``score`` for a caller that
    may score (a service shows its customer the summary). A caller allowed neither is refused as for
    ``predictions.read``, the report's own permission (not the summary's ``score``). Which key scored a
    prediction is not recorded: a service reads the summary of any prediction whose id it holds, and the id is
    what guards it (random, or keyed by the installation's secret: :func:`sira.serving.idempotency.prediction_namespace`)."""
    return "score" if not may(identity, "predictions.read") and may(identity, "score") else "predictions.read"


AMOUNT_FEATURES = ("amount",)  # the payment's own amount, in its own currency
SHADOW_NOTE = ("This model only scored the payment in shadow, beside the model in production: its score decided "
               "nothing.")


async def explain_prediction(conn: Connection, settings: Any, identity: Identity, prediction_id: str,
                             out: str | None = None) -> dict[str, Any]:
    """The report of one stored prediction (the summary only for a caller that may score but not read
    predictions); ``out``: the file it is written to (``sira explain --out``), kept in the audit entry so a
    later erasure lists it. A shadow prediction is reported as what it is: a score that decided nothing,
    beside the decision production made, with no counterfactual (until 2026-12-07 it read "Decision REVIEW
    ... by fraud v3" where production had approved)."""
    full = may(identity, "predictions.read")
    authorize(identity, report_action(identity))
    try:
        key = uuid.UUID(str(prediction_id))
    except ValueError:
        # as the HTTP API answers a prediction id that is no UUID (GET /v1/predictions/x)
        raise InvalidInput("prediction_id must be a UUID", code="invalid_request",
                           details={"field": "prediction_id"}) from None
    row = await conn.fetchrow(
        """SELECT prediction_id, model_name, version, role, event_id, request_id, features, score, decision,
                  scored_at, threshold_set
             FROM sira_predictions WHERE prediction_id = $1 ORDER BY scored_at DESC LIMIT 1""", key)
    if row is None:
        raise NotFound(f"no stored prediction {key}", code="unknown_prediction",
                       details={"field": "prediction_id", "prediction_id": str(key)})
    model = await get_model(conn, row["model_name"])
    version = dict(await get_version(conn, row["model_name"], row["version"]))
    version["model_name"], version["model_id"] = row["model_name"], model["id"]
    try:
        runtime = await asyncio.to_thread(ModelRuntime.load, settings, version)  # a verified artifact, from disk
        reference = (load_manifest(settings, ArtifactRef(version["artifact_uri"], version["artifact_sha256"]))
                     .get("reference") or {}).get("features") or {}
    except NotFound as exc:
        if exc.code != "artifact_missing":
            raise
        # the server's state, not the caller's mistake, and said without the server's file path (it was a 404
        # artifact_missing naming the path until 2026-12-07)
        raise ServiceUnavailable(f"{row['model_name']} v{row['version']} cannot be loaded on this server (its "
                                 "artifact is missing): the report cannot be computed now", code="model_unavailable",
                                 details={"model": row["model_name"], "version": row["version"]}) from None
    decided_by = await deciding_set(conn, row["threshold_set"], version["id"])
    x = runtime.matrix([row["features"]])
    contributions = runtime.contributions(x)[0]
    thresholds = {"review": decided_by["review"], "block": decided_by["block"]}
    shadow = row["role"] == "shadow"
    stored = await conn.fetchrow("SELECT occurred_at, amount, currency FROM sira_events WHERE event_id = $1",
                                 row["event_id"]) if row["event_id"] else None
    payment = None if stored is None else {"occurred_at": stored["occurred_at"].isoformat(),
                                           "amount": _amount(stored["amount"]), "currency": stored["currency"]}
    if shadow:
        counterfactual = {"available": False, "why": "scored in shadow: the model decided nothing, there is no "
                          "decision to change"}
    else:  # the payment as the first report read it, kept with its counterfactual: the report stays the same
        counterfactual = await _counterfactual(conn, runtime, row, thresholds, payment)
        payment = counterfactual.pop("payment", payment)  # (none kept by a report before 2026-12-07)
    currency = payment["currency"] if payment is not None else None
    factors = []
    others = others_features(runtime)
    for j in np.argsort(-np.abs(contributions[: len(runtime.schema)]), kind="stable").tolist():
        c = float(contributions[j])
        if c == 0.0:
            continue
        spec = runtime.schema[j]
        found = factor(spec, float(x[0, j]), c, reference.get(spec.name), others=spec.name in others)
        if currency and spec.name in AMOUNT_FEATURES and found["text"].endswith(")"):
            found = {**found, "currency": currency, "text": found["text"][:-1] + f" {currency})"}
        factors.append(found)
    reviews = await conn.fetch(
        """SELECT source, label, known_at FROM sira_feedback
            WHERE (prediction_id = $1 OR event_id = $2)
              AND (source = ANY($3::text[]) OR source LIKE 'analyst:%')  -- a person's label (label_source)
            ORDER BY known_at, source, id""",
        key, row["event_id"], list(REVIEW_SOURCES))
    decision = row["decision"]
    summary = {
        "prediction_id": str(key), "decision": None if shadow else decision,
        "decided_at": row["scored_at"].isoformat(),
        "model": row["model_name"], "version": row["version"],
        "purpose": PURPOSES.get(model["model_type"], model["model_type"]),
        **({"scored_in_shadow": True, "note": SHADOW_NOTE, "shadow_decision": decision,
            "production_decision": await _production_decision(conn, row)} if shadow else {}),
        "payment": payment,
        "main_factors": [f["text"] + (" (raised the risk)" if f["direction"] == "increases_risk" else
                                      " (lowered the risk)") for f in factors[:4]],
        "what_would_change_it": _in_words(counterfactual, currency),
        "human_review": {"reviewed": bool(reviews),
                         "how_to_ask": "Ask the company that took the payment for a review by a person, quoting "
                                       f"reference {key}."},
    }
    report: dict[str, Any] = {"summary": summary}
    if full:
        report.update({
            "score": row["score"], "role": row["role"],
            "thresholds": thresholds, "counterfactual": counterfactual,
            "threshold_set": {"id": decided_by["id"], "revision": decided_by["revision"]},
            # as the version was registered with it: the model's own an admin may edit, and the report id
            # hashes it (versions registered before 2026-12-06 have none)
            "description": version["description"],
            "factors": factors, "contribution_unit": "log-odds", "expected_value": float(contributions[-1]),
            "raw_score": float(contributions.sum()),
            "data_categories": _categories(runtime),
            "reviews": [{"source": r["source"], "label": r["label"], "at": r["known_at"].isoformat()} for r in reviews],
        })
    report["report_id"] = hashlib.sha256(json.dumps(report, sort_keys=True, default=str).encode()).hexdigest()[:32]
    report["issued_at"] = datetime.now(timezone.utc).isoformat()
    if out:  # where it was written, for a later erasure to list (the person's id in it not kept)
        from sira.ingest.bulk import redactor_for
        from sira.monitoring.subject import recorded_path

        customer = await conn.fetchval("SELECT customer_id FROM sira_events WHERE event_id = $1", row["event_id"]) \
            if row["event_id"] else None
        out = recorded_path(out, redactor_for(settings), customer)
    await audit.record(conn, identity.actor(), "explanation.issue", target_type="prediction", target_id=str(key),
                       details={"report_id": report["report_id"], "summary_only": not full,
                                **({"out": out} if out else {})})
    return report


def _amount(value: Any) -> float | None:
    return None if value is None else float(value)


async def _production_decision(conn: Connection, row: Any) -> dict[str, Any] | None:
    """What production decided on the payment a shadow prediction scored (its event, else its request id)."""
    found = await conn.fetchrow(
        """SELECT decision, model_name, version FROM sira_predictions
            WHERE role = 'production' AND model_name = $1
              AND (event_id = $2 OR ($2::text IS NULL AND request_id = $3))
            ORDER BY scored_at LIMIT 1""", row["model_name"], row["event_id"], row["request_id"])
    return None if found is None else {"decision": found["decision"], "model": found["model_name"],
                                       "version": found["version"]}


async def _counterfactual(conn: Connection, runtime: ModelRuntime, row: Any, thresholds: dict[str, float],
                          payment: dict[str, Any] | None) -> dict[str, Any]:
    """The decision's counterfactual as its first report gave it, whatever it said (``sira_counterfactuals``),
    else computed and kept: a late event before the payment, or the payment stored after a report, changes
    what a refold of the log gives, never the report (a prediction's threshold set never changes either).
    Kept with it, under ``payment``: the payment's time, amount and currency as that report read them."""
    pinned = await conn.fetchval("SELECT result FROM sira_counterfactuals WHERE prediction_id = $1",
                                 row["prediction_id"])
    if pinned is not None:
        return dict(pinned)
    event = await conn.fetchrow("SELECT * FROM sira_events WHERE event_id = $1", row["event_id"]) \
        if row["event_id"] else None
    if event is None:
        found = {"available": False, "why": "the payment itself was not stored when the decision was first "
                                            "explained (scored without recording)"}
    else:
        found = await counterfactual.find(conn, runtime, dict(event), row["features"], thresholds,
                                          row["decision"])
    # two reports at once: the first stored stands
    await conn.execute("INSERT INTO sira_counterfactuals (prediction_id, result) VALUES ($1, $2)"
                       " ON CONFLICT (prediction_id) DO NOTHING", row["prediction_id"], {**found, "payment": payment})
    return dict(await conn.fetchval("SELECT result FROM sira_counterfactuals WHERE prediction_id = $1",
                                    row["prediction_id"]))


def _in_words(found: dict[str, Any], currency: str | None = None) -> str | None:
    """The counterfactual as the person reads it (amounts in the payment's ``currency``)."""
    if not found.get("available"):
        return None
    change = found["change"]
    if "amount" in change:
        unit = f" {currency}" if currency else ""
        what = (f"the amount had been {_num(change['amount']['to'])}{unit} instead of "
                f"{_num(change['amount']['from'])}{unit}")
    else:
        what = (f"the payment had been made at {change['occurred_at']['to'][11:16]} UTC instead of "
                f"{change['occurred_at']['from'][11:16]}")
    return f"The decision would have been {found['decision']} if {what}, all else the same."


def _when(iso: str) -> str:
    return iso[:19].replace("T", " ") + " UTC"


def _payment_line(s: dict[str, Any]) -> list[str]:
    p = s.get("payment")
    if not p:
        return []
    amount = "" if p["amount"] is None else f" of {_num(p['amount'])}" + (f" {p['currency']}" if p["currency"] else "")
    said = [f"The payment{amount} was made {_when(p['occurred_at'])}."]
    if p["currency"]:
        said.append(f"Amounts are in {p['currency']}, this payment's currency (a history's totals and averages add "
                    "its payments' amounts as they were sent).")
    return [" ".join(said), ""]


def to_markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    at = _when(s["decided_at"])
    if s.get("scored_in_shadow"):
        made = s.get("production_decision")
        lines = [f"# Shadow score, not a decision: payment reference {s['prediction_id']}", "",
                 f"Scored {at} by {s['model']} v{s['version']}, a model that {s['purpose']}. {s['note']} Under its "
                 f"thresholds it would have meant {s['shadow_decision'].upper()}; "
                 + (f"the decision on this payment was {made['decision'].upper()}, by {made['model']} "
                    f"v{made['version']}." if made else "the decision on this payment is not recorded here."), ""]
    else:
        lines = [f"# Decision {s['decision'].upper()}: payment reference {s['prediction_id']}", "",
                 f"Decided {at} by {s['model']} v{s['version']}, a model that {s['purpose']}.", ""]
    lines += _payment_line(s)
    if "score" in report:
        t, ts = report["thresholds"], report["threshold_set"]
        lines += [f"Score {report['score']:.4f}; thresholds: review at {t['review']:.4f} or more, block at "
                  f"{t['block']:.4f} or more (threshold set {ts['id']}, revision {ts['revision']}).", ""]
    lines += ["## Main factors", ""]
    if "factors" in report:
        lines += ["Every factor that moved the score, largest first; each contribution is in log-odds (of the "
                  "model's raw score, before calibration: positive raised the risk, negative lowered it).", ""]
        lines += [f"{i}. {f['text']}: {'raised' if f['direction'] == 'increases_risk' else 'lowered'} the risk "
                  f"({f['contribution']:+.4f})" + (f"; typical: {f['typical']}" if f["typical"] else "")
                  for i, f in enumerate(report["factors"], 1)]
        lines += ["", "## Data used", ""] + [f"- {c}" for c in report["data_categories"]]
    else:
        lines += [f"- {t}" for t in s["main_factors"]]
    if s.get("what_would_change_it"):
        lines += ["", "## What would have changed it", "", s["what_would_change_it"]]
    review = s["human_review"]
    lines += ["", "## Review by a person", "",
              ("A person has reviewed this decision." if review["reviewed"] else "No person has reviewed this "
               "decision yet.") + " " + review["how_to_ask"], "", f"Report {report['report_id']}."]
    return "\n".join(lines) + "\n"


def to_html(report: dict[str, Any]) -> str:
    """The Markdown's content as a standalone page, every value escaped."""
    body = []
    for line in to_markdown(report).splitlines():
        text = html.escape(line)
        if line.startswith("# "):
            body.append(f"<h1>{text[2:]}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{text[3:]}</h2>")
        elif line:
            body.append(f"<p>{text}</p>")
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Decision explanation</title>"
            "</head><body>" + "".join(body) + "</body></html>\n")
