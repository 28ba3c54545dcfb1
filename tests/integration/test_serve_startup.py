"""`sira api` and `sira serve` read their configuration before uvicorn or Ray starts, and log at SIRA_LOG_LEVEL.

A secret file that cannot be read, a JWT issuer without keys, a notify receivers file missing, a database that
cannot be reached: `sira api` printed uvicorn's 70-line traceback ending in ConfigError (exit 3), `sira serve`
restarted replicas for a minute and said "error: internal: RuntimeError: Deploying application sira failed".
Now one line, `error: config: ...` (exit 2) or `error: unavailable: ...` (exit 1), before anything starts.
SIRA_LOG_LEVEL was validated and documented but applied to nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from tests.conftest import cli_in_process, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(pg_dsn, tmp_path) -> dict[str, str]:
    return {"SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(tmp_path / "ws")}


def bad_settings(tmp_path) -> list[tuple[str, dict[str, str], str]]:
    short = tmp_path / "short-key"
    short.write_text("pii-1\n")
    return [
        ("a PII key file that is not there", {"SIRA_PII_KEY_FILE": str(tmp_path / "none" / "pii")},
         "error: config: cannot read SIRA_PII_KEY_FILE: No such file or directory"),
        ("an auth secret too short", {"SIRA_AUTH_SECRET_FILE": str(short)},
         "error: config: SIRA_AUTH_SECRET_FILE: the key in"),
        ("a JWT issuer without its keys", {"SIRA_JWT_ISSUER": "https://id.example"},
         "error: config: SIRA_JWT_ISSUER needs SIRA_JWT_AUDIENCE and SIRA_JWT_PUBLIC_KEY_FILE"),
        ("a notify receivers file that is not there", {"SIRA_NOTIFY_RECEIVERS_FILE": str(tmp_path / "receivers.yml")},
         "error: config: SIRA_NOTIFY_RECEIVERS_FILE: cannot read"),
        ("a database that cannot be reached", {"SIRA_DATABASE_URL": f"postgresql://sira@127.0.0.1:{free_port()}/sira"},
         "error: unavailable: cannot reach PostgreSQL at postgresql://sira@127.0.0.1:"),
    ]


def test_sira_api_refuses_bad_settings_in_one_line_before_uvicorn_starts(monkeypatch, capsys, env, tmp_path):
    for what, given, said in bad_settings(tmp_path):
        port = free_port()
        done = cli_in_process(monkeypatch, capsys, {**env, **given}, "api", "--port", str(port))
        assert done.returncode == (1 if "unavailable" in said else 2), (what, done.stderr)
        assert done.stdout == "" and done.stderr.startswith(said), (what, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, (what, done.stderr)


def test_sira_serve_refuses_a_missing_secret_file_before_ray_starts(env, tmp_path):
    started = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    started.update(env, SIRA_PII_KEY_FILE=str(tmp_path / "none" / "pii"), SIRA_RAY_NUM_CPUS="1")
    done = subprocess.run([sys.executable, "-m", "sira", "serve", "--port", str(free_port())], env=started,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr == "error: config: cannot read SIRA_PII_KEY_FILE: No such file or directory\n"


@pytest.mark.parametrize("level", ["INFO", None])
def test_sira_api_logs_at_sira_log_level_with_an_access_log_on_stderr(env, level):
    started = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    started.update(env)
    if level:
        started["SIRA_LOG_LEVEL"] = level
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sira", "api", "--no-scoring", "--port", str(port)], env=started,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                assert proc.poll() is None, proc.communicate()[1]
                return False

        wait_until(answers, timeout=90, interval=0.2, what="sira api to answer")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert out == ""  # stdout is for results: uvicorn's access log went there
    if level:
        assert "INFO sira.features.engine: feature engine ready" in err, err  # SIRA's own INFO lines
        assert '"GET /healthz HTTP/1.1" 200' in err, err  # uvicorn's start and access log
    else:
        assert "INFO" not in err and "GET /healthz" not in err, err
