"""Which Redis stream entries an erasure deletes: the person's events and labels as sources sent them, their
ids compared as ingestion reads them (a number is its text, spaces around an id are dropped)."""

import orjson
import pytest

from sira.monitoring.erasure import _names

OUTSIDE = {"customer_id": "12345", "event_ids": ["777", "ev-1"]}


@pytest.mark.parametrize("data", [
    {"event_id": "x-1", "customer_id": 12345, "amount": 3},  # was kept: 12345 != "12345"
    {"event_id": "x-2", "customer_id": " 12345 "},
    {"event_id": 777, "label": True},  # a label of one of their payments, its id a number
    {"event_id": " ev-1", "label": True},
])
def test_an_entry_about_the_person_is_found_whatever_json_type_its_ids_have(data):
    assert _names({b"data": orjson.dumps(data)}, "12345", OUTSIDE)


@pytest.mark.parametrize("data", [
    {"event_id": "x-3", "customer_id": 123456},
    {"event_id": 7770, "label": True},
    {"event_id": "x-4", "customer_id": True},
    {"event_id": "x-5", "customer_id": {"id": "12345"}},
])
def test_another_persons_entry_is_kept(data):
    assert not _names({b"data": orjson.dumps(data)}, "12345", OUTSIDE)


def test_under_a_consumers_mapped_names_too():
    columns = {"customer_id": {"customer_id", "cust"}, "event_id": {"event_id", "txn"}}
    assert _names({b"data": orjson.dumps({"txn": "x-6", "cust": "12345"})}, "12345", OUTSIDE, columns)
    assert _names({b"data": orjson.dumps({"txn": "ev-1", "label": True})}, "12345", OUTSIDE, columns)
    assert not _names({b"data": orjson.dumps({"txn": "x-7", "cust": "999"})}, "12345", OUTSIDE, columns)
