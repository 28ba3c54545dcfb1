"""Threshold what-if: what other review and block thresholds would have done on a labelled window.

On the production answers of a model version whose labels have matured (the stored predictions and the
labels known now, by the same rule as live performance), for each candidate threshold ``t`` (a score at
or above it is flagged): the share of traffic flagged, precision and recall, the fraud amount caught and
its share, false alarms, and the cost of both kinds of error at the model's cost settings. Candidates are
the version's thresholds, the thresholds the model's decision targets would choose on this window, and a
grid of flag rates. Read-only; :func:`apply` asks for a change (a threshold set, governed as a promotion
is: :mod:`sira.registry.thresholds`) with the what-if at the new values as its evidence.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
from asyncpg import Connection

from sira.core.auth import Identity, authorize
from sira.core.errors import InvalidInput, NoProductionVersion, inverted_window
from sira.monitoring.performance import PREDICTIONS_SQL, default_range, newest_predictions
from sira.registry import models as registry
from sira.registry import thresholds as threshold_sets
from sira.registry.targets import DecisionTargets
from sira.training.evaluation import choose_thresholds
from sira.training.windows import Windows, label_rule

DEFAULT_DAYS = 28  # days of the what-if's window when none are given (days counts back from its end)
FLAG_RATES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)

# Per version, its production answers that have a usable label (the rule of :func:`label_rule`, in SQL): how
# many, how many fraud, and the span of their events; $7 is the label maturity's bound (mature_until).
LABELLED_BY_VERSION_SQL = f"""
SELECT version, count(*) FILTER (WHERE positive_known_at IS NOT NULL) AS positives,
       count(*) FILTER (WHERE positive_known_at IS NOT NULL OR occurred_at <= $7 OR negative_known) AS labelled,
       min(occurred_at) FILTER (WHERE positive_known_at IS NOT NULL OR occurred_at <= $7 OR negative_known) AS first,
       max(occurred_at) FILTER (WHERE positive_known_at IS NOT NULL OR occurred_at <= $7 OR negative_known) AS last
  FROM ({PREDICTIONS_SQL}) answers
 WHERE role = 'production'
 GROUP BY version ORDER BY version DESC
