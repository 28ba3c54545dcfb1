"""Ingestion end to end against real Postgres and Ray: files, idempotency, dead letters, bad files."""

import asyncio
import csv
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sira.core.errors import InvalidInput, NotFound
from sira.demo.simulate import SimulationConfig, simulate
from sira.features.definitions import PAYMENTS_V1
from sira.ingest import bulk as ingest


@pytest.fixture(scope="session")
def small_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    return simulate(SimulationConfig(days=6, customers=120, seed=3, fraud_rate=0.03), out)


async def ingest_files(*args, **kwargs):
    """The file path is a blocking driver (Ray); run it off the test's event loop."""
    return await asyncio.to_thread(ingest.ingest_files, *args, **kwargs)


async def count(pool, table, where="true"):
    return await pool.fetchval(f"SELECT count(*) FROM {table} WHERE {where}")


async def test_file_ingest_stores_events_and_features_and_is_idempotent(clean_db, ray_session, settings, small_sim):
    n = pq.read_metadata(small_sim.events_path).num_rows
    summary = await ingest_files(settings, [small_sim.events_path], feature_sets=[PAYMENTS_V1], progress=False)
    assert (summary.read, summary.accepted, summary.duplicates, summary.rejected) == (n, n, 0, 0)
    assert await count(clean_db, "sira_events") == n
    # one row per event for the event itself, its customer, its card and its terminal
    assert summary.features_written == 4 * n == await count(clean_db, "sira_features")
    again = await ingest_files(settings, [small_sim.events_path], feature_sets=[PAYMENTS_V1], progress=False)
    assert (again.accepted, again.duplicates, again.features_written) == (0, n, 0)
    assert await count(clean_db, "sira_events") == n and await count(clean_db, "sira_features") == 4 * n


async def test_a_small_file_loads_in_process_as_ray_data_loads_it(clean_db, ray_session, settings, small_sim,
                                                                    tmp_path):
    """Below ingest.LOCAL_BELOW rows a load runs in the caller's process (no Ray start); the same file through
    Ray Data's tasks stores the same rows and dead letters, and says so in the same counts."""
    import pyarrow as pa

    table = pq.read_table(small_sim.events_path)
    bad = table.slice(0, 40).set_column(table.schema.get_field_index("event_id"), "event_id",
                                        pa.array([f"bad-{i}" for i in range(40)]))
    bad = bad.set_column(bad.schema.get_field_index("amount"), "amount", pa.array([-1.0] * 40))
    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.concat_tables([table, bad, table.slice(0, 25)]), path, row_group_size=1000)  # 25 repeated
    select = ("SELECT event_id, event_type, occurred_at, source, customer_id, account_id, card_token, merchant_id,"
              " terminal_id, device_id, ip_token, email_token, phone_token, amount, currency, country, channel,"
              " attributes FROM sira_events ORDER BY event_id",
              "SELECT event_id, source, reason_code, reason, field, payload, stream_position FROM sira_rejected_events"
              " ORDER BY event_id")
    seen = []
    for local_below in (0, ingest.LOCAL_BELOW):  # Ray Data, then in this process
        summary = await ingest_files(settings, [path], feature_sets=[], progress=False, local_below=local_below)
        async with clean_db.acquire() as conn:
            seen.append(([await conn.fetch(q) for q in select], summary.to_dict()))
            await conn.execute("TRUNCATE sira_events, sira_rejected_events")
    (rows, counts), (rows_here, counts_here) = seen
    assert rows == rows_here and len(rows[0]) == table.num_rows and len(rows[1]) == 40
    assert sorted(r["stream_position"] for r in rows[1]) == sorted(f"mixed.parquet:{table.num_rows + 1 + i}"
                                                                 for i in range(40))  # its row in the file
    timings = ("seconds", "phases")
    assert {k: v for k, v in counts.items() if k not in timings} == \
        {k: v for k, v in counts_here.items() if k not in timings}
    assert (counts["accepted"], counts["duplicates"], counts["rejected"]) == (table.num_rows, 25, 40)


async def test_an_in_process_load_tokenises_with_the_settings_it_was_given(clean_db, settings, tmp_path):
    """The settings handed to ingest_files, not the process's environment, key the tokens of a load run in this
    process (a Ray load hands them to its workers)."""
    from pydantic import SecretStr

    from sira.ingest.pii import Redactor

    own = settings.model_copy(update={"pii_key": SecretStr("a-key-of-this-load-only-0123456789")})
    at = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)
    pq.write_table(pa.Table.from_pylist([{"event_id": "k-1", "occurred_at": at, "amount": 5.0,
                                          "card_number": "4111111111111111"}]), tmp_path / "one.parquet")
    await ingest_files(own, [tmp_path / "one.parquet"], feature_sets=[], progress=False)
    stored = await clean_db.fetchval("SELECT card_token FROM sira_events WHERE event_id = 'k-1'")
    assert stored == Redactor.from_secret("a-key-of-this-load-only-0123456789").token("pan", "4111111111111111")
    assert stored != Redactor.from_secret(settings.secret("pii_key")).token("pan", "4111111111111111")


