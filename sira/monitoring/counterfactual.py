"""Counterfactuals: the smallest change in what the person controls that would have changed a decision.

Actionable (:data:`ACTIONABLE`): the payment's amount, and the hour of the same day it was made. Never the
payer's history (counts, sums and novelty over past windows, the risk of past labels), the account's age,
country or card: a person cannot change those for the next payment, and a report that suggests it would
mislead. A changed payment is re-scored the only way SIRA computes features: the event with the change is
folded into its entities' states as of just before it, from the event log (the compiled fold of
:mod:`sira.features.engine`, with the day's checkpoint, exactly as training and serving compute it), and
scored by the version with the threshold set that decided the original. The original event goes through
the same path first: when the log does not reproduce the stored features bit for bit (an entity rebuilt
since, a feature set of the older engine), no counterfactual is claimed.

Where to look comes from the trees: each amount-derived feature (the amount, its log, an entity's sum,
mean or max over a window that includes the payment, the amount ratio) is measured at the paid amount and
one unit more, and each split threshold of the model on it is mapped to the amount at which that feature
crosses it (exact for the amount, its log, sums and means, which move linearly; a first guess for ratios
and maxima). Between two crossings the score cannot change, so the crossings' two sides, nearest first,
are the candidates; the first verified change of decision is then narrowed to the cent by bisection
against the nearest amount that did not change it. Hours are few: each is tried, and a move counts only
when it leaves every history feature as it was (folded at another time, the payment's windows would hold
other past payments: the payer's history would change, which the person cannot do).
"""

from __future__ import annotations

import asyncio
import functools
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from asyncpg import Connection

from sira.features.columns import read_events, read_labels
from sira.features.engine import Engine, EventColumns, engine_of
from sira.features.states import day_of, starting_states
from sira.serving.scoring import ModelRuntime
from sira.training.evaluation import DECISIONS, decide

ACTIONABLE = {"amount": "the payment's amount", "occurred_at": "the hour of the day it was made (the same day)"}
CENT = 0.01
MAX_TRIES = 120  # re-scorings per report, whatever the model's size
HOUR_TRIES = 23  # of which kept for the hours: every other hour of the day is always tried
HOUR_WEIGHT = 12.0  # a shift of 12 hours costs as much as paying nothing: the person's change, as one number


@functools.lru_cache(maxsize=16)
def _split_points(artifact_sha256: str, booster: Any) -> dict[str, list[float]]:
    return split_points(booster)


def split_points(booster: Any) -> dict[str, list[float]]:
    """Every numeric split threshold of the model, per feature name."""
    names = booster.feature_name()
    found: dict[str, set[float]] = {}

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" not in node:
            return
        if node.get("decision_type") == "<=":
            found.setdefault(names[node["split_feature"]], set()).add(float(node["threshold"]))
        walk(node["left_child"])
        walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return {k: sorted(v) for k, v in found.items()}


@dataclass
class Refold:
    """One stored event and, per entity it names, the log up to it (events and labels known by then, whatever
    came later: the same prediction gives the same answer): vectors of changed copies of it."""

    engine: Engine
    event: dict[str, Any]
    histories: dict[str, tuple[EventColumns, Any, dict[str, np.ndarray]]]  # entity -> (events, labels, start)

    @classmethod
    async def load(cls, conn: Connection, engine: Engine, event: dict[str, Any]) -> "Refold":
        t = event["occurred_at"]
        end = t + timedelta(microseconds=1)  # the history as it was when the payment was made: the same report
        histories = {}
        for spec in engine.fs.entities:
            key = event.get(spec.key_column)
            if key is None:
                continue
            keys = {spec.key_column: [key]}
            read_from, start = await starting_states(conn, engine, day_of(t), keys)
            events = await read_events(conn, engine, read_from, end, keys)
            labels = await read_labels(conn, engine, read_from, end, keys)
            histories[spec.entity] = (events, labels, start.get(spec.entity, {}))
        return cls(engine, event, histories)

    def vector(self, **changes: Any) -> np.ndarray:
        """The event's features (the engine's names order) with ``changes`` (amount, occurred_at) applied."""
        engine = self.engine
        changed = EventColumns.from_events([{**self.event, **changes}], engine.columns)
        out = np.full(len(engine.names), np.nan)
        first = len(engine.fs.event_features)
        for entity, (events, labels, start) in self.histories.items():
            merged = events.merged(changed)  # the changed copy takes the stored event's place
            rows, _ = engine.build(merged, labels, {entity: start}, finals=False)
            out[:first] = rows[-1, :first]
            out[engine.slices[entity]] = rows[-1, engine.slices[entity]]
        if not self.histories:
            rows, _ = engine.build(changed, None, finals=False)
            out[:first] = rows[-1, :first]
        return out


@dataclass
class Scorer:
    runtime: ModelRuntime
    refold: Refold
    thresholds: dict[str, float]
    tries: int = 0

    def __call__(self, **changes: Any) -> tuple[float, str, np.ndarray]:
        self.tries += 1
        vector = self.refold.vector(**changes)
        named = dict(zip(self.refold.engine.names, vector.tolist()))
        x = self.runtime.matrix([{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                  for k, v in named.items()}])
        score = float(self.runtime.predict(x)[0])
        return score, str(decide(np.array([score]), self.thresholds)[0]), vector


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a, b, equal_nan=True))


