"""What the demo's report tells a newcomer at its end, once its service has stopped (the e2e demo test reads
the report of a run that keeps serving): where `sira serve` will answer, and what to type next."""

from pathlib import Path

from sira.cli.demo import _story_table, next_steps, serving_rows
from sira.demo.story import DemoReport


def stopped_demo(tmp_path: Path, *, url: str = "http://127.0.0.1:8000") -> DemoReport:
    """The parts of a finished demo's report the ending reads: served on ``url``, then stopped."""
    return DemoReport(
        database={"dsn": "postgresql://postgres@/var/lib/sira/sira-x/pgdata/sira", "embedded": True,
                  "schema_version": 31},
        governance={"keys_file": str(tmp_path / ".sira" / "secrets" / "demo_keys.json")},
        serving={"url": url, "configured_url": "http://127.0.0.1:8000", "docs": f"{url}/docs", "still_serving": False,
                 "scored": 200, "failed": 0, "requests_per_s": 120.0, "clients": 4, "decisions": {"approve": 200},
                 "versions": [1], "client_latency_ms": {"p50": 20.0, "p95": 50.0, "p99": 90.0},
                 "metrics": {"platform": f"{url}/metrics", "replicas": "http://127.0.0.1:8090/metrics"}},
        retrain={"champion": 1, "challenger": 2, "decision": "stage", "staged": True, "drift": {"verdict": "alert"},
                 "files": {"markdown": "/w/.sira/reports/retrain-fraud-1.md"},
                 "evaluation": {"window": {"from": "2026-10-06T00:00", "to": "2026-10-12T00:00"},
                                "champion": {"average_precision": 0.53}, "challenger": {"average_precision": 0.87}}},
    )


def test_the_ending_says_how_to_go_on_in_a_shell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = next_steps(stopped_demo(tmp_path), venv=tmp_path / ".venv")
    assert lines[0].startswith("Next")
    assert lines[1].split("#")[0].strip() == "source .venv/bin/activate"
    assert lines[2].split("   #")[0].strip() == (
        "export SIRA_API_KEY=$(python -c 'import json; print(json.load(open(\".sira/secrets/demo_keys.json\"))"
        "[\"demo-admin\"][\"key\"])')")
    assert any(line.strip().startswith("sira serve") and "http://127.0.0.1:8000" in line and "stopped" in line
               for line in lines)
    assert lines[-1].strip().startswith("sira db stop") and "keeps running" in lines[-1]  # the embedded PostgreSQL
    # an activated virtualenv (or none): nothing to source
    assert not any("source" in line for line in next_steps(stopped_demo(tmp_path), venv=None))


def test_a_stopped_service_is_not_offered_as_running(tmp_path):
    """The story table's caption read `OpenAPI http://127.0.0.1:8000/docs` after the service had stopped."""
    report = stopped_demo(tmp_path)
    assert _story_table(report).caption == "report /w/.sira/reports/retrain-fraud-1.md"
    rows = serving_rows(report)
    assert rows["OpenAPI"] == "http://127.0.0.1:8000/docs (the demo's service has stopped: `sira serve` starts it)"
    assert rows["metrics"].startswith("http://127.0.0.1:8000/metrics (sira_*; open, no key)")  # no key: it is open


def test_a_demo_that_served_on_another_port_says_why_and_where_sira_serve_will(tmp_path):
    """Port 8000 taken: the demo served on another one without a word, and its hints pointed there while
    `sira serve` uses 8000."""
    rows = serving_rows(stopped_demo(tmp_path, url="http://127.0.0.1:34507"))
    assert rows["port"] == ("the demo served on http://127.0.0.1:34507: http://127.0.0.1:8000 was taken by another "
                            "process; `sira serve` uses 8000 (or --port)")
    assert rows["OpenAPI"].startswith("http://127.0.0.1:8000/docs") and rows["ops dashboard"].startswith(
        "http://127.0.0.1:8000/ui/")
    assert "port" not in serving_rows(stopped_demo(tmp_path))
