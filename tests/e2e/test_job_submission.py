"""Ray jobs submitted for real: `JobSubmissionClient` + `runtime_env` against a Ray head of this module's own.

The head (``ray start --head --block``) runs in a session of its own, on free ports only (never
6379, where Redis is; never Ray's fixed defaults, which the test session's own ``address="local"``
Ray may hold), with a temp dir of its own, so it is never joined by other tests nor by anything on
the machine, and it is stopped without ``ray stop`` (which would kill every Ray on the machine,
the session's included). Jobs get SIRA's settings only through ``runtime_env`` env vars
(``worker_env``): the head itself carries none.

One test per job: ``job_env`` gives a fresh migrated database and workspace, ``submit_and_wait``
submits an entrypoint and returns its terminal status and logs.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import asyncpg
import numpy as np
import pandas as pd
import pytest

from sira.core.config import Settings
from sira.core.ray_runtime import WORKING_DIR_EXCLUDES, worker_env
from tests.conftest import readme_block, run_sync

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the head runs the tests' interpreter: the .venv, sira installed editable

pytestmark = pytest.mark.timeout(600)

HEAD_START_TIMEOUT_S = 90
# Every `ray start` port flag: left unset, some default to fixed ports (dashboard 8265, client server
# 10001, dashboard agent 52365) that the session's own Ray or other work may hold.
PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
              "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
              "--node-manager-port", "--object-manager-port")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports nothing listens on right now (all held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            socks.append(s)
        ports = [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
    assert 6379 not in ports
    return ports


# -- the head's processes, found by what is unique to them ------------------------------------------


def _proc_processes() -> Iterator[tuple[int, int, str, str]]:
    """(pid, process group, command line, cwd) of every process we may inspect."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            pgid = int(stat.rsplit(")", 1)[1].split()[2])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                cwd = ""
        except (OSError, IndexError, ValueError):  # gone meanwhile, or a zombie
            continue
        yield pid, pgid, cmdline, cwd


def head_processes(leader_pid: int, temp_dir: str) -> dict[int, str]:
    """Live processes of this head: in the session `ray start` leads, or naming/running in its temp dir
    (gcs_server, raylet, dashboard, workers, a job driver that started a session of its own)."""
    found = {}
    for pid, pgid, cmdline, cwd in _proc_processes():
        if pid == os.getpid():
            continue
        if pgid == leader_pid or temp_dir in cmdline or cwd.startswith(temp_dir):
            found[pid] = cmdline[:160]
    return found


def _kill(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(leader_pid: int, temp_dir: str, timeout_s: float) -> dict[int, str]:
    deadline = time.monotonic() + timeout_s
    while (left := head_processes(leader_pid, temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.3)
    return left


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_pytest() -> None:
    """In `ray start`, before exec: SIGTERM (its clean shutdown) if pytest dies, even SIGKILLed."""
    if _LIBC is not None:
        _LIBC.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG


class HeadExited(RuntimeError):
    """`ray start` gave up (e.g. a port taken between picking it and binding it): worth one more try."""


def _start_head(temp_dir: str) -> SimpleNamespace:
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    command = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--num-cpus", "2", "--object-store-memory", str(512 * 1024**2),
               "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
               # 0/0: workers bind ports the OS picks, not Ray's fixed 10002-19999 range
               "--min-worker-port", "0", "--max-worker-port", "0",
               "--temp-dir", temp_dir, "--disable-usage-stats", "--log-style", "record"]
    for flag, port in ports.items():
        command += [flag, str(port)]
    # None of the test's SIRA settings nor its RAY_ADDRESS: jobs get SIRA's settings through runtime_env only.
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
           and not k.startswith("SIRA_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # a job's `python` is the .venv's
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # On SIGTERM the head drains first, up to 30 s when a job left actors (Ray Data's do): nothing to drain here.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    # Ray 2.60 turns token auth on when ~/.ray/auth_token exists (any local `ray.init()` writes one):
    # keep it on, as a real cluster would, with a token of this head's own, which the client sends.
    token = secrets.token_hex(32)
    token_path = Path(temp_dir) / "auth_token"
    token_path.touch(mode=0o600)
    token_path.write_text(token)
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)})
    log_path = Path(temp_dir) / "ray-start.log"
    with open(log_path, "wb") as log:
        # A session of its own: Ctrl-C in pytest does not reach it, and its process group is its own.
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_die_with_pytest, cwd=temp_dir)
    url = f"http://127.0.0.1:{ports['--dashboard-port']}"
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            client = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
            client.list_jobs()
            return SimpleNamespace(client=client, url=url, gcs_address=f"127.0.0.1:{ports['--port']}",
                                   ports=ports, temp_dir=temp_dir, proc=proc)
        except AuthenticationError:
            _stop_head(proc, temp_dir)
            raise
        except Exception as exc:  # noqa: BLE001 - not up yet
            last_error = exc
            time.sleep(0.5)
    exited_early = proc.poll() is not None
    _stop_head(proc, temp_dir)
    error = HeadExited if exited_early else RuntimeError
    raise error(f"the Ray head did not answer at {url} (ray start exit status {proc.returncode}, "
                f"last error {last_error!r}):\n{log_path.read_text(errors='replace')[-3000:]}")


