"""Debian's Prometheus (and Alertmanager) for the tests that check SIRA's series where operators read them:
the checked-in configs of ``deploy/`` with a test's own targets, ports and a one-second clock. Skipped,
naming the Debian package, where the binary is absent (``make tools`` installs it)."""
from __future__ import annotations

import re
import runpy
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# A Ray counter exists only from its first increment (Ray refuses to add 0), so a series of an event that a
# healthy service may never see is absent until it happens, and a panel over it shows "no data": a replica's
# load failure, a refused user_config, a spooled record PostgreSQL refused for good, a 5xx.
EVENT_ONLY = frozenset({"ray_sira_model_load_failures_total", "ray_sira_config_rejected_total",
                        "ray_sira_spool_refused_records_total"})
_SELECTOR = re.compile(r"\b((?:ray_)?sira_[a-z_]+|up)\b(\{[^}]*\})?")


def binary(*names: str, package: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"{names[0]} not found: install Debian's {package} package (`make tools`)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, seconds: float = 90.0, logs: tuple[Path, ...] = (), explain=None):
    """``check()`` until it is truthy; a timeout names ``what``, the tails of ``logs`` and ``explain()``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}\n{explain() if explain else ''}")


def notification_counters(port: int) -> str:
    """Alertmanager's own account of its notifications (sent, failed, by integration): what its info-level log
    does not say while it retries."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        groups = httpx.get(f"http://127.0.0.1:{port}/api/v2/alerts/groups", timeout=5).text
    except httpx.HTTPError as exc:
        return f"Alertmanager's /metrics: {exc}"
    wanted = [line for line in text.splitlines() if line.startswith(("alertmanager_notifications_",
                                                                     "alertmanager_notification_requests_"))]
    return "--- Alertmanager's notification counters\n" + "\n".join(wanted) + f"\n--- its groups\n{groups[:3000]}"


def rules(folder: Path, *, immediate: bool = True) -> Path:
    """deploy/prometheus/sira-rules.yml, firing at once (no ``for:``) when ``immediate``."""
    found = yaml.safe_load((ROOT / "deploy/prometheus/sira-rules.yml").read_text())
    if immediate:
        for group in found["groups"]:
            for rule in group["rules"]:
                rule.pop("for", None)
    path = folder / "sira-rules.yml"
    path.write_text(yaml.safe_dump(found))
    return path


def config(folder: Path, targets: dict[str, str], *, credentials_file: Path | None = None,
           alertmanager: str | None = None) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with a one-second clock, its jobs pointed at ``targets`` (job name →
    host:port; jobs not named are dropped), this folder's rules and (or no) Alertmanager."""
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    prom["global"].update(scrape_interval="1s", evaluation_interval="1s")
    prom["rule_files"] = [str(rules(folder))]
    if alertmanager:
        prom["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [alertmanager]}]
    else:
        prom.pop("alerting")
    jobs = []
    for job in prom["scrape_configs"]:
        if job["job_name"] in targets:
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
            if "authorization" in job:
                job["authorization"]["credentials_file"] = str(credentials_file)
            jobs.append(job)
    assert {j["job_name"] for j in jobs} == set(targets), "a job the checked-in config lacks"
    prom["scrape_configs"] = jobs
    return prom


class Prometheus:
    """One Prometheus server on a free port, its storage and log in ``folder``."""

    def __init__(self, folder: Path, prom: dict[str, Any]):
        self.binary = binary("prometheus", package="prometheus")
        self.port = free_port()
        self.log = folder / "prometheus.log"
        (folder / "prometheus.yml").write_text(yaml.safe_dump(prom))
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log.open("w"), stderr=subprocess.STDOUT)

    def query(self, expr: str) -> list:
        """An instant query's result ([] while the server starts or on an error)."""
        try:
            r = httpx.get(f"http://127.0.0.1:{self.port}/api/v1/query", params={"query": expr}, timeout=10)
            return r.json()["data"]["result"] if r.status_code == 200 else []
        except httpx.HTTPError:
            return []

    def check(self, expr: str) -> list:
        """An instant query that must be valid PromQL here; its result."""
        r = httpx.get(f"http://127.0.0.1:{self.port}/api/v1/query", params={"query": expr}, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "success", (expr, r.text)
        return r.json()["data"]["result"]

    def stop(self) -> None:
        stop(self.proc)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def dashboard_queries() -> list[tuple[str, str]]:
    """(dashboard, PromQL) of every panel of deploy/grafana, ``$__rate_interval`` as one minute."""
    built = runpy.run_path(str(ROOT / "deploy/grafana/build.py"))
    return [(name, expr.replace("$__rate_interval", "1m")) for name in built["DASHBOARDS"]
            for expr in built["queries"](name)]


def alert_selectors() -> list[tuple[str, str]]:
    """(alert, series selector) of every SIRA series each alert rule reads: an alert's expression is empty
    while the service is healthy, so what it can check is that every series it compares exists."""
    found = yaml.safe_load((ROOT / "deploy/prometheus/sira-rules.yml").read_text())
    return [(rule["alert"], name + (labels or "")) for group in found["groups"] for rule in group["rules"]
            for name, labels in _SELECTOR.findall(rule["expr"])]


def event_only(expr: str) -> bool:
    """Whether an expression reads a series that exists only once its event happened (:data:`EVENT_ONLY`,
    or the 5xx answers of the error-ratio alert)."""
    return 'status=~"5.."' in expr or any(name in EVENT_ONLY for name, _ in _SELECTOR.findall(expr))
