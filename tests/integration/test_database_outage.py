"""PostgreSQL stopped, or crashed and recovering, under the application (in process, on a PostgreSQL of this
module's own): every route answers 503 ``database_unavailable``, never 500, and an answer scored from cached
histories says the database is unavailable."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import asyncpg
import httpx
import pytest

from sira.core import db
from sira.core.auth import Identity, create_key
from sira.core.config import Settings
from sira.http.app import create_app
from sira.serving.config import ServingConfig
from sira.serving.metrics import ServingMetrics
from sira.serving.service import ScoringService
from tests.conftest import copy_production_model, migrate_database, run_sync

ADMIN = Identity("test-admin", frozenset({"admin"}))
NOW = datetime(2026, 10, 10, 12, tzinfo=timezone.utc)
pytestmark = pytest.mark.timeout(600)  # the served model is trained in the first test that needs it


@pytest.fixture(scope="module")
def private_postgres(workspace, tmp_path_factory):
    """A PostgreSQL of this module's own (the tests stop and crash it), migrated, with an admin key. Its
    settings share the session's workspace: the served model's artifacts and the key pepper are there."""
    server = db.EmbeddedPostgres(Settings(workspace=tmp_path_factory.mktemp("outage-ws")).embedded_pg_data)
    dsn = server.start()
    settings = Settings(database_url=dsn, workspace=workspace)

    async def seed() -> str:
        await migrate_database(dsn)
        conn = await db.connect(dsn)
        try:
            async with conn.transaction():
                key, _ = await create_key(conn, name="outage-admin", roles=["admin"],
                                          pepper=settings.secret("auth_secret"), creator=None)
        finally:
            await conn.close()
        return key

    try:
        yield SimpleNamespace(server=server, dsn=dsn, settings=settings, key=run_sync(seed()))
    finally:
        server.stop()
        if os.geteuid() == 0:  # as root the data lives outside tmp_path (see sira.core.config)
            shutil.rmtree(server.data_dir.parent, ignore_errors=True)


def app_client(app):
    # raise_app_exceptions=False: an unhandled error is the 500 a caller would get, not a test exception
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                             base_url="http://sira")


def event(i: int, customer: str = "outage-c1", card: str = "tok_outage1", terminal: str = "t-outage1") -> dict:
    return {"event_id": f"outage-{uuid.uuid4().hex[:12]}", "occurred_at": (NOW + timedelta(seconds=i)).isoformat(),
            "customer_id": customer, "card_token": card, "terminal_id": terminal, "amount": 25.0 + i,
            "country": "SN", "channel": "pos"}


def assert_database_unavailable(r: httpx.Response, pg: SimpleNamespace) -> None:
    assert r.status_code == 503, (r.request.url.path, r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == "database_unavailable", (r.request.url.path, r.text)
    assert pg.dsn not in r.text and str(pg.server.data_dir) not in r.text  # the cause's class, never the DSN


async def test_every_route_answers_503_database_unavailable_while_postgres_is_stopped(private_postgres, tmp_path):
    """Keys this replica knew keep authenticating in an outage: the routes behind them must still say 503."""
    pg = private_postgres
    service = ScoringService(pg.settings, ServingConfig(models=["fraud"], spool_dir=tmp_path))
    app = create_app(pg.settings, scoring=service)
    auth = {"Authorization": f"Bearer {pg.key}"}
    calls = [("GET", "/v1/models", None), ("GET", "/v1/models/fraud", None), ("GET", "/v1/audit", None),
             ("POST", "/v1/events", {"events": [event(1)]}), ("GET", "/v1/keys", None),
             ("POST", "/v1/keys", {"name": "during-outage", "roles": ["viewer"]}),
             ("GET", f"/v1/predictions/{uuid.uuid4()}", None),
             ("POST", "/v1/feedback", {"event_id": "outage-e1", "label": True}), ("GET", "/readyz", None)]
    async with app.router.lifespan_context(app):
        async with app_client(app) as client:
            assert (await client.get("/v1/models", headers=auth)).status_code == 200  # the replica knows the key
            pg.server.stop()
            try:
                for method, path, body in calls:
                    assert_database_unavailable(await client.request(method, path, json=body, headers=auth), pg)
                unknown = {"Authorization": "Bearer sira_0123456789ab_" + "x" * 43}  # a key only Postgres could check
                assert_database_unavailable(await client.get("/v1/models", headers=unknown), pg)
            finally:
                pg.server.start()
            for _ in range(100):  # the pool reconnects by itself
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert (await client.get("/v1/models", headers=auth)).status_code == 200
            assert (await client.get(f"/v1/predictions/{uuid.uuid4()}", headers=auth)).status_code == 404


async def test_a_database_refusing_connections_answers_503_not_500(private_postgres, tmp_path):
    """``ALTER DATABASE ... ALLOW_CONNECTIONS false`` (maintenance; a restore) makes a new connection fail with
    SQLSTATE 55000 "not currently accepting connections": scoring and every other route answered 500."""
    pg = private_postgres
    dsn = urllib.parse.urlsplit(pg.dsn)
    name = dsn.path.lstrip("/")
    other = urllib.parse.urlunsplit(dsn._replace(path="/template1"))
    service = ScoringService(pg.settings, ServingConfig(models=["fraud"], spool_dir=tmp_path))
    app = create_app(pg.settings, scoring=service)
    auth = {"Authorization": f"Bearer {pg.key}"}

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(other)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async with app.router.lifespan_context(app):
        async with app_client(app) as client:
            assert (await client.get("/v1/models", headers=auth)).status_code == 200  # the replica knows the key
            await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            try:
                await admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
                for method, path, body in [("GET", "/v1/models", None), ("GET", "/readyz", None),
                                           ("GET", f"/v1/predictions/{uuid.uuid4()}", None),
                                           ("POST", "/v1/feedback", {"event_id": "outage-e1", "label": True})]:
                    assert_database_unavailable(await client.request(method, path, json=body, headers=auth), pg)
            finally:
                await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            for _ in range(100):  # the pool reconnects by itself
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert (await client.get("/v1/models", headers=auth)).status_code == 200


def _probe(dsn: str, stop: threading.Event, seen: list[str | None]) -> None:
    """Connect again and again (a thread and loop of its own): what a new connection meets, in order."""

    async def run() -> None:
        while not stop.is_set():
            try:
                conn = await asyncpg.connect(dsn, timeout=2)
                await conn.close()
                seen.append(None)
            except Exception as exc:  # noqa: BLE001 - recorded: the test reads what the crash looked like
                seen.append(type(exc).__name__)
            await asyncio.sleep(0.005)

    asyncio.run(run())


async def test_a_postgres_crash_and_recovery_under_load_answers_no_500(private_postgres, tmp_path):
    """A server process killed with SIGKILL: PostgreSQL ends every connection, recovers from its WAL and
    refuses connections meanwhile ("the database system is in recovery mode": CannotConnectNowError).
    Four clients on the database-backed routes (each request also checks its key in Postgres) meet it."""
    pg = private_postgres
    service = ScoringService(pg.settings, ServingConfig(models=["fraud"], spool_dir=tmp_path, auth_cache_ttl_s=0))
    app = create_app(pg.settings, scoring=service)
    auth = {"Authorization": f"Bearer {pg.key}"}
    routes = [("GET", "/v1/models", None), ("GET", "/v1/audit?limit=5", None), ("POST", "/v1/events", "event"),
              ("GET", f"/v1/predictions/{uuid.uuid4()}", None)]
    results: list[tuple[str, int, str | None]] = []
    done = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient, k: int) -> None:
        method, path, body = routes[k]
        i = 0
        while not done.is_set():
            r = await client.request(method, path, headers=auth,
                                     json={"events": [event(i, customer=f"crash-{k}")]} if body else None)
            json_body = r.headers.get("content-type", "").startswith("application/json")
            code = r.json().get("error", {}).get("code") if r.status_code >= 400 and json_body else None
            results.append((path, r.status_code, code))
            i += 1

    stop_probe = threading.Event()
    seen: list[str | None] = []
    probe = threading.Thread(target=_probe, args=(pg.dsn, stop_probe, seen))
    async with app.router.lifespan_context(app):
        async with app_client(app) as client:
            tasks = [asyncio.create_task(client_loop(client, k)) for k in range(len(routes))]
            probe.start()
            victim = await asyncpg.connect(pg.dsn)
            try:
                await asyncio.sleep(1.0)
                os.kill(await victim.fetchval("SELECT pg_backend_pid()"), signal.SIGKILL)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:  # recovered: an error was met, then ten connections in a row
                    errors = [n for n, x in enumerate(seen) if x is not None]
                    if errors and len(seen) - errors[-1] > 10:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)
            finally:
                done.set()
                stop_probe.set()
                failed = [x for x in await asyncio.gather(*tasks, return_exceptions=True) if x is not None]
                probe.join(timeout=10)
                victim.terminate()
            assert not failed, failed
            after = [(await client.request(m, p, headers=auth, json={"events": [event(0)]} if b else None)).status_code
                     for m, p, b in routes]
    met = Counter(x for x in seen if x is not None)
    statuses = Counter(s for _, s, _ in results)
    print(f"\ncrash and recovery: new connections met {dict(met)}; {len(results)} requests: {dict(statuses)}")
    assert met["CannotConnectNowError"] > 0  # the recovery window was there to meet
    assert statuses[500] == 0, Counter((p, s) for p, s, _ in results if s == 500)
    assert {c for _, s, c in results if s == 503} <= {"database_unavailable"}
    assert {s for p, s, _ in results if "predictions" not in p} <= {200, 503}
    assert after == [200, 200, 200, 404]  # back to normal (the prediction does not exist)


async def seed_fraud(pg: SimpleNamespace, fraud_model) -> None:
    """The session's trained fraud model, registered in production in the private database (once)."""
    conn = await db.connect(pg.dsn)
    try:
        if await conn.fetchval("SELECT count(*) FROM sira_models WHERE name = 'fraud'"):
            return
    finally:
        await conn.close()
    await copy_production_model(fraud_model.dsn, fraud_model.version, pg.dsn, pg.settings, "outage tests")


