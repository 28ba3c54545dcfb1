"""Events full of PII go in through every path; no table and no log holds it in the clear."""

import asyncio
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sira.feature_store import materialize
from sira.feedback import record_labels
from sira.features import PAYMENTS_V1
from sira.ingest import ingest_files, ingest_records, redactor_for

PANS = ["4111111111111111", "5555555555554444", "378282246310005"]
EMAILS = ["jane.doe@example.com", "bob+fraud@example.org"]
PHONES = ["+221771234567", "+33 6 12 34 56 78"]
IPS = ["198.51.100.23", "2001:db8::1"]
NAMES = ["Jane Q. Cardholder"]
SECRETS = [*PANS, "4111 1111 1111 1111", *EMAILS, *PHONES, *IPS, *NAMES]


def pii_events(prefix):
    out = []
    for i in range(12):
        out.append({
            "event_id": f"{prefix}-{i}" if i % 4 else f"{prefix}-order-{PANS[0]}-{i}",
            "occurred_at": f"2026-09-0{1 + i % 9}T1{i % 10}:00:00Z",
            "customer_id": EMAILS[i % 2] if i % 3 == 0 else f"cust-{i % 3}",
            "card_number": PANS[i % 3], "terminal_id": f"t{i % 2}", "amount": 10.0 + i,
            "email": EMAILS[i % 2], "phone": PHONES[i % 2], "ip_address": IPS[i % 2],
            "cardholder_name": NAMES[0], "device_id": f"device-of-{EMAILS[0]}",
            "note": f"customer {NAMES[0]} paid with {PANS[1][:4]} {PANS[1][4:8]} {PANS[1][8:12]} {PANS[1][12:]}",
        })
    out.append({"event_id": f"{prefix}-bad", "email": EMAILS[0], "card_number": PANS[2], "amount": "n/a",
                "phone": PHONES[0]})  # rejected: its payload is stored, redacted
    return out


async def dump_all_tables(pool) -> str:
    names = await pool.fetch(
        "SELECT relname FROM pg_class WHERE relname LIKE 'sira\\_%' AND relkind IN ('r', 'p') AND NOT relispartition"
    )
    parts = []
    for r in names:
        parts.append(await pool.fetchval(f'SELECT coalesce(string_agg(t::text, E\'\\n\'), \'\') FROM "{r["relname"]}" t'))
    return "\n".join(parts)


async def test_no_raw_pii_in_any_table_or_log(clean_db, ray_session, settings, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    rows = pii_events("file")
    pq.write_table(pa.Table.from_pylist([{k: (str(v) if v is not None else None) for k, v in r.items()} for r in rows]),
                   tmp_path / "pii.parquet")
    file_summary = await asyncio.to_thread(ingest_files, settings, [tmp_path / "pii.parquet"], fs=PAYMENTS_V1,
                                           progress=True)
    api_summary = await ingest_records(clean_db, pii_events("api"), redactor=redactor_for(settings),
                                       fs=PAYMENTS_V1, source="api")
    assert file_summary.accepted == api_summary.accepted == 12
    assert file_summary.rejected == api_summary.rejected == 1
    async with clean_db.acquire() as conn:
        await record_labels(conn, [{"event_id": f"api-order-{PANS[0]}-0", "label": True,
                                    "known_at": "2026-09-20T00:00:00Z", "note": EMAILS[1]},
                                   {"event_id": EMAILS[0], "label": "??", "known_at": "2026-09-20"}],
                            redactor=redactor_for(settings))
        await materialize(conn, PAYMENTS_V1)

    everything = await dump_all_tables(clean_db)
    assert "tok_pan_" in everything and "tok_email_" in everything  # tokens are there...
    leaks = [s for s in SECRETS if s in everything]
    assert not leaks, f"raw PII at rest: {leaks}"  # ...the values are not

    out, err = capfd.readouterr()
    ray_logs = "\n".join(
        p.read_text(errors="replace") for p in Path("/tmp/ray/session_latest/logs").rglob("*") if p.is_file()
    ) if Path("/tmp/ray/session_latest/logs").exists() else ""
    for where, text in (("log records", caplog.text), ("stdout/stderr", out + err), ("ray logs", ray_logs)):
        leaks = [s for s in SECRETS if s in text]
        assert not leaks, f"raw PII in {where}: {leaks}"
