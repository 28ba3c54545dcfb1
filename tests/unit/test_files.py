"""Input files (sira.core.files): column mappings, JSON Lines decoding."""

import pytest

from sira.core.errors import InvalidInput
from sira.core.files import InputFiles, decode_json_line, json_lines, parse_mapping, read_sample

EVENT = {"event_id", "occurred_at", "customer_id", "device_id"}


def test_a_mapping_names_only_the_fields_its_caller_knows(tmp_path):
    """`--map devce_id=DEV` was accepted and the column stored raw as attributes.devce_id: a mapping may name only
    its caller's fields (an event's for `sira ingest`, a label's for `sira feedback import`), in --map and in a
    --map-file alike; without a list of fields (no caller's check) any name passes."""
    assert parse_mapping("device_id=DEV,event_id=TX", fields=EVENT, what="event") == {"device_id": "DEV",
                                                                                        "event_id": "TX"}
    with pytest.raises(InvalidInput) as caught:
        parse_mapping("devce_id=DEV,event_id=TX,amout=AMT", fields=EVENT, what="event")
    assert caught.value.one_line() == ("error: invalid_input: --map amout, devce_id: not a SIRA event field (valid: "
                                       "customer_id, device_id, event_id, occurred_at)")
    assert caught.value.details == {"unknown": ["amout", "devce_id"], "valid": sorted(EVENT)}
    mapping_file = tmp_path / "map.yaml"
    mapping_file.write_text("columns:\n  custmer_id: CUST\n")
    with pytest.raises(InvalidInput, match="--map custmer_id: not a SIRA label field"):
        parse_mapping(None, mapping_file, fields={"event_id", "label", "known_at"}, what="label")
    assert parse_mapping("anything=X") == {"anything": "X"}


def test_a_json_lines_file_starting_with_a_byte_order_mark_is_read(tmp_path):
    """A UTF-8 BOM (as Windows tools write) made line 1 undecodable. It is skipped at the start of the file
    only, as utf-8-sig reads it; the same bytes further on are still not JSON."""
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"event_id": "a"}\n\xef\xbb\xbf{"event_id": "b"}\n{"event_id": "c"}\n')
    (table,) = json_lines(path, 10)
    assert table.column("line").to_pylist() == [1, 2, 3]
    decoded = [decode_json_line(text) for text in table.column("text").to_pylist()]
    assert decoded[0] == {"event_id": "a"} and decoded[2] == {"event_id": "c"}
    assert decoded[1].startswith("not valid JSON")
    sampled, sample = read_sample(InputFiles("json", [path]))
    assert sampled == path
    assert sample.column("event_id").to_pylist() == ["a", "c"]
