"""The alert rules, the Prometheus and Alertmanager configs under deploy/, checked by the real tools
(Debian's prometheus and prometheus-alertmanager: `make tools`), and held to the metrics SIRA exports."""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTMANAGER = ROOT / "deploy" / "alertmanager"
DOC = ROOT / "docs" / "observability.md"


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found: install Debian's {package} package (`make tools`)")
    return path


def run(*args: str, cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "sira-rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_alert_rules_pass_promtools_check_and_unit_tests():
    promtool = tool("promtool", "prometheus")
    assert "SUCCESS: 17 rules found" in run(promtool, "check", "rules", "sira-rules.yml", cwd=PROMETHEUS)
    assert "SUCCESS" in run(promtool, "test", "rules", "sira-rules.test.yml", cwd=PROMETHEUS)


def test_the_prometheus_config_is_valid_as_checked_in_without_a_key_file():
    # /metrics is open: the checked-in config names no key file that a real Prometheus would fail to read
    # (the target down, SiraMetricsDown paging) and that `promtool check config` fails to stat
    promtool = tool("promtool", "prometheus")
    run(promtool, "check", "config", "prometheus.yml", cwd=PROMETHEUS)
    jobs = {job["job_name"]: job for job in yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]}
    assert "authorization" not in jobs["sira-platform"]


def observe_module():
    spec = importlib.util.spec_from_file_location("sira_observe", ROOT / "deploy" / "observe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_observe_scrapes_metrics_without_a_key_and_with_one_only_when_given(tmp_path):
    promtool = tool("promtool", "prometheus")
    observe = observe_module()
    args = argparse.Namespace(replicas="127.0.0.1:8090", service="127.0.0.1:8000", stream="127.0.0.1:8091",
                              alertmanager_port=9093, key_file=None)
    prom = observe.prometheus_config(tmp_path, args)
    platform = next(job for job in prom["scrape_configs"] if job["job_name"] == "sira-platform")
    assert "authorization" not in platform
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom))
    run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)

    key = tmp_path / "viewer.key"
    key.write_text("a-viewers-key")
    prom = observe.prometheus_config(tmp_path, argparse.Namespace(**{**vars(args), "key_file": key}))
    platform = next(job for job in prom["scrape_configs"] if job["job_name"] == "sira-platform")
    assert platform["authorization"] == {"type": "Bearer", "credentials_file": str(key)}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom))
    run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)


def test_the_alertmanager_config_is_valid_and_routes_pages_to_pagerduty_and_warnings_to_slack():
    amtool = tool("amtool", "prometheus-alertmanager")
    run(amtool, "check-config", "alertmanager.yml", cwd=ALERTMANAGER)
    for labels, receiver in (("severity=page", "pagerduty"), ("severity=warning", "slack")):
        routed = run(amtool, "config", "routes", "test", "--config.file=alertmanager.yml", labels, cwd=ALERTMANAGER)
        assert routed.strip() == receiver, routed
    config = yaml.safe_load((ALERTMANAGER / "alertmanager.yml").read_text())
    text = (ALERTMANAGER / "alertmanager.yml").read_text()
    assert "api_url_file" in text and "routing_key_file" in text  # secrets are files, never in the config
    assert {r["name"] for r in config["receivers"]} == {"slack", "pagerduty"}


def render(amtool: str, text: str, alerts: list[dict], tmp_path: Path) -> str:
    """``text`` as Alertmanager renders it for a notification of ``alerts`` (one group)."""
    common_labels = dict(set.intersection(*(set(a["labels"].items()) for a in alerts)))
    common_annotations = dict(set.intersection(*(set(a["annotations"].items()) for a in alerts)))
    data = {"receiver": "pagerduty", "status": "firing", "externalURL": "http://alertmanager:9093",
            "alerts": [{"status": "firing", **a} for a in alerts],
            "groupLabels": {k: v for k, v in common_labels.items() if k in ("alertname", "model")},
            "commonLabels": common_labels, "commonAnnotations": common_annotations}
    (tmp_path / "data.json").write_text(json.dumps(data))
    (tmp_path / "none.tmpl").write_text("")
    return run(amtool, "template", "render", f"--template.glob={tmp_path / 'none.tmpl'}",
               f"--template.data={tmp_path / 'data.json'}", f"--template.text={text}", cwd=tmp_path).strip()


