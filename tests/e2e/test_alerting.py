"""A drift alert travels from SIRA's /metrics through a real Prometheus (deploy/prometheus's rules) and a real
Alertmanager (deploy/alertmanager's routing) to a Slack-format and a PagerDuty-format payload at a local
receiver. Debian's prometheus and prometheus-alertmanager (`make tools`); skipped, naming them, without."""
from __future__ import annotations

import asyncio
import json
import runpy
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from sira.core import db

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def binary(*names: str, package: str) -> str:
    for name in names:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip(f"{names[0]} not found: install Debian's {package} package (`make tools`)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver(ThreadingHTTPServer):
    """Slack's incoming webhook and PagerDuty's Events API v2, as far as Alertmanager can tell: JSON bodies kept
    by path."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.received.append((self.path, json.loads(body)))
                answer = b'{"status": "success", "message": "Event processed", "dedup_key": "k"}'
                self.send_response(202 if self.path.startswith("/pagerduty") else 200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def serve_sira(settings, port: int):
    """SIRA's application (no scoring service: /metrics needs none) under uvicorn, in a thread."""
    import uvicorn

    from sira.http.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "SIRA did not start"
        time.sleep(0.05)
    return server, thread


def started(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for(what: str, check, seconds: float = 90.0, logs: tuple[Path, ...] = ()):
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def test_a_drift_alert_reaches_slack_and_pagerduty_format_receivers(fraud_model, tmp_path):
    prometheus = binary("prometheus", package="prometheus")
    alertmanager = binary("prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager")
    receiver = Receiver()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "viewer.key").write_text(fraud_model.keys["viewer"])
    (secrets / "slack").write_text(f"{receiver.url}/slack")
    (secrets / "pagerduty").write_text("0123456789abcdef0123456789abcdef")

    # the checked-in configs, with this test's addresses, files and a fast clock
    am = yaml.safe_load((ROOT / "deploy/alertmanager/alertmanager.yml").read_text())
    am["route"].update(group_wait="1s", group_interval="1s")
    for r in am["receivers"]:
        for c in r.get("slack_configs", []):
            c["api_url_file"] = str(secrets / "slack")
        for c in r.get("pagerduty_configs", []):
            c["routing_key_file"] = str(secrets / "pagerduty")
            c["url"] = f"{receiver.url}/pagerduty/v2/enqueue"
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am))
    rules = yaml.safe_load((ROOT / "deploy/prometheus/sira-rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    (tmp_path / "sira-rules.yml").write_text(yaml.safe_dump(rules))
    sira_port, am_port, prom_port = free_port(), free_port(), free_port()
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    prom["global"].update(scrape_interval="1s", evaluation_interval="1s")
    prom["rule_files"] = [str(tmp_path / "sira-rules.yml")]
    prom["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{am_port}"]}]
    platform = next(j for j in prom["scrape_configs"] if j["job_name"] == "sira-platform")
    platform["static_configs"] = [{"targets": [f"127.0.0.1:{sira_port}"]}]
    platform["authorization"]["credentials_file"] = str(secrets / "viewer.key")
    prom["scrape_configs"] = [platform]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom))

    # a synthetic drift ALERT on the production version (what a drift run stores)
    async def drift(severity: str) -> None:
        conn = await db.connect(fraud_model.dsn)
        try:
            await conn.execute(
                """INSERT INTO sira_data_drift (model_id, version, feature, window_start, window_end, psi, severity,
                                                job_id, computed_at)
                   SELECT id, $1, f.feature, now() - interval '7 days', now(), f.psi, $2, $3, now()
                     FROM sira_models, (VALUES ('__dataset__', NULL::float8), ('amount', 0.31)) AS f (feature, psi)
                    WHERE name = 'fraud'""",
                fraud_model.version, severity, f"alerting-test-{severity}")
        finally:
            await conn.close()

    asyncio.run(drift("alert"))
    server, thread = serve_sira(fraud_model.settings, sira_port)
    logs = (tmp_path / "prometheus.log", tmp_path / "alertmanager.log")
    procs = [
        started([alertmanager, f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'am'}",
                 f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="], logs[1]),
        started([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"], logs[0]),
    ]
    try:
        def query(q: str) -> list:
            try:
                r = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/query", params={"query": q}, timeout=5)
                return r.json()["data"]["result"] if r.status_code == 200 else []
            except httpx.HTTPError:
                return []

        # Prometheus scrapes SIRA's series with the viewer's key
        found = wait_for("sira_model_version_info in Prometheus", lambda: query('sira_model_version_info{model="fraud"}'),
                         logs=logs)
        assert found[0]["metric"]["status"] == "production"
        assert wait_for("the scrape", lambda: query('up{job="sira-platform"} == 1'), logs=logs)
        # the rule fires, and Alertmanager delivers it in both formats
        wait_for("SiraProductionModelDrift firing", lambda: query('ALERTS{alertname="SiraProductionModelDrift",'
                                                                  'alertstate="firing"}'), logs=logs)
        def delivered(path: str, alert: str) -> list[dict]:
            return [b for p, b in list(receiver.received) if p.startswith(path) and alert in json.dumps(b)]

        # other rules fire too in this database (no performance run yet: SiraPerformanceRunMissing)
        slack = wait_for("the drift alert at Slack", lambda: delivered("/slack", "SiraProductionModelDrift"),
                         logs=logs)[0]
        text = json.dumps(slack)
        assert "the last drift run says ALERT" in text
        assert "docs/observability.md#siraproductionmodeldrift" in text
        assert {"channel", "attachments"} <= set(slack)
        # a page: the same way to PagerDuty's Events API v2 (live AP below the margin is severity=page)
        async def flag() -> None:
            conn = await db.connect(fraud_model.dsn)
            try:
                await conn.execute(
                    """INSERT INTO sira_model_performance (model_id, version, role, window_start, window_end, n,
                                                           n_positive, average_precision, flagged, job_id)
                       SELECT id, $1, 'production', now() - interval '7 days', now(), 500, 20, 0.05, true,
                              'alerting-test' FROM sira_models WHERE name = 'fraud'""", fraud_model.version)
            finally:
                await conn.close()

        asyncio.run(flag())
        page = wait_for("the page at PagerDuty", lambda: delivered("/pagerduty", "SiraLivePerformanceDrop"),
                        seconds=60, logs=logs)[0]
        assert page["event_action"] == "trigger" and page["routing_key"] == "0123456789abcdef0123456789abcdef"
        assert "SiraLivePerformanceDrop" in page["payload"]["summary"]
        assert page["payload"]["custom_details"]["runbook"] == "docs/observability.md#siraliveperformancedrop"
        assert not delivered("/pagerduty", "SiraProductionModelDrift")  # a warning never pages
        assert not delivered("/slack", "SiraLivePerformanceDrop")  # a page goes one way

        # every dashboard query is valid PromQL to this Prometheus; those over the database's series (all this
        # Prometheus scrapes: no Serve replicas or stream consumer here) find the drift and performance rows above
        dashboards = runpy.run_path(str(ROOT / "deploy/grafana/build.py"))
        for name in dashboards["DASHBOARDS"]:
            for expr in dashboards["queries"](name):
                r = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/query",
                              params={"query": expr.replace("$__rate_interval", "1m")}, timeout=10)
                assert r.status_code == 200 and r.json()["status"] == "success", (name, expr, r.text)
                if "ray_sira_" not in expr and "sira_stream_" not in expr:  # the database's series
                    assert r.json()["data"]["result"], (name, expr)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.should_exit = True
        thread.join(timeout=10)
        receiver.shutdown()

        async def clean() -> None:
            conn = await db.connect(fraud_model.dsn)
            try:
                await conn.execute("DELETE FROM sira_data_drift WHERE job_id LIKE 'alerting-test%'")
                await conn.execute("DELETE FROM sira_model_performance WHERE job_id = 'alerting-test'")
            finally:
                await conn.close()

        asyncio.run(clean())
