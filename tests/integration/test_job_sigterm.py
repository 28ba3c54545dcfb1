"""A Ray job's driver (`jobs/*.py`, `run_job`) stopped by SIGTERM (`ray job stop`, Kubernetes) in a command that
sets no handler of its own: it ends with one line and exit 143, and its job key is revoked on the way out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta

from sira.core import db
from sira.core.auth import Identity, create_job_key
from sira.core.config import Settings
from sira.core.ray_runtime import JOBS
from tests.conftest import fetch_rows, migrate_database, run_sync

# a command that waits, as a long drift or materialize run does, registered on the real CLI in the job's process
DRIVER = """
import sys, time
from sira.cli.common import app
from sira.cli.main import run_job

@app.command("wait-a-while")
def wait_a_while() -> None:
    print("waiting", file=sys.stderr, flush=True)
    time.sleep(120)

sys.exit(run_job(["wait-a-while"]))
"""


def test_sigterm_ends_a_job_in_one_line_and_revokes_its_key(create_database, tmp_path):
    """The process died where it stood (Python's default action): `run_job`'s finally never ran, and the job's
    key stayed valid for the rest of its TTL (6 hours by default)."""
    dsn = create_database("sira_job_sigterm")
    settings = Settings(database_url=dsn, workspace=tmp_path)

    async def mint() -> str:
        await migrate_database(dsn)
        pool = await db.create_pool(dsn)
        try:
            async with db.transaction(pool) as conn:
                key, _ = await create_job_key(conn, Identity("t-admin", frozenset({"admin"})),
                                              actions=JOBS["drift"].actions, job_name="sira-drift-term",
                                              ttl=timedelta(hours=6), pepper=settings.secret("auth_secret"))
            return key
        finally:
            await pool.close()

    key = run_sync(mint())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIRA_", "RAY_"))}
    env.update({"SIRA_DATABASE_URL": dsn, "SIRA_WORKSPACE": str(tmp_path), "SIRA_API_KEY": key})
    proc = subprocess.Popen([sys.executable, "-c", DRIVER], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None and proc.stderr.readline() == "waiting\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        said = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert said == "error: interrupted: wait-a-while stopped by SIGTERM\n", said
    (row,) = run_sync(fetch_rows(dsn, "SELECT revoked_at FROM sira_api_keys WHERE name = 'job-sira-drift-term'"))
    assert row["revoked_at"] is not None


# a command whose event loop is inside a transport's callback when the signal comes (as asyncpg's protocol is
# while it parses a large answer): the callback reads slowly, and the task waits for what it reads
BETWEEN_TASKS = """
import asyncio, socket, sys, time
from sira.cli.common import app
from sira.cli.main import main

class Slow(asyncio.Protocol):
    def __init__(self, done):
        self.done = done
    def data_received(self, data):
        print("reading", file=sys.stderr, flush=True)
        time.sleep(3)  # the signal arrives here, between the loop's tasks
    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_exception(ConnectionResetError("connection was closed in the middle of operation"))

@app.command("read-slowly")
def read_slowly() -> None:
    async def run() -> None:
        ours, theirs = socket.socketpair()
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        await loop.create_connection(lambda: Slow(done), sock=ours)
        theirs.send(b"x" * 100)
        try:
            await done
        finally:
            print("unwound", file=sys.stderr, flush=True)
    asyncio.run(run())

sys.exit(main(["read-slowly"], own_process=True))
"""


def test_sigterm_between_an_event_loops_tasks_cancels_them_and_ends_in_one_line(tmp_path):
    """The handler raised where the main thread was: inside a transport's callback (asyncpg's, parsing an
    answer) that broke the connection, and the command ended `error: internal: ConnectionDoesNotExistError:
    connection was closed in the middle of operation` (exit 1; `sira demo` once in the full suite). Between
    tasks it cancels them: each unwinds at its next await, and the command says it was stopped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIRA_", "RAY_"))}
    env.update({"SIRA_WORKSPACE": str(tmp_path)})
    proc = subprocess.Popen([sys.executable, "-c", BETWEEN_TASKS], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None and proc.stderr.readline() == "reading\n"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        said = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (code, said) == (128 + signal.SIGTERM, "unwound\nerror: interrupted: read-slowly stopped by SIGTERM\n"), said


def test_sigterm_inside_a_tasks_socket_write_cancels_rather_than_raising_there():
    """In the full suite the signal landed in asyncio's socket write, called by asyncpg inside a task: raised
    there, the transport took it for a fatal error and closed the database connection (exit 1, `internal`).
    Where the interrupted code is the loop's or a transport's, the handler cancels the tasks; in SIRA's own code
    inside a task it raises."""
    import asyncio
    import types

    from sira.cli.common import SIGTERM_RECEIVED, Stopped, stop_on_sigterm

    def frame_of(module: str):
        return types.SimpleNamespace(f_globals={"__name__": module})

    async def interrupted(module: str) -> str:
        try:
            stop_on_sigterm(signal.SIGTERM, frame_of(module))
            await asyncio.sleep(5)
            return "carried on"
        except asyncio.CancelledError:
            return "cancelled"
        except Stopped:
            return "raised"

    try:
        assert asyncio.run(interrupted("asyncio.selector_events")) == "cancelled"
        assert asyncio.run(interrupted("asyncpg.connection")) == "cancelled"
        assert asyncio.run(interrupted("sira.training.runs")) == "raised"
    finally:
        SIGTERM_RECEIVED.clear()
