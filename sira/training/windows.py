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
from sira.features.store import event_label_join, labels_said_by

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
    explicit_label_delay: bool = False,
) -> Windows:
    """The windows of a feature-store training set: the usable events, the newest quarter (or
    ``test_days``) for test, the label-delay gap before it, and (``train_days``) only that many days of
    training before the gap. Explicit values win: the default gap is at most an eighth of the span, a gap the
    caller set (``explicit_label_delay``: --label-delay) is kept as it is, or refused when it leaves no training
    window (it was capped without a word)."""
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
    if test_days and not test_from and t_from <= start:  # said as such (it was "the windows are out of order")
        raise InvalidInput(f"--test-days {test_days:g} leaves no training window: the usable events span "
                           f"{_day(start)}..{_day(end)} ({span.total_seconds() / 86_400:.1f} days); set fewer "
                           f"--test-days, or {TRAINING_FLAGS}", code="empty_window",
                           details={"field": "test_days", "span_days": round(span.total_seconds() / 86_400, 1)})
    if train_to is not None and explicit_label_delay:
        raise InvalidInput("--label-delay sets the gap before the test window when --train-to does not: with "
                           "--train-to the gap is --train-to..--test-from; give one of them", code="invalid_option")
    gap = timedelta(days=label_delay_days)
    tr_to = train_to or (t_from - (gap if explicit_label_delay else min(gap, span / 8)))
    if explicit_label_delay and train_to is None and tr_to <= start:
        raise InvalidInput(f"--label-delay {label_delay_days:g} days leaves no training window: the test window "
                           f"starts {_day(t_from)} and training {_day(start)}; set a shorter --label-delay, or "
                           f"{TRAINING_FLAGS}", code="empty_window")
    if train_days and not train_from:
        start = max(start, tr_to - timedelta(days=train_days))
    windows = Windows(start, tr_to, t_from, end, cutoff, maturity_days)
    if not (windows.train_from < windows.train_to <= windows.test_from < windows.test_to):
        raise InvalidInput(f"the windows are out of order ({windows.describe()}); they must satisfy "
                           f"train_from < train_to <= test_from < test_to: set {TRAINING_FLAGS}", code="invalid_window",
                           details={"windows": windows.describe()})
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


# Evaluation windows (test, validation) hold at least this many labelled rows, negatives among them: a test
# window of 2 frauds registered a version with AP 1.0 and ROC AUC NaN, thresholds chosen on a handful of rows.
MIN_EVAL_ROWS = 30
VALID_SHARE = 0.15  # validation: the newest share of the training rows (more when it needs positives)
MIN_VALID_POSITIVES = 20
# The test window's positive rate this many times the training window's, beyond chance, is said (a warning)
RATE_WARNING_RATIO = 3.0


def validation_size(train_rows: int, share: float = VALID_SHARE) -> int:
    """The rows of the validation window before it is widened to hold positives (at most all but one)."""
    return min(max(1, int(round(train_rows * share))), max(train_rows - 1, 0)) if train_rows > 1 else train_rows


def check_counts(windows: Windows, counts: dict[str, dict[str, int]]) -> None:
    """Fail, before the expensive read, when a window has no labelled rows, no positives or no negatives, or
    when the test window or the validation part of the training window holds too few rows to evaluate on."""
    details = {"windows": windows.to_dict(), "counts": counts}
    for name, label in (("train", "training"), ("test", "test")):
        lo, hi = (windows.train_from, windows.train_to) if name == "train" else (windows.test_from, windows.test_to)
        rows, positives = counts[name]["rows"], counts[name]["positives"]
        if rows == 0:
            raise InvalidInput(f"the {label} window {_day(lo)}..{_day(hi)} has no usable events ({windows.describe()});"
                               f" set {TRAINING_FLAGS}", code="empty_window", details=details)
        if positives == 0:
            raise InvalidInput(f"the {label} window {_day(lo)}..{_day(hi)} has no positive labels known by the cut-off "
                               f"({windows.describe()}); widen it with {TRAINING_FLAGS}, or lower the label maturity",
                               code="empty_window", details=details)
        if positives == rows:
            raise InvalidInput(f"the {label} window {_day(lo)}..{_day(hi)} has no negative labels: its {rows:,} usable "
                               f"events are all positive ({_young_hint(windows)}); set {TRAINING_FLAGS}",
                               code="empty_window", details=details)
        evaluated = rows if name == "test" else validation_size(rows)
        if evaluated < MIN_EVAL_ROWS:
            part = (f"the test window {_day(lo)}..{_day(hi)} holds {rows:,} usable events:" if name == "test" else
                    f"the training window {_day(lo)}..{_day(hi)} holds {rows:,} usable events, so its validation part "
                    f"(the newest {VALID_SHARE:.0%}: {evaluated:,}) is")
            raise InvalidInput(f"{part} too few to evaluate on (at least {MIN_EVAL_ROWS}); widen it with "
                               f"{TRAINING_FLAGS}", code="empty_window", details=details)


