from datetime import datetime, timezone

import pyarrow as pa
import pytest

from sira.core.config import get_settings
from sira.core.errors import InvalidInput
from sira.ingest.columnar import normalize_table
from sira.ingest.events import EVENT_COLUMNS, Rejection, apply_mapping, check_columns, normalize
from sira.ingest.pii import Redactor

R = Redactor(b"k")
BASE = {"event_id": "e1", "occurred_at": "2026-09-01T10:00:00Z", "customer_id": "c1", "amount": 12.5}


def test_minimal_payment_is_accepted_and_normalised():
    row = normalize({**BASE, "currency": "eur", "country": "sn", "channel": "ECOM"}, R, "test")
    assert not isinstance(row, Rejection)
    assert row["occurred_at"] == datetime(2026, 9, 1, 10, tzinfo=timezone.utc)
    assert (row["currency"], row["country"], row["channel"]) == ("EUR", "SN", "ecom")
    assert row["attributes"] == {} and row["source"] == "test"


def test_naive_timestamps_are_utc_and_numbers_become_ids():
    row = normalize({**BASE, "occurred_at": "2026-09-01 10:00:00", "customer_id": 42}, R, "t")
    assert row["occurred_at"].tzinfo is not None and row["customer_id"] == "42"


def test_pii_fields_become_tokens_and_unknown_pii_is_scrubbed():
    row = normalize(
        {**BASE, "card_number": "4111111111111111", "email": "x@y.com", "ip_address": "198.51.100.1",
         "phone": "+221771234567", "device_id": "dev-1", "cardholder_name": "Jane Doe",
         "note": "refund to 4111 1111 1111 1111", "mcc": 5411},
        R, "t",
    )
    assert row["card_token"].startswith("tok_pan_") and row["email_token"].startswith("tok_email_")
    assert row["ip_token"].startswith("tok_ip_") and row["phone_token"].startswith("tok_phone_")
    assert row["device_id"].startswith("tok_device_")
    assert "cardholder_name" not in row["attributes"]
    assert "4111" not in row["attributes"]["note"] and row["attributes"]["mcc"] == 5411


def test_a_card_number_sent_as_the_card_token_is_tokenised_and_the_card_numbers_token_keys_the_card():
    """A source that puts the card number in card_token: it was stored as sent (the card's token is the scrubbed
    value sent, never the raw one); when both are sent, the card number's token keys the card."""
    sent = normalize({**BASE, "card_token": "4111 1111 1111 1111"}, R, "t")
    assert sent["card_token"].startswith("tok_pan_") and "4111" not in sent["card_token"]
    assert normalize({**BASE, "card_token": "Jean Dupont"}, R, "t")["card_token"].startswith("tok_text_")
    assert normalize({**BASE, "card_token": "ct-1"}, R, "t")["card_token"] == "ct-1"  # a processor's token: kept
    both = normalize({**BASE, "card_token": "ct-1", "card_number": "4111111111111111"}, R, "t")
    assert both["card_token"] == normalize({**BASE, "card_number": "4111111111111111"}, R, "t")["card_token"]


@pytest.mark.parametrize(
    "change, code, field",
    [
        ({"event_id": None}, "missing_field", "event_id"),
        ({"occurred_at": "yesterday"}, "invalid_field", "occurred_at"),
        ({"amount": "twelve"}, "invalid_number", "amount"),  # JSON has numbers: text is not one
        ({"amount": float("inf")}, "invalid_field", "amount"),
        ({"amount": -3}, "invalid_field", "amount"),
        ({"amount": None}, "missing_field", "amount"),
        ({"customer_id": None}, "missing_entity_key", None),
        ({"currency": "EURO"}, "invalid_field", "currency"),
        ({"customer_id": "c\x00"}, "invalid_value", "customer_id"),  # PostgreSQL text refuses NUL
        ({"note": "a\x00b"}, "invalid_value", "note"),
        ({"nested": {"a": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}}, "invalid_value", "nested.a" + ".0" * 14),
    ],
)
def test_bad_records_are_rejected_with_a_reason(change, code, field):
    record = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    result = normalize(record, R, "t")
    assert isinstance(result, Rejection)
    assert (result.reason_code, result.field) == (code, field)


