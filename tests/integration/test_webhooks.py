"""Signed webhooks of registry events, delivered to a local receiver, retried when it fails."""

import functools
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from test_governance import ANN, BOB, DANA, OLI, make_version, run  # noqa: F401  (shared helpers)

from sira.registry import webhooks
from sira.registry.models import decide, request_promotion, rollback

SECRET = "hook-secret"


class Receiver:
    """A local HTTP endpoint that records signed deliveries; it can be told to fail the next N."""

    def __init__(self):
        self.received, self.fail_next = [], 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.fail_next > 0:
                    outer.fail_next -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.received.append({"headers": dict(self.headers), "body": body})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


async def test_every_registry_event_is_delivered_signed(clean_db, settings, receiver):
    hooked = settings.model_copy(update={"webhook_urls": receiver.url})
    hooked = hooked.model_copy(update={"webhook_secret": __import__("pydantic").SecretStr(SECRET)})
    for v in (1, 2):
        await make_version(clean_db, settings, v)
        await run(clean_db, request_promotion, settings, DANA, "fraud", v)
        await run(clean_db, decide, ANN, "fraud", v, "approve")
        await run(clean_db, decide, BOB, "fraud", v, "approve")
    await run(clean_db, rollback, OLI, "fraud", "bad day", 2)
    counts = await webhooks.deliver_due(clean_db, hooked)
    assert counts == {"delivered": 9, "retried": 0, "failed": 0}
    events = [r["headers"]["X-SIRA-Event"] for r in receiver.received]
    assert events == ["promotion.request", "promotion.approve", "promotion.approve", "production.change"] * 2 + [
        "production.change"]
    for r in receiver.received:
        h = r["headers"]
        assert webhooks.verify(SECRET, h["X-SIRA-Timestamp"], r["body"], h["X-SIRA-Signature"])
        assert not webhooks.verify("wrong", h["X-SIRA-Timestamp"], r["body"], h["X-SIRA-Signature"])
    last = json.loads(receiver.received[-1]["body"])
    assert last == {"event": "production.change", "model": "fraud", "actor": "oli", "from": 2, "to": 1,
                    "via": "rollback", "reason": "bad day"}
    assert await webhooks.deliver_due(clean_db, hooked) == {"delivered": 0, "retried": 0, "failed": 0}


async def test_failed_deliveries_are_retried_with_backoff_then_given_up(clean_db, settings, receiver):
    hooked = settings.model_copy(update={"webhook_urls": receiver.url, "webhook_max_attempts": 3,
                                         "webhook_secret": __import__("pydantic").SecretStr(SECRET)})
    await make_version(clean_db, settings, 1)
    await run(clean_db, request_promotion, settings, DANA, "fraud", 1)
    receiver.fail_next = 1
    assert (await webhooks.deliver_due(clean_db, hooked))["retried"] == 1
    row = await clean_db.fetchrow("SELECT attempts, status, last_error, next_attempt_at - now() AS wait"
                                  " FROM sira_webhook_outbox")
    assert row["attempts"] == 1 and row["status"] == "pending" and "HTTP 503" in row["last_error"]
    assert receiver.url not in row["last_error"]  # a receiver URL can be a credential: never stored
    assert row["wait"].total_seconds() > 1  # backoff: not due yet
    assert await webhooks.deliver_due(clean_db, hooked) == {"delivered": 0, "retried": 0, "failed": 0}
    await clean_db.execute("UPDATE sira_webhook_outbox SET next_attempt_at = now()")
    assert (await webhooks.deliver_due(clean_db, hooked))["delivered"] == 1
    assert len(receiver.received) == 1
    stored = await clean_db.fetchval("SELECT delivered_to FROM sira_webhook_outbox")
    assert stored == [webhooks.receiver_id(receiver.url)] and receiver.url not in str(stored)

    await run(clean_db, decide, ANN, "fraud", 1, "approve")
    receiver.fail_next = 10
    for _ in range(3):
        await clean_db.execute("UPDATE sira_webhook_outbox SET next_attempt_at = now() WHERE status = 'pending'")
        await webhooks.deliver_due(clean_db, hooked)
    assert await clean_db.fetchval("SELECT status FROM sira_webhook_outbox ORDER BY id DESC LIMIT 1") == "failed"