class KeptMetrics(ServingMetrics):
    """The replica's metrics, whose counts handed to Ray (every flush) are kept here too: Ray is not running."""

    def __init__(self) -> None:
        super().__init__()
        self.published: Counter = Counter()

    def publish(self) -> None:
        self.published.update(self._counts)
        super().publish()

    def total(self, counter: object) -> Counter:
        """A counter's counts so far, by its tags' values joined."""
        out: Counter = Counter()
        for source in (self.published, self._counts):
            for (c, tags), n in source.items():
                if c is counter:
                    out["+".join(v for _k, v in tags)] += n
        return out


async def test_an_answer_from_cached_histories_says_the_database_is_unavailable(private_postgres, fraud_model,
                                                                                 tmp_path):
    """Every entity of the request is in the replica's cache, so scoring needs no Postgres; the answer is
    still given in a degraded mode (its features may miss other replicas' events, its audit row is only
    spooled) and must say so. Once Postgres is back the flag goes, and every answer is stored."""
    pg = private_postgres
    await seed_fraud(pg, fraud_model)
    service = ScoringService(pg.settings, ServingConfig(models=["fraud"], spool_dir=tmp_path, breaker_open_s=0.2))
    app = create_app(pg.settings, scoring=service)
    auth = {"Authorization": f"Bearer {pg.key}"}
    answers = []

    async def score(i: int, **extra: str) -> dict:
        # entities of this test's own: the others stored later events of theirs (a v2 state answers an
        # event older than its newest from the log, which an outage makes unavailable)
        r = await client.post("/v1/score", json={"model": "fraud", "event": event(
            i, customer="cached-c1", card="tok_cached1", terminal="t-cached1"), "record": False, **extra},
            headers=auth)
        assert r.status_code == 200, r.text
        answers.append(r.json())
        return r.json()

    async with app.router.lifespan_context(app):
        service.replica.metrics = metrics = KeptMetrics()  # what a replica under Ray exports
        async with app_client(app) as client:
            first, cached = await score(0), await score(1)  # the second from the replica's cache
            assert not first["degraded"] and not cached["degraded"]
            pg.server.stop()
            try:
                await asyncio.sleep(0.5)  # what a replica serving traffic has had time to notice
                down = [await score(i) for i in range(2, 8)]
                # a client's request id that could not be looked up (no Redis here, PostgreSQL down): said so
                unchecked = await score(8, request_id=f"unchecked-{uuid.uuid4().hex[:8]}")
            finally:
                pg.server.start()
            for a in down:
                assert "unavailable_entities" not in a["flags"]  # scored from cached histories...
                assert a["degraded"] and a["degraded_reasons"] == ["database_unavailable"], a  # ...and says so
            assert unchecked["degraded_reasons"] == ["database_unavailable", "idempotency_unchecked"], unchecked
            deadline = time.monotonic() + 60
            while (await score(len(answers)))["degraded"] and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert not answers[-1]["degraded"]
            # ray_sira_degraded_requests_total counts answers degraded, each once (the SiraDegradedAnswers alert
            # divides it by the answers): the answer with two reasons was counted under each (before 2026-12-07)
            by_reasons = Counter("+".join(a["degraded_reasons"]) for a in answers if a["degraded"])
            assert metrics.total(metrics.degraded) == by_reasons, (metrics.total(metrics.degraded), by_reasons)
            assert by_reasons["database_unavailable+idempotency_unchecked"] == 1
            await service.flush()
            ids = [uuid.UUID(a["prediction_id"]) for a in answers]
            assert await service.pool.fetchval(
                "SELECT count(*) FROM sira_predictions WHERE prediction_id = ANY($1::uuid[])", ids) == len(answers)
            flagged = await service.pool.fetchval(
                "SELECT count(*) FROM sira_predictions WHERE prediction_id = ANY($1::uuid[]) AND degraded", ids)
            assert flagged >= len(down)