@pytest.mark.parametrize("field", ["event_id", "occurred_at"])
@pytest.mark.parametrize("value", ["", "  ", None, float("nan")])
def test_a_required_field_sent_empty_or_null_is_a_missing_field_as_an_absent_one_is(field, value):
    """A CSV's empty cell, JSON's null, a Parquet null (NaN in a float column): the event has no such field, as
    when the column or key is absent. An empty occurred_at was invalid_field ("Input should be a valid
    datetime"), so `sira rejected --reason missing_field` missed the CSV rows that lacked it."""
    for numbers_as_text in (False, True):  # JSON Lines / the API / streams, and CSV
        result = normalize({**BASE, field: value}, R, "t", numbers_as_text=numbers_as_text)
        assert isinstance(result, Rejection)
        assert (result.reason_code, result.field, result.reason) == ("missing_field", field, f"{field} is required")
    table = pa.table({**{k: [v] for k, v in BASE.items()}, field: pa.array([None], pa.string())})
    (parquet,) = normalize_table(table, R, "t")  # a Parquet file's null
    assert isinstance(parquet, Rejection) and (parquet.reason_code, parquet.field) == ("missing_field", field)


@pytest.mark.parametrize("value", [None, "", "  "])
def test_an_event_type_sent_empty_or_null_is_a_payment_as_an_absent_one_is(value):
    """A CSV's empty cell, JSON's null, a Parquet null: the default, as every other optional field takes its own.
    It was invalid_field ("Input should be 'payment' or 'usage'"), and a JSON Lines file where only some lines
    carried an event_type was refused whole by the sample check (the sample's absent keys are nulls)."""
    for numbers_as_text in (False, True):  # JSON Lines / the API / streams, and CSV
        row = normalize({**BASE, "event_type": value}, R, "t", numbers_as_text=numbers_as_text)
        assert not isinstance(row, Rejection), row
        assert row["event_type"] == "payment"
    no_amount = normalize({k: v for k, v in {**BASE, "event_type": value}.items() if k != "amount"}, R, "t")
    assert isinstance(no_amount, Rejection) and (no_amount.reason_code, no_amount.field) == ("missing_field", "amount")
    table = pa.table({**{k: [v, v] for k, v in BASE.items()}, "event_id": ["e1", "e2"],
                      "event_type": pa.array([value, "usage"], pa.string())})
    parquet = normalize_table(table, R, "t")  # a Parquet file's null
    assert [r[EVENT_COLUMNS.index("event_type")] for r in parquet] == ["payment", "usage"], parquet


@pytest.mark.parametrize("text", ["nan", "NaN", "-nan", "+NaN", " NAN "])
def test_a_nan_amount_sent_as_text_is_a_missing_value_as_a_numeric_nan_is(text):
    """A CSV amount column read as text (one cell in it is no number) passed "nan" on as a number: the event was
    stored with amount NaN, and its customer's 30-day sum read 922337203685477.6. NaN is a missing value
    wherever it comes from: a payment without an amount is missing_field, a usage event has none."""
    for sent in (text, float("nan")):
        result = normalize({**BASE, "amount": sent}, R, "t", numbers_as_text=True)
        assert isinstance(result, Rejection), result
        assert (result.reason_code, result.field) == ("missing_field", "amount")
        usage = normalize({**BASE, "amount": sent, "event_type": "usage"}, R, "t", numbers_as_text=True)
        assert not isinstance(usage, Rejection) and usage["amount"] is None, usage
    http = normalize({**BASE, "amount": float("nan")}, R, "t")  # JSON's NaN (the API's parser takes it)
    assert isinstance(http, Rejection) and (http.reason_code, http.field) == ("missing_field", "amount")
    assert normalize({**BASE, "amount": text}, R, "t").reason_code == "invalid_number"  # JSON text: no number


