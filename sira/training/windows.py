"""Default time windows: where the data is, by one rule (docs/windows.md).

An event is *usable* at a label cut-off (default: now, the time of training; ``--as-of`` sets it)
when a label of it was known by the cut-off, or when it is older than the cut-off minus the model's
label maturity (then no label means legitimate). Younger unlabelled events, such as the payments
scored live a minute ago, are not: they would enter training as negatives that may yet turn
positive.

- training: the usable events; the test window is their newest quarter by event time, with the
  label-delay gap before it;
- drift: the ``days`` ending at the newest event of the source whose window holds at least the
  minimum count, walking back over sparse days;
- live performance: the ``days`` ending at the newest usable prediction.

Every command states the windows it chose (``--json`` too), and an empty window fails before the
expensive read, naming the windows and the flags that set them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sira.core.errors import InvalidInput
from sira.features.store import labels_said_by

ONE_US = timedelta(microseconds=1)
TRAINING_FLAGS = "--train-from/--train-to/--test-from/--test-to (or --train-days/--test-days), the cut-off with --as-of"


@dataclass(frozen=True)
class Windows:
    """The time windows of a feature-store training set (all UTC)."""

    train_from: Any
    train_to: Any
    test_from: Any
    test_to: Any
    cutoff: Any  # labels known after this do not exist for this dataset
    maturity_days: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in self.__dict__.items()}

    @property
    def mature_until(self) -> datetime:
        return self.cutoff - timedelta(days=self.maturity_days)

    def describe(self) -> str:
        return (f"train {_day(self.train_from)}..{_day(self.train_to)}, test {_day(self.test_from)}.."
                f"{_day(self.test_to)}, labels known by {self.cutoff:%Y-%m-%d %H:%M} UTC "
                f"(maturity {self.maturity_days:g} days)")


def _day(t: datetime) -> str:
    return f"{t:%Y-%m-%d %H:%M}" if (t.hour, t.minute) != (0, 0) else f"{t:%Y-%m-%d}"


MAX_DAYS = 36_500  # a window's length, in days: a hundred years; more overflows the calendar


def check_days(flag: str, days: float | None, *, zero_allowed: bool = False) -> None:
    """A number of days an option gives: finite, above 0 (or from 0), at most :data:`MAX_DAYS` (``inf``, NaN or
    1e9 reached ``timedelta`` and failed as ``internal``)."""
    if days is not None and not (math.isfinite(days) and (days >= 0 if zero_allowed else days > 0)
                                 and days <= MAX_DAYS):
        raise InvalidInput(f"{flag} must be a number of days {'from' if zero_allowed else 'above'} 0 to "
                           f"{MAX_DAYS} (got {days})", code="invalid_option")


def check_as_of(as_of: datetime | None) -> None:
    """A label cut-off (--as-of) is now or earlier: a later one made unlabelled events younger than the label
    maturity count as mature negatives, and labels the future would bring as known (a backtest looks back)."""
    if as_of is not None and (as_of if as_of.tzinfo else as_of.replace(tzinfo=timezone.utc)) > now():
        raise InvalidInput(f"--as-of {as_of:%Y-%m-%d %H:%M} is in the future (now {now():%Y-%m-%d %H:%M} UTC): labels "
                           "known after now are not known yet; set now or earlier", code="invalid_option")


def label_rule(occurred_at: Any, positive_known_at: Any, negative_known: bool, windows: Windows) -> float | None:
    """1 if a positive label was known by the cut-off; 0 if the event is mature (or reviewed legit); None: left out."""
    if positive_known_at is not None and positive_known_at <= windows.cutoff:
        return 1.0
    if occurred_at <= windows.mature_until or negative_known:
        return 0.0
    return None


def now() -> datetime:
    return datetime.now(timezone.utc)


# -- training ----------------------------------------------------------------------------------------

async def usable_span(conn: Any, *, cutoff: datetime,
                      maturity_days: float) -> tuple[datetime | None, datetime | None, datetime | None]:
    """(first event, newest mature event, newest event) of the event log at ``cutoff``. A default span ends
    at the newest *mature* event: past it only the labelled events count, and the labels of young events are
    mostly chargebacks (their legitimate neighbours are not known to be so yet), so a test window there
    would be mostly frauds and its metrics flattering."""
    mature_until = cutoff - timedelta(days=maturity_days)
    first, newest, mature = await conn.fetchrow(
        """SELECT min(occurred_at), max(occurred_at),
                  (SELECT max(occurred_at) FROM sira_events WHERE occurred_at <= $1) FROM sira_events""",
        mature_until)
    return first, mature, newest


async def training_windows(
    conn: Any, *, maturity_days: float, label_delay_days: float,
    cutoff: datetime | None = None, train_from: Any = None, train_to: Any = None, test_from: Any = None,
    test_to: Any = None, test_days: float | None = None, train_days: float | None = None,
) -> Windows:
    """The windows of a feature-store training set: the usable events, the newest quarter (or
    ``test_days``) for test, the label-delay gap before it, and (``train_days``) only that many days of
    training before the gap. Explicit values win."""
    cutoff = cutoff or now()
    first, usable, newest = await usable_span(conn, cutoff=cutoff, maturity_days=maturity_days)
    if first is None:
        raise InvalidInput("the feature store has no events; run `sira ingest` first", code="empty_input")
    if first > cutoff:
        raise InvalidInput(f"the cut-off {cutoff:%Y-%m-%d %H:%M} is before the first event ({first:%Y-%m-%d}); "
                           "set a later one with --as-of", code="empty_window")
    if usable is None and test_to is None:
        raise InvalidInput(
            f"no mature events: the events span {first:%Y-%m-%d}..{newest:%Y-%m-%d} and none is older than the "
            f"label maturity ({maturity_days:g} days before {cutoff:%Y-%m-%d %H:%M}), so an unlabelled one may "
            f"still turn out to be fraud; lower the model's label maturity, or set {TRAINING_FLAGS}",
            code="empty_window")
    end = test_to or usable + ONE_US
    start = train_from or first
    if end <= start:
        raise InvalidInput(f"the windows are empty: training starts {start:%Y-%m-%d} and the usable events end "
                           f"{end:%Y-%m-%d}; set {TRAINING_FLAGS}", code="empty_window")
    span = end - start
    t_from = test_from or (end - timedelta(days=test_days) if test_days else end - span / 4)
    tr_to = train_to or (t_from - min(timedelta(days=label_delay_days), span / 8))
    if train_days and not train_from:
        start = max(start, tr_to - timedelta(days=train_days))
    windows = Windows(start, tr_to, t_from, end, cutoff, maturity_days)
    if not (windows.train_from < windows.train_to <= windows.test_from < windows.test_to):
        raise InvalidInput(f"the windows are out of order ({windows.describe()}); they must satisfy "
                           f"train_from < train_to <= test_from < test_to: set {TRAINING_FLAGS}", code="empty_window")
    return windows


# Rows a window holds by the label rule, and its positives: index range counts for the mature part,
# the labels (few) for the young part. Cheap next to reading the feature vectors.
_MATURE_COUNT_SQL = "SELECT count(*) FROM sira_events WHERE occurred_at >= $1 AND occurred_at < $2"
_LABELLED_COUNT_SQL = f"""
SELECT count(DISTINCT e.event_id) FILTER (WHERE e.occurred_at > $3) AS young,
       count(DISTINCT e.event_id) FILTER (WHERE said.label) AS positives
  FROM ({labels_said_by("$5", "$4")}) said JOIN sira_events e ON e.event_id = said.event_id
 WHERE e.occurred_at >= $1 AND e.occurred_at < $2
