"""File rows normalized as columns (sira.ingest.columnar) are exactly what the per-record normalizer gives:
the same stored rows, the same rejections with the same codes and messages, in order. And the two regex
pre-checks that let an id skip the redactor never miss what the redactor would change."""

import math
import re
from datetime import datetime, timedelta, timezone

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sira.ingest.columnar import normalize_table
from sira.ingest.events import EVENT_COLUMNS, MAX_AMOUNT, Rejection, normalize
from sira.ingest.pii import FREE_TEXT, MAYBE_PII, Redactor

R = Redactor(b"columnar-test-key")
SOURCE = "file:test.parquet"

# text that exercises every rule: ids, PII shapes inside ids, prose, blanks, edges, non-ASCII, NUL, long
PIECES = ["c1", "T-9", "ab", "Jean Dupont", "x@y.io", "4111 1111 1111 1111", "+221 77 123 45 67", "10.0.0.1",
          "::1", "a:b", "tok_pan_0123456789abcdef01234567", " lead", "trail ", "", " ", "\t", "é", "Ωmega", "\x00",
          "1.5", "q" * 70, "9" * 13, "EUR", "eur", "EU", "SN", "s", "payment", "usage", "PAYMENT", "Web", "x" * 201,
          *(sep.join(["4111"] * 4) for sep in (".", "/", "_", "  ", "   ")),  # every separator the redactor knows
          "GB82WEST12345698765432", "GB82 WEST 1234 5698 7654 32", "gb82", "NO93 8601 1117 947",  # IBANs
          ";4111111111111111=29121010000000000000?", "%B4111111111111111^DOE/J^2912101?", "D2912101"]  # tracks
text = st.one_of(st.none(), st.sampled_from(PIECES),
                 st.lists(st.sampled_from(PIECES), min_size=1, max_size=3).map("".join),
                 st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x17F), max_size=12))
amounts = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0.0, -0.0, 12.5, MAX_AMOUNT, math.nextafter(MAX_AMOUNT, math.inf), 1e15, -1.0]))
T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
times = st.one_of(st.none(), st.integers(-40 * 365, 200 * 365).map(lambda d: T0 + timedelta(days=d, seconds=7)))


ids = st.text(alphabet="abcXYZ019-_. @:+", min_size=1, max_size=10)  # shapes the redactor looks at, too
# card numbers split by each separator the redactor knows, alone or inside an id
PAN_IDS = st.tuples(st.sampled_from(["", "ord/", "x-"]), st.sampled_from(["-", " ", ".", "/", "_", "  ", "   "])).map(
    lambda p: p[0] + p[1].join(["4111", "1111", "1111", "1111"]))
# IBANs and track data, whole or inside an id (the pre-check must send each to the redactor)
PAYMENT_IDS = st.sampled_from(["pay-GB82WEST12345698765432", "NL91ABNA0417164300", "GB82 WEST 1234 5698 7654 32",
                               ";4111111111111111=29121010000000000000?", "x/4111111111111111D2912101F"])
VALID = {
    "event_id": st.one_of(ids, PAN_IDS, PAYMENT_IDS), "occurred_at": st.integers(0, 5_000_000).map(lambda s: T0 + timedelta(seconds=s)),
    "amount": st.one_of(st.none(), st.floats(0, MAX_AMOUNT), st.sampled_from([0.0, -0.0, 12.5, MAX_AMOUNT])),
    "customer_id": st.one_of(st.none(), ids), "card_number": st.sampled_from(
        [None, "4111111111111111", "5500 0000 0000 0004", "tok_pan_0123456789abcdef01234567", "12"]),
    "card_token": st.sampled_from([None, None, "ct-1", "4111 1111 1111 1111", "Jean Dupont", "tok_pan_0123456789abcdef01234567",
                                   "GB82WEST12345698765432"]),
    "terminal_id": st.one_of(st.none(), ids, PAYMENT_IDS), "merchant_id": st.one_of(st.none(), ids),
    "email": st.sampled_from([None, "a@b.io", "X.Y@EXAMPLE.COM"]), "phone": st.sampled_from([None, "+221771234567"]),
    "ip_address": st.sampled_from([None, "10.0.0.1", "::1", "999.1.1.1"]),
    "device_id": st.sampled_from([None, "dev-1", "Dev 2"]), "currency": st.sampled_from([None, "EUR", "eur", "XOF"]),
    "country": st.sampled_from([None, "SN", "fr"]), "channel": st.sampled_from([None, "web", "POS", "app x@y.io", "Jane Doe", "in store"]),
}