@pytest.mark.parametrize("text", ["inf", "+inf", "-inf", "Infinity", "-Infinity", "INF", "1e999"])
def test_an_infinite_amount_sent_as_text_is_refused_as_a_numeric_one_is(text):
    for sent in (text, float(text)):
        result = normalize({**BASE, "amount": sent}, R, "t", numbers_as_text=True)
        assert isinstance(result, Rejection), result
        assert (result.reason_code, result.field) == ("invalid_field", "amount")
        assert "must be a finite number" in result.reason


def test_the_sample_check_refuses_a_column_bad_in_every_row_only_and_names_the_file():
    """A JSON Lines sample is a table whose absent keys are nulls: a file where one line of three carried an event
    type, a bad one, was refused whole ("column event_type cannot be read as event_type in any of the first 3
    rows") when its bad line is a dead letter of its own. A column bad throughout is still refused, naming the
    file the sample came from when the caller says which."""
    from sira.core.files import json_table
    from sira.ingest.events import check_sample_types

    lines = [{**BASE, "event_id": "j1"}, {**BASE, "event_id": "j2", "event_type": "refund"},
             {**BASE, "event_id": "j3", "event_type": None}]
    check_sample_types(json_table(lines), {}, numbers_as_text=True)
    bad = json_table([{**line, "event_type": "refund"} for line in lines])
    with pytest.raises(InvalidInput) as caught:
        check_sample_types(bad, {}, numbers_as_text=True, file="in/a.jsonl")
    assert caught.value.one_line() == ("error: invalid_input: in/a.jsonl: column event_type cannot be read as "
                                       "event_type in any of the first 3 rows")
    assert caught.value.details == {"column": "event_type", "file": "in/a.jsonl"}


def test_rejection_payload_is_redacted():
    result = normalize({"event_id": "e9", "email": "victim@example.com", "card_number": "4111111111111111"}, R, "t")
    assert isinstance(result, Rejection)
    assert "victim@example.com" not in str(result.payload) and "4111111111111111" not in str(result.payload)


def test_mapping_and_column_checks():
    assert apply_mapping({"TX_ID": "1", "X": 2}, {"event_id": "TX_ID"}) == {"event_id": "1", "X": 2}
    check_columns(["TX_ID", "TX_DATETIME", "CUSTOMER_ID"], {"event_id": "TX_ID", "occurred_at": "TX_DATETIME",
                                                            "customer_id": "CUSTOMER_ID"})
    with pytest.raises(InvalidInput, match="required column occurred_at is missing"):
        check_columns(["event_id", "customer_id"], {})
    with pytest.raises(InvalidInput, match="no entity key column"):
        check_columns(["event_id", "occurred_at", "amount"], {})
    with pytest.raises(InvalidInput, match="mapped column.*NOPE"):
        check_columns(["event_id", "occurred_at", "customer_id"], {"amount": "NOPE"})
    # a name mapped to that the file has as a column of its own too: the renamed column silently replaced it
    with pytest.raises(InvalidInput, match="--map amount=TX_AMOUNT: the file has its own amount column too"):
        check_columns(["event_id", "occurred_at", "customer_id", "amount", "TX_AMOUNT"], {"amount": "TX_AMOUNT"})


def test_a_rejected_record_is_storable_and_names_the_problem():
    deep: list = [1]
    for _ in range(40):
        deep = [deep]
    result = normalize({**BASE, "note": "a\x00b", "deep": deep}, R, "t")
    assert isinstance(result, Rejection) and "NUL" in result.reason and "note" in result.reason
    import orjson

    stored = orjson.dumps(result.payload).decode()  # jsonb takes it: no NUL, nesting bounded
    assert "\\u0000" not in stored and "\x00" not in stored and stored.count("[") <= 17


def test_card_numbers_sent_as_json_numbers_are_tokens():
    row = normalize({**BASE, "card": 4111111111111111, "cards": [4111111111111111.0], "mcc": 5411}, R, "t")
    assert row["attributes"]["card"].startswith("tok_pan_") and row["attributes"]["cards"][0].startswith("tok_pan_")
    assert row["attributes"]["mcc"] == 5411


