"""SIGTERM while a file load's COPY is in flight (review: `sira ingest` hung one time in four, the server's backend
left `active | ClientRead | COPY "sira_events_stage"`, holding the event log's shared lock and so every later
fold): the load ends at once, its transaction rolled back, the lock released. Real signals, the CLI's own
handler, a real COPY into a real PostgreSQL."""

import asyncio
import os
import signal
import threading
import time

import asyncpg
import pytest
from pydantic import SecretStr

from sira.cli.common import SIGTERM_RECEIVED, Stopped, stop_on_sigterm
from sira.demo.simulate import SimulationConfig, simulate
from sira.features.store import LOG_LOCK
from sira.ingest import bulk as ingest
from tests.conftest import migrate_database, run_sync, wait_until

ATTEMPTS = 8  # where the signal lands varies; the old code hung on more than one try in two
STUCK_S = 20.0  # a load not ended this long after SIGTERM is stuck: its backends are then ended to go on

COPYING = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
           " AND state = 'active' AND query LIKE 'COPY%'")
LEFT = ("SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        "          AND pid <> pg_backend_pid() AND query LIKE 'COPY%' AND state <> 'idle'),"
        "       (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1"
        "          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())),"
        "       (SELECT count(*) FROM sira_events)")


@pytest.fixture()
def own_db(create_database, settings):
    dsn = create_database("sira_copyterm")
    run_sync(migrate_database(dsn))
    return dsn, settings.model_copy(update={"database_url": SecretStr(dsn)})


def _watch(dsn: str, loading: threading.Event, ended: threading.Event, seen: dict) -> None:
    """SIGTERM to this process once the load's COPY is active; then, were the load stuck, its backends ended."""
    async def watch() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            while not ended.is_set():
                if loading.is_set() and await conn.fetchval(COPYING):
                    seen["signalled"] = True
                    os.kill(os.getpid(), signal.SIGTERM)
                    break
            deadline = time.monotonic() + STUCK_S
            while not ended.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if not ended.is_set():
                seen["stuck"] = [tuple(r) for r in await conn.fetch(
                    "SELECT state, wait_event, left(query, 40) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()")]
                await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                   " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        finally:
            await conn.close()

    asyncio.run(watch())


def test_sigterm_during_a_loads_copy_ends_it_and_frees_the_log_lock(own_db, tmp_path):
    dsn, settings = own_db
    sim = simulate(SimulationConfig(days=20, customers=400, seed=5), tmp_path / "sim")
    previous, signalled = signal.signal(signal.SIGTERM, stop_on_sigterm), 0
    try:
        for attempt in range(ATTEMPTS):
            stored = run_sync(_left(dsn))[2]
            loading, ended, seen = threading.Event(), threading.Event(), {}
            watcher = threading.Thread(target=_watch, args=(dsn, loading, ended, seen))
            watcher.start()
            outcome: BaseException | None = None
            try:
                loading.set()
                ingest.ingest_files(settings, [sim.events_path], feature_sets=[], progress=False)
            except (Stopped, asyncio.CancelledError) as exc:  # what the CLI reports as "stopped by SIGTERM"
                outcome = exc
            except BaseException as exc:  # noqa: BLE001 - anything else is this test's failure, said below
                outcome = exc
            finally:
                ended.set()
                watcher.join()
            assert "stuck" not in seen, f"try {attempt}: the load did not end after SIGTERM: {seen['stuck']}"
            if not seen.get("signalled"):
                continue  # the load ended before its COPY was seen: nothing stopped, try again
            signalled += 1
            assert isinstance(outcome, (Stopped, asyncio.CancelledError)), f"try {attempt}: {outcome!r}"
            # the server has seen the connection go: no COPY left, the lock free, nothing of the batch stored
            wait_until(lambda: run_sync(_left(dsn)) == (0, 0, stored), what="the stopped load's backend gone")
    finally:
        signal.signal(signal.SIGTERM, previous)
        SIGTERM_RECEIVED.clear()  # the handler's mark: this process's other tests were not stopped
    assert signalled > ATTEMPTS // 2, f"SIGTERM landed in a COPY on {signalled} tries of {ATTEMPTS}"


async def _left(dsn: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return tuple(await conn.fetchrow(LEFT, LOG_LOCK))
    finally:
        await conn.close()


def test_sigterm_after_a_load_stored_its_events_says_how_many_and_what_folds_them(own_db, tmp_path):
    """Stopped while folding (review: the line said only `interrupted: ingest stopped by SIGTERM`, though the
    events were stored, unfolded): the line says how many were stored and that `sira features materialize` folds
    them (docs/features.md), exit 143."""
    from sira.core.errors import Interrupted
    from sira.features.definitions import PAYMENTS_V2

    dsn, settings = own_db
    sim = simulate(SimulationConfig(days=2, customers=20, seed=7), tmp_path / "sim")

    def notify(message: str) -> None:
        if message.startswith("folding"):  # the events are stored: SIGTERM lands here, in SIRA's code
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        with pytest.raises(Interrupted) as stopped:
            ingest.ingest_files(settings, [sim.events_path], feature_sets=[PAYMENTS_V2], progress=False,
                                notify=notify)
    finally:
        signal.signal(signal.SIGTERM, previous)
        SIGTERM_RECEIVED.clear()  # the handler's mark: this process's other tests were not stopped
    stored = run_sync(_left(dsn))[2]
    assert stored > 0 and stopped.value.exit_code == 143
    assert stopped.value.one_line().startswith(f"error: interrupted: ingest stopped by SIGTERM ({stored:,} events of")
    assert "`sira features materialize` folds them" in stopped.value.one_line()
