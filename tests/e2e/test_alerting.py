"""A drift alert travels from SIRA's /metrics through a real Prometheus (deploy/prometheus's rules) and a real
Alertmanager (deploy/alertmanager's routing) to a Slack-format and a PagerDuty-format payload at a local
receiver. Debian's prometheus and prometheus-alertmanager (`make tools`); skipped, naming them, without."""
from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from sira.core import db
from tests.conftest import uvicorn_thread
from tests.promstack import (
    Prometheus,
    binary,
    config,
    dashboard_queries,
    free_port,
    notification_counters,
    stop,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


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
    from sira.http.app import create_app

    return uvicorn_thread(create_app(settings), port)


def started(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT)


def test_a_drift_alert_reaches_slack_and_pagerduty_format_receivers(fraud_model, tmp_path):
    alertmanager = binary("prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager")
    binary("prometheus", package="prometheus")
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
    sira_port, am_port = free_port(), free_port()
    prom_config = config(tmp_path, {"sira-platform": f"127.0.0.1:{sira_port}"},
                         credentials_file=secrets / "viewer.key", alertmanager=f"127.0.0.1:{am_port}")

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
    am_log = tmp_path / "alertmanager.log"
    manager = started([alertmanager, f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'am'}",
                       f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="], am_log)
    prom = Prometheus(tmp_path, prom_config)
    logs, query = (prom.log, am_log), prom.query
    try:
        # Prometheus scrapes SIRA's series (no key: /metrics is open)
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
        # an address on-call can open: the checked-in external label's, not the doc's path in the repository
        runbooks = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())["global"]["external_labels"]
        assert page["payload"]["custom_details"]["runbook"] == f"{runbooks['sira_runbooks']}#siraliveperformancedrop"
        assert not delivered("/pagerduty", "SiraProductionModelDrift")  # a warning never pages
        assert not delivered("/slack", "SiraLivePerformanceDrop")  # a page goes one way

        # every dashboard query is valid PromQL to this Prometheus (that each finds data after real traffic:
        # test_serving.py's last test, where Prometheus scrapes a live Serve app and a stream consumer)
        for _, expr in dashboard_queries():
            prom.check(expr)
    finally:
        prom.stop()
        stop(manager)
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


def test_make_observe_starts_prometheus_and_alertmanager_on_a_local_sira(tmp_path):
    """deploy/observe.py (`make observe`): the checked-in jobs pointed at the local addresses, the rules loaded,
    and an alert of each severity routed to the notification it makes, printed by its own receiver."""
    import os
    import signal
    import sys
    import uuid

    binary("prometheus", package="prometheus")
    binary("prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager")
    prom_port, am_port = free_port(), free_port()
    # no viewer key, and a workspace without the demo's: /metrics is open, `make observe` needs none
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_OBSERVE_")} | {
        "SIRA_WORKSPACE": str(tmp_path / "workspace")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "deploy/observe.py"), "--dir", str(tmp_path / "observe"),
                             "--prometheus-port", str(prom_port), "--alertmanager-port",
                             str(am_port), "--service", "127.0.0.1:18000"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_for("observe's addresses", lambda: any(line.startswith("Grafana dashboards") for line in lines),
                 seconds=60)
        def scraped() -> dict[str, str]:
            targets = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/targets", timeout=10).json()["data"]
            return {t["labels"]["job"]: t["scrapeUrl"] for t in targets["activeTargets"]}

        wait_for("Prometheus's targets", lambda: len(scraped()) == 3, seconds=30)
        assert scraped() == {"sira-serving": "http://127.0.0.1:8090/metrics",
                           "sira-platform": "http://127.0.0.1:18000/metrics",
                           "sira-stream": "http://127.0.0.1:8091/metrics"}
        groups = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/rules", timeout=10).json()["data"]["groups"]
        checked_in = yaml.safe_load((ROOT / "deploy/prometheus/sira-rules.yml").read_text())["groups"]
        assert {r["name"] for g in groups for r in g["rules"]} == {r["alert"] for g in checked_in for r in g["rules"]}
        # the checked-in 30 s group wait, shortened through Alertmanager's own reload of observe's config
        written = tmp_path / "observe/alertmanager.yml"
        am = yaml.safe_load(written.read_text())
        am["route"]["group_wait"] = "1s"
        written.write_text(yaml.safe_dump(am))
        assert httpx.post(f"http://127.0.0.1:{am_port}/-/reload", timeout=10).status_code == 200
        run = uuid.uuid4().hex[:6]
        alerts = [{"labels": {"alertname": f"ObserveTest{severity}{run}", "severity": severity, "model": "fraud"},
                   "annotations": {"summary": f"{severity} from the observe test"}} for severity in ("warning", "page")]
        assert httpx.post(f"http://127.0.0.1:{am_port}/api/v2/alerts", json=alerts, timeout=10).status_code == 200
        wait_for("both notifications", lambda: any(line.startswith("[slack #sira-alerts] FIRING: ObserveTestwarning")
                                                   for line in lines)
                 and any(line.startswith("[pagerduty] trigger:") and f"ObserveTestpage{run}" in line for line in lines),
                 seconds=60, logs=(tmp_path / "observe/alertmanager.log",),
                 explain=lambda: "observe printed:\n" + "".join(lines) + notification_counters(am_port))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
