"""A decision names the request the approver read (``request_id`` of a promotion, ``set_id`` of a threshold
change): an approval sent from a stale card (its request rejected, a new one asked for the same version with
another reason or other thresholds) decided the new request unread, since decisions were addressed by model
and version only. Now it is refused (409 request_closed) over HTTP, in the registry and by the CLI; without
the id a decision still decides whatever is pending (the API's older callers)."""

import asyncio

import pytest

from sira.core import db
from sira.core.auth import Identity, create_key
from sira.core.errors import Conflict, NotFound
from sira.registry.models import decide, request_promotion
from sira.registry.thresholds import decide_change, request_change
from tests.conftest import cli_in_process
from tests.integration.test_governance import BOB, DANA, make_version, run, status_of


async def _keys(clean_db, settings) -> dict[str, str]:
    pepper = settings.secret("auth_secret")
    root = Identity("root", frozenset({"admin"}))
    async with db.transaction(clean_db) as conn:
        return {name: (await create_key(conn, name=name, roles=[role], pepper=pepper, creator=root))[0]
                for name, role in (("ann", "approver"), ("cat", "approver"))}


async def _stale_promotion(clean_db, settings) -> tuple[int, int]:
    """fraud v1 asked for (request A), rejected by bob, asked again with another reason (request B)."""
    await make_version(clean_db, settings, 1, required=1)
    first = await run(clean_db, request_promotion, settings, DANA, "fraud", 1, "better recall")
    await run(clean_db, decide, BOB, "fraud", 1, "reject", "not on this window")
    second = await run(clean_db, request_promotion, settings, DANA, "fraud", 1, "ship it before the weekend")
    return first["request_id"], second["request_id"]


async def test_an_approval_from_a_stale_card_does_not_approve_the_new_request(client_and_keys, clean_db, settings):
    client, _ = client_and_keys
    keys = await _keys(clean_db, settings)
    seen, new = await _stale_promotion(clean_db, settings)
    ann = {"Authorization": f"Bearer {keys['ann']}"}
    r = await client.post("/v1/models/fraud/versions/1/approve", json={"comment": "ok", "request_id": seen}, headers=ann)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "request_closed" and error["details"] == {"status": "rejected", "request_id": seen,
                                                                      "pending": new}
    assert f"promotion request {new} is pending now" in error["message"]
    assert await status_of(clean_db, 1) == "validated"  # was production: request B approved unread
    assert await clean_db.fetchval("SELECT count(*) FROM sira_approvals WHERE request_id = $1", new) == 0
    r = await client.post("/v1/models/fraud/versions/1/reject", json={"request_id": seen}, headers=ann)
    assert r.status_code == 409 and r.json()["error"]["code"] == "request_closed"
    r = await client.post("/v1/models/fraud/versions/1/approve", json={"request_id": new + 100}, headers=ann)
    assert r.status_code == 404 and r.json()["error"]["details"]["field"] == "request_id", r.text
    r = await client.post("/v1/models/fraud/versions/1/approve", json={"set_id": new}, headers=ann)  # not its id
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_field", r.text
    # the card of the request pending now decides it
    r = await client.post("/v1/models/fraud/versions/1/approve", json={"request_id": new}, headers=ann)
    assert r.status_code == 200 and r.json()["request_id"] == new and r.json()["outcome"] == "approved", r.text
    assert await status_of(clean_db, 1) == "production"
    with pytest.raises(Conflict) as closed:  # decided: the same card again is closed, with nothing pending
        await run(clean_db, decide, BOB, "fraud", 1, "approve", None, new)
    assert closed.value.code == "request_closed" and closed.value.details["pending"] is None


async def test_without_the_id_a_decision_decides_whatever_is_pending(clean_db, settings):
    _seen, new = await _stale_promotion(clean_db, settings)
    with pytest.raises(NotFound):
        await run(clean_db, decide, BOB, "fraud", 1, "approve", None, 10**12)
    done = await run(clean_db, decide, Identity("cat", frozenset({"approver"})), "fraud", 1, "approve")
    assert done["request_id"] == new and done["outcome"] == "approved"


async def test_a_stale_threshold_card_does_not_approve_other_thresholds(client_and_keys, clean_db, settings,
                                                                        monkeypatch, capsys):
    """Revision 2 (0.3 / 0.7) rejected, revision 3 (0.01 / 0.02) asked: the approver of revision 2's card
    activated revision 3."""
    client, _ = client_and_keys
    keys = await _keys(clean_db, settings)
    await make_version(clean_db, settings, 1, required=1)
    await run(clean_db, request_promotion, settings, DANA, "fraud", 1, "first")  # validated: its thresholds change
    async with db.transaction(clean_db) as conn:
        seen = (await request_change(conn, DANA, "fraud", 1, review=0.3, block=0.7, reason="attack"))["set"]
    await run(clean_db, decide_change, BOB, "fraud", 1, "reject", "too wide")
    async with db.transaction(clean_db) as conn:
        new = (await request_change(conn, DANA, "fraud", 1, review=0.01, block=0.02, reason="attack, again"))["set"]
    ann = {"Authorization": f"Bearer {keys['ann']}"}
    r = await client.post("/v1/models/fraud/versions/1/thresholds/approve", json={"set_id": seen}, headers=ann)
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "request_closed"
    assert r.json()["error"]["details"] == {"status": "rejected", "set_id": seen, "pending": new}
    r = await client.post("/v1/models/fraud/versions/1/thresholds/approve", json={"request_id": seen}, headers=ann)
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_field", r.text
    # the CLI names what it read too, and is refused in one line
    env = {"SIRA_DATABASE_URL": settings.database_url.get_secret_value(), "SIRA_WORKSPACE": str(settings.workspace),
           "SIRA_API_KEY": keys["cat"]}
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, "approve", "--model", "fraud",
                                   "--version", "1", "--thresholds", "--request", str(seen))
    assert done.returncode == 2 and done.stderr.startswith("error: request_closed: "), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    thresholds = await clean_db.fetchval("SELECT thresholds FROM sira_model_versions WHERE version = 1")
    assert thresholds == {"review": 0.2, "block": 0.9}  # neither the rejected nor the unread revision
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, "reject", "--model", "fraud",
                                   "--version", "1", "--request", str(new + 100))  # a promotion's: none such
    assert done.returncode != 0 and done.stderr.startswith("error: not_found: "), done.stderr
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, "approve", "--model", "fraud",
                                   "--version", "1", "--thresholds", "--request", str(new), "--json")
    assert done.returncode == 0, done.stderr
    assert await clean_db.fetchval("SELECT thresholds FROM sira_model_versions WHERE version = 1") == {
        "review": 0.01, "block": 0.02}


async def test_a_version_is_not_compared_with_itself(client_and_keys, clean_db, settings, monkeypatch, capsys):
    """GET …/compare?a=1&b=1 answered one column (v1 twice, one dict key) with every difference zero."""
    client, keys = client_and_keys
    await make_version(clean_db, settings, 1)
    r = await client.get("/v1/models/fraud/compare", params={"a": 1, "b": 1}, headers=keys["admin"])
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_value", r.text
    assert r.json()["error"]["details"] == {"field": "b"}
    env = {"SIRA_DATABASE_URL": settings.database_url.get_secret_value(), "SIRA_WORKSPACE": str(settings.workspace),
           "SIRA_API_KEY": keys["admin"]["Authorization"].removeprefix("Bearer ")}
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, "versions", "compare", "--model", "fraud",
                                   "1", "1")
    assert done.returncode != 0 and done.stderr.startswith("error: invalid_value: compare two different"), done.stderr