def test_the_pagerduty_description_names_each_alerts_summary_when_they_differ(tmp_path):
    amtool = tool("amtool", "prometheus-alertmanager")
    config = yaml.safe_load((ALERTMANAGER / "alertmanager.yml").read_text())
    pagerduty = next(r for r in config["receivers"] if r["name"] == "pagerduty")
    description = pagerduty["pagerduty_configs"][0]["description"]
    runbook = "docs/observability.md#sirametricsdown"
    one = [{"labels": {"alertname": "SiraMetricsDown", "instance": "a:8000", "severity": "page"},
            "annotations": {"summary": "Prometheus cannot scrape SIRA's /metrics on a:8000", "runbook_url": runbook}}]
    assert render(amtool, description, one, tmp_path) == \
        "SiraMetricsDown: Prometheus cannot scrape SIRA's /metrics on a:8000"
    two = one + [{"labels": {"alertname": "SiraMetricsDown", "instance": "b:8000", "severity": "page"},
                  "annotations": {"summary": "Prometheus cannot scrape SIRA's /metrics on b:8000",
                                  "runbook_url": runbook}}]
    assert render(amtool, description, two, tmp_path) == ("SiraMetricsDown: Prometheus cannot scrape SIRA's /metrics "
                                                          "on a:8000; Prometheus cannot scrape SIRA's /metrics on b:8000")


def test_only_a_production_version_that_cannot_load_silences_that_models_latency_alert():
    # a shadow that cannot load changes nothing callers see: production's latency must still page
    amtool = tool("amtool", "prometheus-alertmanager")
    run(amtool, "check-config", "alertmanager.yml", cwd=ALERTMANAGER)
    config = yaml.safe_load((ALERTMANAGER / "alertmanager.yml").read_text())
    inhibiting = [rule for rule in config["inhibit_rules"]
                  if 'alertname="SiraModelLoadFailing"' in rule["source_matchers"]]
    assert inhibiting
    for rule in inhibiting:
        assert 'role="production"' in rule["source_matchers"], rule
        assert rule["equal"] == ["model"], rule


def test_a_large_stuck_spool_backlog_pages_once():
    # SiraSpoolBacklogGrowing (the sum over 1,000, not draining) and SiraSpoolBacklogStuck (a replica's backlog
    # not one fewer for 30 minutes) both fire for one PostgreSQL that stores nothing: the first silences the second
    amtool = tool("amtool", "prometheus-alertmanager")
    run(amtool, "check-config", "alertmanager.yml", cwd=ALERTMANAGER)
    config = yaml.safe_load((ALERTMANAGER / "alertmanager.yml").read_text())
    (rule,) = [rule for rule in config["inhibit_rules"]
               if rule["target_matchers"] == ['alertname="SiraSpoolBacklogStuck"']]
    assert rule["source_matchers"] == ['alertname="SiraSpoolBacklogGrowing"'] and not rule.get("equal")
    assert {r["alert"] for r in rules()} >= {"SiraSpoolBacklogGrowing", "SiraSpoolBacklogStuck"}


def test_every_alert_uses_series_sira_exports_and_has_a_runbook():
    doc = DOC.read_text()
    documented = set(re.findall(r"`((?:ray_)?sira_[a-z_]+)`", doc))
    headings = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", doc, flags=re.M)}
    severities = set()
    for rule in rules():
        used = set(re.findall(r"\b((?:ray_)?sira_[a-z_]+)", rule["expr"]))
        used = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
        assert used <= documented, (rule["alert"], used - documented)
        assert used or "up{" in rule["expr"], rule["alert"]
        runbook = re.fullmatch(re.escape(RUNBOOK_BASE) + r"#([a-z0-9-]+)", rule["annotations"]["runbook_url"])
        assert runbook and runbook.group(1) in headings, (rule["alert"], rule["annotations"]["runbook_url"])
        severities.add(rule["labels"]["severity"])
    assert severities == {"page", "warning"}