@st.composite
def rows(draw):
    """Mostly rows the fast path takes, some with one field drawn from anything (the per-record path)."""
    row = {name: draw(strategy) for name, strategy in VALID.items()}
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(VALID)))
        row[name] = draw({"occurred_at": times, "amount": amounts}.get(name, text))
    return row


def same(table, mapping=None):
    expected = [normalize(raw, R, SOURCE, mapping) for raw in table.to_pylist()]
    got = normalize_table(table, R, SOURCE, mapping)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        if isinstance(b, Rejection):
            assert a == b
        else:  # the stored row, in the insert's column order
            assert not (isinstance(b["amount"], float) and math.isnan(b["amount"]))
            assert a == tuple(b[c] for c in EVENT_COLUMNS)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows(), min_size=1, max_size=12))
def test_any_rows_come_out_as_the_per_record_normalizer_gives_them(records):
    same(pa.Table.from_pylist(records, schema=pa.schema([
        ("event_id", pa.string()), ("occurred_at", pa.timestamp("us", tz="UTC")), ("amount", pa.float64()),
        *((name, pa.string()) for name in records[0] if name not in ("event_id", "occurred_at", "amount")),
    ])))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.fixed_dictionaries({
    "event_id": st.text(alphabet="abc123", min_size=1, max_size=6), "occurred_at": times,
    "event_type": st.one_of(st.none(), st.sampled_from(["payment", "usage", " usage", "PAYMENT", ""])),
    "amount": st.one_of(st.none(), st.integers(0, 10**6), st.integers(-5, 10**16)), "account_id": st.one_of(ids, text),
}), min_size=1, max_size=10))
def test_event_types_integer_amounts_and_naive_times(records):
    for r in records:
        if r["occurred_at"] is not None:
            r["occurred_at"] = r["occurred_at"].replace(tzinfo=None)
    same(pa.Table.from_pylist(records, schema=pa.schema([
        ("event_id", pa.string()), ("occurred_at", pa.timestamp("ms")), ("event_type", pa.string()),
        ("amount", pa.int64()), ("account_id", pa.string())])))


def test_a_mapping_extra_columns_and_other_types_are_read_as_the_normalizer_reads_them():
    at = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)
    base = {"id": "e1", "when": at, "amount": 10.0, "customer_id": "c1"}
    same(pa.Table.from_pylist([base, {**base, "id": "e2"}]), {"event_id": "id", "occurred_at": "when"})
    same(pa.Table.from_pylist([{"event_id": "e1", "occurred_at": at, "amount": 1.0, "customer_id": "c",
                                "note": "Jean Dupont"}]))  # an attribute
    same(pa.Table.from_pylist([{"event_id": "e1", "occurred_at": at, "amount": 1.0, "customer_id": 42}]))  # a number
    same(pa.Table.from_pylist([{"event_id": "e1", "occurred_at": at, "amount": 1.0, "customer_id": None,
                                "terminal_id": None}]))  # no entity key
    same(pa.Table.from_pylist([{"event_id": "e1", "occurred_at": at, "event_type": None, "amount": 1.0,
                                "customer_id": "c"}]))  # null event type column


def test_an_amount_past_what_the_features_hold_is_refused_on_both_paths():
    """Up to 1e15 used to pass both paths, and overflowed the feature engine's 1e-4 units."""
    at = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)
    table = pa.Table.from_pylist([{"event_id": f"e{i}", "occurred_at": at, "amount": amount, "customer_id": "c"}
                                  for i, amount in enumerate([MAX_AMOUNT, 950_000_000_000_000.0, 1e15])])
    same(table)
    assert [(r.reason_code, r.field) if isinstance(r, Rejection) else r[0] for r in normalize_table(table, R, SOURCE)] \
        == ["e0", ("invalid_field", "amount"), ("invalid_field", "amount")]