def test_backoff_grows_and_is_capped():
    assert [webhooks.backoff_seconds(a) for a in (1, 2, 3)] == [2, 4, 8]
    assert webhooks.backoff_seconds(40) == 3600




def test_a_receiver_is_named_without_its_credentials():
    rid = webhooks.receiver_id("https://user:pw@hooks.example.com:8443/services/T000/B000/XXXXsecret")
    assert rid.startswith("https://hooks.example.com:8443#") and "secret" not in rid and "pw" not in rid


async def test_a_models_notify_receivers_get_slack_and_pagerduty_change_event_formats(clean_db, settings, receiver,
                                                                                      tmp_path):
    """Governance events (not alerts) in each receiver's own format; a SIRA_WEBHOOK_URLS receiver still gets
    SIRA's signed JSON; the files hold the credentials, nothing else does."""
    import yaml

    from sira.core.auth import Identity
    from sira.core.errors import InvalidInput
    from sira.registry import receivers
    from sira.registry.models import update_model

    (tmp_path / "slack-url").write_text(receiver.url.replace("/hooks", "/slack") + "\n")
    (tmp_path / "pd-key").write_text("R0UT1NGKEY0123456789abcdefABCDEF\n")
    (tmp_path / "receivers.yml").write_text(yaml.safe_dump({
        "ops-slack": {"format": "slack", "url_file": str(tmp_path / "slack-url")},
        "risk-oncall": {"format": "pagerduty", "routing_key_file": str(tmp_path / "pd-key"),
                        "url": receiver.url.replace("/hooks", "/pagerduty/v2/change/enqueue")}}))
    hooked = settings.model_copy(update={"webhook_urls": receiver.url, "notify_receivers_file": tmp_path / "receivers.yml",
                                         "webhook_secret": __import__("pydantic").SecretStr(SECRET)})
    assert "R0UT1NG" not in repr(receivers.load(hooked))  # a receiver's repr names it, never its key or URL
    await make_version(clean_db, settings, 1)
    admin = Identity("root", frozenset({"admin"}))
    with pytest.raises(InvalidInput, match="notify"):
        await run(clean_db, functools.partial(update_model, notify=["Not A Name"]), admin, "fraud")
    row = await run(clean_db, functools.partial(update_model, notify=["risk-oncall", "ops-slack"]), admin, "fraud")
    assert row["notify"] == ["ops-slack", "risk-oncall"]
    await run(clean_db, request_promotion, settings, DANA, "fraud", 1)
    await run(clean_db, decide, ANN, "fraud", 1, "approve")
    await run(clean_db, decide, BOB, "fraud", 1, "approve")
    counts = await webhooks.deliver_due(clean_db, hooked)
    assert counts == {"delivered": 4, "retried": 0, "failed": 0}
    slack = [json.loads(r["body"]) for r in receiver.received if "X-SIRA-Event" not in r["headers"]
             and "blocks" in json.loads(r["body"])]
    pagerduty = [json.loads(r["body"]) for r in receiver.received if "routing_key" in json.loads(r["body"])]
    signed = [r for r in receiver.received if "X-SIRA-Signature" in r["headers"]]
    assert len(slack) == len(pagerduty) == len(signed) == 4
    assert slack[0]["text"] == "fraud v1: promotion requested by dana, waiting for 2 approval(s)"
    assert slack[-1]["text"].startswith("fraud v1 is in production: approval by bob")
    change = pagerduty[-1]
    assert change["routing_key"] == "R0UT1NGKEY0123456789abcdefABCDEF" and change["payload"]["source"] == "sira"
    assert change["payload"]["custom_details"]["event"] == "production.change"
    assert change["payload"]["custom_details"]["to"] == 1
    assert all("X-SIRA-Signature" not in r["headers"] for r in receiver.received if "routing_key" in r["body"].decode())
    # a receiver the model names but the file does not define: the event is retried, the reason stored
    await run(clean_db, functools.partial(update_model, notify=["gone"]), admin, "fraud")
    await make_version(clean_db, settings, 2)
    await run(clean_db, request_promotion, settings, DANA, "fraud", 2)
    assert await webhooks.deliver_due(clean_db, hooked) == {"delivered": 0, "retried": 1, "failed": 0}
    error = await clean_db.fetchval("SELECT last_error FROM sira_webhook_outbox ORDER BY id DESC LIMIT 1")
    assert error == "notify:gone: no such receiver in SIRA_NOTIFY_RECEIVERS_FILE"


