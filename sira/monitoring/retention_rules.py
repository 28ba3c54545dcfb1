"""What data retention keeps (:mod:`sira.monitoring.retention`): each step's cut-off from the settings, moved
back by floors (a production or staging version's monitoring window; a model's training, beyond its label
maturity) and by what pending erasures need (their subjects' rows stay until they are erased)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sira.features.definitions import FEATURE_SETS
from sira.monitoring.subject import subject_ref

DAY = timedelta(days=1)
# how far before an event a feature state must have seen events: the longest lookback of any feature set (37 days
# for payments: the terminal's 30-day risk window after its 7-day label delay), and two days for the daily hops
# of the longest windows and the checkpoints' days
LOOKBACK = timedelta(seconds=max(s.lookback_seconds for fs in FEATURE_SETS.values() for s in fs.entities)) + 2 * DAY
TRAINING_DAYS = 60  # events with matured labels kept for a model in use: the least SIRA_RETENTION_EVENTS_DAYS
TIMEOUT_S = 3_600.0  # one step's statement: longer than the pool's command timeout, on a big first run


@dataclass(frozen=True)
class Floor:
    """A production or staging version's monitoring, or a model's training window (``status`` "training",
    ``version`` None: no version, the model's; its label maturity and :data:`TRAINING_DAYS`): its rows from
    ``keeps_from`` on are kept. (A training floor said version 0, which no model has.)"""

    model: str
    version: int | None
    status: str
    keeps_from: datetime


def cutoffs(settings: Any, now: datetime, floors: Sequence[Floor]) -> dict[str, datetime]:
    """Each step's cut-off: rows older are removed (pure; the floors move events, labels and predictions back)."""
    def ago(days: int) -> datetime:
        return now - timedelta(days=days)

    keep = min((f.keeps_from for f in floors), default=now)
    events = min(ago(settings.retention_events_days), keep)
    dead = ago(settings.retention_dead_letters_days)
    return {"events": events, "predictions": min(ago(settings.retention_predictions_days), keep),
            "labels": min(ago(settings.retention_labels_days), keep), "features": events,
            "feature_state": events - LOOKBACK, "retired_feature_sets": ago(settings.retention_retired_feature_sets_days),
            "dead_letters": dead, "request_claims": ago(settings.retention_request_claims_days), "spool": dead,
            "audit_log": ago(settings.retention_audit_log_days)}


async def monitoring_floors(conn: Any, settings: Any, now: datetime) -> list[Floor]:
    """Where each production and staging version's monitoring (performance, drift, the threshold what-if) needs
    rows from: its newest prediction (now, without one) less its model's label maturity and the margin."""
    rows = await conn.fetch(
        """SELECT m.name, v.version, v.status, m.label_maturity_days AS maturity,
                  (SELECT max(p.scored_at) FROM sira_predictions p WHERE p.model_name = m.name AND p.version = v.version)
                  AS newest
             FROM sira_model_versions v JOIN sira_models m ON m.id = v.model_id
            WHERE v.status IN ('production', 'staging') ORDER BY m.name, v.version""")
    floors = [Floor(r["name"], r["version"], r["status"], min(r["newest"] or now, now)
                    - timedelta(days=r["maturity"] + settings.retention_monitoring_days)) for r in rows]
    # training: a model in use (not every version archived) learns from events whose labels matured, older than
    # its label maturity; the events (and their labels) of TRAINING_DAYS beyond it are kept whatever the setting
    # (SIRA_RETENTION_EVENTS_DAYS=60 removed every event a model with a 120-day maturity could train on)
    for r in await conn.fetch(
            """SELECT m.name, m.label_maturity_days AS maturity FROM sira_models m
                WHERE NOT EXISTS (SELECT 1 FROM sira_model_versions v WHERE v.model_id = m.id)
                   OR EXISTS (SELECT 1 FROM sira_model_versions v WHERE v.model_id = m.id AND v.status <> 'archived')
                ORDER BY m.name"""):
        floors.append(Floor(r["name"], None, "training", now - timedelta(days=r["maturity"] + TRAINING_DAYS)))
    return floors


@dataclass
class Held:
    """What pending erasures need kept: their subjects' stored customer ids and those customers' event ids."""

    pending: int = 0
    customers: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {"pending_erasures": self.pending, "customers": len(self.customers), "events": len(self.events)} \
            if self.pending else {}


async def held_for_erasure(conn: Any, secret: str, cut: dict[str, datetime]) -> Held:
    """The customers a pending erasure names, among those whose rows this run would remove: a request names
    its subject by a keyed hash of the id (:func:`sira.monitoring.subject.subject_ref`), so each candidate's
    is computed (a customer id stored as a token, an e-mail address, is not recognised: its raw id is gone)."""
    refs = {r["subject_ref"] for r in await conn.fetch(
        "SELECT subject_ref FROM sira_erasure_requests WHERE status = 'pending'")}
    if not refs:
        return Held()
    rows = await conn.fetch(
        """SELECT DISTINCT customer_id AS c FROM sira_events WHERE occurred_at < $1 AND customer_id IS NOT NULL
           UNION SELECT customer_id FROM sira_rejected_events WHERE rejected_at < $2
           UNION SELECT payload->>'customer_id' FROM sira_rejected_events WHERE rejected_at < $2""",
        max(cut["events"], cut["predictions"]) + DAY, cut["dead_letters"], timeout=TIMEOUT_S)
    customers = sorted(r["c"] for r in rows if isinstance(r["c"], str) and subject_ref(secret, r["c"]) in refs)
    events = [r["event_id"] for r in await conn.fetch(
        "SELECT event_id FROM sira_events WHERE customer_id = ANY($1::text[])", customers)] if customers else []
    return Held(len(refs), customers, events)
