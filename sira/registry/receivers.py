"""Named receivers of a model's governance events, each in its own payload format.

Alerts (drift ALERT, a live-AP drop, latency, errors) reach people through Prometheus and Alertmanager
only (docs/observability.md). Governance events are not alerts: a promotion waiting for approval, a
decision on it, a version staged, a production change. They go through the webhook outbox
(:mod:`sira.registry.webhooks`) to ``SIRA_WEBHOOK_URLS`` (SIRA's signed format) and, per model, to the
receivers its ``notify`` setting names, which ``SIRA_NOTIFY_RECEIVERS_FILE`` defines (YAML; the file
holds no secret, only where the secrets are)::

    ops-slack:   {format: slack, url_file: /etc/sira/secrets/slack-ops-webhook}
    risk-oncall: {format: pagerduty, routing_key_file: /etc/sira/secrets/pagerduty-risk}
    audit:       {format: sira, url_file: /etc/sira/secrets/audit-webhook-url}

- ``slack``: a Slack incoming webhook's message (``text`` and ``blocks``);
- ``pagerduty``: a PagerDuty **change event** (Events API v2, ``/v2/change/enqueue``): production
  changes beside the incidents on the service's timeline, never a page;
- ``sira``: SIRA's own signed JSON, as for ``SIRA_WEBHOOK_URLS``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from sira.core.config import read_secret_file
from sira.core.errors import ConfigError

FORMATS = ("slack", "pagerduty", "sira")
PAGERDUTY_CHANGE_EVENTS = "https://events.pagerduty.com/v2/change/enqueue"
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class Receiver:
    name: str
    format: str
    url: str
    routing_key: str | None = None

    def __repr__(self) -> str:  # the URL and the key are credentials: never in a log line
        return f"Receiver({self.name!r}, {self.format!r})"


def names(value: Any) -> list[str]:
    """A model's ``notify`` setting, checked: at most 10 receiver names (defined by the file when delivered)."""
    from sira.core.errors import InvalidInput

    if not isinstance(value, (list, tuple)) or len(value) > 10 or not all(
            isinstance(n, str) and NAME.match(n) for n in value):
        raise InvalidInput("notify: at most 10 receiver names (lowercase letters, digits, - and _)",
                           code="invalid_field", details={"field": "notify"})
    return sorted(set(value))


def _secret(path: Any, name: str, field: str) -> str:
    return read_secret_file(Path(str(path)), f"notify receiver {name!r}: {field}")


def load(settings: Any) -> dict[str, Receiver]:
    """The receivers ``SIRA_NOTIFY_RECEIVERS_FILE`` defines (none when unset); a bad entry is a
    :class:`ConfigError` naming it."""
    path = settings.notify_receivers_file
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"SIRA_NOTIFY_RECEIVERS_FILE: cannot read {path} ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError("SIRA_NOTIFY_RECEIVERS_FILE: a mapping of receiver names to their settings")
    out = {}
    for name, spec in data.items():
        if not isinstance(name, str) or not NAME.match(name) or not isinstance(spec, dict):
            raise ConfigError(f"notify receiver {name!r}: a lowercase name mapped to format and secret files")
        fmt = spec.get("format")
        if fmt not in FORMATS:
            raise ConfigError(f"notify receiver {name!r}: format must be one of {', '.join(FORMATS)}")
        unknown = set(spec) - {"format", "url_file", "routing_key_file", "url"}
        if unknown:
            raise ConfigError(f"notify receiver {name!r}: unknown field(s) {', '.join(sorted(unknown))}")
        if fmt == "pagerduty":
            url = str(spec.get("url") or PAGERDUTY_CHANGE_EVENTS)  # not a secret: the routing key is
            key = _secret(spec.get("routing_key_file"), name, "routing_key_file")
            out[name] = Receiver(name, fmt, url, key)
        else:
            if "url" in spec:
                raise ConfigError(f"notify receiver {name!r}: its URL is a credential: give url_file")
            out[name] = Receiver(name, fmt, _secret(spec.get("url_file"), name, "url_file"))
        if not out[name].url.startswith(("https://", "http://")):
            raise ConfigError(f"notify receiver {name!r}: not an http(s) URL")
    return out


def summary(event: str, p: dict[str, Any]) -> str:
    """One sentence a person reads."""
    model, version = p.get("model", "?"), p.get("version")
    if event == "production.change":
        before = f" (was v{p['from']})" if p.get("from") else ""
        why = f" ({p['reason']})" if p.get("reason") else ""
        return f"{model} v{p.get('to')} is in production{before}: {p.get('via', 'a change')} by {p.get('actor', '?')}{why}"
    if event == "promotion.request":
        return (f"{model} v{version}: promotion requested by {p.get('requested_by', '?')}, waiting for "
                f"{p.get('required_approvals', '?')} approval(s)")
    if event.endswith((".approve", ".reject")):  # a promotion request's or a threshold change's decision
        verb = "approved" if event.endswith("approve") else "rejected"
        what, status = ("threshold change ", "") if event.startswith("thresholds.") else ("", "request ")
        return f"{model} v{version}: {what}{verb} by {p.get('by', '?')} ({status}{p.get('outcome', 'pending')})"
    if event == "version.stage":
        return f"{model} v{version} is in staging (shadow scoring)"
    if event == "thresholds.request":
        return (f"{model} v{version}: thresholds review {p.get('review')}, block {p.get('block')} requested by "
                f"{p.get('requested_by', '?')}, waiting for {p.get('required_approvals', '?')} approval(s)")
    if event == "thresholds.change":
        to = p.get("to") or {}
        return (f"{model} v{version} decides with review {to.get('review')}, block {to.get('block')} "
                f"(revision {p.get('revision')}): {p.get('via', 'a change')} by {p.get('actor', '?')}")
    return f"{model}: {event}"


def slack_escaped(text: str) -> str:
    """``text`` as Slack shows it literally: ``&``, ``<`` and ``>`` are its control characters (``<!channel>``,
    ``<https://...|a label>``), escaped as Slack asks. A reason or a name is typed by a user: unescaped, a
    promotion's reason could notify a whole channel or show a link under any label."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def body(receiver: Receiver, event: str, payload: dict[str, Any], delivery: int,
         created_at: datetime | None = None) -> bytes:
    """What ``receiver`` is sent for an event (SIRA's own format: the canonical JSON that is signed);
    ``created_at``: when the change was made (the outbox row's time), not when it is delivered."""
    text = summary(event, payload)
    if receiver.format == "slack":
        shown = slack_escaped(text)
        return orjson.dumps({
            "text": shown,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{shown}*"}},
                       {"type": "context", "elements": [{"type": "mrkdwn",
                                                         "text": f"SIRA `{event}` · delivery {delivery}"}]}],
        })
    if receiver.format == "pagerduty":
        when = (created_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
        return orjson.dumps({
            "routing_key": receiver.routing_key,
            "payload": {"summary": text[:1024], "source": "sira", "timestamp": when.isoformat(),
                        "custom_details": {"event": event, "delivery": delivery, **payload}},
        })
    return canonical(payload)


def canonical(payload: dict[str, Any]) -> bytes:
    """SIRA's own format: the JSON that is signed (sorted keys, no spaces)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