async def test_events_with_no_receiver_do_not_starve_later_events_that_have_one(clean_db, settings, receiver, tmp_path):
    """No SIRA_WEBHOOK_URLS, and the oldest due events are a model's that names no receiver: they used to be
    selected (the oldest 100) and left untouched on every pass, so a later event of a model that names one
    was never sent."""
    import yaml

    (tmp_path / "slack-url").write_text(receiver.url.replace("/hooks", "/slack") + "\n")
    (tmp_path / "receivers.yml").write_text(yaml.safe_dump(
        {"ops-slack": {"format": "slack", "url_file": str(tmp_path / "slack-url")}}))
    hooked = settings.model_copy(update={"webhook_urls": "", "notify_receivers_file": tmp_path / "receivers.yml"})
    await clean_db.execute("INSERT INTO sira_models (name, model_type, created_by) VALUES ('churn', 'churn', 'x')")
    await clean_db.execute("INSERT INTO sira_models (name, model_type, created_by, notify) "
                           "VALUES ('fraud', 'fraud_detection', 'x', '{ops-slack}')")
    async with clean_db.acquire() as conn:
        for v in range(1, 101):
            await webhooks.enqueue(conn, "version.stage", {"model": "churn", "version": v})
        await webhooks.enqueue(conn, "production.change", {"model": "fraud", "to": 4, "from": 3, "via": "promotion",
                                                           "actor": "alice"})
    assert await webhooks.deliver_due(clean_db, hooked) == {"delivered": 1, "retried": 0, "failed": 0}
    assert [json.loads(r["body"])["text"].split(":")[0] for r in receiver.received] == ["fraud v4 is in production (was v3)"]
    # the others wait for a receiver (a URL configured later still gets them), never in the way
    assert await clean_db.fetchval("SELECT count(*) FROM sira_webhook_outbox WHERE status = 'pending'") == 100
    hooked = hooked.model_copy(update={"webhook_urls": receiver.url,
                                       "webhook_secret": __import__("pydantic").SecretStr(SECRET)})
    assert await webhooks.deliver_due(clean_db, hooked) == {"delivered": 100, "retried": 0, "failed": 0}


async def test_a_nightly_retrain_that_stages_its_challenger_delivers_the_events_it_wrote(clean_db, settings, receiver):
    """The retrain's policy step stages (and may request the promotion of) its challenger in a transaction of its
    own: its events are delivered after that commit, as the CLI's and the API's governed changes are, not left in
    the outbox for a `sira webhooks deliver` nobody schedules."""
    from sira.monitoring import retrain
    from sira.registry.policy import PromotionPolicy

    hooked = settings.model_copy(update={"webhook_urls": receiver.url,
                                         "webhook_secret": __import__("pydantic").SecretStr(SECRET)})
    await make_version(clean_db, settings, 1, required=0)
    challenger = {"n": 500, "positives": 40, "average_precision": 0.8, "expected_calibration_error": 0.01}
    state = retrain.RunState(1, {"name": "fraud", "required_approvals": 0}, "key", {"champion": None},
                             steps={"challenger": {"version": 1}, "drift": {"status": "ran", "verdict": "ok"},
                                    "evaluate": {"challenger": challenger, "champion": None}})
    step = await retrain._policy(hooked, clean_db, retrain.RetrainRequest(model="fraud"), DANA, PromotionPolicy(),
                                 state)
    assert step["staged"] and step["promotion"] == {"status": "approved"}  # the run's decision, passed on
    events = [r["headers"]["X-SIRA-Event"] for r in receiver.received]
    assert "version.stage" in events and "promotion.request" in events, events
    assert await clean_db.fetchval("SELECT count(*) FROM sira_webhook_outbox WHERE status = 'pending'") == 0


def _receivers_file(tmp_path, receiver) -> object:
    import yaml

    (tmp_path / "slack-url").write_text(receiver.url.replace("/hooks", "/slack") + "\n")
    (tmp_path / "pd-key").write_text("R0UT1NGKEY0123456789abcdefABCDEF\n")
    (tmp_path / "receivers.yml").write_text(yaml.safe_dump({
        "ops-slack": {"format": "slack", "url_file": str(tmp_path / "slack-url")},
        "risk-oncall": {"format": "pagerduty", "routing_key_file": str(tmp_path / "pd-key"),
                        "url": receiver.url.replace("/hooks", "/pagerduty/v2/change/enqueue")}}))
    return tmp_path / "receivers.yml"


