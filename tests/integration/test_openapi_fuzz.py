"""Schemathesis against the live application (uvicorn on a local port, a model in production, the scoring
routes included), with a service key and an admin key: no 5xx, and no status code the OpenAPI document does
not declare. Destructive calls (revoking keys, rollback) land in a database of this module's own."""

from __future__ import annotations

import socket
import threading
import time
import traceback
from types import SimpleNamespace

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from tests.conftest import migrate_database, promote_for_tests, run_sync

# the calls a service key makes; every other operation is made with the admin key
SERVICE_PATHS = {"/v1/score", "/v1/score/batch", "/v1/events", "/v1/feedback"}
EXAMPLES = 15  # per operation and generation mode (positive, negative): ~2 minutes for the whole API


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _byo_model(create_database, workspace, folder) -> SimpleNamespace:
    """A database of its own with a bring-your-own ``fraud`` model in production (trained without Ray in
    seconds) and a service and an admin key."""
    import numpy as np
    import pandas as pd

    from sira.core import db
    from sira.core.auth import authenticate, create_key
    from sira.core.config import Settings
    from sira.training.runs import TrainRequest, run_training

    dsn = create_database("sira_fuzz")
    settings = Settings(database_url=dsn, workspace=workspace)
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"amount": rng.lognormal(3, 1, 3000), "channel": rng.choice(["pos", "ecom", "atm"], 3000)})
    table["fraud"] = (rng.random(3000) < np.where(table.amount > 60, 0.2, 0.02)).astype(int)
    table.to_csv(folder / "table.csv", index=False)

    async def build() -> SimpleNamespace:
        await migrate_database(dsn)
        trained = await run_training(settings, TrainRequest(
            model="fraud", data=[folder / "table.csv"], label="fraud", num_threads=1,
            params={"num_boost_round": 30, "early_stopping_rounds": 10}))
        pool = await db.create_pool(dsn, settings)
        try:
            async with db.transaction(pool) as conn:
                await promote_for_tests(conn, settings, "fraud", trained["version"], "fuzzing")
                pepper = settings.secret("auth_secret")
                keys = {"admin": (await create_key(conn, name="fuzz-admin", roles=["admin"], pepper=pepper,
                                                   creator=None))[0]}
                root = await authenticate(conn, keys["admin"], pepper=pepper)
                keys["service"], _ = await create_key(conn, name="fuzz-service", roles=["service"], pepper=pepper,
                                                      creator=root)
        finally:
            await pool.close()
        return SimpleNamespace(settings=settings, keys=keys)

    return run_sync(build())


@pytest.fixture(scope="module")
def live_api(create_database, workspace, tmp_path_factory):
    import uvicorn

    from sira.http.app import create_app
    from sira.serving.config import ServingConfig
    from sira.serving.service import ScoringService

    model = _byo_model(create_database, workspace, tmp_path_factory.mktemp("fuzz"))
    service = ScoringService(model.settings, ServingConfig(models=["fraud"], spool_dir=tmp_path_factory.mktemp("spool"),
                                                           flush_interval_s=0.05, poll_interval_s=1.0))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(model.settings, scoring=service), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the application did not start"
        time.sleep(0.1)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", keys=model.keys)
    server.should_exit = True
    thread.join(timeout=30)


def _negatable(operation: schemathesis.APIOperation) -> bool:
    """Whether a request can break the operation's schema: with only free text to send (a name in the path),
    Hypothesis spends seconds finding out it cannot. (The credentials are the bearer scheme's, no parameter.)"""
    free_text = [{"type": "string"}, {"anyOf": [{"type": "string"}, {"type": "null"}]}]
    return len(operation.body) > 0 or any(
        {k: v for k, v in p.definition.get("schema", {}).items() if k != "title"} not in free_text
        for p in operation.iter_parameters())


@pytest.mark.slow
def test_every_operation_answers_only_declared_statuses_and_schemas_and_never_5xx(live_api):
    # a loop of our own rather than schema.parametrize(): the schema is the live server's, known only
    # once the fixture runs, and schemathesis' lazy pytest loader does not run under pytest 9
    schema = schemathesis.openapi.from_url(f"{live_api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= SERVICE_PATHS | {"/v1/models/{name}/rollback", "/v1/keys/{name}"}
    failures: dict[str, str] = {}
    for operation in operations:
        role = "service" if operation.path in SERVICE_PATHS else "admin"
        headers = {"Authorization": f"Bearer {live_api.keys[role]}"}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if _negatable(operation) else (
                GenerationMode.POSITIVE,):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            def call(case: schemathesis.Case) -> None:
                case.call_and_validate(base_url=live_api.url, headers=headers, timeout=60,
                                       checks=[not_a_server_error, status_code_conformance,
                                               response_schema_conformance])

            try:
                call()
            except Unsatisfiable:  # nothing to send that breaks the schema (only free-text parameters)
                pass
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - schemathesis' FailureGroup is a
                # BaseExceptionGroup; every operation is fuzzed and the failures are reported together
                failures[f"{operation.label} ({mode.value})"] = "".join(traceback.format_exception(exc))[-4000:]
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
