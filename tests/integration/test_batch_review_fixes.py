"""`sira score` as an outside review (2026-12-07) found it: personal data copied through by --keep-columns into a
world-readable file, a start of 0001-01-01 failing as `internal`, an audit record that named no input, and empty
inputs refused under three codes."""

from __future__ import annotations

import json
import stat
from datetime import timedelta

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from sira.ingest.pii import redactor_for
from tests.integration.test_batch_runs import _last_audit, _range, score

CARD, EMAIL, PHONE, IP = "4111111111111111", "jane.doe@example.com", "+44 20 7946 0958", "203.0.113.7"
PROSE = "Jane Doe, 5 Main Street"


def _cli(fraud_model, monkeypatch, capsys, *args: str):
    from tests.conftest import cli_in_process

    return cli_in_process(monkeypatch, capsys, {
        "SIRA_DATABASE_URL": fraud_model.dsn, "SIRA_WORKSPACE": str(fraud_model.settings.workspace),
        "SIRA_API_KEY": fraud_model.keys["data_scientist"]}, "score", *args)


@pytest.fixture(scope="module")
def features(fraud_model, tmp_path_factory) -> pa.Table:
    """A few hundred stored events' point-in-time features, as --keep-columns writes them."""
    lo, _ = _range(fraud_model)
    out = tmp_path_factory.mktemp("review") / "scored.parquet"
    score(fraud_model, out=out, time_from=lo + timedelta(days=20), time_to=lo + timedelta(days=21), keep_columns=True)
    return pq.read_table(out).drop_columns(["score", "decision", "model", "version"]).slice(0, 300)