async def test_a_slack_message_shows_a_users_reason_literally_never_as_a_mention_or_a_link(clean_db, settings,
                                                                                         receiver, tmp_path):
    """A promotion's reason reached Slack verbatim: `<!channel>` notified the whole channel and `<url|label>`
    showed a link under any label. Slack's control characters (&, <, >) are escaped."""
    hooked = settings.model_copy(update={"notify_receivers_file": _receivers_file(tmp_path, receiver)})
    await clean_db.execute("INSERT INTO sira_models (name, model_type, created_by, notify) "
                           "VALUES ('fraud', 'fraud_detection', 'x', '{ops-slack}')")
    reason = "<!channel> urgent: approve at <https://evil.example/login|SIRA console> & thanks"
    async with clean_db.acquire() as conn:
        await webhooks.enqueue(conn, "production.change", {"model": "fraud", "to": 4, "from": 3, "via": "approval",
                                                           "actor": "dana", "reason": reason})
    assert await webhooks.deliver_due(clean_db, hooked) == {"delivered": 1, "retried": 0, "failed": 0}
    (message,) = [json.loads(r["body"]) for r in receiver.received]
    shown = [message["text"], message["blocks"][0]["text"]["text"]]
    for text in shown:
        assert "<" not in text and ">" not in text, text
        assert ("&lt;!channel&gt; urgent: approve at &lt;https://evil.example/login|SIRA console&gt; &amp; thanks"
                in text), text
    assert message["text"].startswith("fraud v4 is in production (was v3): approval by dana")


async def test_a_pagerduty_change_event_carries_the_time_of_the_change_not_of_its_delivery(clean_db, settings,
                                                                                         receiver, tmp_path):
    """The change event's timestamp was the delivery's (datetime.now()): a delivery retried for two hours put
    the production change two hours late on the service's timeline. It is the outbox row's creation time."""
    from datetime import datetime

    hooked = settings.model_copy(update={"notify_receivers_file": _receivers_file(tmp_path, receiver)})
    await clean_db.execute("INSERT INTO sira_models (name, model_type, created_by, notify) "
                           "VALUES ('fraud', 'fraud_detection', 'x', '{risk-oncall}')")
    async with clean_db.acquire() as conn:
        await webhooks.enqueue(conn, "production.change", {"model": "fraud", "to": 4, "from": 3, "via": "promotion",
                                                           "actor": "alice"})
    # the receiver was unreachable for two hours: the change was made then, it is delivered now
    created = await clean_db.fetchval("UPDATE sira_webhook_outbox SET created_at = now() - interval '2 hours' "
                                      "RETURNING created_at")
    assert await webhooks.deliver_due(clean_db, hooked) == {"delivered": 1, "retried": 0, "failed": 0}
    (change,) = [json.loads(r["body"]) for r in receiver.received]
    assert datetime.fromisoformat(change["payload"]["timestamp"]) == created


async def test_debug_logging_never_prints_a_receivers_secret_url(clean_db, settings, pg_dsn, receiver):
    """`sira --debug` set the root logger to DEBUG, and httpx logs each request's full URL at INFO: an
    incoming webhook's URL (its token in the path) reached stderr. httpx and httpcore stay at WARNING."""
    import asyncio
    import os
    import subprocess
    import sys

    secret_url = receiver.url + "/T0000/B0000/XXXXsecrettoken"
    async with clean_db.acquire() as conn:
        await webhooks.enqueue(conn, "version.stage", {"model": "fraud", "version": 1})
    env = {**os.environ, "SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(settings.workspace),
           "SIRA_WEBHOOK_URLS": secret_url, "SIRA_WEBHOOK_SECRET": "a-webhook-signing-key-of-32-bytes"}
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "sira", "--debug", "webhooks", "deliver",
                                                    "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["delivered"] == 1
    assert len(receiver.received) == 1  # it was called, at that URL
    assert "DEBUG" in done.stderr  # --debug took effect
    assert "XXXXsecrettoken" not in done.stderr and "XXXXsecrettoken" not in done.stdout, done.stderr[-3000:]
