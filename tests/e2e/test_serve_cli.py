"""`sira serve` as an operator runs it, in a process of its own (its own local Ray, one CPU): how it stops, what
Ray's metrics export says of its answers, and where its replicas' log lines go.

- SIGTERM (a rollout, systemd, `kill`) during its start, or as soon as it answers: until 2026-12-07 SIRA's
  handler came only once serving was up, and a SIGTERM before met Python's (rc 143) or Ray's (rc 15, 134 with a
  C++ stack trace under load), with Serve not shut down and nothing said.
- The error-ratio alert read Serve's series by a `route` label Ray never exports (Ray 2.60: the application's
  route prefix, "/"): the series Ray exports here are fed to `promtool` with the checked-in rules.
- SIRA_LOG_LEVEL in a replica: its INFO lines reach the replica's log (they went nowhere)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import migrate_database, run_sync, wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
STOPPED = "stopping SIRA serving"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def database(create_database) -> str:
    dsn = create_database()
    run_sync(migrate_database(dsn))
    return dsn


class Serving:
    """One `sira serve` process on ports of its own; its stderr in a file."""

    def __init__(self, dsn: str, folder: Path, **env: str):
        self.port, self.metrics_port = free_port(), free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SIRA_", "RAY_"))}
        self.env = {**base, "SIRA_DATABASE_URL": dsn, "SIRA_WORKSPACE": str(folder / "ws"),
                    "SIRA_RAY_NUM_CPUS": "1", "SIRA_RAY_METRICS_PORT": str(self.metrics_port), **env}
        self.stderr = folder / f"serve-{self.port}.err"
        self.proc = subprocess.Popen([sys.executable, "-m", "sira", "serve", "--port", str(self.port)], env=self.env,
                                     stdout=subprocess.PIPE, stderr=self.stderr.open("w"), text=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def said(self) -> str:
        return self.stderr.read_text()

    def wait(self, what: str, check, timeout: float = 240) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"sira serve exited ({self.proc.returncode}): {self.said()[-3000:]}"
            return check()

        wait_until(ready, timeout=timeout, interval=0.1, what=what)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> tuple[int, str, float]:
        """SIGTERM: (exit status, stderr, seconds it took to exit)."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=240)
        return self.proc.returncode, out + self.said(), time.monotonic() - began

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)


def assert_stopped_cleanly(code: int, said: str) -> None:
    assert code == 0, said[-3000:]
    assert said.rstrip().endswith(STOPPED), said[-3000:]
    assert "SIGTERM received" not in said and "Traceback" not in said and "error:" not in said, said[-3000:]


def test_a_sigterm_while_it_starts_stops_it_cleanly(database, tmp_path):
    # Ray is up (its metrics export listens) and Serve is starting: the window where Ray's own handler ended it
    serving = Serving(database, tmp_path)
    try:
        serving.wait("the local Ray's metrics export", lambda: listening(serving.metrics_port))
        assert not serving.ready()
        code, said, _ = serving.stop()
    finally:
        serving.kill()
    assert_stopped_cleanly(code, said)
    assert "SIRA is serving" not in said


def test_a_sigterm_as_soon_as_it_answers_stops_it_cleanly_and_replicas_log_at_sira_log_level(database, tmp_path):
    # the replica's log file, under a Ray temp folder of this test's own (short: Ray's socket paths have a limit);
    # Serve's throughput-optimised mode buffers a replica's log lines (1,000), so this run writes them at once
    ray_tmp = Path(tempfile.mkdtemp(prefix="sira-ray-", dir="/tmp"))
    serving = Serving(database, tmp_path, SIRA_LOG_LEVEL="INFO", RAY_TMPDIR=str(ray_tmp),
                      RAY_SERVE_THROUGHPUT_OPTIMIZED="0")
    try:
        serving.wait("/readyz to answer 200", serving.ready)
        code, said, _ = serving.stop()
        logs = sorted(ray_tmp.glob("ray/session_*/logs/serve/replica_sira_sira_*.log"))
        replica = "".join(path.read_text(errors="replace") for path in logs)
    finally:
        serving.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert_stopped_cleanly(code, said)
    assert logs, "no replica log"
    assert re.search(r"INFO .* feature engine ready in", replica), replica[-3000:]  # sira.features.engine, at INFO


def test_the_error_alert_reads_the_serve_series_ray_exports_here(database, tmp_path):
    """Ray's export of this `sira serve` (4xx answers: Serve and SIRA count them, as they would 5xx): its Serve
    series, with their error code turned 5xx, are what the checked-in SiraScoringErrors must page on."""
    from prometheus_client.parser import text_string_to_metric_families

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: install Debian's prometheus package (`make tools`)")
    serving = Serving(database, tmp_path)
    try:
        serving.wait("/readyz to answer 200", serving.ready)
        key = json.loads(subprocess.run([sys.executable, "-m", "sira", "keys", "create", "--role", "admin", "--name",
                                         "labels", "--json"], env=serving.env, capture_output=True, text=True,
                                        timeout=120, check=True).stdout)["key"]
        for body in ({"model": "fraud"}, {"unexpected": 1}):
            answer = httpx.post(f"{serving.url}/v1/score", json=body, headers={"Authorization": f"Bearer {key}"},
                                timeout=30)
            assert answer.status_code == 422, answer.text

        def exported() -> dict[str, list[dict[str, str]]]:
            text = httpx.get(f"http://127.0.0.1:{serving.metrics_port}/metrics", timeout=10).text
            found: dict[str, list[dict[str, str]]] = {}
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    found.setdefault(sample.name, []).append({k: v for k, v in sample.labels.items() if v != ""})
            return found

        series: dict[str, list[dict[str, str]]] = {}

        def counted() -> bool:
            series.update(exported())
            return any(s.get("application") == "sira" and s.get("error_code") == "422"
                       for s in series.get("ray_serve_num_deployment_http_error_requests_total", [])) \
                and any(s.get("status") == "422" for s in series.get("ray_sira_errors_total", []))

        serving.wait("the 422s in Ray's metrics export", counted, timeout=120)
    finally:
        serving.kill()
    serve_errors = [s for s in series["ray_serve_num_deployment_http_error_requests_total"]
                    if s.get("application") == "sira"]
    # what the rule was written against: Serve's route is the application's prefix, SIRA's the path
    assert {s["route"] for s in serve_errors} == {"/"}, serve_errors
    assert {s["route"] for s in series["ray_sira_errors_total"]} == {"/v1/score"}, series["ray_sira_errors_total"]

    def as_series(name: str, labels: dict[str, str]) -> str:
        return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"

    # 503s that never reached SIRA's handler (SIRA counted none), in the label sets exported here
    inputs = [{"series": series_text, "values": "0+50x20"} for series_text in sorted(
        {as_series("ray_serve_num_deployment_http_error_requests_total", {**s, "error_code": "503"})
         for s in serve_errors})]
    test = {"rule_files": [str(ROOT / "deploy" / "prometheus" / "sira-rules.yml")], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": inputs, "alert_rule_test": [
                {"eval_time": "15m", "alertname": "SiraScoringErrors", "exp_alerts": [
                    {"exp_labels": {"severity": "page"},
                     "exp_annotations": {"summary": "100% of scoring answers are server errors",
                                         "runbook_url": "docs/observability.md#sirascoringerrors"}}]}]}]}
    (tmp_path / "live.test.yml").write_text(yaml.safe_dump(test))
    done = subprocess.run([promtool, "test", "rules", str(tmp_path / "live.test.yml")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr + yaml.safe_dump(inputs)
