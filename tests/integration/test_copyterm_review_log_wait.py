"""The read of the log's positions (sira.features.store.log_positions) behind a writer that does not end (review: an
ingest's fold, and `sira features materialize`, took minutes to stop after SIGTERM: past its patience the read
waited in PostgreSQL's queue with no end, which the cancellation did not interrupt). Real signals, the CLI's own
handler, real PostgreSQL locks."""

import asyncio
import os
import signal
import threading
import time

import asyncpg
import pytest

from sira.cli.common import SIGTERM_RECEIVED, stop_on_sigterm
from sira.core import db
from sira.features import store
from tests.conftest import migrate_database, run_sync

STUCK_S = 20.0  # a read not ended this long after SIGTERM is stuck: the writer then lets go, to go on
WAITING = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'advisory'")


@pytest.fixture()
def own_db(create_database):
    dsn = create_database("sira_copyterm")
    run_sync(migrate_database(dsn))
    return dsn


async def _writer(dsn: str) -> asyncpg.Connection:
    """A writer in flight that does not end: the log's lock held shared (sira.features.store.writing_log)."""
    conn = await asyncpg.connect(dsn)
    await conn.execute("BEGIN")
    await store.writing_log(conn)
    return conn


def _watch(dsn: str, holding: threading.Event, ended: threading.Event, seen: dict) -> None:
    async def watch() -> None:
        writer, conn = await _writer(dsn), await asyncpg.connect(dsn)
        holding.set()
        try:
            while not ended.is_set() and not await conn.fetchval(WAITING):  # the read queued behind the writer
                await asyncio.sleep(0.02)
            seen["signalled"] = not ended.is_set()
            os.kill(os.getpid(), signal.SIGTERM) if seen["signalled"] else None
            deadline = time.monotonic() + STUCK_S
            while not ended.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            seen["stuck"] = not ended.is_set()
            while ended.is_set() and await conn.fetchval(WAITING) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # the stopped read's backend leaves the queue
            seen["still_queued"] = await conn.fetchval(WAITING)
        finally:
            await writer.close()
            await conn.close()

    asyncio.run(watch())


def test_sigterm_stops_a_read_of_the_log_positions_queued_behind_a_stuck_writer(own_db):
    holding, ended, seen = threading.Event(), threading.Event(), {}

    async def read() -> tuple[int, int]:
        conn = await db.connect(own_db)
        try:
            return await store.log_positions(conn, patience_s=0.2)
        finally:
            await conn.close()

    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    watcher = threading.Thread(target=_watch, args=(own_db, holding, ended, seen))
    outcome: object = None
    try:
        watcher.start()
        assert holding.wait(30), "the writer did not start"
        try:
            outcome = asyncio.run(read())
        except BaseException as exc:  # noqa: BLE001 - said below
            outcome = exc
        finally:
            ended.set()
            watcher.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
        SIGTERM_RECEIVED.clear()  # the handler's mark: this process's other tests were not stopped
    assert seen["signalled"], f"the read ended before it queued: {outcome!r}"
    assert not seen["stuck"], "the read did not stop until the writer ended"
    assert isinstance(outcome, asyncio.CancelledError), outcome
    assert seen["still_queued"] == 0  # no backend left in the lock's queue, holding back new writers


async def test_a_read_queued_past_its_patience_still_gets_the_lock_once_the_writers_end(own_db):
    """Queued a bit at a time, the read still takes the positions as soon as the writers in flight have ended,
    inside its caller's transaction (left usable, with its own lock_timeout), and leaves the lock free."""
    writer, conn, other = await _writer(own_db), await db.connect(own_db), await asyncpg.connect(own_db)
    try:
        async with conn.transaction():
            read = asyncio.create_task(store.log_positions(conn, patience_s=0, queued_ms=100))
            while not await other.fetchval(WAITING):
                await asyncio.sleep(0.02)
            await writer.execute("COMMIT")
            assert await read == (0, 0)
            assert await conn.fetchval("SELECT current_setting('lock_timeout')") == "0"
        assert await other.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())") == 0
    finally:
        for c in (writer, conn, other):
            await c.close()