def test_kept_columns_are_redacted_and_the_output_is_its_owners_alone(fraud_model, features, tmp_path):
    """A card number and an e-mail beside the features were written verbatim, in a 0644 file."""
    n = features.num_rows
    table = features.append_column("card_number", pa.array([CARD] * n)) \
        .append_column("email", pa.array([EMAIL] * n)).append_column("phone", pa.array([PHONE] * n)) \
        .append_column("ip_address", pa.array([IP] * n)).append_column("cvv", pa.array(["123"] * n)) \
        .append_column("note", pa.array([PROSE, f"paid by {EMAIL}", "ok", None] * (n // 4) + ["ok"] * (n % 4))) \
        .append_column("tags", pa.array([["a"]] * n, pa.list_(pa.string())))
    data = tmp_path / "pii.parquet"
    pq.write_table(table, data)
    redactor = redactor_for(fraud_model.settings)
    scored = {}
    for local_below in (None, 0):  # in this process, and in Ray Data's scoring actors
        out = tmp_path / f"out-{local_below}.parquet"
        result = score(fraud_model, out=out, data=[data], keep_columns=True,
                       **({} if local_below is None else {"local_below": local_below}))
        scored[result["engine"]] = out.read_bytes()
        raw = pq.read_table(out)
        assert "cvv" not in raw.column_names and "tags" not in raw.column_names
        assert "cvv" not in result["columns"] and "card_number" in result["columns"]
        assert set(raw.column("card_number").to_pylist()) == {redactor.token("pan", CARD)}
        assert set(raw.column("email").to_pylist()) == {redactor.token("email", EMAIL)}
        assert set(raw.column("phone").to_pylist()) == {redactor.token("phone", PHONE)}
        assert set(raw.column("ip_address").to_pylist()) == {redactor.token("ip", IP)}
        notes = raw.column("note").to_pylist()[:4]
        assert notes == [redactor.scrub_value(PROSE), redactor.scrub_value(f"paid by {EMAIL}"), "ok", None]
        assert all(note is None or "Jane" not in note and EMAIL not in note for note in notes)
        # what is not personal is as it was: ids, times, features
        for name in ("event_id", "occurred_at", "country", "amount", "customer_count_1d"):
            assert raw.column(name).equals(table.column(name)), name
        assert stat.S_IMODE(out.stat().st_mode) == 0o600  # as model artifacts are (it was 0644)
    assert scored["in process"] == scored["ray data"]


def test_an_id_column_the_pii_policy_drops_is_refused(fraud_model, features, tmp_path):
    from sira.core.errors import InvalidInput

    data = tmp_path / "ssn.parquet"
    pq.write_table(features.append_column("ssn", pa.array([str(i) for i in range(features.num_rows)])), data)
    with pytest.raises(InvalidInput) as caught:
        score(fraud_model, out=tmp_path / "o.parquet", data=[data], id_col="ssn")
    assert caught.value.code == "invalid_column" and "ssn: personal data" in caught.value.message


def test_a_start_before_any_event_is_the_oldest_event(fraud_model, tmp_path, monkeypatch, capsys):
    """--from 0001-01-01 reached PostgreSQL as -infinity: `internal: DatetimeFieldOverflowError`."""
    _, hi = _range(fraud_model)
    end = (hi + timedelta(days=2)).strftime("%Y-%m-%d")
    done = {}
    for start in ("0001-01-01", "0001-01-02"):
        out = tmp_path / f"{start}.parquet"
        ran = _cli(fraud_model, monkeypatch, capsys, "--model", "fraud", "--from", start, "--to", end,
                   "--out", str(out), "--json")
        assert ran.returncode == 0, ran.stderr
        done[start] = json.loads(ran.stdout)
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert done["0001-01-01"]["rows"] == done["0001-01-02"]["rows"] > 0
    assert done["0001-01-01"]["sha256"] == done["0001-01-02"]["sha256"]
    ran = _cli(fraud_model, monkeypatch, capsys, "--model", "fraud", "--from", "0001-01-01", "--to", "0001-02-01",
               "--out", str(tmp_path / "none.parquet"))
    assert ran.returncode == 2 and ran.stderr.startswith("error: empty_input: no stored events between"), ran.stderr


def test_the_audit_record_and_summary_name_the_input(fraud_model, features, tmp_path):
    """They said `1 parquet file(s)`: which file was not recorded anywhere."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(7):
        pq.write_table(features.slice(i * 10, 10), folder / f"part-{i}.parquet")
    result = score(fraud_model, out=tmp_path / "a.parquet", data=[folder])
    record = _last_audit(fraud_model)
    assert result["data"] == record["data"] == [str(folder.resolve())] and record["more_data"] == 0
    assert record["input"] == result["input"] == f"7 parquet file(s) from {folder.resolve()}"
    given = sorted(folder.iterdir())
    result = score(fraud_model, out=tmp_path / "b.parquet", data=given)
    record = _last_audit(fraud_model)
    assert record["data"] == result["data"] == [str(p) for p in given[:5]]
    assert record["more_data"] == result["more_data"] == 2 and record["input"].endswith(" and 2 more")
    assert record["rows"] == result["rows"] == 70
    # stored events: no paths
    lo, _ = _range(fraud_model)
    result = score(fraud_model, out=tmp_path / "c.parquet", time_from=lo, time_to=lo + timedelta(hours=6))
    assert "data" not in result and "data" not in _last_audit(fraud_model)


def test_every_form_of_an_empty_input_is_empty_input(fraud_model, features, tmp_path, monkeypatch, capsys):
    """A CSV of no bytes was `invalid_input: cannot read as csv: Empty CSV file`; one of a header only
    `empty_input: the input has no rows` (no file named); a Parquet file of no rows `no rows in PATH`."""
    zero, header, rows0 = tmp_path / "zero.csv", tmp_path / "header.csv", tmp_path / "rows0.parquet"
    zero.write_bytes(b"")
    pacsv.write_csv(features.slice(0, 0), header)
    pq.write_table(features.slice(0, 0), rows0)
    both = tmp_path / "both"
    both.mkdir()
    (both / "a.csv").write_bytes(b"")
    pacsv.write_csv(features.slice(0, 0), both / "b.csv")
    out = str(tmp_path / "o.parquet")
    for data, words in ((zero, f"{zero}: no rows"), (header, f"{header}: no rows (only a header)"),
                        (rows0, f"{rows0}: no rows"), (both, "no rows in any of the 2 files")):
        done = _cli(fraud_model, monkeypatch, capsys, "--model", "fraud", "--data", str(data), "--out", out)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"error: empty_input: {words}"), done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
    # a CSV of no bytes beside one with rows scores the rows
    pacsv.write_csv(features.slice(0, 5), both / "c.csv")
    assert score(fraud_model, out=tmp_path / "some.parquet", data=[both])["rows"] == 5
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pacsv.write_csv(features.slice(0, 5), mixed / "a.csv")
    pq.write_table(features.slice(0, 5), mixed / "b.parquet")
    done = _cli(fraud_model, monkeypatch, capsys, "--model", "fraud", "--data", str(mixed), "--out", out)
    assert done.returncode == 2 and done.stderr.startswith(
        "error: invalid_input: mixed file formats (csv, parquet): score one format at a time"), done.stderr