"""


async def window_counts(conn: Any, windows: Windows, label_name: str) -> dict[str, dict[str, int]]:
    """Labelled rows and positives of the train and test windows, by the label rule."""
    out = {}
    for name, lo, hi in (("train", windows.train_from, windows.train_to), ("test", windows.test_from,
                                                                            windows.test_to)):
        mature = await conn.fetchval(_MATURE_COUNT_SQL, lo, min(hi, windows.mature_until + ONE_US)) \
            if lo <= windows.mature_until else 0
        labelled = await conn.fetchrow(_LABELLED_COUNT_SQL, lo, hi, windows.mature_until, label_name, windows.cutoff)
        out[name] = {"rows": int(mature) + int(labelled["young"]), "positives": int(labelled["positives"])}
    return out


def check_counts(windows: Windows, counts: dict[str, dict[str, int]]) -> None:
    """Fail, before the expensive read, when a window has no labelled rows or no positives."""
    for name, label in (("train", "training"), ("test", "test")):
        lo, hi = (windows.train_from, windows.train_to) if name == "train" else (windows.test_from, windows.test_to)
        if counts[name]["rows"] == 0:
            raise InvalidInput(f"the {label} window {_day(lo)}..{_day(hi)} has no usable events ({windows.describe()});"
                               f" set {TRAINING_FLAGS}", code="empty_window",
                               details={"windows": windows.to_dict(), "counts": counts})
        if counts[name]["positives"] == 0:
            raise InvalidInput(f"the {label} window {_day(lo)}..{_day(hi)} has no positive labels known by the cut-off "
                               f"({windows.describe()}); widen it with {TRAINING_FLAGS}, or lower the label maturity",
                               code="empty_window", details={"windows": windows.to_dict(), "counts": counts})


# -- drift ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DenseWindow:
    lo: datetime
    hi: datetime
    rows: int
    skipped: int  # rows after the window, on the sparse days walked back over
    newest: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.lo.isoformat(), "to": self.hi.isoformat(), "rows": self.rows,
                "skipped_after": self.skipped, "newest": self.newest.isoformat()}


async def dense_window(conn: Any, *, source: str, where: str, args: tuple[Any, ...], column: str, days: float,
                       min_rows: int, max_steps: int = 400) -> DenseWindow:
    """The ``days`` ending at the newest row of ``source`` (``where`` with ``args`` as $1..) whose window
    holds at least ``min_rows``, walking back a day at a time over days too sparse to fill one."""
    k = len(args)
    base = f"FROM {source} WHERE {where}"
    newest, total = await conn.fetchrow(f"SELECT max({column}), count(*) {base}", *args)
    if newest is None:
        raise InvalidInput(f"no {source.split()[0].removeprefix('sira_')} to compare with the reference",
                           code="empty_input")
    if total < min_rows:
        raise InvalidInput(f"{total} rows in all of the source; this needs at least {min_rows}", code="insufficient_data")
    span = timedelta(days=days)
    hi = newest + ONE_US
    for _ in range(max_steps):
        n = await conn.fetchval(f"SELECT count(*) {base} AND {column} >= ${k + 1} AND {column} < ${k + 2}",
                                *args, hi - span, hi)
        if n >= min_rows:
            skipped = await conn.fetchval(f"SELECT count(*) {base} AND {column} >= ${k + 1}", *args, hi)
            return DenseWindow(hi - span, hi, int(n), int(skipped), newest)
        day_start = (hi - ONE_US).replace(hour=0, minute=0, second=0, microsecond=0)
        earlier = await conn.fetchval(f"SELECT max({column}) {base} AND {column} < ${k + 1}", *args, day_start)
        if earlier is None:
            break
        hi = earlier + ONE_US
    raise InvalidInput(f"no {days:g}-day window holds {min_rows} rows: the data is too sparse; set --from/--to",
                       code="insufficient_data")