def write_csv(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


HANDBOOK_MAP = {"event_id": "TRANSACTION_ID", "occurred_at": "TX_DATETIME", "customer_id": "CUSTOMER_ID",
                "terminal_id": "TERMINAL_ID", "amount": "TX_AMOUNT"}


def handbook_rows(n=30):
    start = datetime(2026, 4, 1)
    return [
        {"TRANSACTION_ID": i, "TX_DATETIME": (start + timedelta(minutes=7 * i)).strftime("%Y-%m-%d %H:%M:%S"),
         "CUSTOMER_ID": i % 4, "TERMINAL_ID": 100 + i % 3, "TX_AMOUNT": f"{10 + i:.2f}"}
        for i in range(n)
    ]


async def test_csv_with_column_mapping_loads_good_rows_and_dead_letters_the_rest(clean_db, ray_session, settings, tmp_path):
    rows = handbook_rows()
    rows[3]["TX_AMOUNT"] = "abc"
    rows[5]["TX_DATETIME"] = "not a date"
    rows[7]["CUSTOMER_ID"] = ""
    rows[7]["TERMINAL_ID"] = ""
    rows[9]["TX_AMOUNT"] = "-5"
    write_csv(tmp_path / "tx.csv", rows)
    summary = await ingest_files(settings, [tmp_path / "tx.csv"], feature_sets=[PAYMENTS_V1], mapping=dict(HANDBOOK_MAP),
                                 progress=False)
    assert (summary.accepted, summary.rejected) == (26, 4)
    assert summary.reasons == {"invalid_field": 3, "missing_entity_key": 1}
    rejected = {r["event_id"]: r for r in await clean_db.fetch("SELECT * FROM sira_rejected_events")}
    assert rejected["3"]["field"] == "amount" and rejected["5"]["field"] == "occurred_at"
    assert rejected["7"]["reason_code"] == "missing_entity_key" and "entity key" in rejected["7"]["reason"]
    assert rejected["3"]["payload"]["TX_AMOUNT"] == "abc"  # the original record, for replay
    stored = await clean_db.fetchrow("SELECT * FROM sira_events WHERE event_id = '0'")
    assert stored["customer_id"] == "0" and float(stored["amount"]) == 10.0
    # events without a card get no card features; each has its event, customer and terminal rows
    assert await count(clean_db, "sira_features") == 26 * 3


async def test_the_dead_letters_are_listed_newest_first_by_the_cli_and_over_http(clean_db, ray_session, settings,
                                                                                  tmp_path, monkeypatch, capsys):
    """A file's rejected rows could be seen only with psql: `sira ingest` said "rejected 3", and nothing in the
    CLI or the API read sira_rejected_events."""
    import httpx

    from sira.core import db
    from sira.core.auth import Identity, create_key
    from sira.http.app import create_app
    from tests.conftest import cli_in_process

    rows = handbook_rows(12)
    rows[3]["TX_AMOUNT"] = "abc"
    rows[5]["TX_DATETIME"] = "not a date"
    rows[7]["CUSTOMER_ID"] = ""
    rows[7]["TERMINAL_ID"] = ""
    write_csv(tmp_path / "tx.csv", rows)
    env = {"SIRA_DATABASE_URL": settings.database_url.get_secret_value(), "SIRA_WORKSPACE": str(settings.workspace)}
    mapping = ",".join(f"{k}={v}" for k, v in HANDBOOK_MAP.items())
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, "ingest", str(tmp_path / "tx.csv"),
                                   "--map", mapping)
    assert done.returncode == 0 and "what was set aside, and why: sira rejected" in done.stderr, done.stderr
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, "rejected", "--json")
    assert done.returncode == 0, done.stderr
    page = json.loads(done.stdout)
    assert [(e["event_id"], e["reason_code"], e["field"], e["position"]) for e in page["entries"]] == [
        ("7", "missing_entity_key", None, "tx.csv:8"), ("5", "invalid_field", "occurred_at", "tx.csv:6"),
        ("3", "invalid_field", "amount", "tx.csv:4")]
    assert page["entries"][2]["payload"]["TX_AMOUNT"] == "abc" and page["next_before"] is None
    assert {e["source"] for e in page["entries"]} == {"file:tx.csv"}
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, "rejected", "--reason", "invalid_field",
                                   "--limit", "1", "--json")
    first = json.loads(done.stdout)
    assert [e["event_id"] for e in first["entries"]] == ["5"] and first["next_before"] == first["entries"][0]["id"]
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, "rejected", "--reason", "invalid_field",
                                   "--before", str(first["next_before"]), "--json")
    assert [e["event_id"] for e in json.loads(done.stdout)["entries"]] == ["3"]
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, "rejected")  # the table a person reads
    assert done.returncode == 0 and "missing_entity_key" in done.stderr and "tx.csv:8" in done.stderr
    # over HTTP, with a role that may read them
    pepper = settings.secret("auth_secret")
    async with db.transaction(clean_db) as conn:
        root, _ = await create_key(conn, name="root", roles=["admin"], pepper=pepper, creator=None)
        admin = Identity("root", frozenset({"admin"}), "api_key")
        service, _ = await create_key(conn, name="psp", roles=["service"], pepper=pepper, creator=admin)
        viewer, _ = await create_key(conn, name="viv", roles=["viewer"], pepper=pepper, creator=admin)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            r = await client.get("/v1/events/rejected", params={"source": "file:tx", "limit": 2},
                                 headers={"Authorization": f"Bearer {root}"})
            assert r.status_code == 200, r.text
            assert [e["event_id"] for e in r.json()["entries"]] == ["7", "5"] and r.json()["next_before"]
            r = await client.get("/v1/events/rejected", headers={"Authorization": f"Bearer {service}"})
            assert r.status_code == 200 and r.json()["entries"] == [], r.text  # a file's: not a service's to read
            r = await client.get("/v1/events/rejected", headers={"Authorization": f"Bearer {viewer}"})
            assert r.status_code == 403
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, "rejected")  # keys exist now
    assert done.returncode == 2 and done.stderr.startswith("error: unauthenticated"), done.stderr


