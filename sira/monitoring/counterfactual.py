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

Amounts: every amount from :data:`CENT` to :data:`MAX_AMOUNT` is covered, not sampled. The payment is the
newest event of its windows, so each feature the amount drives (the amount, its log, an entity's sum, mean
or max over a window, the amount ratio) never decreases as the amount grows, and crosses each split
threshold of the model at one amount at most. Between two consecutive crossings every comparison the trees
make comes out the same, so the score is constant: the crossings, found to the cent, cut the amounts into
finitely many ranges, and the model needs scoring once per range, at its amount nearest the paid one. The
entities' states just before the payment are folded once; each amount tried is one compiled step per
entity from copies of them (the serving path's fold), so locating the crossings (interpolation within
brackets, with a bisection step each round: at most ``log2`` of the cents in range rounds) and scoring
every range (one ``Booster.predict`` of all of them) costs milliseconds to a few tenths of a second. The
nearest amount that improves the decision is then re-scored through the full refold of the log, as every
answer is; when none does, the answer says no amount changes it.

Hours are few: each is tried, and a move counts only when it leaves every history feature as it was
(folded at another time, the payment's windows would hold other past payments: the payer's history would
change, which the person cannot do).
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
from asyncpg import Connection

from sira.features.columns import read_events, read_labels
from sira.features.engine import Engine, EventColumns, Labels, engine_of
from sira.features.hashing import hash_strings, value_hash
from sira.features.states import day_of, starting_states
from sira.features.store import to_us
from sira.ingest.events import MAX_AMOUNT
from sira.serving.scoring import ModelRuntime
from sira.training.evaluation import DECISIONS, decide

ACTIONABLE = {"amount": "the payment's amount", "occurred_at": "the hour of the day it was made (the same day)"}
CENT = 0.01
TOP_CENTS = int(MAX_AMOUNT * 100)  # the largest amount validation accepts, in cents
GRID = 64  # amounts spread geometrically over the whole range: the first brackets of the crossings
MAX_ROUNDS = 64  # a bisection step each round halves every bracket: log2(TOP_CENTS) < 47 rounds at most
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


def _events_taken(events: EventColumns, rows: np.ndarray) -> EventColumns:
    take = pa.array(rows, type=pa.int64())
    return EventColumns(events.ts[rows], events.amount[rows], events.event_id[rows],
                        {n: c.take(take) for n, c in events.columns.items()})


def _labels_taken(labels: Labels, rows: np.ndarray) -> Labels:
    take = pa.array(rows, type=pa.int64())
    return Labels(labels.event_id[rows], labels.known_at[rows], labels.event_ts[rows],
                  {c: v.take(take) for c, v in labels.keys.items()}, labels.deltas()[rows])


@dataclass
class Refold:
    """One stored event and, per entity it names, the log up to it (events and labels known by then, whatever
    came later: the same prediction gives the same answer): vectors of changed copies of it."""

    engine: Engine
    event: dict[str, Any]
    histories: dict[str, tuple[EventColumns, Any, dict[str, np.ndarray]]]  # entity -> (events, labels, start)
    _before: dict[str, np.ndarray] | None = field(default=None, repr=False)

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

    def before(self) -> dict[str, np.ndarray]:
        """Per entity the event names, its state just before the payment: the events folded before it (in
        time, then event-id-hash order) and the labels known before its time, from the day's checkpoint."""
        if self._before is None:
            t, order = to_us(self.event["occurred_at"]), value_hash(self.event["event_id"])
            self._before = {}
            for entity, (events, labels, start) in self.histories.items():
                key = str(self.event[self.engine.fs.entity(entity).key_column])
                orders = hash_strings(pa.array(events.event_id.tolist(), pa.string()))
                earlier = np.flatnonzero((events.ts < t) | ((events.ts == t) & (orders < order)))
                known = np.flatnonzero(np.maximum(labels.known_at, labels.event_ts) < t)
                _, finals = self.engine.build(_events_taken(events, earlier), _labels_taken(labels, known),
                                              {entity: start})
                state = finals.get(entity, {}).get(key)
                self._before[entity] = state if state is not None else \
                    start[key].copy() if key in start else self.engine.layouts[entity].empty()
        return self._before

    def at_amounts(self, amounts: Sequence[float]) -> np.ndarray:
        """The event's vectors (rows) at each of ``amounts``: each folded, as serving folds a payment, into
        copies of the states just before it (:meth:`before`)."""
        before = self.before()
        out = np.empty((len(amounts), len(self.engine.names)))
        for i, amount in enumerate(amounts):
            states = {entity: state.copy() for entity, state in before.items()}
            out[i], late = self.engine.event_vector({**self.event, "amount": float(amount)}, states)
            if late:  # never: the states hold only what came before the payment
                raise ValueError(f"the payment came out late for {', '.join(late)}")
        return out