def _stop_head(proc: subprocess.Popen, temp_dir: str) -> None:
    """Stop this head alone: SIGTERM to `ray start --block` (it stops the processes it started, and
    they die with it), then SIGKILL whatever of the head is left. Never `ray stop`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    left = _wait_gone(proc.pid, temp_dir, 10)
    if left:
        _kill(left, signal.SIGKILL)
        left = _wait_gone(proc.pid, temp_dir, 10)
    assert not left, f"processes of the Ray head survived its teardown: {left}"


@pytest.fixture(scope="module")
def ray_head() -> Iterator[SimpleNamespace]:
    """A Ray head of this module's own: ``.client`` (a `JobSubmissionClient`), ``.url``, ``.gcs_address``."""
    from ray.job_submission import JobStatus

    head = None
    for attempt in range(2):  # a free port taken between picking it and Ray binding it: retry once
        temp_dir = tempfile.mkdtemp(prefix="sira-rh-", dir="/tmp")  # short: Ray's unix sockets live inside
        try:
            head = _start_head(temp_dir)
            break
        except HeadExited:
            shutil.rmtree(temp_dir, ignore_errors=True)
            if attempt:
                raise
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
    assert head is not None
    yield head
    try:
        for job in head.client.list_jobs():
            if not JobStatus(job.status).is_terminal():
                head.client.stop_job(job.submission_id)
    except Exception:  # noqa: BLE001 - the head is going away anyway
        pass
    try:
        _stop_head(head.proc, head.temp_dir)
    finally:
        shutil.rmtree(head.temp_dir, ignore_errors=True)
    import ray

    if ray.is_initialized():  # the session's own Ray must have survived this head's teardown
        assert ray.get(ray.put("alive"), timeout=30) == "alive"


# -- submitting ----------------------------------------------------------------------------------------


def submit_and_wait(client, entrypoint: str, env_vars: dict[str, str], timeout_s: float = 300, *,
                    submission_id: str | None = None) -> tuple[str, str]:
    """Submit ``entrypoint`` with the repository as working dir and SIRA's settings as env vars;
    wait for a terminal status; return (status, the job's logs: its stdout and stderr).

    The status is a `JobStatus` (a str enum: ``status == "SUCCEEDED"`` holds). The entrypoint runs
    in the head's copy of the repository with the head's ``python`` (the .venv): data paths must be
    absolute, repository paths (``jobs/...``, ``tests/e2e/fast_params.yaml``) relative.
    """
    submission_id = client.submit_job(
        entrypoint=entrypoint,
        submission_id=submission_id or f"sira-test-{uuid.uuid4().hex[:8]}",
        runtime_env={"working_dir": str(ROOT), "excludes": WORKING_DIR_EXCLUDES, "env_vars": env_vars},
    )
    deadline = time.monotonic() + timeout_s
    while not (status := client.get_job_status(submission_id)).is_terminal():
        if time.monotonic() > deadline:
            client.stop_job(submission_id)
            pytest.fail(f"job {submission_id} still {status} after {timeout_s:.0f} s:\n"
                        f"{client.get_job_logs(submission_id)[-3000:]}")
        time.sleep(0.5)
    return status, client.get_job_logs(submission_id)


def json_result(logs: str) -> dict:
    """The one JSON object a `--json` job printed (its stdout), among its stderr lines."""
    objects = []
    for line in logs.splitlines():
        if line.startswith("{"):
            try:
                objects.append(json.loads(line))
            except ValueError:
                pass
    assert len(objects) == 1, f"expected one JSON object in the job's logs:\n{logs[-3000:]}"
    return objects[0]