"""


UNKNOWN_CURRENCY = "unknown"  # a payment stored without its currency

# The answers of the what-if, with each payment's currency (PREDICTIONS_SQL's, plus the event's currency):
# amounts are totalled per currency, never across (the fraud amount caught summed EUR and JPY until 2026-12-07)
_WITH_CURRENCY = PREDICTIONS_SQL.replace("e.amount::float8 AS amount,", "e.amount::float8 AS amount, e.currency,")
assert _WITH_CURRENCY != PREDICTIONS_SQL, "PREDICTIONS_SQL no longer selects e.amount as written here"


def threshold_rows(y: np.ndarray, p: np.ndarray, amount: np.ndarray, thresholds: list[float],
                   targets: DecisionTargets, currency: np.ndarray | None = None) -> list[dict[str, Any]]:
    """For each threshold, what flagging every score at or above it gives (one sort, cumulative sums). Amounts
    per ``currency`` (each answer's, :data:`UNKNOWN_CURRENCY` without one): ``fraud_amount_caught_by_currency``
    and its share of the window's fraud amount in that currency, what the CLI's table and the page show.
    ``fraud_amount_caught`` and its share: the amount in the window's one currency, null when its fraud is in
    several (a sum of EUR and JPY amounts means nothing)."""
    if currency is None:
        currency = np.full(y.size, UNKNOWN_CURRENCY, dtype=object)
    order = np.argsort(-p, kind="mergesort")
    p_desc, y_desc, amount_desc, currency_desc = p[order], y[order], amount[order], currency[order]
    caught_count = np.cumsum(y_desc)
    codes = sorted(set(currency_desc[y_desc == 1].tolist()))  # the currencies of the fraud
    caught_in = {c: np.cumsum(amount_desc * y_desc * (currency_desc == c)) for c in codes}
    fraud_in = {c: float(caught_in[c][-1]) for c in codes}
    caught_amount = np.cumsum(amount_desc * y_desc)
    n, positives, fraud_amount = y.size, int(y.sum()), float((amount * y).sum())
    rows = []
    for t in sorted(set(thresholds)):
        k = int(np.searchsorted(-p_desc, -t, side="right"))  # scores >= t
        tp = int(caught_count[k - 1]) if k else 0
        fp, missed = k - tp, positives - tp
        by_currency = {c: float(caught_in[c][k - 1]) if k else 0.0 for c in codes}
        shares = {c: by_currency[c] / fraud_in[c] if fraud_in[c] else None for c in codes}
        caught = None if len(codes) > 1 else float(caught_amount[k - 1]) if k else 0.0
        rows.append({
            "threshold": t, "flagged": k, "flag_rate": k / n,
            "precision": tp / k if k else None, "recall": tp / positives if positives else None,
            "fraud_amount_caught": caught,
            "fraud_amount_share": caught / fraud_amount if fraud_amount and caught is not None else None,
            "fraud_amount_caught_by_currency": by_currency, "fraud_amount_share_by_currency": shares,
            "false_alarms": fp, "missed_fraud": missed,
            "false_alarm_cost": fp * targets.cost_false_alarm, "missed_fraud_cost": missed * targets.cost_missed_fraud,
            "total_cost": fp * targets.cost_false_alarm + missed * targets.cost_missed_fraud,
        })
    return rows


def fraud_amounts(y: np.ndarray, amount: np.ndarray, currency: np.ndarray | None) -> dict[str, Any]:
    """The window's fraud amount per currency, and in all (null when its fraud is in several currencies)."""
    fraud = y == 1
    codes = np.full(y.size, UNKNOWN_CURRENCY, dtype=object) if currency is None else currency
    by_currency = {c: float(amount[fraud & (codes == c)].sum()) for c in sorted(set(codes[fraud].tolist()))}
    return {"fraud_amount": None if len(by_currency) > 1 else float((amount * y).sum()),
            "fraud_amount_by_currency": by_currency}


async def labelled_window(conn: Connection, model: str, version: int, lo: datetime, hi: datetime, label_name: str,
                          cutoff: datetime, maturity_days: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, scores, amounts) of the version's production answers in [lo, hi) whose label is usable."""
    return (await labelled_rows(conn, model, version, lo, hi, label_name, cutoff, maturity_days))[:3]


async def labelled_rows(conn: Connection, model: str, version: int, lo: datetime, hi: datetime, label_name: str,
                        cutoff: datetime, maturity_days: float
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`labelled_window`, with each answer's currency (:data:`UNKNOWN_CURRENCY` without one)."""
    rule = Windows(None, None, None, None, cutoff, maturity_days)
    y, p, amount, currency = [], [], [], []
    async with conn.transaction(readonly=True):
        async for row in conn.cursor(_WITH_CURRENCY, model, lo, hi, label_name, cutoff, version, prefetch=10_000):
            if row["role"] != "production":
                continue
            label = label_rule(row["occurred_at"], row["positive_known_at"], row["negative_known"], rule)
            if label is not None:
                y.append(label)
                p.append(row["score"])
                amount.append(row["amount"] or 0.0)
                currency.append(row["currency"] or UNKNOWN_CURRENCY)
    return (np.asarray(y, dtype=np.int8), np.asarray(p, dtype=np.float64), np.asarray(amount, dtype=np.float64),
            np.asarray(currency, dtype=object))


async def what_if(conn: Connection, identity: Identity, model_name: str, *, version: int | None = None,
                  time_from: datetime | None = None, time_to: datetime | None = None, days: int = DEFAULT_DAYS,
                  now: datetime | None = None, also: tuple[float, ...] = ()) -> dict[str, Any]:
    """The what-if table of a version (production's by default) on a labelled window (the last ``days`` of
    matured labels by default); ``also``: more thresholds to evaluate."""
    authorize(identity, "models.read")  # aggregates, as the performance report
    model = await registry.get_model(conn, model_name)
    if version is None:
        version = await conn.fetchval("SELECT version FROM sira_model_versions WHERE model_id = $1 "
                                      "AND status = 'production'", model["id"])
        if version is None:
            raise NoProductionVersion(model_name, "name a version")
    row = await registry.get_version(conn, model_name, version)
    cutoff = now or datetime.now(timezone.utc)
    maturity = float(model["label_maturity_days"])
    # By default the window ends at the version's newest labelled answer, as live performance's does: counted
    # back from now it missed every answer older than the label maturity plus ``days`` (the demo's, after it).
    usable = None
    if time_to is None:
        _, usable = await newest_predictions(conn, model_name, version, model["label_name"], cutoff, maturity,
                                             role="production")
    try:
        if usable is not None and time_from is None:
            lo, hi = default_range(cutoff, maturity, usable, days)
        else:
            hi = time_to or (usable + timedelta(microseconds=1) if usable else cutoff - timedelta(days=maturity))
            lo = time_from or hi - timedelta(days=days)
    except OverflowError:  # a `to` near year 1: the window would start before the calendar
        raise InvalidInput("the window starts before year 1: move to later, or give from",
                           code="invalid_field", details={"field": "to"}) from None
    if hi <= lo:
        raise inverted_window(lo, hi)
    y, p, amount, currency = await labelled_rows(conn, model_name, version, lo, hi, model["label_name"], cutoff,
                                                 maturity)
    if y.size == 0 or y.min() == y.max():
        raise await _no_window(conn, model_name, version, lo, hi, model["label_name"], cutoff, maturity)
    targets = DecisionTargets.from_dict(model["decision_targets"])
    current = {k: float(v) for k, v in row["thresholds"].items()}
    suggested = choose_thresholds(y, p, targets)
    grid = [float(np.quantile(p, 1 - r)) for r in FLAG_RATES]
    rows = threshold_rows(y, p, amount, [*current.values(), *suggested.values(), *grid, *also], targets, currency)
    # a window past the label maturity counts the young events' chargebacks and leaves their legitimate
    # neighbours out: precision and recall read high, and approvers took it as evidence unwarned
    mature_until = cutoff - timedelta(days=maturity)
    return {"model": model_name, "version": version, "window": {"from": lo.isoformat(), "to": hi.isoformat()},
            "provisional": hi > mature_until, "mature_until": mature_until.isoformat(),
            # fraud_amount: the window's fraud amount in its one currency, null when in several (per currency:
            # fraud_amount_by_currency, and each row's fraud_amount_caught_by_currency)
            "labelled": int(y.size), "positives": int(y.sum()), **fraud_amounts(y, amount, currency),
            "targets": targets.__dict__, "current": current, "meets_targets": suggested,
            "thresholds": rows}


async def _no_window(conn: Connection, model_name: str, version: int, lo: datetime, hi: datetime, label_name: str,
                     cutoff: datetime, maturity: float) -> InvalidInput:
    """The ``empty_window`` refusal, saying what would work: the window where the version's labelled answers
    are, or else the versions whose labelled answers hold both classes (a version freshly in production has
    few: the demo's v2 had 7, none fraud)."""
    mature_until = cutoff - timedelta(days=maturity)
    rows = {r["version"]: r for r in await conn.fetch(
        LABELLED_BY_VERSION_SQL, model_name, datetime(1, 1, 2, tzinfo=timezone.utc),
        datetime(9999, 12, 30, tzinfo=timezone.utc), label_name, cutoff, None, mature_until)}
    both = {v: r for v, r in rows.items() if 0 < r["positives"] < r["labelled"]}

    def span(r: Any) -> str:
        return f"between {r['first']:%Y-%m-%d} and {r['last']:%Y-%m-%d}"

    # what the caller may change, named as the HTTP API's parameters and the CLI's options are (from, version)
    details: dict[str, Any] = {"model": model_name, "version": version,
                               "window": {"from": lo.isoformat(), "to": hi.isoformat()}}
    if version in both:
        r = both[version]
        since, until = f"{r['first']:%Y-%m-%d}", f"{r['last'] + timedelta(days=1):%Y-%m-%d}"
        return InvalidInput(
            f"{model_name} v{version} has no labelled answers of both classes between {lo:%Y-%m-%d} and "
            f"{hi:%Y-%m-%d}; its {r['labelled']:,} ({r['positives']:,} fraud) are {span(r)}: from {since} to {until}",
            code="empty_window", details={"field": "from", **details, "suggested": {"from": since, "to": until}})
    mine = rows.get(version)
    said = (f"{model_name} v{version} has {mine['labelled']:,} labelled answers, {mine['positives']:,} of them fraud"
            if mine is not None and mine["labelled"] else f"{model_name} v{version} has no labelled answers")
    others = [f"v{v} has {r['labelled']:,} ({r['positives']:,} fraud) {span(r)}: version {v}"
              for v, r in both.items()][:3]
    return InvalidInput(f"{said}: both classes are needed; " + ("; ".join(others) if others else
                        "no version of the model has labelled answers of both classes yet: wait for labels or "
                        "import them"), code="empty_window",
                        details={"field": "version" if others else "from", **details, "versions": list(both)[:3]})


async def apply(conn: Connection, identity: Identity, model_name: str, version: int, *, review: float, block: float,
                reason: str, time_from: datetime | None = None, time_to: datetime | None = None,
                days: int = DEFAULT_DAYS,
                now: datetime | None = None) -> dict[str, Any]:
    """Ask for ``review``/``block`` on a version: a pending threshold set whose evidence is what these values,
    and the current ones, did on the labelled window (none when the window has no labelled answers of both
    classes: the approvers are told so)."""
    authorize(identity, "promotion.request")
    r, b = threshold_sets.check_values(review, block)
    try:
        table = await what_if(conn, identity, model_name, version=version, time_from=time_from, time_to=time_to,
                              days=days, now=now, also=(r, b))
    except InvalidInput as exc:
        if exc.code != "empty_window":
            raise
        evidence: dict[str, Any] = {"window": None, "note": exc.message}
    else:
        at = {row["threshold"]: row for row in table["thresholds"]}
        evidence = {"window": table["window"], "provisional": table["provisional"], "labelled": table["labelled"],
                    "positives": table["positives"],
                    "requested": {"review": at[r], "block": at[b]},
                    "current": {k: at[v] for k, v in table["current"].items()}, "meets_targets": table["meets_targets"]}
    return await threshold_sets.request_change(conn, identity, model_name, version, review=r, block=b, reason=reason,
                                               evidence=evidence) | {"evidence": evidence}


def caught_in_words(row: dict[str, Any]) -> str:
    """A row's fraud amount caught, per currency with its share of the window's fraud in that currency
    ("1,234 EUR (40%), 500 USD (20%)"); a currency unknown (payments stored without one) is not named."""
    by = row.get("fraud_amount_caught_by_currency")
    if by is None:  # a what-if stored before 2026-12-07 (a threshold set's evidence)
        return f"{row['fraud_amount_caught'] or 0:,.0f} ({(row['fraud_amount_share'] or 0):.0%})"
    shares = row.get("fraud_amount_share_by_currency") or {}
    return ", ".join(f"{v:,.0f}{'' if c == UNKNOWN_CURRENCY else ' ' + c} ({(shares.get(c) or 0):.0%})"
                     for c, v in sorted(by.items())) or "0"


def to_html(result: dict[str, Any]) -> str:
    """The what-if as a standalone page: precision, recall and flag rate against the threshold (an inline SVG:
    no script, no request), the current and target thresholds marked, and the table."""
    import html

    rows = sorted(result["thresholds"], key=lambda r: r["threshold"])
    width, height, pad = 640, 300, 40

    def x(t: float) -> float:
        return pad + t * (width - 2 * pad)

    def y(v: float) -> float:
        return height - pad - v * (height - 2 * pad)

    lines = []
    for key, colour, label in (("precision", "#1c7ed6", "precision"), ("recall", "#e8590c", "recall"),
                               ("flag_rate", "#2f9e44", "share flagged")):
        points = " ".join(f"{x(r['threshold']):.1f},{y(r[key]):.1f}" for r in rows if r[key] is not None)
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>'
                     f'<text x="{width - pad + 4}" y="{y(next((r[key] for r in reversed(rows) if r[key] is not None), 0)):.1f}"'
                     f' font-size="11" fill="{colour}">{label}</text>')
    marks = [(v, f"current {k}", "#495057") for k, v in result["current"].items()]
    marks += [(v, f"targets: {k}", "#9c36b5") for k, v in result["meets_targets"].items()]
    for n, (value, label, colour) in enumerate(marks):
        lines.append(f'<line x1="{x(value):.1f}" x2="{x(value):.1f}" y1="{pad}" y2="{height - pad}" stroke="{colour}"'
                     f' stroke-dasharray="4 3"/><text x="{x(value) + 3:.1f}" y="{pad + 12 + 12 * n}" font-size="10"'
                     f' fill="{colour}">{html.escape(label)} {value:.3f}</text>')
    axes = (f'<line x1="{pad}" x2="{width - pad}" y1="{height - pad}" y2="{height - pad}" stroke="#868e96"/>'
            f'<line x1="{pad}" x2="{pad}" y1="{pad}" y2="{height - pad}" stroke="#868e96"/>'
            + "".join(f'<text x="{x(t):.1f}" y="{height - pad + 14}" font-size="10" text-anchor="middle">{t:.1f}</text>'
                      for t in (0, 0.2, 0.4, 0.6, 0.8, 1.0))
            + f'<text x="{width / 2}" y="{height - 6}" font-size="11" text-anchor="middle">threshold (score)</text>')
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="precision, recall and share flagged by threshold">{axes}{"".join(lines)}</svg>')

    def cell(v: Any, digits: int = 3) -> str:
        return "" if v is None else html.escape(f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}")

    table = "".join(
        f"<tr><td>{cell(r['threshold'], 4)}</td><td>{cell(r['flag_rate'] * 100, 2)}%</td><td>{cell(r['precision'])}</td>"
        f"<td>{cell(r['recall'])}</td><td>{html.escape(caught_in_words(r))}</td><td>{cell(r['false_alarms'])}</td>"
        f"<td>{cell(r['total_cost'], 0)}</td></tr>" for r in rows)
    title = html.escape(f"{result['model']} v{result['version']}: thresholds on {result['labelled']:,} labelled answers "
                        f"({result['positives']:,} fraud), {result['window']['from'][:10]} to {result['window']['to'][:10]}")
    warning = (f"<p><strong>Provisional:</strong> the window ends after {html.escape(result['mature_until'][:16])}, "
               "the label maturity: its young payments' chargebacks count and their legitimate neighbours are left "
               "out, so precision and recall read high.</p>" if result.get("provisional") else "")
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Threshold what-if</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:2px 8px;"
            "border-bottom:1px solid #dee2e6;text-align:right}</style></head><body>"
            f"<h1>{title}</h1>{warning}{svg}<table><thead><tr><th>threshold</th><th>flagged</th><th>precision</th>"
            "<th>recall</th><th>fraud amount caught</th><th>false alarms</th><th>total cost</th></tr></thead>"
            f"<tbody>{table}</tbody></table></body></html>\n")