def test_an_event_id_that_redaction_makes_too_long_is_rejected():
    """Tokens are longer than the emails they replace: the stored id must still fit its column."""
    event_id = "/".join(["a@b.co"] * 28)[:195]
    result = normalize({**BASE, "event_id": event_id}, R, "t")
    assert isinstance(result, Rejection) and (result.reason_code, result.field) == ("invalid_field", "event_id")
    assert "a@b.co" not in str(result.payload)


LIMIT = get_settings().max_string_length


@pytest.mark.parametrize(
    "change, field",
    [
        ({"note": "x" * (LIMIT + 1)}, "note"),
        ({"customer_id": "x" * 1_000_000}, "customer_id"),
        ({"meta": {"tags": ["ok", "x" * (LIMIT + 1)]}}, "meta.tags.1"),
        ({"meta": {"x" * (LIMIT + 1): 1}}, "meta"),  # a field name is bounded too
        ({"x" * (LIMIT + 1): 1}, None),
    ],
)
def test_an_over_long_string_is_refused_before_redaction_and_kept_out_of_the_dead_letter(change, field):
    import orjson

    result = normalize({**BASE, **change}, R, "t")
    assert isinstance(result, Rejection) and (result.reason_code, result.field) == ("field_too_long", field)
    assert f"longer than {LIMIT} characters" in result.reason
    stored = orjson.dumps(result.payload).decode()
    assert len(stored) < 500 and "<field_too_long " in stored and result.event_id == "e1"
    assert not isinstance(normalize({**BASE, "note": "x" * LIMIT}, R, "t"), Rejection)  # the limit itself is fine


def test_an_over_long_event_id_is_not_named_in_the_rejection():
    result = normalize({**BASE, "event_id": "e" * 1_000_000}, R, "t")
    assert isinstance(result, Rejection) and result.reason_code == "field_too_long" and result.event_id is None


@pytest.mark.parametrize(
    "change, field",
    [({"amount": 2**70}, "amount"), ({"big": 2**63}, "big"), ({"meta": {"n": [-(2**63) - 1]}}, "meta.n.0")],
)
def test_an_integer_beyond_signed_64_bits_is_refused_and_its_dead_letter_is_storable(change, field):
    import orjson

    result = normalize({**BASE, **change}, R, "t")
    assert isinstance(result, Rejection) and (result.reason_code, result.field) == ("invalid_value", field)
    orjson.dumps(result.payload)  # what COPY does with it: beyond 64 bits this raised, losing the whole batch
    if field == "amount":
        assert result.payload["amount"] == str(2**70)  # kept as its digits, for replay
    row = normalize({**BASE, "big": 2**63 - 1, "small": -(2**63)}, R, "t")
    assert row["attributes"] == {"big": 2**63 - 1, "small": -(2**63)}


@pytest.mark.parametrize("amount", [True, False, "12.5", "", "twelve"])
def test_amounts_are_numbers_not_booleans_or_text(amount):
    result = normalize({**BASE, "amount": amount}, R, "t")
    assert isinstance(result, Rejection) and (result.reason_code, result.field) == ("invalid_number", "amount")


def test_numbers_from_csv_text_and_decimals_are_amounts():
    from decimal import Decimal

    assert normalize({**BASE, "amount": "12.5"}, R, "t", numbers_as_text=True)["amount"] == 12.5
    assert normalize({**BASE, "amount": Decimal("7.25")}, R, "t")["amount"] == 7.25
    assert normalize({**BASE, "amount": 12}, R, "t")["amount"] == 12.0
    rejected = normalize({**BASE, "amount": True}, R, "t", numbers_as_text=True)
    assert isinstance(rejected, Rejection) and rejected.reason_code == "invalid_number"


def _scrubs(monkeypatch) -> list[int]:
    """Calls of the redactor's value scrubber (the real one, counted): the work an event costs."""
    calls = [0]
    real = Redactor.scrub_value

    def counted(self, text):
        calls[0] += 1
        return real(self, text)

    monkeypatch.setattr(Redactor, "scrub_value", counted)
    return calls


SPAM = 200_000


