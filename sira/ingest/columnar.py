"""File rows validated and redacted as columns: what :func:`sira.ingest.events.normalize` gives, for the rows
whose every value is plainly valid, without a pydantic model and a redactor pass per row (#21).

A file load spent ~45 µs per event in :func:`normalize` (validation ~18 µs, redaction ~20 µs), most of it on
values that repeat (cards, emails, devices, customers, terminals) or hold nothing to redact (event ids). Here:

- a row is *plain* when Arrow's kernels show, column by column, that :class:`EventIn` accepts it as it is:
  typed columns (text as strings, a timestamp, a number), every text value printable ASCII with no space at
  either end and within its field's bounds, a time in range, a finite amount in range (required for
  payments), codes of the right shape (a null event type: a payment), an entity key; no column beyond the
  model's (attributes). Any other row — and every row of a table this cannot read — goes through
  :func:`normalize` unchanged, so a rejection keeps its exact code and message;
- tokens are computed once per distinct value by :meth:`Redactor.field` itself;
- an id is scrubbed by :meth:`Redactor.scrub_value` only when the redactor's own pre-checks (the same patterns,
  run by Arrow's regex engine, which on printable ASCII reads them as Python does: ``\\d`` is ``[0-9]``,
  ``\\s`` a space, a letter ``[A-Za-z]``) could find something in it; otherwise the id is its own scrubbed
  value. A test holds Arrow's answers to Python's on generated text.

The rows come out in the table's order as :func:`normalize` would give them (as tuples in the insert's column
order), rejections included.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sira.ingest.events import (
    ENTITY_KEYS,
    EVENT_COLUMNS,
    FIRST_YEAR,
    MAX_AMOUNT,
    MAX_CLOCK_SKEW,
    MAX_EVENT_ID,
    Rejection,
    Row,
    max_string_length,
    normalize,
    stored_row,
)
from sira.ingest.pii import FREE_TEXT, MAYBE_PII, Redactor  # the redactor's own pre-checks

# field -> longest value EventIn accepts (before the global max_string_length)
TEXT_FIELDS = {
    "event_id": MAX_EVENT_ID, "customer_id": MAX_EVENT_ID, "account_id": MAX_EVENT_ID, "card_token": MAX_EVENT_ID,
    "merchant_id": MAX_EVENT_ID, "terminal_id": MAX_EVENT_ID, "device_id": MAX_EVENT_ID, "card_number": 64,
    "ip_address": 64, "email": 320, "phone": 64, "channel": 32, "currency": 3, "country": 2, "event_type": 7,
}
KNOWN = {*TEXT_FIELDS, "occurred_at", "amount"}
IDS = ("event_id", "customer_id", "account_id", "merchant_id", "terminal_id")  # scrubbed as values (card_token too)
TOKENS = {"card_number": "card_token", "ip_address": "ip_token", "email": "email_token", "phone": "phone_token",
          "device_id": "device_id"}
PRINTABLE = r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$"  # printable ASCII, no space at either end
SHAPES = {"currency": r"^[A-Za-z]{3}$", "country": r"^[A-Za-z]{2}$", "event_type": r"^(?:payment|usage)$"}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_FIRST = datetime(FIRST_YEAR, 1, 1, tzinfo=timezone.utc)


def normalize_table(table: pa.Table, redactor: Redactor, source: str, mapping: Mapping[str, str] | None = None
                    ) -> list[Row | Rejection]:
    """Each row of ``table`` as :func:`normalize` gives it (``source``: already scrubbed), in order, a stored
    row as a tuple in :data:`EVENT_COLUMNS` order (what the insert's COPY takes)."""
    mapped = _mapped(table, mapping or {})
    out: list[Row | Rejection | None] = [None] * table.num_rows
    plain = _plain(mapped) if mapped is not None and table.num_rows else np.zeros(table.num_rows, dtype=bool)
    rows = np.flatnonzero(plain)
    if rows.size and mapped is not None:
        for i, row in zip(rows.tolist(), _rows(mapped.take(pa.array(rows)), redactor, source)):
            out[i] = row
    other = np.flatnonzero([value is None for value in out])
    for i, raw in zip(other.tolist(), table.take(pa.array(other, type=pa.int64())).to_pylist()):
        result = normalize(raw, redactor, source, mapping)
        out[i] = result if isinstance(result, Rejection) else stored_row(result)
    return cast(list[Row | Rejection], out)


def _mapped(table: pa.Table, mapping: Mapping[str, str]) -> pa.Table | None:
    """The table with SIRA's column names, or None when the columns are not all the model's own fields of
    the types read here (extra columns become attributes: :func:`normalize` handles them)."""
    renamed = {src: canonical for canonical, src in mapping.items()}
    names = [renamed.get(n, n) for n in table.column_names]
    if len(set(names)) != len(names) or not set(names) <= KNOWN or "event_id" not in names \
            or "occurred_at" not in names:
        return None
    table = table.rename_columns(names)
    for name in names:
        kind = table.schema.field(name).type
        if name == "occurred_at":
            ok = pa.types.is_timestamp(kind) and cast(pa.TimestampType, kind).unit != "ns"
        elif name == "amount":
            ok = pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_null(kind)
        else:
            ok = pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
        if not ok:
            return None
    return table


def _plain(table: pa.Table) -> np.ndarray:
    """Rows EventIn accepts as they are (see the module docstring)."""
    longest = max_string_length()
    ok = pc.is_valid(table.column("event_id"))
    for name in table.column_names:
        column = table.column(name)
        if name in TEXT_FIELDS and not pa.types.is_null(column.type):
            good = pc.and_(pc.match_substring_regex(column, PRINTABLE),
                           pc.less_equal(pc.utf8_length(column), min(TEXT_FIELDS[name], longest)))
            if name in SHAPES:
                good = pc.and_(good, pc.match_substring_regex(column, SHAPES[name]))
            ok = pc.and_(ok, pc.or_kleene(pc.is_null(column), good))  # null or anything: true
    at = pc.cast(table.column("occurred_at"), pa.timestamp("us", tz="UTC"))
    last = datetime.now(timezone.utc) + MAX_CLOCK_SKEW  # the event model's bound now (a row past it: the model's)
    ok = pc.and_(ok, pc.and_(pc.greater_equal(at, pa.scalar(_FIRST, pa.timestamp("us", tz="UTC"))),
                             pc.less_equal(at, pa.scalar(last, pa.timestamp("us", tz="UTC")))))
    if "event_type" in table.column_names and not pa.types.is_null(table.column("event_type").type):
        payment = pc.fill_null(pc.equal(table.column("event_type"), "payment"), True)  # null: the default
    else:
        payment = pa.array(np.ones(table.num_rows, dtype=bool))
    if "amount" in table.column_names and not pa.types.is_null(table.column("amount").type):
        amount = pc.cast(table.column("amount"), pa.float64(), safe=False)  # beyond 2**53: not plain anyway
        fine = pc.and_(pc.greater_equal(amount, 0.0), pc.less_equal(amount, MAX_AMOUNT))  # NaN compares false
        ok = pc.and_(ok, pc.if_else(pc.is_null(amount), pc.invert(payment), fine))
    else:
        ok = pc.and_(ok, pc.invert(payment))
    keyed = pa.array(np.zeros(table.num_rows, dtype=bool))
    for key in ENTITY_KEYS:
        if key in table.column_names:
            keyed = pc.or_(keyed, pc.is_valid(table.column(key)))
    ok = pc.and_(ok, keyed)
    return np.asarray(pc.fill_null(ok, False).to_numpy(zero_copy_only=False), dtype=bool)


def _each_distinct(table: pa.Table, name: str, fn: Any) -> list[Any]:
    """``fn`` of each distinct non-null value of a column, spread back over its rows (None stays None)."""
    if name not in table.column_names or pa.types.is_null(table.column(name).type):
        return [None] * table.num_rows
    encoded = cast(pa.DictionaryArray, pc.dictionary_encode(table.column(name).combine_chunks()))
    done = np.array([*(fn(v) for v in encoded.dictionary.to_pylist()), None], dtype=object)
    return done[encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)].tolist()