async def test_jsonl_and_folders(clean_db, ray_session, settings, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for part in range(2):
        with (folder / f"part{part}.jsonl").open("w") as handle:
            for i in range(5):
                handle.write(json.dumps({"event_id": f"j{part}-{i}", "occurred_at": f"2026-05-0{i + 1}T10:00:00Z",
                                         "account_id": f"a{i}", "event_type": "usage", "api_calls": i}) + "\n")
    summary = await ingest_files(settings, [folder], feature_sets=[PAYMENTS_V1], progress=False)
    assert summary.accepted == 10
    row = await clean_db.fetchrow("SELECT * FROM sira_events WHERE event_id = 'j1-4'")
    assert row["event_type"] == "usage" and row["attributes"] == {"api_calls": 4} and row["amount"] is None


async def test_an_event_id_reused_for_another_payment_is_set_aside_with_its_file_and_row(clean_db, ray_session,
                                                                                         settings, tmp_path):
    """x2 with amount 6 in a.csv and 999 in b.csv was "duplicates": 1, the first kept, an upstream reusing ids
    invisible (and within one file alike). A copy that contradicts the event its id names is now rejected as
    event_id_reused, dead-lettered at its file and row (loaded again, a repeat); a copy alike is a duplicate."""
    def row(i, amount):
        return {"event_id": f"x{i}", "occurred_at": "2026-05-01T10:00:00Z", "customer_id": "c1", "amount": amount}

    write_csv(tmp_path / "a.csv", [row(1, 5), row(2, 6), row(2, "6.00"), row(3, 7), row(3, 70)])
    write_csv(tmp_path / "b.csv", [row(2, 999), row(1, 5)])
    first = await ingest_files(settings, [tmp_path / "a.csv"], feature_sets=[], progress=False)
    assert first.to_dict() | {"seconds": 0, "phases": {}} == {
        "read": 5, "accepted": 3, "duplicates": 1, "rejected": 1, "rejected_by_reason": {"event_id_reused": 1},
        "features_written": 0, "snapshots_updated": 0, "seconds": 0, "phases": {}}
    second = await ingest_files(settings, [tmp_path / "b.csv"], feature_sets=[], progress=False)
    assert (second.accepted, second.duplicates, second.rejected) == (0, 1, 1)
    again = await ingest_files(settings, [tmp_path / "b.csv"], feature_sets=[], progress=False)
    assert (again.accepted, again.duplicates, again.rejected) == (0, 2, 0)
    rows = await clean_db.fetch("SELECT source, stream_position, event_id, reason_code, reason, payload"
                                " FROM sira_rejected_events ORDER BY id")
    assert [(r["source"], r["stream_position"], r["event_id"], r["reason_code"], r["payload"]["amount"])
            for r in rows] == [("file:a.csv", "a.csv:5", "x3", "event_id_reused", 70.0),
                               ("file:b.csv", "b.csv:1", "x2", "event_id_reused", 999.0)]
    assert "amount differ" in rows[1]["reason"]
    assert await clean_db.fetchval("SELECT amount FROM sira_events WHERE event_id = 'x2'") == 6


async def test_a_partitioned_folder_s_dead_letters_name_each_file_by_its_path_inside_the_folder(
        clean_db, ray_session, settings, tmp_path):
    """A Hive-style folder (``dt=.../part-0.csv``) repeats file names: every dead letter's position was
    ``part-0.csv:2``, naming no file a person could find, and the same bad row in two partitions was stored once
    (the second counted as a repeat of the first: one lost)."""
    bad = {"event_id": "x", "occurred_at": "2026-05-01T10:00:00Z", "customer_id": "c1", "amount": "-5"}
    for day in ("dt=2026-05-01", "dt=2026-05-02"):
        for suffix in ("csv", "jsonl"):
            (tmp_path / suffix / day).mkdir(parents=True)
        write_csv(tmp_path / "csv" / day / "part-0.csv", [{**bad, "event_id": day, "amount": 5}, bad])
        (tmp_path / "jsonl" / day / "part-0.jsonl").write_text(json.dumps({**bad, "event_id": day, "amount": 5})
                                                                + "\n{not json\n")
    for suffix in ("csv", "jsonl"):
        done = await ingest_files(settings, [tmp_path / suffix], feature_sets=[], progress=False)
        assert (done.read, done.accepted, done.rejected) == (4, 2 if suffix == "csv" else 0, 2), (suffix, done)
    rows = await clean_db.fetch("SELECT stream_position, payload->>'file' AS file FROM sira_rejected_events ORDER BY id")
    assert [r["stream_position"] for r in rows] == [
        "dt=2026-05-01/part-0.csv:2", "dt=2026-05-02/part-0.csv:2",
        "dt=2026-05-01/part-0.jsonl:2", "dt=2026-05-02/part-0.jsonl:2"]
    assert rows[3]["file"] == "dt=2026-05-02/part-0.jsonl"


async def test_ingesting_a_file_again_adds_no_dead_letter(clean_db, ray_session, settings, tmp_path):
    """Re-ingesting a file changes nothing: its bad rows were dead-lettered again and counted as rejected again.
    A file's dead letter is now idempotent like a stream's (its file's name and row number, and its payload): the
    second load counts them as duplicates; a row changed since (another payload at that row) is a new one."""
    at = "2026-05-01T10:00:00Z"
    good = [{"event_id": f"f{i}", "occurred_at": at, "customer_id": "c1", "amount": 10 + i} for i in range(4)]
    write_csv(tmp_path / "a.csv", [good[0], {**good[1], "amount": "-5"}, good[2]])
    (tmp_path / "a.jsonl").write_text(json.dumps(good[3]) + "\n{not json\n" + json.dumps({**good[1], "amount": -7})
                                      + "\n")
    pq.write_table(pa.Table.from_pylist([{**good[0], "occurred_at": datetime(2026, 5, 1, tzinfo=timezone.utc),
                                          "amount": amount, "event_id": f"p{i}"} for i, amount in enumerate((1.0, -1.0))]),
                   tmp_path / "a.parquet")
    for name, rows, rejected in (("a.csv", 3, 1), ("a.jsonl", 3, 2), ("a.parquet", 2, 1)):
        first = await ingest_files(settings, [tmp_path / name], feature_sets=[], progress=False)
        again = await ingest_files(settings, [tmp_path / name], feature_sets=[], progress=False)
        assert (first.read, first.rejected) == (rows, rejected), (name, first)
        assert (again.read, again.accepted, again.duplicates, again.rejected, again.reasons) == \
            (rows, 0, rows, 0, {}), (name, again)
    positions = await clean_db.fetch("SELECT source, stream_position, reason_code FROM sira_rejected_events ORDER BY id")
    assert [tuple(r) for r in positions] == [
        ("file:a.csv", "a.csv:2", "invalid_field"), ("file:a.jsonl", "a.jsonl:2", "undecodable"),
        ("file:a.jsonl", "a.jsonl:3", "invalid_field"), ("file:a.parquet", "a.parquet:2", "invalid_field")]
    write_csv(tmp_path / "a.csv", [good[0], {**good[1], "amount": "-6"}, good[2]])  # row 2 edited: still bad
    edited = await ingest_files(settings, [tmp_path / "a.csv"], feature_sets=[], progress=False)
    assert (edited.duplicates, edited.rejected) == (2, 1)
    assert await count(clean_db, "sira_rejected_events") == 5


async def test_unworkable_files_fail_before_loading_anything(clean_db, settings, tmp_path):
    rows = handbook_rows(5)
    write_csv(tmp_path / "no_time.csv", [{k: v for k, v in r.items() if k != "TX_DATETIME"} for r in rows])
    with pytest.raises(InvalidInput, match="required column occurred_at is missing"):
        await ingest_files(settings, [tmp_path / "no_time.csv"], feature_sets=[PAYMENTS_V1],
                     mapping={"event_id": "TRANSACTION_ID", "customer_id": "CUSTOMER_ID"}, progress=False)
    write_csv(tmp_path / "words.csv", [{**r, "TX_AMOUNT": "lots"} for r in rows])
    with pytest.raises(InvalidInput, match="column TX_AMOUNT cannot be read as amount") as caught:
        await ingest_files(settings, [tmp_path / "words.csv"], feature_sets=[PAYMENTS_V1],
                     mapping={"event_id": "TRANSACTION_ID", "occurred_at": "TX_DATETIME",
                              "customer_id": "CUSTOMER_ID", "amount": "TX_AMOUNT"}, progress=False)
    # each refusal names the file (of a folder: the one refused), as the docs say; these two did not
    assert caught.value.details["file"].endswith("words.csv") and "words.csv: column" in caught.value.message
    (tmp_path / "lines").mkdir()
    (tmp_path / "lines" / "a.jsonl").write_text("")
    (tmp_path / "lines" / "b.jsonl").write_text('{"event_id": "j1", "customer_id": "c1", "amount": 3}\n')
    with pytest.raises(InvalidInput, match="required column occurred_at is missing") as caught:
        await ingest_files(settings, [tmp_path / "lines"], feature_sets=[PAYMENTS_V1], progress=False)
    assert caught.value.details["file"].endswith("b.jsonl") and "b.jsonl: required column" in caught.value.message
    with pytest.raises(NotFound, match="file not found"):
        await ingest_files(settings, [tmp_path / "missing.parquet"], feature_sets=[PAYMENTS_V1], progress=False)
    assert await count(clean_db, "sira_events") == 0 and await count(clean_db, "sira_rejected_events") == 0


async def test_a_csv_nan_amount_is_a_missing_value_not_a_stored_nan(clean_db, settings, tmp_path):
    """An amount column with one cell that is no number is read as text: its "nan" was stored as amount NaN
    (PostgreSQL's numeric holds one), and the customer's 30-day sum read 922337203685477.6. It is a missing
    value, as NaN is in a numeric column: the payment is dead-lettered missing_field; "inf" is refused."""
    at = "2026-05-01T10:00:00Z"
    amounts = ["10", "twelve", "nan", "NaN", "inf", "11.5"]
    write_csv(tmp_path / "a.csv", [{"event_id": f"b{i}", "occurred_at": at, "customer_id": "c2", "amount": a}
                                   for i, a in enumerate(amounts)])
    summary = await ingest_files(settings, [tmp_path / "a.csv"], feature_sets=[], progress=False)
    assert (summary.accepted, summary.rejected) == (2, 4), summary
    assert await count(clean_db, "sira_events", "amount = 'NaN'") == 0
    assert [tuple(r) for r in await clean_db.fetch(
        "SELECT stream_position, reason_code, field FROM sira_rejected_events ORDER BY stream_position")] == [
        ("a.csv:2", "invalid_field", "amount"), ("a.csv:3", "missing_field", "amount"),
        ("a.csv:4", "missing_field", "amount"), ("a.csv:5", "invalid_field", "amount")]


async def test_a_jsonl_file_with_one_bad_event_type_dead_letters_that_line_only(clean_db, settings, tmp_path):
    """The sample check reads JSON Lines as a table whose absent keys are nulls, and a null event type was refused:
    a file where only one line of three carried an event type (a bad one) failed whole ("column event_type cannot
    be read as event_type in any of the first 3 rows"). Now an absent or null event type is a payment."""
    at = "2026-05-01T10:00:00Z"
    lines = [{"event_id": "j1", "occurred_at": at, "customer_id": "c1", "amount": 5},
             {"event_id": "j2", "occurred_at": at, "customer_id": "c1", "amount": 5, "event_type": "refund"},
             {"event_id": "j3", "occurred_at": at, "customer_id": "c1", "amount": 5, "event_type": None}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = await ingest_files(settings, [tmp_path / "a.jsonl"], feature_sets=[], progress=False)
    assert (summary.accepted, summary.rejected) == (2, 1), summary
    assert [tuple(r) for r in await clean_db.fetch("SELECT event_id, event_type FROM sira_events ORDER BY 1")] == [
        ("j1", "payment"), ("j3", "payment")]
    assert tuple(await clean_db.fetchrow("SELECT stream_position, reason_code, field FROM sira_rejected_events")) == \
        ("a.jsonl:2", "invalid_field", "event_type")


async def test_a_folder_whose_later_file_lacks_a_column_fails_before_loading_anything(clean_db, settings, tmp_path):
    """Only the first file's columns were checked: a folder whose second Parquet file has no event_id loaded the
    first and dead-lettered every row of the second (missing_field). Every file's columns are checked now, from
    the Parquet footers and CSV headers, and the one-line error names the file."""
    at = datetime(2026, 5, 1, tzinfo=timezone.utc)
    rows = [{"event_id": f"e{i}", "occurred_at": at, "customer_id": "c1", "amount": 5.0} for i in range(3)]
    for ext, write in ((".parquet", lambda path, r: pq.write_table(pa.Table.from_pylist(r), path)),
                       (".csv", lambda path, r: write_csv(path, [{**x, "occurred_at": at.isoformat()} for x in r]))):
        folder = tmp_path / ext[1:]
        folder.mkdir()
        write(folder / f"a{ext}", rows)
        write(folder / f"b{ext}", [{k: v for k, v in r.items() if k != "event_id"} for r in rows])
        with pytest.raises(InvalidInput) as caught:
            await ingest_files(settings, [folder], feature_sets=[PAYMENTS_V1], progress=False)
        assert caught.value.one_line() == (f"error: invalid_input: {(folder / f'b{ext}').resolve()}: required column "
                                           "event_id is missing (map one with --map event_id=SOURCE_COLUMN)")
        assert await count(clean_db, "sira_events") == 0 and await count(clean_db, "sira_rejected_events") == 0


def damaged_parquet(path, n=2000, groups=4):
    """Events in Parquet with the last row group's data page overwritten: the footer (and so the first
    rows a check reads) is intact, the damage shows only when that page is read."""
    import pyarrow as pa

    table = pa.table({"event_id": [f"p{i}" for i in range(n)],
                      "occurred_at": [f"2026-05-01T10:{i % 60:02d}:00Z" for i in range(n)],
                      "customer_id": [f"c{i % 10}" for i in range(n)], "amount": [float(i) for i in range(n)]})
    pq.write_table(table, path, row_group_size=n // groups)
    start = pq.read_metadata(path).row_group(groups - 1).column(3).data_page_offset
    data = bytearray(path.read_bytes())
    data[start + 30:start + 200] = b"\xff" * 170
    path.write_bytes(bytes(data))
    return path


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_cli_reports_a_file_damaged_past_its_footer_in_one_line(clean_db, settings, pg_dsn, tmp_path):
    bad = damaged_parquet(tmp_path / "damaged.parquet")
    env = {**os.environ, "SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(settings.workspace),
           "SIRA_RAY_NUM_CPUS": "1"}
    env.pop("RAY_ADDRESS", None)
    env.pop("SIRA_RAY_ADDRESS", None)
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "sira", "ingest", str(bad), "--json"],
                                   env=env, capture_output=True, text=True, timeout=240)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stdout == "" and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[-1].startswith(f"error: invalid_input: {bad}: cannot read as parquet: "), lines[-1]
    assert [line for line in lines if "error" in line.lower()] == [lines[-1]], done.stderr[-3000:]


async def test_jsonl_rows_are_checked_one_by_one_like_csv_rows(clean_db, ray_session, settings, tmp_path):
    rows = [{"event_id": f"m{i}", "occurred_at": "2026-05-01T10:00:00Z", "customer_id": "c1", "amount": 10 + i}
            for i in range(6)]
    rows[2]["amount"] = "lots"  # text where every other row has a number
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n" + "[1, 2]\n")
    summary = await ingest_files(settings, [path], feature_sets=[PAYMENTS_V1], progress=False)
    assert (summary.read, summary.accepted, summary.rejected) == (8, 5, 3)
    assert summary.reasons["undecodable"] == 2
    rejected = {r["event_id"]: r for r in await clean_db.fetch("SELECT * FROM sira_rejected_events")}
    assert rejected["m2"]["field"] == "amount" and rejected["m2"]["payload"]["amount"] == "lots"
    broken = await clean_db.fetch("SELECT * FROM sira_rejected_events WHERE reason_code = 'undecodable'")
    assert sorted(r["payload"]["line"] for r in broken) == [7, 8]  # where to look, not the (unredacted) text
    assert {r["payload"]["file"] for r in broken} == {"mixed.jsonl"}
    assert await count(clean_db, "sira_events") == 5


async def test_an_infinite_attribute_is_a_dead_letter_not_a_null(clean_db, ray_session, settings, tmp_path):
    """An infinite attribute (CSV `inf`, JSON `1e999` through POST /v1/events or the stream) was stored as null:
    the value lost without a word. JSON has no infinity and an attribute is read as sent, so the event is
    refused (invalid_number, naming the field) and its dead letter keeps the value as text; NaN stays a missing
    value (pandas writes NaN for one)."""
    write_csv(tmp_path / "inf.csv", [{"event_id": f"i{i}", "occurred_at": "2026-05-01T10:00:00Z", "customer_id": "c1",
                                      "amount": 5, "risk": risk} for i, risk in enumerate(("0.5", "inf", "-inf"))])
    summary = await ingest_files(settings, [tmp_path / "inf.csv"], feature_sets=[], progress=False)
    assert (summary.accepted, summary.rejected, summary.reasons) == (1, 2, {"invalid_number": 2})
    sent = [{"event_id": f"h{i}", "occurred_at": "2026-05-01T10:00:00Z", "customer_id": "c1", "amount": 5,
             "device": {"score": score}} for i, score in enumerate((float("inf"), float("nan")))]
    online = await ingest.ingest_records(clean_db, sent, redactor=ingest.redactor_for(settings), source="api",
                                         feature_sets=[])
    assert (online.accepted, online.rejected) == (1, 1)
    dead = {r["event_id"]: r for r in await clean_db.fetch("SELECT * FROM sira_rejected_events")}
    assert {k: (r["reason_code"], r["field"], r["reason"]) for k, r in dead.items()} == {
        "i1": ("invalid_number", "risk", "risk: must be a finite number (not infinity)"),
        "i2": ("invalid_number", "risk", "risk: must be a finite number (not infinity)"),
        "h0": ("invalid_number", "device.score", "device.score: must be a finite number (not infinity)")}
    assert (dead["i1"]["payload"]["risk"], dead["i2"]["payload"]["risk"], dead["h0"]["payload"]["device"]) == \
        ("inf", "-inf", {"score": "inf"})
    stored = {r["event_id"]: r["attributes"] for r in await clean_db.fetch("SELECT event_id, attributes FROM sira_events")}
    assert stored == {"i0": {"risk": 0.5}, "h1": {"device": {"score": None}}}


async def test_jsonl_integers_in_extra_fields_stay_integers(clean_db, ray_session, settings, tmp_path):
    rows = [{"event_id": f"k{i}", "occurred_at": "2026-05-01T10:00:00Z", "account_id": "a1", "event_type": "usage",
             "api_calls": i, "ratio": 0.5} for i in range(4)]
    rows[3]["api_calls"] = 2.5  # one fraction: Arrow made the whole column floating point
    del rows[1]["ratio"]  # a field some rows lack is not stored as null in the others
    path = tmp_path / "ints.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = await ingest_files(settings, [path], feature_sets=[PAYMENTS_V1], progress=False)
    assert summary.accepted == 4
    stored = {r["event_id"]: r for r in await clean_db.fetch(
        "SELECT event_id, attributes, attributes->>'api_calls' AS calls FROM sira_events")}
    assert [stored[f"k{i}"]["calls"] for i in range(4)] == ["0", "1", "2", "2.5"]  # not 0.0, 1.0, 2.0
    assert stored["k0"]["attributes"] == {"api_calls": 0, "ratio": 0.5}
    assert stored["k1"]["attributes"] == {"api_calls": 1}


async def test_header_only_csv_is_a_clear_input_error(clean_db, settings, tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("event_id,occurred_at,customer_id,amount\n")
    with pytest.raises(InvalidInput) as caught:
        await ingest_files(settings, [path], feature_sets=[PAYMENTS_V1], progress=False)
    assert caught.value.code == "empty_input"
    assert caught.value.one_line() == f"error: empty_input: {path}: no rows (only a header)"
    assert await count(clean_db, "sira_events") == 0


@pytest.mark.slow
async def test_a_file_load_records_who_loaded_it(clean_db, ray_session, settings, tmp_path, monkeypatch, capsys):
    """`sira ingest` acts as the key's owner, and the audit log says so (it resolved the key and then threw
    the identity away); before any key exists, the local user. File names are scrubbed as sources are."""
    from sira.core import db
    from sira.core.audit import Actor
    from sira.core.auth import Identity, create_key

    write_csv(tmp_path / "jane.doe@example.com.csv", handbook_rows(6))
    await ingest_files(settings, [tmp_path / "jane.doe@example.com.csv"], feature_sets=[PAYMENTS_V1],
                       mapping=dict(HANDBOOK_MAP), progress=False)
    pepper = settings.secret("auth_secret")
    async with db.transaction(clean_db) as conn:
        await create_key(conn, name="root", roles=["admin"], pepper=pepper, creator=None)
        admin = Identity("root", frozenset({"admin"}), "api_key")
        key, _ = await create_key(conn, name="loader-svc", roles=["service"], pepper=pepper, creator=admin)
    write_csv(tmp_path / "more.csv", handbook_rows(8))
    from tests.conftest import cli_in_process

    env = {"SIRA_DATABASE_URL": settings.database_url.get_secret_value(), "SIRA_WORKSPACE": str(settings.workspace),
           "SIRA_API_KEY": key}
    args = ["ingest", str(tmp_path / "more.csv"), "--json", "--map", ",".join(f"{k}={v}" for k, v in HANDBOOK_MAP.items())]
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, *args)  # the command, in this process
    assert done.returncode == 0, done.stderr
    rows = await clean_db.fetch("SELECT actor, actor_kind, target_id, details FROM sira_audit_log "
                                "WHERE action = 'events.ingest' ORDER BY id")
    assert [(r["actor"], r["actor_kind"]) for r in rows] == [(Actor.local().name, Actor.local().kind),
                                                             ("loader-svc", "api_key")]
    first, second = (r["details"] for r in rows)
    assert (first["accepted"], second["accepted"], second["read"], second["files"]) == (6, 2, 8, ["more.csv"])
    assert "jane.doe@example.com" not in json.dumps(first) + rows[0]["target_id"]


async def test_file_ingest_folds_new_events_into_feature_engine_v2_states_and_checkpoints(clean_db, ray_session,
                                                                                           settings, small_sim):
    """Files loaded in two parts (the second with events older than the first's newest): v2 states and
    checkpoints come out as a rebuild of the whole log gives them, and no per-event feature rows."""
    import pyarrow.compute as pc

    from sira.features.definitions import PAYMENTS_V2
    from sira.features.states import rebuild

    table = pq.read_table(small_sim.events_path)
    cut = pc.greater(table["event_id"], table["event_id"][table.num_rows // 2])  # split by id: times interleave
    folder = small_sim.events_path.parent / "v2-parts"
    folder.mkdir(exist_ok=True)
    pq.write_table(table.filter(pc.invert(cut)), folder / "a.parquet")
    pq.write_table(table.filter(cut), folder / "b.parquet")
    first = await ingest_files(settings, [folder / "a.parquet"], feature_sets=[PAYMENTS_V2], progress=False)
    second = await ingest_files(settings, [folder / "b.parquet"], feature_sets=[PAYMENTS_V2], progress=False)
    assert first.accepted + second.accepted == table.num_rows and second.snapshots_updated > 0
    assert "states:payments@2" in second.phases and await count(clean_db, "sira_features") == 0
    select = ("SELECT entity_type, entity_id, state FROM sira_entity_states ORDER BY 1, 2",
              "SELECT entity_type, entity_id, as_of, state FROM sira_state_checkpoints ORDER BY 1, 2, 3")
    async with clean_db.acquire() as conn:
        loaded = [await conn.fetch(q) for q in select]
        async with conn.transaction():
            await conn.execute("TRUNCATE sira_entity_states, sira_state_checkpoints, sira_job_watermarks")
            await rebuild(conn, PAYMENTS_V2)
            assert [await conn.fetch(q) for q in select] == loaded and len(loaded[1]) > len(loaded[0])


async def test_new_events_are_folded_into_every_feature_set_in_service(clean_db, settings):
    """The current version, and each version a production or staging model was trained on."""
    from sira.features.definitions import PAYMENTS_V2

    async with clean_db.acquire() as conn:
        assert await ingest.feature_sets_in_service(conn) == [PAYMENTS_V2]
        model = await conn.fetchval(
            "INSERT INTO sira_models (name, model_type, feature_set, feature_set_version, created_by)"
            " VALUES ('fraud', 'fraud_detection', 'payments', 1, 't') RETURNING id")
        await conn.execute(
            "INSERT INTO sira_model_versions (model_id, version, status, artifact_uri, artifact_sha256,"
            " feature_set_version, created_by) VALUES ($1, 1, 'candidate', 'x', $2, 1, 't')", model, "0" * 64)
        assert await ingest.feature_sets_in_service(conn) == [PAYMENTS_V2]  # a candidate serves nothing
        await conn.execute("UPDATE sira_model_versions SET status = 'staging'")
        assert await ingest.feature_sets_in_service(conn) == [PAYMENTS_V1, PAYMENTS_V2]
    summary = await ingest.ingest_records(clean_db, [{"event_id": "e1", "occurred_at": "2026-09-01T10:00:00Z",
                                                      "customer_id": "c1", "terminal_id": "t1", "amount": 10,
                                                      "card_number": "4111111111111111"}],
                                          redactor=ingest.redactor_for(settings), source="test")
    assert summary.features_written == 4  # v1: the event and its customer, card and terminal rows
    assert await count(clean_db, "sira_entity_states") == 3  # v2: its customer's, card's and terminal's states


async def test_bulk_loads_leave_the_planner_statistics_of_what_they_loaded(clean_db, ray_session, settings,
                                                                           small_sim, tmp_path):
    """A file load and a label import ANALYZE the tables they filled: without statistics the first training
    build on a fresh load planned its label lookups by the wrong index (4.4× slower, docs/performance.md)."""
    from sira.ingest.labels import import_label_files

    async def analyzed(table):
        async with clean_db.acquire() as conn:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            return await conn.fetchval("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = $1", table)

    before = {t: await analyzed(t) for t in ("sira_events", "sira_feedback")}
    await ingest_files(settings, [small_sim.events_path], feature_sets=[], progress=False)
    events = await analyzed("sira_events")
    assert events is not None and (before["sira_events"] is None or events > before["sira_events"])
    await import_label_files(settings, [small_sim.labels_path], source="sim")
    labels = await analyzed("sira_feedback")
    assert labels is not None and (before["sira_feedback"] is None or labels > before["sira_feedback"])


async def test_csv_ids_of_digits_keep_their_leading_zeros(clean_db, settings, tmp_path):
    """Arrow inferred a CSV column of digits as numbers: event ids 00123, 0123 and 123 became one (two counted
    as duplicates, nothing dead-lettered), customers 007 and 0007 one customer, and a phone +33... a float.
    Ids and the other text fields are now read as text; the amount and the time are still typed."""
    from sira.features.definitions import PAYMENTS_V2
    from sira.ingest.labels import import_label_files

    rows = [{"event_id": eid, "occurred_at": f"2026-09-01 10:0{i}:00", "customer_id": cid, "phone": "+33612345678",
             "amount": "12.50"}
            for i, (eid, cid) in enumerate([("00123", "007"), ("0123", "0007"), ("123", "7")])]
    write_csv(tmp_path / "ids.csv", rows)
    summary = await ingest_files(settings, [tmp_path / "ids.csv"], feature_sets=[PAYMENTS_V2], progress=False)
    assert (summary.accepted, summary.duplicates, summary.rejected) == (3, 0, 0)
    stored = await clean_db.fetch("SELECT event_id, customer_id, phone_token, amount FROM sira_events ORDER BY 1")
    assert [(r["event_id"], r["customer_id"]) for r in stored] == [("00123", "007"), ("0123", "0007"), ("123", "7")]
    assert len({r["phone_token"] for r in stored}) == 1 and float(stored[0]["amount"]) == 12.5
    from sira.ingest.bulk import redactor_for  # the same phone sent as JSON gets the same token
    assert stored[0]["phone_token"] == redactor_for(settings).field("phone", "+33612345678")[1]
    write_csv(tmp_path / "labels.csv", [{"event_id": "0123", "label": 1, "known_at": "2026-09-20 00:00:00"}])
    await import_label_files(settings, [tmp_path / "labels.csv"], source="bank")
    assert await clean_db.fetchval("SELECT event_id FROM sira_feedback") == "0123"


async def test_mapped_columns_are_redacted_in_dead_letters_as_the_fields_they_are_mapped_to(clean_db, settings,
                                                                                            tmp_path):
    """A rejected row's payload was redacted by its source column names, which the policy does not know: with
    --map device_id=DEV,phone=TELNO the dead letter kept "DEV": "dev-SECRET99" and "TELNO": "0687654321". Each
    mapped column is now redacted as its SIRA field is (the token the stored events hold), under its source
    name so the record can be sent again with the same mapping."""
    from sira.ingest.bulk import redactor_for

    mapping = {"event_id": "ID", "occurred_at": "WHEN", "customer_id": "CUST", "device_id": "DEV", "phone": "TELNO"}
    rows = [{"ID": f"m{i}", "WHEN": "2026-09-01 10:00:00", "CUST": "c1", "DEV": "dev-SECRET99", "TELNO": "0687654321",
             "amount": "abc" if i == 1 else "12.50"} for i in range(2)]
    write_csv(tmp_path / "mapped.csv", rows)
    summary = await ingest_files(settings, [tmp_path / "mapped.csv"], feature_sets=[PAYMENTS_V1], mapping=mapping,
                                 progress=False)
    assert (summary.accepted, summary.rejected) == (1, 1)
    payload = await clean_db.fetchval("SELECT payload FROM sira_rejected_events WHERE event_id = 'm1'")
    stored = await clean_db.fetchrow("SELECT device_id, phone_token FROM sira_events WHERE event_id = 'm0'")
    assert payload["DEV"] == stored["device_id"] == redactor_for(settings).field("device_id", "dev-SECRET99")[1]
    assert payload["TELNO"] == stored["phone_token"]
    assert (payload["ID"], payload["CUST"], payload["amount"]) == ("m1", "c1", "abc")  # the rest, for replay
    stored_text = await clean_db.fetchval("SELECT (SELECT string_agg(e::text, ' ') FROM sira_events e) || "
                                          "(SELECT string_agg(r::text, ' ') FROM sira_rejected_events r)")
    assert "SECRET99" not in stored_text and "0687654321" not in stored_text


async def test_a_ray_data_load_with_bad_rows_in_some_batches_only_adds_its_counts_up(clean_db, ray_session, settings,
                                                                                    tmp_path):
    """Each Ray Data batch returned its rejections by reason as a dict; Ray Data merged them into one struct with
    every reason, a batch without one had None there, and adding the counts up failed (`NoneType + int`) once
    every event was stored: no states folded, no summary, no audit record, and a run again folded nothing (its
    events were all duplicates). Now the counts add up, and a load whose events were stored before folds those
    no fold has seen."""
    from sira.features.definitions import PAYMENTS_V2

    rows = handbook_rows(30)
    rows[5]["TX_AMOUNT"] = "-1"  # in the first batch of ten only
    write_csv(tmp_path / "mid.csv", rows)
    load = {"mapping": dict(HANDBOOK_MAP), "progress": False, "batch_size": 10}
    summary = await ingest_files(settings, [tmp_path / "mid.csv"], feature_sets=[], **load)  # stored, not folded
    assert (summary.read, summary.accepted, summary.rejected, dict(summary.reasons)) == (30, 29, 1, {"invalid_field": 1})
    assert await count(clean_db, "sira_audit_log", "action = 'events.ingest'") == 1
    assert await count(clean_db, "sira_entity_states") == 0
    again = await ingest_files(settings, [tmp_path / "mid.csv"], feature_sets=[PAYMENTS_V2], **load)
    assert (again.accepted, again.duplicates) == (0, 30)
    assert await count(clean_db, "sira_entity_states") == 4 + 3  # its customers' and terminals'


async def test_a_load_that_stops_after_storing_events_says_what_folds_them(clean_db, settings, tmp_path):
    """A file damaged past its footer stops the load after the row groups before the damage were stored: the
    error says so and what folds them, and loading the files again (repaired) does."""
    from sira.features.definitions import PAYMENTS_V2

    bad = damaged_parquet(tmp_path / "damaged.parquet")
    with pytest.raises(InvalidInput) as caught:
        await ingest_files(settings, [bad], feature_sets=[PAYMENTS_V2], progress=False)
    assert "1,500 events of this load were stored" in caught.value.message
    assert "sira features materialize" in caught.value.message and caught.value.message.startswith(f"{bad}: cannot")
    assert (await count(clean_db, "sira_events"), await count(clean_db, "sira_entity_states")) == (1500, 0)
    table = pa.table({"event_id": [f"p{i}" for i in range(1500)],
                      "occurred_at": [f"2026-05-01T10:{i % 60:02d}:00Z" for i in range(1500)],
                      "customer_id": [f"c{i % 10}" for i in range(1500)], "amount": [float(i) for i in range(1500)]})
    pq.write_table(table, tmp_path / "repaired.parquet")
    again = await ingest_files(settings, [tmp_path / "repaired.parquet"], feature_sets=[PAYMENTS_V2], progress=False)
    assert (again.accepted, again.duplicates) == (0, 1500) and await count(clean_db, "sira_entity_states") == 10


async def test_bytes_that_are_no_utf8_in_an_extra_csv_column_set_their_row_aside_not_every_row_s_value(
        clean_db, ray_session, settings, tmp_path):
    """One latin-1 byte in a memo column made Arrow read the column as binary, and every row's memo was stored as
    a Python bytes repr ("b'hello'", "b'caf\\\\xe9'"), nothing dead-lettered. The column is now text; the row whose
    value is no UTF-8 is a dead letter (undecodable, naming the column and its file and row), so nothing is lost."""
    (tmp_path / "latin1.csv").write_bytes(b"\n".join([
        b"event_id,occurred_at,customer_id,amount,memo", b"l1,2026-05-01T10:00:00Z,c1,5,hello",
        b"l2,2026-05-01T11:00:00Z,c1,6,caf\xe9", b"l3,2026-05-01T12:00:00Z,c1,7,caf\xc3\xa9", b""]))
    summary = await ingest_files(settings, [tmp_path / "latin1.csv"], feature_sets=[], progress=False)
    assert (summary.accepted, summary.rejected, dict(summary.reasons)) == (2, 1, {"undecodable": 1})
    stored = await clean_db.fetch("SELECT event_id, attributes FROM sira_events ORDER BY event_id")
    assert [(r["event_id"], r["attributes"]) for r in stored] == [("l1", {"memo": "hello"}), ("l3", {"memo": "café"})]
    dead = await clean_db.fetchrow("SELECT * FROM sira_rejected_events")
    assert (dead["event_id"], dead["reason_code"], dead["field"], dead["stream_position"]) == \
        ("l2", "undecodable", "memo", "latin1.csv:2")
    assert dead["payload"]["memo"] == "caf\ufffd" and dead["customer_id"] == "c1"


def test_a_small_csv_loads_in_process_without_starting_ray(settings, clean_db, tmp_path):
    """A CSV's row count was unknown, so every CSV or JSON Lines load started a local Ray (seconds; on a loaded
    machine a raylet that did not come up in 30 s failed a 6-row load). A small file's lines are counted: under
    the in-process bound it loads here, as a small Parquet file does. Checked in a process of its own (this
    one may hold a Ray already)."""
    import subprocess
    import sys
    import textwrap

    write_csv(tmp_path / "a.csv", [{"event_id": f"small{i}", "occurred_at": "2026-05-01T10:00:00Z",
                                    "customer_id": "c1", "amount": 10} for i in range(5)])
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import asyncio, ray
        from pathlib import Path
        from sira.core.config import Settings
        from sira.ingest.bulk import ingest_files
        summary = ingest_files(Settings(), [Path({str(tmp_path / "a.csv")!r})], progress=False)
        summary = asyncio.run(summary) if asyncio.iscoroutine(summary) else summary
        print(summary.accepted, ray.is_initialized())
    """)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["5", "False"], done.stdout