@dataclass
class Scorer:
    runtime: ModelRuntime
    refold: Refold
    thresholds: dict[str, float]
    tries: int = 0  # re-scorings through the full refold of the log

    def __call__(self, **changes: Any) -> tuple[float, str, np.ndarray]:
        self.tries += 1
        vector = self.refold.vector(**changes)
        scores, decisions = self.many(vector[None, :])
        return float(scores[0]), str(decisions[0]), vector

    def many(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and decisions of vectors (rows, the engine's names order), in one prediction."""
        names = self.refold.engine.names
        x = self.runtime.matrix([{n: (None if math.isnan(v) else v) for n, v in zip(names, row)}
                                 for row in vectors.tolist()])
        scores = np.asarray(self.runtime.predict(x), dtype=np.float64)
        return scores, decide(scores, self.thresholds)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a, b, equal_nan=True))


def crossings(evaluate: Callable[[np.ndarray], np.ndarray], pairs: Sequence[tuple[int, float]], top: int,
              seeds: Sequence[int] = ()) -> tuple[np.ndarray, int]:
    """Per (column, threshold) of ``pairs``: the smallest amount in cents in ``1..top`` at which the column of
    ``evaluate(cents)`` (one row per amount; every column non-decreasing in the amount) is above the
    threshold, or -1 when it is on one side of it over the whole range. Brackets of evaluated amounts close
    in rounds, each evaluating every open bracket's interpolated crossing (and its two neighbours, so a
    linear column closes at once) and midpoint together. Returns them and how many amounts were evaluated."""
    columns = np.array([c for c, _ in pairs], dtype=np.int64)
    thresholds = np.array([t for _, t in pairs], dtype=np.float64)
    grid = np.unique(np.geomspace(1, top, GRID).round().astype(np.int64))
    cents = np.unique(np.concatenate([[1, top], grid, np.clip(np.asarray(seeds, dtype=np.int64), 1, top)]))
    values = evaluate(cents)
    active = np.arange(len(pairs))  # the pairs whose bracket is still open
    for _ in range(MAX_ROUNDS):
        above = values[:, columns[active]] > thresholds[active]  # NaN: not above
        hi = np.argmax(above, axis=0)
        lo = np.maximum(hi - 1, 0)
        keep = ~above[0] & above[-1] & (cents[hi] - cents[lo] > 1)
        active, lo, hi = active[keep], lo[keep], hi[keep]
        if not active.size:
            break
        lo_c, hi_c = cents[lo], cents[hi]
        f_lo, f_hi = values[lo, columns[active]], values[hi, columns[active]]
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.nan_to_num((thresholds[active] - f_lo) / (f_hi - f_lo), nan=0.5, posinf=0.5, neginf=0.5)
        guess = lo_c + np.ceil(np.clip(share, 0.0, 1.0) * (hi_c - lo_c)).astype(np.int64)
        tried = np.concatenate([np.clip(g, lo_c + 1, hi_c - 1) for g in (guess - 1, guess, guess + 1,
                                                                          (lo_c + hi_c) // 2)])
        new = np.setdiff1d(tried, cents)
        cents, values = np.concatenate([cents, new]), np.concatenate([values, evaluate(new)])
        order = np.argsort(cents, kind="stable")
        cents, values = cents[order], values[order]
    above = values[:, columns] > thresholds
    exists = ~above[0] & above[-1]
    return np.where(exists, cents[np.argmax(above, axis=0)], -1), int(cents.size)


def nearest_per_range(starts: np.ndarray, paid: float, top: int) -> list[int]:
    """The cents to score: the ranges ``starts`` (each range's first cent, ascending; the first is 1) cut
    ``1..top`` into, each by its cent nearest to ``paid`` (cents, not itself: a range holding it by the cent
    next to it on each side)."""
    below, above = math.ceil(paid - 1e-9) - 1, math.floor(paid + 1e-9) + 1  # the cents next to it
    ends = np.append(starts[1:] - 1, top)
    out = []
    for lo, hi in zip(starts.tolist(), ends.tolist()):
        if hi < paid:
            out.append(hi)
        elif lo > paid:
            out.append(lo)
        else:
            out += [c for c in (below, above) if lo <= c <= hi]
    return out


def _better(decision: str, original: str) -> bool:
    return DECISIONS.index(decision) < DECISIONS.index(original)


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
    # CPU work (folds and predictions): off the event loop, which may also be serving
    return await asyncio.to_thread(search, Scorer(runtime, refold, thresholds), event, stored, decision)


def amount_change(scorer: Scorer, amount: float, decision: str) -> tuple[float | None, int]:
    """The amount nearest to ``amount`` (to the cent) that improves the decision, or None when no amount in
    range does; and the number of ranges scored."""
    refold = scorer.refold
    names = refold.engine.names
    paid = amount * 100

    def evaluate(cents: np.ndarray) -> np.ndarray:
        return refold.at_amounts((cents / 100).tolist())

    points = _split_points(scorer.runtime.artifact_sha256, scorer.runtime.booster)
    ends = evaluate(np.array([1, TOP_CENTS]))
    driven = [j for j, n in enumerate(names) if points.get(n) and not _same(ends[0, j:j + 1], ends[1, j:j + 1])]
    pairs = [(j, t) for j in driven for t in points[names[j]]]
    found, _ = crossings(evaluate, pairs, TOP_CENTS, seeds=[math.floor(paid), math.ceil(paid)])
    starts = np.unique(np.concatenate([[1], found[found > 1]]))
    cents = nearest_per_range(starts, paid, TOP_CENTS)
    _, decisions = scorer.many(evaluate(np.array(cents, dtype=np.int64)))
    better = [c for c, d in zip(cents, decisions.tolist()) if _better(d, decision)]
    if not better:
        return None, len(cents)
    return min(better, key=lambda c: (abs(c - paid), c)) / 100, len(cents)


def search(scorer: Scorer, event: dict[str, Any], stored: dict[str, Any], decision: str) -> dict[str, Any]:
    """Every range of amounts and every other hour; the cheapest change that improves the decision, verified
    by re-scoring through the full refold."""
    engine = scorer.refold.engine
    _, _, base = scorer()
    stored_vector = np.array([np.nan if stored.get(n) is None else float(stored[n]) for n in engine.names])
    if not _same(base, stored_vector):
        return {"available": False, "why": "the event log no longer reproduces the stored features exactly"}
    found: list[tuple[float, dict[str, Any], tuple[float, str, np.ndarray]]] = []
    amount = event.get("amount")
    ranges = 0
    if amount is not None and float(amount) > 0:
        amount = float(amount)
        if not _same(scorer.refold.at_amounts([amount])[0], base):  # serving's fold and the log's: never apart
            return {"available": False, "why": "the payment folded into its entities' states before it does not "
                                               "give the stored features"}
        value, ranges = amount_change(scorer, amount, decision)
        if value is not None:
            result = scorer(amount=value)  # verified through the full refold of the log, as every answer
            if not _better(result[1], decision):  # never: the same fold, the same trees
                return {"available": False, "why": f"the amount {value:,.2f} changed the decision when scored "
                                                   "with the other amounts, not when re-scored alone"}
            found.append((abs(value - amount) / amount, {"amount": {"from": amount, "to": value}}, result))
    t: datetime = event["occurred_at"]
    history = slice(len(engine.fs.event_features), None)  # the entities' features follow the payment's own
    for hour in sorted(range(24), key=lambda h: (abs(h - t.hour), h)):
        if hour == t.hour:
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
    if not found:
        amounts = f"no amount from {CENT:.2f} to {MAX_AMOUNT:,.0f} and " if ranges else "the payment has no amount; "
        return {"available": False, "tries": scorer.tries, "amount_ranges": ranges,
                "why": f"{amounts}no other hour of the same day alone changes this decision"}
    cost, change, (score, new_decision, vector) = min(found, key=lambda f: f[0])
    changed = [n for j, n in enumerate(engine.names) if not _same(vector[j:j + 1], base[j:j + 1])]
    return {"available": True, "change": change, "decision": new_decision, "score": score, "cost": cost,
            "features_changed": changed, "tries": scorer.tries, "amount_ranges": ranges,
            "actionable": ACTIONABLE}