def _scrubbed_ids(table: pa.Table, name: str, redactor: Redactor) -> list[Any]:
    """An id column as :meth:`Redactor.scrub_value` leaves it, calling it only where its pre-checks could find
    something (or, for repeating ids, once per distinct value)."""
    if name not in table.column_names or pa.types.is_null(table.column(name).type):
        return [None] * table.num_rows
    if name != "event_id":
        return _each_distinct(table, name, redactor.scrub_value)
    column = table.column(name)
    suspect = pc.or_(pc.match_substring_regex(column, MAYBE_PII), pc.match_substring_regex(column, FREE_TEXT))
    values = column.to_pylist()
    for i in np.flatnonzero(pc.fill_null(suspect, False).to_numpy(zero_copy_only=False)).tolist():
        values[i] = redactor.scrub_value(values[i])
    return values


def _rows(table: pa.Table, redactor: Redactor, source: str) -> list[Row | None]:
    """The stored rows of plain rows (None: the event id grew too long once redacted; normalize says so)."""
    n = table.num_rows
    values: dict[str, list[Any]] = {name: _scrubbed_ids(table, name, redactor) for name in IDS}
    values.update({column: _each_distinct(table, name, lambda v, name=name: redactor.field(name, v)[1])
                   for name, column in TOKENS.items()})  # card_number's token keys the card...
    values["card_token"] = [pan if pan is not None else given  # ...else the card token sent, scrubbed
                            for given, pan in zip(_scrubbed_ids(table, "card_token", redactor), values["card_token"])]
    micros = pc.cast(pc.cast(table.column("occurred_at"), pa.timestamp("us", tz="UTC")), pa.int64()).to_numpy()
    values["occurred_at"] = [_EPOCH + timedelta(microseconds=us) for us in micros.tolist()]
    values["amount"] = pc.cast(table.column("amount"), pa.float64(), safe=False).to_pylist() \
        if "amount" in table.column_names else [None] * n
    values["event_type"] = [kind or "payment" for kind in table.column("event_type").to_pylist()] \
        if "event_type" in table.column_names else ["payment"] * n
    values["currency"] = _each_distinct(table, "currency", str.upper)
    values["country"] = _each_distinct(table, "country", str.upper)
    values["channel"] = _each_distinct(table, "channel", lambda v: redactor.scrub_value(v.lower()))
    values["source"] = [source] * n
    values["attributes"] = [{}] * n  # no column beyond the model's: no attributes (never mutated)
    rows: list[Row | None] = list(zip(*(values[c] for c in EVENT_COLUMNS)))
    for i, event_id in enumerate(values["event_id"]):
        if len(event_id) > MAX_EVENT_ID:
            rows[i] = None
    return rows


__all__ = ["normalize_table"]