def amount_candidates(scorer: Scorer, amount: float, base: np.ndarray) -> list[float]:
    """Amounts at which a split on an amount-derived feature flips, each side, nearest to ``amount`` first."""
    names = scorer.refold.engine.names
    _, _, moved = scorer(amount=amount + 1.0)
    slopes = {n: float(moved[j] - base[j]) for j, n in enumerate(names)
              if np.isfinite(base[j]) and np.isfinite(moved[j]) and moved[j] != base[j]}
    points = _split_points(scorer.runtime.artifact_sha256, scorer.runtime.booster)
    crossings = set()
    for name, slope in slopes.items():
        j = names.index(name)
        for threshold in points.get(name, ()):
            if name.endswith("log_amount"):
                crossings.add(math.expm1(threshold))
            else:
                crossings.add(amount + (threshold - base[j]) / slope)
    out = set()
    for c in crossings:
        for side in (math.floor(c / CENT) * CENT, math.ceil(c / CENT) * CENT + CENT):
            value = round(side, 2)
            if CENT <= value <= max(amount * 20, 1.0) and abs(value - amount) >= CENT:
                out.add(value)
    return sorted(out, key=lambda v: (abs(v - amount), v))


def _better(decision: str, original: str) -> bool:
    return DECISIONS.index(decision) < DECISIONS.index(original)


def _narrow(scorer: Scorer, original: str, unchanged: float, flipped: float,
            result: tuple[float, str, np.ndarray], budget: int) -> tuple[float, tuple[float, str, np.ndarray]]:
    """Bisect (in cents) between an amount that keeps the decision and one that changes it, while fewer than
    ``budget`` re-scorings were made."""
    best = (flipped, result)
    lo, hi = unchanged, flipped
    while abs(hi - lo) > CENT + 1e-9 and scorer.tries < budget:
        mid = round((lo + hi) / 2, 2)
        if mid in (lo, hi):
            break
        tried = scorer(amount=mid)
        if _better(tried[1], original):
            hi, best = mid, (mid, tried)
        else:
            lo = mid
    return best


async def find(conn: Connection, runtime: ModelRuntime, event: dict[str, Any], stored: dict[str, Any],
               thresholds: dict[str, float], decision: str) -> dict[str, Any]:
    """The counterfactual of one decision (``stored``: the features it was scored with), or why there is
    none. Deterministic: the same prediction gives the same answer."""
    if decision == "approve":
        return {"available": False, "why": "the payment was approved: nothing needed to change"}
    fs = runtime.feature_set
    if fs is None or fs.engine != "tiles":
        return {"available": False, "why": "computed only for models on a feature set of the tiles engine"}
    refold = await Refold.load(conn, engine_of(fs), event)
    # CPU work (up to MAX_TRIES folds and predictions): off the event loop, which may also be serving
    return await asyncio.to_thread(search, Scorer(runtime, refold, thresholds), event, stored, decision)


def settled(found: dict[str, Any]) -> bool:
    """Whether ``found`` was searched from a refold that reproduced the stored features (a change, or none
    within the tries): the answer for this decision, kept (``sira_counterfactuals``) so that later events,
    which change what a refold of the log gives, never change a report."""
    return "tries" in found  # never with a search cut short (the budget ran out): it proves nothing


def search(scorer: Scorer, event: dict[str, Any], stored: dict[str, Any], decision: str) -> dict[str, Any]:
    """Candidates nearest first, each re-scored; the cheapest change that improves the decision."""
    engine = scorer.refold.engine
    _, _, base = scorer()
    stored_vector = np.array([np.nan if stored.get(n) is None else float(stored[n]) for n in engine.names])
    if not _same(base, stored_vector):
        return {"available": False, "why": "the event log no longer reproduces the stored features exactly"}
    found: list[tuple[float, dict[str, Any], tuple[float, str, np.ndarray]]] = []
    amount = event.get("amount")
    budget = MAX_TRIES - HOUR_TRIES  # the amounts' share: the hours are tried whatever the amounts took
    cut_short = False
    if amount is not None and float(amount) > 0:
        amount = float(amount)
        kept = {True: amount, False: amount}  # per side (above, below): the nearest amount tried that kept it
        for candidate in amount_candidates(scorer, amount, base):
            if scorer.tries >= budget:
                cut_short = True
                break
            result = scorer(amount=candidate)
            side = candidate > amount
            if _better(result[1], decision):
                value, result = _narrow(scorer, decision, kept[side], candidate, result, budget)
                found.append((abs(value - amount) / amount, {"amount": {"from": amount, "to": value}}, result))
                break
            kept[side] = candidate
    t: datetime = event["occurred_at"]
    history = slice(len(engine.fs.event_features), None)  # the entities' features follow the payment's own
    for hour in sorted(range(24), key=lambda h: (abs(h - t.hour), h)):
        if hour == t.hour or scorer.tries >= MAX_TRIES:
            continue
        moved = t.replace(hour=hour)
        result = scorer(occurred_at=moved)
        # the moved copy is folded at its new time: its windows then hold other past payments (earlier, the
        # payer's own payments made in between drop out). That changes the payer's history, which no one
        # can change: only a move that leaves every history feature as it was counts
        if _better(result[1], decision) and _same(result[2][history], base[history]):
            found.append((abs(hour - t.hour) / HOUR_WEIGHT, {"occurred_at": {"from": t.isoformat(),
                                                                              "to": moved.isoformat()}}, result))
            break
    if not found and cut_short:  # not settled (no "tries"): some amounts were never tried
        return {"available": False, "why": f"the search budget ({MAX_TRIES} re-scorings) ran out before every "
                                           "candidate amount was tried: no change was found within it"}
    if not found:
        return {"available": False, "tries": scorer.tries,
                "why": "no change of the amount or of the hour alone changes this decision"}
    cost, change, (score, new_decision, vector) = min(found, key=lambda f: f[0])
    changed = [n for j, n in enumerate(engine.names) if not _same(vector[j:j + 1], base[j:j + 1])]
    return {"available": True, "change": change, "decision": new_decision, "score": score, "cost": cost,
            "features_changed": changed, "tries": scorer.tries,
            "actionable": ACTIONABLE}