def test_a_time_ahead_of_the_clock_is_refused_on_both_paths():
    """Up to 2200 used to pass both paths (and made a checkpoint partition for every month up to it)."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    table = pa.Table.from_pylist([{"event_id": f"e{i}", "occurred_at": at, "amount": 1.0, "customer_id": "c"}
                                  for i, at in enumerate([now - timedelta(minutes=1), now + timedelta(hours=1),
                                                          datetime(2200, 12, 31, tzinfo=timezone.utc)])])
    same(table)
    assert [(r.reason_code, r.field) if isinstance(r, Rejection) else r[0] for r in normalize_table(table, R, SOURCE)] \
        == ["e0", ("future_time", "occurred_at"), ("future_time", "occurred_at")]


def test_card_numbers_in_event_ids_are_tokens_whatever_separates_their_groups():
    """The fast path's pre-check knew only spaces and dashes: these ids were stored as sent from Parquet, and as
    tokens over POST /v1/events (one event stored twice, its labels never joined)."""
    at = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)
    ids = ["4111_1111_1111_1111", "ord/4111/1111/1111/1111", "4111  1111  1111  1111", "4111.1111.1111.1111"]
    table = pa.Table.from_pylist([{"event_id": i, "occurred_at": at, "amount": 1.0, "customer_id": "c"} for i in ids])
    stored = [row[EVENT_COLUMNS.index("event_id")] for row in normalize_table(table, R, SOURCE)]
    assert stored == [normalize(raw, R, SOURCE)["event_id"] for raw in table.to_pylist()]
    assert not any("4111" in i for i in stored)
    same(table)


def test_free_text_in_a_channel_or_a_field_name_becomes_a_token_on_both_paths():
    """channel "Jane Doe" and attribute keys "John Smith", "Mary Major lives at 5 Elm St" were stored as sent
    (channels and field names were only scanned for card numbers, emails, phones and IPs)."""
    at = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)
    event = {"event_id": "e1", "occurred_at": at, "amount": 1.0, "customer_id": "c", "channel": "Jane Doe"}
    row = normalize({**event, "John Smith": 1, "Mary Major lives at 5 Elm St": "x", "card_type": "debit"}, R, SOURCE)
    assert row["channel"] == R.token("text", "jane doe")
    assert row["attributes"] == {R.token("text", "John Smith"): 1, R.token("text", "Mary Major lives at 5 Elm St"): "x",
                                 "card_type": "debit"}
    table = pa.Table.from_pylist([event, {**event, "event_id": "e2", "channel": "web"}])
    assert [r[EVENT_COLUMNS.index("channel")] for r in normalize_table(table, R, SOURCE)] == [row["channel"], "web"]
    same(table)


def test_plain_rows_skip_the_per_record_model(monkeypatch):
    """The fast path is taken: plain rows never reach normalize (a suspect id still reaches the redactor)."""
    import sira.ingest.columnar as columnar

    calls = []
    monkeypatch.setattr(columnar, "normalize", lambda raw, *a, **k: calls.append(raw) or normalize(raw, *a, **k))
    at = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)
    table = pa.Table.from_pylist([{"event_id": f"e{i}", "occurred_at": at, "amount": 1.0, "customer_id": "c",
                                   "email": "A@b.io"} for i in range(50)] +
                                 [{"event_id": "bad", "occurred_at": at, "amount": -1.0, "customer_id": "c",
                                   "email": None}])
    out = columnar.normalize_table(table, R, SOURCE)
    assert [c["event_id"] for c in calls] == ["bad"]
    assert out[0][EVENT_COLUMNS.index("email_token")].startswith("tok_email_")
    assert out[-1].reason_code == "invalid_field"


def python_checks(value):
    from sira.ingest.pii import _FREE_TEXT, _MAYBE_PII

    return bool(_MAYBE_PII.search(value) or _FREE_TEXT.search(value))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(PIECES), st.text(alphabet=st.characters(min_codepoint=0x20,
                                                                                  max_codepoint=0x7E),
                                                           max_size=20)), min_size=1, max_size=4).map("".join))
def test_the_pre_checks_in_arrows_syntax_find_what_the_redactors_find_in_printable_ascii(value):
    import pyarrow.compute as pc

    if not re.fullmatch(r"[\x20-\x7e]*", value):
        return  # the fast path reads only printable ASCII; anything else goes to the redactor itself
    arrow = any(pc.match_substring_regex(pa.array([value]), p)[0].as_py() for p in (MAYBE_PII, FREE_TEXT))
    assert arrow == python_checks(value)
    if not arrow:
        assert R.scrub_value(value) == value