# Every rule's runbook_url: the address Prometheus' external label sira_runbooks names, else the doc's path here
RUNBOOK_BASE = "{{ with $externalLabels.sira_runbooks }}{{ . }}{{ else }}docs/observability.md{{ end }}"


def test_runbook_links_are_absolute_from_one_setting_and_name_the_docs_real_anchors(tmp_path):
    """runbook_url was `docs/observability.md#...`, a path in the repository that PagerDuty and Slack cannot open,
    and the rules' header named an anchor the doc does not have (#alerts). The checked-in Prometheus config gives
    one absolute address (an external label the rules' template reads; promtool renders it in
    sira-rules.test.yml); `make observe` gives this checkout's file."""
    from urllib.parse import urlsplit

    doc = DOC.read_text()
    headings = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", doc, flags=re.M)}
    for anchor in re.findall(r"docs/observability\.md#([a-z0-9-]+)", (PROMETHEUS / "sira-rules.yml").read_text()):
        assert anchor in headings, anchor
    base = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["global"]["external_labels"]["sira_runbooks"]
    assert urlsplit(base).scheme == "https" and base.endswith("/docs/observability.md"), base
    observe = observe_module()
    args = argparse.Namespace(replicas="127.0.0.1:8090", service="127.0.0.1:8000", stream="127.0.0.1:8091",
                              alertmanager_port=9093, key_file=None)
    local = observe.prometheus_config(tmp_path, args)["global"]["external_labels"]["sira_runbooks"]
    assert local == DOC.as_uri()


def test_the_dashboards_checked_in_are_what_the_code_builds_over_documented_series():
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "deploy" / "grafana" / "build.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    documented = set(re.findall(r"`((?:ray_)?sira_[a-z_]+)`", DOC.read_text()))
    for path in sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        assert exprs, path.name
        for expr in exprs:
            used = {re.sub(r"_(bucket|count|sum)$", "", n) for n in re.findall(r"\b((?:ray_)?sira_[a-z_]+)", expr)}
            assert used and used <= documented, (path.name, expr, used - documented)


def test_the_panels_the_doc_names_for_event_only_series_exist():
    # docs/observability.md#dashboards: panels for model load failures, refused user_config updates and spooled
    # records refused for good (no data until their first event), and the load-failing gauge beside them
    from tests import promstack

    exprs = [t["expr"] for path in (ROOT / "deploy" / "grafana" / "dashboards").glob("*.json")
             for p in json.loads(path.read_text())["panels"] for t in p.get("targets", [])]
    for name in sorted(promstack.EVENT_ONLY | {"ray_sira_model_load_failing"}):
        assert any(re.search(rf"\b{name}\b", expr) for expr in exprs), name


def test_the_docs_serving_table_gives_each_replica_series_the_labels_the_code_exports():
    code = (ROOT / "sira" / "serving" / "metrics.py").read_text()
    exported = {}
    for kind, name, rest in re.findall(r"metrics\.(Counter|Gauge|Histogram)\(\s*\"(sira_[a-z_]+)\"(.*?)\)\n", code,
                                       flags=re.S):
        keys = re.search(r"tag_keys=\(([^)]*)\)", rest)
        suffix = "_total" if kind == "Counter" else ""
        exported[f"ray_{name}{suffix}"] = set(re.findall(r"\"([a-z_]+)\"", keys.group(1))) if keys else set()
    assert "ray_sira_model_load_failing" in exported
    rows = re.findall(r"^\| `(ray_sira_[a-z_]+)` \| [a-z]+ \|([^|]*)\|", DOC.read_text(), flags=re.M)
    documented = {name: set(re.findall(r"`([a-z_]+)`", labels)) for name, labels in rows}
    for name, labels in exported.items():
        assert documented.get(name) == labels, (name, documented.get(name), labels)
