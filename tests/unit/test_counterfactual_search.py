"""The counterfactual search's budget: the amounts never use the hours' share, and a search cut short never
claims that nothing changes the decision (nor is kept as the decision's answer)."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np

from sira.monitoring import counterfactual
from sira.monitoring.counterfactual import MAX_TRIES, Scorer, search, settled

NAMES = ["amount", "hour_of_day"]
EVENT = {"event_id": "e-1", "amount": 500.0, "occurred_at": datetime(2026, 10, 10, 14, 30, tzinfo=timezone.utc)}


class Planted(Scorer):
    """A model that blocks unless the payment is made at ``approving_hour`` (None: never)."""

    def __init__(self, approving_hour: int | None) -> None:
        engine = SimpleNamespace(names=NAMES, fs=SimpleNamespace(event_features=tuple(NAMES)))
        super().__init__(runtime=None, refold=SimpleNamespace(engine=engine), thresholds={"review": .5, "block": .5})
        self.approving_hour = approving_hour

    def __call__(self, **changes):
        self.tries += 1
        hour = changes.get("occurred_at", EVENT["occurred_at"]).hour
        vector = np.array([changes.get("amount", EVENT["amount"]), float(hour)])
        return (0.1, "approve", vector) if hour == self.approving_hour else (0.9, "block", vector)


def many_amounts(monkeypatch) -> None:
    """More split crossings of the amount than the whole budget (a big model)."""
    monkeypatch.setattr(counterfactual, "amount_candidates",
                        lambda scorer, amount, base: [round(amount + k * 0.37, 2) for k in range(1, 400)])


def test_an_amount_search_that_uses_the_budget_still_tries_every_hour(monkeypatch):
    many_amounts(monkeypatch)
    found = search(Planted(approving_hour=3), EVENT, {"amount": 500.0, "hour_of_day": 14.0}, "block")
    assert found["available"], found
    assert found["change"]["occurred_at"]["to"][11:13] == "03" and found["tries"] <= MAX_TRIES


def test_a_search_cut_short_does_not_claim_nothing_changes_it_and_is_not_kept(monkeypatch):
    many_amounts(monkeypatch)
    found = search(Planted(approving_hour=None), EVENT, {"amount": 500.0, "hour_of_day": 14.0}, "block")
    assert not found["available"]
    assert "no change of the amount or of the hour alone" not in found["why"] and "budget" in found["why"]
    assert not settled(found)