@pytest.mark.parametrize("change", [
    {f"key_{i}": i for i in range(SPAM)},  # extra fields: the limit was counted after redacting all of them
    {"meta": {f"key_{i}": i for i in range(SPAM)}},  # in one field: nothing counted them
    {"meta": [{"n": i} for i in range(SPAM)]},
])
def test_an_event_with_too_many_fields_is_refused_before_anything_scans_it_and_its_dead_letter_is_bounded(
        monkeypatch, change):
    """200,000 extra fields (2.3 MB) cost 6 s of redaction before the limit of 64 refused them, and the dead letter
    kept all of them (2.7 MB, every name scrubbed); fields nested in one were never counted (3 s, 4 MB stored)."""
    import orjson

    from sira.ingest.events import CUT, MAX_ATTRIBUTES, MAX_VALUES

    scrubs = _scrubs(monkeypatch)
    # a field name holding an e-mail address, first: kept in the dead letter, redacted
    result = normalize({**BASE, "zelda.quux7@example.org": "x", **change}, R, "t")
    assert isinstance(result, Rejection) and result.reason_code == "too_many_fields", result
    assert result.event_id == "e1" and "quux7" not in result.reason
    assert f"more than {MAX_ATTRIBUTES} extra fields" in result.reason or f"{MAX_VALUES} values" in result.reason
    assert scrubs[0] < 3 * MAX_VALUES  # the payload it keeps, not the 400,000 names and values sent
    stored = orjson.dumps(result.payload).decode()
    assert len(stored) < 50_000 and "quux7@example.org" not in stored and "tok_email_" in stored
    kept = result.payload if len(change) > 1 else result.payload["meta"]
    cut = kept[CUT] if isinstance(kept, dict) else int(kept[-1].split()[1])  # "<cut N items>" ends a list
    assert len(kept) - 1 + cut >= SPAM - MAX_VALUES  # what was not kept is counted, not dropped silently


def test_an_event_at_the_field_limits_is_accepted_whole():
    from sira.ingest.events import MAX_ATTRIBUTES, MAX_VALUES

    extra = {f"k{i}": i for i in range(MAX_ATTRIBUTES - 1)}
    nested = {"meta": [i for i in range(MAX_VALUES - len(BASE) - MAX_ATTRIBUTES)]}
    row = normalize({**BASE, **extra, **nested}, R, "t")
    assert not isinstance(row, Rejection), row
    assert len(row["attributes"]) == MAX_ATTRIBUTES and len(row["attributes"]["meta"]) == len(nested["meta"])
    over = normalize({**BASE, **extra, "meta": [*nested["meta"], 0]}, R, "t")
    assert isinstance(over, Rejection) and over.reason_code == "too_many_fields"
    assert isinstance(normalize({**BASE, **extra, "one": 1, "two": 2}, R, "t"), Rejection)


def test_a_dead_letter_keeps_a_bounded_number_of_characters():
    """A record of a thousand strings each just under SIRA_MAX_STRING_LENGTH (a ~4 MB message) was kept whole in
    its dead letter; now its strings stop at MAX_KEPT_CHARACTERS in all, each one not kept a marker of its length."""
    import orjson

    from sira.ingest.events import MAX_KEPT_CHARACTERS, bounded_json

    record = {**BASE, "meta": [f"{i:04d}" + "y" * 4_000 for i in range(1_000)]}
    kept = bounded_json(record)
    stored = orjson.dumps(kept)
    assert len(stored) < MAX_KEPT_CHARACTERS + 50_000, len(stored)
    assert kept["event_id"] == BASE["event_id"] and kept["meta"][0].startswith("0000")  # the start is kept whole
    assert kept["meta"][-1] == "<cut 4004 characters>"


def test_an_accepted_events_attributes_are_kept_whole_whatever_their_length_in_all():
    """The dead letters' character budget is theirs: 64 attributes of 4,000 characters each (256,000 in all) are
    an accepted event's data, kept whole."""
    from sira.ingest.events import MAX_KEPT_CHARACTERS

    extra = {f"note{i}": f"{i:02d}" + "z" * 3_998 for i in range(64)}
    assert sum(map(len, extra.values())) > MAX_KEPT_CHARACTERS
    row = normalize({**BASE, **extra}, R, "t")
    assert not isinstance(row, Rejection), row
    assert row["attributes"]["note63"] == "63" + "z" * 3_998