def fetch(dsn: str, sql: str, *args) -> list[dict]:
    async def run() -> list[dict]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return run_sync(run())


@pytest.fixture
def job_env(create_database, tmp_path) -> SimpleNamespace:
    """A fresh migrated database and workspace; ``.env_vars`` is what a job's runtime_env carries."""
    return make_job_env(create_database, tmp_path)


def make_job_env(create_database, tmp_path: Path) -> SimpleNamespace:
    dsn = create_database("sira_jobs")
    workspace = tmp_path / "ws"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    env.update({"SIRA_DATABASE_URL": dsn, "SIRA_WORKSPACE": str(workspace)})
    subprocess.run([sys.executable, "-m", "sira", "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=120)
    settings = Settings(database_url=dsn, workspace=workspace)
    return SimpleNamespace(dsn=dsn, workspace=workspace, settings=settings, env_vars=worker_env(settings, dsn),
                           tmp_path=tmp_path)


def write_table(path: Path, n: int = 4000, seed: int = 0) -> Path:
    """A small labelled table (as test_train_job.py): amount, channel, fraud."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"amount": rng.lognormal(3, 1, n), "channel": rng.choice(["pos", "ecom"], n)})
    df["fraud"] = (rng.random(n) < np.where(df.amount > 60, 0.15, 0.01)).astype(int)
    df.to_csv(path, index=False)
    return path.resolve()


# -- one test per job ----------------------------------------------------------------------------------


def train_job(ray_head, job_env, table: Path, model: str = "churn-like") -> tuple[str, str]:
    """`jobs/train.py` on ``table`` (label ``fraud``) through the head: a candidate version to use."""
    return submit_and_wait(
        ray_head.client,
        f"python jobs/train.py --model {model} --data {table} --label fraud "
        "--params tests/e2e/fast_params.yaml --threads 1 --json",
        job_env.env_vars,
    )


@pytest.fixture(scope="module")
def trained_by_job(create_database, ray_head, tmp_path_factory) -> SimpleNamespace:
    """One train job through the head on a small table of a database of its own: what the train job's test
    checks and the batch-scoring job scores with."""
    job_env = make_job_env(create_database, tmp_path_factory.mktemp("train-job"))
    table = write_table(job_env.tmp_path / "t.csv")  # absolute: the job runs in its own copy of the repo
    status, logs = train_job(ray_head, job_env, table)
    return SimpleNamespace(env=job_env, table=table, status=status, logs=logs)


def test_train_job_submitted_to_a_ray_head_succeeds(trained_by_job):
    job_env, status, logs = trained_by_job.env, trained_by_job.status, trained_by_job.logs
    assert status == "SUCCEEDED", logs
    result = json_result(logs)
    assert result["model"] == "churn-like" and result["version"] == 1 and result["status"] == "candidate"
    rows = fetch(job_env.dsn, """SELECT v.version, v.status, v.artifact_uri, v.artifact_sha256
                                   FROM sira_model_versions v JOIN sira_models m ON m.id = v.model_id
                                  WHERE m.name = $1""", "churn-like")
    assert [(r["version"], r["status"]) for r in rows] == [(1, "candidate")]
    assert rows[0]["artifact_sha256"] == result["artifact"]["sha256"]
    # The artifact went where runtime_env said: the test's workspace, not the head's working dir.
    assert rows[0]["artifact_uri"].startswith(str(job_env.workspace))


def test_a_failing_job_reports_failed_with_its_error(ray_head, job_env):
    submission_id = f"sira-test-fail-{uuid.uuid4().hex[:8]}"
    status, logs = submit_and_wait(
        ray_head.client, "python jobs/train.py --model x --data /nonexistent.csv --label y", job_env.env_vars,
        submission_id=submission_id,
    )
    assert status == "FAILED", logs
    assert "error: not_found: file not found: /nonexistent.csv" in logs.splitlines(), logs
    assert "Traceback" not in logs
    assert ray_head.client.get_job_info(submission_id).driver_exit_code == 2  # bad input



def test_batch_score_job_submitted_to_a_ray_head_succeeds(ray_head, trained_by_job):
    import pyarrow.parquet as pq

    job_env, table = trained_by_job.env, trained_by_job.table
    assert trained_by_job.status == "SUCCEEDED", trained_by_job.logs
    out = job_env.tmp_path / "scores.parquet"
    status, logs = submit_and_wait(
        ray_head.client,
        f"python jobs/batch_score.py --model churn-like --version 1 --data {table} --out {out} --keep-columns --json",
        job_env.env_vars,
    )
    assert status == "SUCCEEDED", logs
    result = json_result(logs)
    assert result["model"] == "churn-like" and result["version"] == 1 and result["status"] == "candidate"
    assert result["engine"] == "ray data"  # a submitted job scores on the cluster, however small its input
    scored = pq.read_table(out)
    assert result["rows"] == scored.num_rows == 4000
    assert {"amount", "channel", "fraud", "score", "decision"} <= set(scored.column_names)
    audit = fetch(job_env.dsn, "SELECT details FROM sira_audit_log WHERE action = 'batch.score'")
    assert [json.loads(a["details"])["sha256"] for a in audit] == [result["sha256"]]


def test_sira_jobs_submit_uploads_the_table_a_train_job_names_and_reserves_its_drivers_cpu(ray_head, job_env):
    """jobs/train.py's own example, `sira jobs submit train -- --model churn --data data/churn.parquet --label
    churned`, failed with `not_found: file not found: data/churn.parquet`: the upload leaves out data/ and
    *.parquet (and a checkout's .gitignore leaves out data/). And the driver, which trains, reserved no CPU,
    although cluster.yaml says train needs one (`--entrypoint-num-cpus 1`)."""
    wd = job_env.tmp_path / "checkout"
    (wd / "jobs").mkdir(parents=True)
    for script in (ROOT / "jobs").glob("*.py"):
        shutil.copy(script, wd / "jobs")
    shutil.copy(ROOT / ".gitignore", wd / ".gitignore")  # SIRA's: data/ is left out
    shutil.copy(ROOT / "tests" / "e2e" / "fast_params.yaml", wd / "fast.yaml")
    (wd / "data").mkdir()
    table = write_table(wd / "data" / "t.csv")
    pd.read_csv(table).rename(columns={"fraud": "churned"}).to_parquet(wd / "data" / "churn.parquet", index=False)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SIRA_", "RAY_AUTH")) and k not in ("RAY_ADDRESS", "RAY_JOB_ADDRESS")}
    env.update({"SIRA_DATABASE_URL": job_env.dsn, "SIRA_WORKSPACE": str(job_env.workspace),
                "RAY_JOB_ADDRESS": ray_head.url, "RAY_AUTH_TOKEN_PATH": str(Path(ray_head.temp_dir) / "auth_token")})
    done = subprocess.run([sys.executable, "-m", "sira", "jobs", "submit", "--working-dir", str(wd), "--json", "train",
                           "--", "--model", "churn", "--type", "churn", "--data", "data/churn.parquet", "--label",
                           "churned", "--params", "fast.yaml", "--threads", "1"],
                          cwd=job_env.tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + "\n--- stderr:\n" + done.stderr[-3000:]
    submitted = json.loads(done.stdout)
    assert submitted["status"] == "SUCCEEDED" and submitted["uploaded"] == ["data/churn.parquet", "fast.yaml"]
    assert submitted["result"]["model"] == "churn" and submitted["result"]["version"] == 1
    assert submitted["result"]["split"]["train"] > 0
    # the job's supervisor (its driver's host) as Ray's state API lists it: what it reserved
    import requests

    token = (Path(ray_head.temp_dir) / "auth_token").read_text()
    actors = requests.get(f"{ray_head.url}/api/v0/actors", headers={"Authorization": f"Bearer {token}"}, timeout=30,
                          params={"detail": "1", "filter_keys": "class_name", "filter_predicates": "=",
                                  "filter_values": "JobSupervisor"}).json()["data"]["result"]["result"]
    supervisor = [a for a in actors if a["name"].endswith(submitted["submission_id"])]
    assert [a["required_resources"] for a in supervisor] == [{"CPU": 1.0}], actors
    assert submitted["entrypoint_num_cpus"] == 1


# -- the README's job commands, run as written ---------------------------------------------------------


@pytest.fixture(scope="module")
def jobs_model(create_database, workspace, ray_session, tmp_path_factory):
    """A small installation of its own (events, labels, a production ``fraud`` v1, keys for every role)."""
    from tests.conftest import served_model

    return served_model(create_database, workspace, tmp_path_factory, name="sira_jobs_readme", days=24,
                        customers=250, params={"num_boost_round": 60, "early_stopping_rounds": 20})


def test_the_readmes_job_commands_run_verbatim_with_short_lived_keys(jobs_model, ray_head, tmp_path):
    assert ray_head.proc.poll() is None, (Path(ray_head.temp_dir) / "ray-start.log").read_text()[-3000:]
    lines = readme_block("jobs-example")
    assert any(line.startswith("sira jobs submit") and " train " in line for line in lines)
    assert any(line.startswith("ray job submit") for line in lines)
    before = {j.submission_id for j in ray_head.client.list_jobs()}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SIRA_", "RAY_AUTH")) and k not in ("RAY_ADDRESS", "RAY_JOB_ADDRESS")}
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "SIRA_DATABASE_URL": jobs_model.dsn,
                "SIRA_WORKSPACE": str(jobs_model.settings.workspace), "SIRA_API_KEY": jobs_model.keys["admin"],
                "RAY_JOB_ADDRESS": ray_head.url, "RAY_AUTH_TOKEN_PATH": str(Path(ray_head.temp_dir) / "auth_token")})
    # one shell, as a person pastes the block (exports carry over); stops at the first failing line
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=540)
    head_log = Path(ray_head.temp_dir) / "ray-start.log"
    assert done.returncode == 0, (done.stdout[-3000:] + "\n--- stderr:\n" + done.stderr[-3000:]
                                  + "\n--- the head:\n" + head_log.read_text(errors="replace")[-1500:])
    jobs = [j for j in ray_head.client.list_jobs() if j.submission_id not in before]
    assert len(jobs) == sum(line.startswith(("sira jobs submit", "ray job submit")) for line in lines)
    assert all(j.status == "SUCCEEDED" for j in jobs), [(j.submission_id, j.status) for j in jobs]
    trained = json_result(done.stdout)  # `sira jobs submit ... --json`: the submission, on stdout
    assert trained["status"] == "SUCCEEDED" and trained["key"] == f"job-{trained['submission_id']}"
    # ... and the job's own result: which version it registered (before, only its log said)
    assert trained["result"]["model"] == "fraud" and trained["result"]["version"] == 2
    versions = fetch(jobs_model.dsn, """SELECT v.version FROM sira_model_versions v JOIN sira_models m
                                         ON m.id = v.model_id WHERE m.name = 'fraud' ORDER BY 1""")
    assert [v["version"] for v in versions] == [1, 2]  # the job trained a candidate
    # each job acted with a key of its own: one role, revoked once the job ended; the caller's never travelled
    keys = fetch(jobs_model.dsn, "SELECT name, roles, revoked_at, created_by FROM sira_api_keys WHERE name LIKE 'job-%'")
    assert len(keys) == len(jobs) and all(k["revoked_at"] is not None for k in keys)
    assert {tuple(k["roles"]) for k in keys} == {("data_scientist",), ("operator",)}
    assert {k["created_by"] for k in keys} == {"t-admin"}
    for job in jobs:
        carried = (job.runtime_env or {}).get("env_vars") or {}
        assert carried.get("SIRA_API_KEY") not in (None, jobs_model.keys["admin"])
    assert not (tmp_path / ".sira").exists()  # nothing of SIRA's state where the commands ran
    # the drift job's rows carry its Ray submission id (what `sira_data_drift.job_id` is for)
    drift = [j for j in jobs if "jobs/drift.py" in j.entrypoint]
    assert len(drift) == 1
    rows = fetch(jobs_model.dsn, "SELECT feature FROM sira_data_drift WHERE job_id = $1", drift[0].submission_id)
    assert {"__dataset__", "__score__"} <= {r["feature"] for r in rows} and len(rows) > 2


def test_a_job_without_a_database_fails_at_once_and_starts_no_postgres(ray_head, tmp_path):
    workspace = tmp_path / "ws"
    submission_id = f"sira-test-nodb-{uuid.uuid4().hex[:8]}"
    status, logs = submit_and_wait(ray_head.client, "python jobs/train.py --model fraud",
                                   {"SIRA_WORKSPACE": str(workspace)}, submission_id=submission_id)
    assert status == "FAILED", logs
    errors = [line for line in logs.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: database_not_configured: no database for this Ray job")
    assert "SIRA_DATABASE_URL" in errors[0] and "sira jobs submit" in errors[0] and "Traceback" not in logs
    assert ray_head.client.get_job_info(submission_id).driver_exit_code == 2
    assert not Settings(workspace=workspace).embedded_pg_data.exists()
    assert not [c for c in head_processes(ray_head.proc.pid, ray_head.temp_dir).values() if "postgres" in c]