def _young_hint(windows: Windows) -> str:
    return (f"past the label maturity ({_day(windows.mature_until)}) an event counts only once labelled, and "
            "those labels are mostly chargebacks")


def rate_warning(train_rows: int, train_positives: int, test_rows: int, test_positives: int,
                 hint: str = "") -> str | None:
    """A warning when the test window's positive rate is far above the training window's (at least
    :data:`RATE_WARNING_RATIO` times, and beyond chance): its metrics flatter the model (AP grows with the
    positive rate), as a test window of young events, labelled only when they are chargebacks, does."""
    if not (train_rows and test_rows and train_positives):
        return None
    p0, p1 = train_positives / train_rows, test_positives / test_rows
    if p1 < RATE_WARNING_RATIO * p0 or (p1 - p0) < 3 * math.sqrt(p0 * (1 - p0) / test_rows):
        return None
    return (f"the test window's positive rate ({p1:.1%}: {test_positives:,} of {test_rows:,}) is {p1 / p0:.0f} times "
            f"the training window's ({p0:.1%}): its metrics flatter the model" + (f"; {hint}" if hint else ""))


def window_warnings(windows: Windows, counts: dict[str, dict[str, int]]) -> list[str]:
    """What a dry run and a run say of the windows' counts (a test window far richer in positives)."""
    said = rate_warning(counts["train"]["rows"], counts["train"]["positives"], counts["test"]["rows"],
                        counts["test"]["positives"],
                        f"{_young_hint(windows)}: end the test window by then, or lower the label maturity"
                        if windows.test_to > windows.mature_until + ONE_US else "")
    return [said] if said else []


# The newest events of the training window, newest first, with their labels at the cut-off ($3, label $4)
_NEWEST_SQL = f"""
SELECT e.occurred_at, lab.positive_known_at, lab.negative_known
  FROM sira_events e
  {event_label_join("$3", "$4")}
 WHERE e.occurred_at >= $1 AND e.occurred_at < $2
 ORDER BY e.occurred_at DESC, e.event_id COLLATE "C" DESC
"""


async def check_validation(conn: Any, windows: Windows, counts: dict[str, dict[str, int]], label_name: str) -> None:
    """Fail, before anything is created, when the validation window (the newest labelled events of the training
    window, :data:`VALID_SHARE` of them or more to hold positives, as the split takes them) has no negative
    label: read newest first, it stops at the first negative, or once the window is known to hold none."""
    rows, positives = counts["train"]["rows"], counts["train"]["positives"]
    size = min(max(validation_size(rows), min(MIN_VALID_POSITIVES, positives // 2)), rows - 1)
    seen = 0
    async with conn.transaction():  # a cursor lives in a transaction
        async for row in conn.cursor(_NEWEST_SQL, windows.train_from, windows.train_to, windows.cutoff, label_name,
                                     prefetch=256):
            label = label_rule(row["occurred_at"], row["positive_known_at"], row["negative_known"], windows)
            if label == 0.0:
                return
            seen += label is not None
            if seen >= size:
                break
    raise InvalidInput(f"the validation window (the newest {size:,} usable events of the training window, up to "
                       f"{_day(windows.train_to)}) has no negative labels ({_young_hint(windows)}); end the training "
                       f"window earlier with --train-to, or lower the label maturity", code="empty_window",
                       details={"windows": windows.to_dict(), "counts": counts})


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
