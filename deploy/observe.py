"""`make observe`: Debian's Prometheus and Alertmanager pointed at a local SIRA (the demo's, `sira serve`'s).

Prometheus scrapes the three addresses of docs/observability.md (the replicas through Ray's metrics export,
the service's ``/metrics``, open, with a viewer's key only when ``--key-file`` names one, the stream
consumer) with the checked-in scrape jobs and alert rules; Alertmanager routes with the checked-in routing. Notifications go to a receiver in this
process that prints each one as it arrives (what Slack's webhook and PagerDuty's Events API would be
sent), unless ``SIRA_OBSERVE_SLACK_URL_FILE`` / ``SIRA_OBSERVE_PAGERDUTY_KEY_FILE`` name real secrets.
Runs until Ctrl-C; everything it writes is under ``--dir``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DASHBOARDS = HERE / "grafana" / "dashboards"


def printing_receiver(say) -> ThreadingHTTPServer:
    """Slack's incoming webhook and PagerDuty's Events API v2 as far as Alertmanager can tell: each payload
    is printed in one line and answered as those services answer."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
            if self.path.startswith("/pagerduty"):
                payload = body.get("payload", {})
                say(f"[pagerduty] {body.get('event_action')}: {payload.get('summary')}")
                answer, status = b'{"status": "success", "message": "Event processed"}', 202
            else:
                for a in body.get("attachments", []):
                    say(f"[slack {body.get('channel')}] {a.get('title')}: {a.get('text', '').strip()}")
                answer, status = b"ok", 200
            self.send_response(status)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def prometheus_config(folder: Path, args: argparse.Namespace) -> dict:
    prom = yaml.safe_load((HERE / "prometheus/prometheus.yml").read_text())
    shutil.copy(HERE / "prometheus/sira-rules.yml", folder / "sira-rules.yml")
    prom["rule_files"] = [str(folder / "sira-rules.yml")]
    prom["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{args.alertmanager_port}"]}]
    # the runbooks of this checkout, openable on this machine (the checked-in address is a placeholder)
    prom["global"]["external_labels"]["sira_runbooks"] = (HERE.parent / "docs" / "observability.md").as_uri()
    targets = {"sira-serving": args.replicas, "sira-platform": args.service, "sira-stream": args.stream}
    for job in prom["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        if job["job_name"] == "sira-platform" and args.key_file:  # /metrics is open: a key only when asked
            job["authorization"] = {"type": "Bearer", "credentials_file": str(args.key_file.resolve())}
    return prom


def alertmanager_config(folder: Path, receiver: str) -> tuple[dict, list[str]]:
    """The checked-in routing; its secrets from SIRA_OBSERVE_* files, else this process's receiver."""
    am = yaml.safe_load((HERE / "alertmanager/alertmanager.yml").read_text())
    slack, pagerduty = os.environ.get("SIRA_OBSERVE_SLACK_URL_FILE"), os.environ.get("SIRA_OBSERVE_PAGERDUTY_KEY_FILE")
    where = []
    if not slack:
        slack = str(folder / "slack_webhook_url")
        Path(slack).write_text(f"{receiver}/slack")
        where.append("Slack messages printed here")
    if not pagerduty:
        pagerduty = str(folder / "pagerduty_routing_key")
        Path(pagerduty).write_text("0" * 32)
        where.append("PagerDuty events printed here")
    for r in am["receivers"]:
        for c in r.get("slack_configs", []):
            c["api_url_file"] = slack
        for c in r.get("pagerduty_configs", []):
            c["routing_key_file"] = pagerduty
            if not os.environ.get("SIRA_OBSERVE_PAGERDUTY_KEY_FILE"):
                c["url"] = f"{receiver}/pagerduty/v2/enqueue"
    return am, where


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", default="127.0.0.1:8000", help="SIRA's service (GET /metrics)")
    parser.add_argument("--replicas", default="127.0.0.1:8090", help="Ray's metrics export (the replicas' series)")
    parser.add_argument("--stream", default="127.0.0.1:8091", help="the stream consumer's exporter")
    parser.add_argument("--key-file", type=Path,
                        help="a viewer's API key sent to /metrics (default: none, /metrics is open; for a proxy "
                             "of yours in front of it that checks one)")
    parser.add_argument("--prometheus-port", type=int, default=9090)
    parser.add_argument("--alertmanager-port", type=int, default=9093)
    parser.add_argument("--dir", type=Path, default=Path(".sira/observe"), help="configs, storage and logs")
    args = parser.parse_args(argv)
    binaries = {name: shutil.which(name) or shutil.which(alt) for name, alt in
                (("prometheus", "prometheus"), ("prometheus-alertmanager", "alertmanager"))}
    missing = [name for name, found in binaries.items() if not found]
    if missing:
        print(f"error: {', '.join(missing)} not found: install Debian's {' and '.join(missing)} (`make tools`)",
              file=sys.stderr)
        return 2
    folder = args.dir.resolve()
    folder.mkdir(parents=True, exist_ok=True)

    printing = threading.Lock()

    def say(line: str) -> None:  # the receiver's threads answer at once: one whole line each, never interleaved
        with printing:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    receiver = printing_receiver(say)
    am, where = alertmanager_config(folder, f"http://127.0.0.1:{receiver.server_address[1]}")
    (folder / "alertmanager.yml").write_text(yaml.safe_dump(am))
    (folder / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(folder, args)))
    procs = [
        subprocess.Popen([binaries["prometheus-alertmanager"], f"--config.file={folder / 'alertmanager.yml'}",
                          f"--storage.path={folder / 'alertmanager'}", "--cluster.listen-address=",
                          f"--web.listen-address=127.0.0.1:{args.alertmanager_port}"],
                         stdout=(folder / "alertmanager.log").open("w"), stderr=subprocess.STDOUT),
        subprocess.Popen([binaries["prometheus"], f"--config.file={folder / 'prometheus.yml'}",
                          f"--storage.tsdb.path={folder / 'prometheus'}",
                          f"--web.listen-address=127.0.0.1:{args.prometheus_port}"],
                         stdout=(folder / "prometheus.log").open("w"), stderr=subprocess.STDOUT),
    ]
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    prometheus, alertmanager = (f"http://127.0.0.1:{args.prometheus_port}",
                                f"http://127.0.0.1:{args.alertmanager_port}")
    deadline = time.monotonic() + 30
    while not (ready(f"{prometheus}/-/ready") and ready(f"{alertmanager}/-/ready")):
        if stopping.is_set() or time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.terminate()
            print(f"error: Prometheus or Alertmanager did not start: see {folder}/*.log", file=sys.stderr)
            return 1
        time.sleep(0.2)
    say(f"Prometheus {prometheus} (targets: {prometheus}/targets, alerts: {prometheus}/alerts) scraping "
        f"{args.replicas} (ray_sira_*), {args.service}/metrics (sira_*), {args.stream} (sira_stream_*)")
    say(f"Alertmanager {alertmanager}: {', '.join(where) or 'your Slack and PagerDuty'}")
    say(f"Grafana dashboards: {DASHBOARDS} (provisioning: {HERE / 'grafana' / 'provisioning'}); Ctrl-C stops")
    while not stopping.is_set() and all(p.poll() is None for p in procs):
        stopping.wait(0.5)
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    receiver.shutdown()
    failed = [p.args[0] for p in procs if p.returncode not in (0, -signal.SIGTERM)]
    if failed:
        print(f"error: {', '.join(failed)} stopped on its own: see {folder}/*.log", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
