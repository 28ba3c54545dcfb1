"""The body bound answers a client still uploading: it reads what remains (up to a budget) before the 413."""
import asyncio
import json

import pytest

from sira.http.middleware import BodySizeLimit

LIMIT = 65_536


async def _never_called(scope, receive, send):  # pragma: no cover - the bound answers first
    raise AssertionError("the application must not see an over-limit body")


async def _reads_body(scope, receive, send):
    while (await receive()).get("more_body"):
        pass
    raise AssertionError("the application must not finish reading an over-limit body")


def _run(app, body_size, *, declared):
    chunk = 16_384
    chunks = [b"x" * chunk for _ in range(body_size // chunk)]
    events = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    state = {"read": 0, "read_when_answered": None}
    sent = []

    async def receive():
        if state["read"] < len(events):
            state["read"] += 1
            return events[state["read"] - 1]
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            state["read_when_answered"] = state["read"]
        sent.append(message)

    headers = [(b"content-length", str(body_size).encode())] if declared else []
    scope = {"type": "http", "method": "POST", "path": "/v1/score", "headers": headers}
    asyncio.run(BodySizeLimit(app, max_bytes=LIMIT)(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    return start, body, state, len(events)


@pytest.mark.parametrize("declared, app", [(True, _never_called), (False, _reads_body)])
def test_an_over_limit_body_is_read_to_its_end_before_the_413(declared, app):
    start, body, state, chunks = _run(app, 2 * LIMIT, declared=declared)
    assert start["status"] == 413 and body["error"]["code"] == "body_too_large"
    assert state["read_when_answered"] == chunks  # the client finished sending before the answer
    assert (b"connection", b"close") not in start["headers"]


@pytest.mark.parametrize("declared, app", [(True, _never_called), (False, _reads_body)])
def test_a_body_past_the_drain_budget_is_cut_with_connection_close(declared, app):
    start, body, state, chunks = _run(app, (BodySizeLimit.DRAIN_FACTOR + 2) * LIMIT, declared=declared)
    assert start["status"] == 413 and body["error"]["code"] == "body_too_large"
    assert state["read_when_answered"] < chunks
    assert (b"connection", b"close") in start["headers"]
