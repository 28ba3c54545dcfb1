"""Registry events to chat and on-call tools: signed webhooks, delivered at least once.

Promotion requests, approvals, rejections and every change of the production
version are written to ``sira_webhook_outbox`` in the transaction that makes
the change, so an event is announced exactly when the change commits. After
the commit, :func:`deliver_due` POSTs each event to every URL of
``SIRA_WEBHOOK_URLS``, signed with ``SIRA_WEBHOOK_SECRET``, and to the receivers the model's ``notify``
setting names, each in its own format (Slack, PagerDuty change events, this one:
:mod:`sira.registry.receivers`):

    X-SIRA-Event: production.change
    X-SIRA-Delivery: <outbox id>          (receivers deduplicate on it)
    X-SIRA-Timestamp: <unix seconds>
    X-SIRA-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

A failed delivery is retried with exponential backoff (2, 4, 8 ... seconds,
at most an hour apart) up to ``SIRA_WEBHOOK_MAX_ATTEMPTS`` times; URLs that
already accepted an event are not called again.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from sira.core.db import Connection

EVENTS = ("promotion.request", "promotion.approve", "promotion.reject", "production.change", "version.stage",
          "thresholds.request", "thresholds.approve", "thresholds.reject", "thresholds.change")


async def enqueue(conn: Connection, event: str, payload: dict[str, Any]) -> None:
    """Announce a registry event (call inside the transaction that makes the change)."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    await conn.execute("INSERT INTO sira_webhook_outbox (event, payload) VALUES ($1, $2)", event,
                       {"event": event, **payload})


def receiver_id(url: str) -> str:
    """How a receiver is named in the outbox: scheme, host and a digest of the whole URL. Incoming-webhook
    URLs are credentials themselves (a token in the path, ``user:pass@``): never stored."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}#{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance_s: float = 300) -> bool:
    """What a receiver does: check the signature and that the timestamp is recent."""
    if abs(time.time() - float(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def backoff_seconds(attempts: int) -> float:
    return float(min(2 ** max(attempts, 1), 3600))


async def deliver_due(pool: asyncpg.Pool, settings: Any, *, limit: int = 100) -> dict[str, int]:
    """Deliver the events that are due, to ``SIRA_WEBHOOK_URLS`` (signed) and to the receivers the event's
    model names in ``notify`` (each in its format: :mod:`sira.registry.receivers`); returns counts of
    delivered, retried and failed events."""
    import httpx

    from sira.registry import receivers

    urls = settings.webhook_url_list
    named = receivers.load(settings)
    counts = {"delivered": 0, "retried": 0, "failed": 0}
    secret: str | None = None  # read (or generated) only when a signed delivery is made
    async with pool.acquire() as conn, conn.transaction():
        # only events with somewhere to go: with no SIRA_WEBHOOK_URLS, the events of models that name no
        # receiver wait (sent once a URL is configured) without taking the batch from those that have one
        rows = await conn.fetch(
            """SELECT o.id, o.event, o.payload, o.attempts, o.delivered_to, o.created_at, coalesce(m.notify, '{}') AS notify
                 FROM sira_webhook_outbox o LEFT JOIN sira_models m ON m.name = o.payload->>'model'
                WHERE o.status = 'pending' AND o.next_attempt_at <= now()
                  AND ($2 OR cardinality(coalesce(m.notify, '{}')) > 0)
                ORDER BY o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED""",
            limit, bool(urls),
        )
        if not urls and not any(row["notify"] for row in rows):
            return counts
        async with httpx.AsyncClient(timeout=settings.webhook_timeout_s) as client:
            for row in rows:
                targets = [(receiver_id(url), receivers.Receiver(receiver_id(url), "sira", url)) for url in urls]
                missing = [n for n in row["notify"] if n not in named]
                targets += [(f"notify:{n}", named[n]) for n in row["notify"] if n in named]
                delivered = list(row["delivered_to"])
                errors = [f"notify:{n}: no such receiver in SIRA_NOTIFY_RECEIVERS_FILE" for n in missing]
                for target, receiver in targets:
                    if target in delivered or receiver.url in delivered:  # (rows written before ids: full URLs)
                        continue
                    body = receivers.body(receiver, row["event"], row["payload"], row["id"], row["created_at"])
                    headers = {"Content-Type": "application/json"}
                    if receiver.format == "sira":
                        secret = secret or settings.secret("webhook_secret")
                        timestamp = str(int(time.time()))
                        headers.update({"X-SIRA-Event": row["event"], "X-SIRA-Delivery": str(row["id"]),
                                        "X-SIRA-Timestamp": timestamp, "X-SIRA-Signature": sign(secret, timestamp, body)})
                    try:
                        response = await client.post(receiver.url, content=body, headers=headers)
                        if 200 <= response.status_code < 300:
                            delivered.append(target)
                        else:
                            errors.append(f"{target}: HTTP {response.status_code}")
                    except httpx.HTTPError as exc:
                        errors.append(f"{target}: {type(exc).__name__}")
                attempts = row["attempts"] + 1
                if not errors:
                    status, counts["delivered"] = "delivered", counts["delivered"] + 1
                elif attempts >= settings.webhook_max_attempts:
                    status, counts["failed"] = "failed", counts["failed"] + 1
                else:
                    status, counts["retried"] = "pending", counts["retried"] + 1
                await conn.execute(
                    """UPDATE sira_webhook_outbox SET status = $2, attempts = $3, delivered_to = $4, last_error = $5,
                              next_attempt_at = now() + make_interval(secs => $6) WHERE id = $1""",
                    row["id"], status, attempts, delivered, "; ".join(errors) or None, backoff_seconds(attempts),
                )
    return counts
