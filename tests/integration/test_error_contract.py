"""One mistake, one answer: the same code, status and field names over HTTP and the CLI, messages that suit both
(an API client was told to use `--from` and `sira promote`), and a window that is set once.

An outside contract review (2026-12-07) found GET /v1/models/nope answer 404 `not_found` while POST /v1/score
answered 404 `unknown_model`; `no_production_version` 422 on the what-if and 409 in serving; an unknown feature
set `invalid_input` with no field on POST and `unknown_feature_set` naming a field the body lacks on PATCH;
`--format pdf` three different codes; and 422s naming no field at all."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from sira.core import db
from tests.conftest import cli_in_process
from tests.integration.test_governance import make_version

UNKNOWN_MODEL = {"field": "model", "model": "nope"}


@pytest.fixture
async def api(client_and_keys, settings):
    """The HTTP API with an admin and an operator key, and the CLI's environment acting as the admin."""
    client, keys = client_and_keys
    env = {"SIRA_DATABASE_URL": settings.database_url.get_secret_value(), "SIRA_WORKSPACE": str(settings.workspace),
           "SIRA_API_KEY": keys["admin"]["Authorization"].removeprefix("Bearer ")}
    return client, keys, env


def error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


async def sira(monkeypatch, capsys, env, *args):
    return await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, *args)


@pytest.mark.parametrize("method, path", [
    ("get", "/v1/models/nope"),
    ("get", "/v1/models/nope/history"),
    ("get", "/v1/models/nope/drift"),
    ("get", "/v1/models/nope/performance"),
    ("get", "/v1/models/nope/thresholds"),
    ("get", "/v1/models/nope/versions/1"),
    ("get", "/v1/models/nope/versions/1/card"),
    ("post", "/v1/models/nope/versions/1/approve"),
    ("post", "/v1/models/nope/versions/1/promote"),
    ("patch", "/v1/models/nope"),
])
async def test_an_unknown_model_is_404_unknown_model_naming_it_on_every_route(api, method, path):
    client, keys, _ = api
    body = {"required_approvals": 1} if method == "patch" else {}
    kwargs = {"json": body} if method != "get" else {}
    e = error(await client.request(method, path, headers=keys["admin"], **kwargs), 404)
    assert (e["code"], e["details"]) == ("unknown_model", UNKNOWN_MODEL), path  # as POST /v1/score answers it


async def test_the_cli_says_unknown_model_as_http_does(api, monkeypatch, capsys):
    _, _, env = api
    for args in (["history", "--model", "nope"], ["models", "show", "nope"], ["thresholds", "--model", "nope"],
                 ["versions", "card", "--model", "nope", "--version", "1"]):
        done = await sira(monkeypatch, capsys, env, *args)
        assert (done.returncode, done.stderr) == (2, "error: unknown_model: unknown model 'nope'\n"), args


async def test_no_production_version_is_409_everywhere_and_names_the_parameter_not_a_flag(api, clean_db, settings,
                                                                                           monkeypatch, capsys):
    client, keys, env = api
    await make_version(clean_db, settings, 1, model="m9")
    e = error(await client.get("/v1/models/m9/thresholds", headers=keys["admin"]), 409)  # 422 before
    assert e == {"code": "no_production_version", "message": "model 'm9' has no production version: name a version",
                 "details": {"model": "m9"}}
    done = await sira(monkeypatch, capsys, env, "thresholds", "--model", "m9")
    assert (done.returncode, done.stderr) == (
        2, "error: no_production_version: model 'm9' has no production version: name a version\n")


async def test_an_unknown_feature_set_version_is_one_code_naming_the_body_field(api):
    client, keys, _ = api
    e = error(await client.post("/v1/models", json={"name": "m10", "feature_set_version": 99}, headers=keys["admin"]),
              422)
    assert e["code"] == "unknown_feature_set" and e["details"]["field"] == "feature_set_version", e
    assert e["message"].startswith("feature set payments has no version 99 (versions: 1, 2")
    assert (await client.post("/v1/models", json={"name": "m10"}, headers=keys["admin"])).status_code == 201
    e = error(await client.patch("/v1/models/m10", json={"feature_set_version": 99}, headers=keys["admin"]), 422)
    assert e["code"] == "unknown_feature_set" and e["details"]["field"] == "feature_set_version", e  # not feature_set


async def test_an_unknown_feature_set_name_is_the_same_code_as_an_unknown_version_in_the_cli(api, monkeypatch, capsys):
    """`--feature-set nosuch@1` was invalid_input, `--feature-set payments@9` unknown_feature_set: a script could not
    rely on one code for "no such feature set" (2026-12-07 training review)."""
    client, keys, env = api
    assert (await client.post("/v1/models", json={"name": "m11"}, headers=keys["admin"])).status_code == 201
    for named, says in (("payments@9", "feature set payments has no version 9 (versions: 1, 2)"),
                        ("nosuch@1", "unknown feature set 'nosuch' (feature sets: payments)")):
        done = await sira(monkeypatch, capsys, env, "models", "update", "m11", "--feature-set", named)
        assert (done.returncode, done.stderr) == (2, f"error: unknown_feature_set: {says}\n"), named
    done = await sira(monkeypatch, capsys, env, "features", "show", "customer", "c1", "--feature-set", "nosuch")
    assert done.stderr.startswith("error: unknown_feature_set: unknown feature set 'nosuch'"), done.stderr


async def test_a_bad_format_is_invalid_request_over_http_and_in_the_cli(api, clean_db, settings, monkeypatch, capsys):
    client, keys, env = api
    await make_version(clean_db, settings, 1)
    e = error(await client.get("/v1/models/fraud/versions/1/card?format=pdf", headers=keys["admin"]), 422)
    assert e["code"] == "invalid_request"
    for args in (["versions", "card", "--model", "fraud", "--version", "1", "--format", "pdf"],
                 ["explain", "--prediction", "00000000-0000-4000-8000-000000000000", "--format", "pdf"]):
        done = await sira(monkeypatch, capsys, env, *args)
        assert done.returncode == 2 and done.stderr.startswith("error: invalid_request: format must be "), done.stderr


async def test_a_prediction_id_that_is_no_uuid_is_invalid_request_naming_the_field(api, monkeypatch, capsys):
    client, keys, env = api
    e = error(await client.get("/v1/predictions/x/explanation", headers=keys["admin"]), 422)
    assert (e["code"], e["details"]["field"].split(".")[-1]) == ("invalid_request", "prediction_id")
    done = await sira(monkeypatch, capsys, env, "explain", "--prediction", "x")
    assert (done.returncode, done.stderr) == (2, "error: invalid_request: prediction_id must be a UUID\n")


async def test_422s_name_their_field(api, clean_db, settings):
    client, keys, _ = api
    e = error(await client.post("/v1/models", json={"name": "m11", "decision_targets": {"bogus": 1}},
                                headers=keys["admin"]), 422)
    assert e["code"] == "invalid_targets" and e["details"]["field"] == "decision_targets.bogus", e
    assert e["details"]["unknown"] == ["decision_targets.bogus"] and "review_rate" in e["details"]["valid"]
    e = error(await client.post("/v1/models", json={"name": "m11", "decision_targets": {"review_rate": 2}},
                                headers=keys["admin"]), 422)
    assert (e["code"], e["details"]) == ("invalid_targets", {"field": "decision_targets.review_rate"}), e
    e = error(await client.post("/v1/models", json={"name": "m11", "promotion_policy": {"min_ap_gain": 5}},
                                headers=keys["admin"]), 422)
    assert (e["code"], e["details"]) == ("invalid_policy", {"field": "promotion_policy.min_ap_gain"}), e
    await make_version(clean_db, settings, 1, required=0)
    await clean_db.execute("UPDATE sira_model_versions SET status = 'production'")
    e = error(await client.post("/v1/models/fraud/rollback", json={"reason": "  ", "expected_version": 1},
                                headers=keys["operator"]), 422)
    assert (e["code"], e["details"], e["message"]) == ("missing_field", {"field": "reason"}, "reason: a rollback needs one")
    e = error(await client.get("/v1/models/fraud/thresholds?from=2026-09-20&to=2026-09-01", headers=keys["admin"]), 422)
    assert e["code"] == "invalid_window" and e["details"]["field"] == "to", e
    assert e["message"] == "the window 2026-09-20 00:00 .. 2026-09-01 00:00 is empty: from must be before to"
    e = error(await client.get("/v1/models/fraud/thresholds?from=2026-09-01&to=2026-09-20", headers=keys["admin"]), 422)
    assert e["code"] == "empty_window" and e["details"]["field"] == "from" and e["details"]["window"] == {
        "from": "2026-09-01T00:00:00+00:00", "to": "2026-09-20T00:00:00+00:00"}, e
    e = error(await client.post("/v1/models/fraud/versions/1/thresholds", json={"review": 0.5, "block": 0.4,
                                                                               "reason": "x"}, headers=keys["admin"]),
              422)
    assert e["details"]["field"] == "block", e


async def test_http_messages_name_parameters_not_cli_flags(api, clean_db, settings):
    """Told `--from must be before --to`, `name one with --version`, `(--reason)`, `(sira promote first)`,
    `(sira thresholds --apply first)`: the messages now name the parameter both callers give."""
    client, keys, _ = api
    await make_version(clean_db, settings, 1)
    answers = [
        await client.get("/v1/models/fraud/thresholds?from=2026-09-20&to=2026-09-01&version=1", headers=keys["admin"]),
        await client.get("/v1/models/fraud/thresholds", headers=keys["admin"]),
        await client.post("/v1/models/fraud/versions/1/approve", json={}, headers=keys["admin"]),
        await client.post("/v1/models/fraud/versions/1/thresholds/approve", json={}, headers=keys["admin"]),
    ]
    messages = [a.json()["error"]["message"] for a in answers]
    assert [a.status_code for a in answers] == [422, 409, 404, 404], messages
    assert messages[2:] == ["fraud v1 has no pending promotion request: request its promotion first",
                            "fraud v1 has no pending threshold change: ask for new thresholds first"]
    for message in messages:
        assert "--" not in message and "sira " not in message, message


@pytest.mark.parametrize("args", [
    ["thresholds", "--model", "fraud", "--days", "7", "--from", "2026-09-01", "--to", "2026-09-20"],
    ["thresholds", "--model", "fraud", "--days", "7", "--from", "2026-09-01"],
    ["drift", "--model", "fraud", "--days", "7", "--from", "2026-09-01T00:00Z", "--to", "2026-09-20"],
    ["performance", "--model", "fraud", "--days", "7", "--from", "2026-09-01", "--to", "2026-09-20"],
    ["performance", "--model", "fraud", "--days", "7", "--from", "2026-09-01"],
])
async def test_a_window_set_twice_is_refused_in_one_line_not_ignored(api, clean_db, settings, monkeypatch, capsys,
                                                                      args):
    """`--days 7 --from .. --to ..` ran on from/to and ignored --days, unsaid."""
    _, _, env = api
    await make_version(clean_db, settings, 1)
    done = await sira(monkeypatch, capsys, env, *args)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: invalid_window: days cannot be given with from"), done.stderr


async def test_days_with_one_end_of_the_window_still_works_where_it_counts(api, clean_db, settings, monkeypatch,
                                                                           capsys):
    """`--to X --days N` is the N days before X (drift: `--from X --days N` the N days after): not refused."""
    _, _, env = api
    await make_version(clean_db, settings, 1)
    done = await sira(monkeypatch, capsys, env, "thresholds", "--model", "fraud", "--version", "1", "--days", "3",
                      "--to", "2026-09-20")
    assert done.stderr.startswith("error: empty_window: fraud v1 has no labelled answers"), done.stderr
    done = await sira(monkeypatch, capsys, env, "thresholds", "--model", "fraud", "--version", "1", "--from",
                      "2026-09-01", "--to", "2026-08-01")  # and the window is still checked
    assert done.stderr == ("error: invalid_window: the window 2026-09-01 00:00 .. 2026-08-01 00:00 is empty: from "
                           "must be before to\n"), done.stderr


async def test_a_refused_label_names_its_field_and_says_why(clean_db, settings):
    """POST /v1/feedback {"known_at": "2099-01-01T00:00:00Z"} answered `label rejected: known_at_in_future`, no
    field: the summary of one refused label now carries the answer, code, field and reason."""
    from sira.ingest.labels import record_labels
    from sira.ingest.pii import redactor_for

    future = datetime.now(timezone.utc) + timedelta(days=30)
    async with db.transaction(clean_db) as conn:
        summary = await record_labels(conn, [{"event_id": "e-future", "label": True, "known_at": future}],
                                      redactor=redactor_for(settings), source="api")
        ok = await record_labels(conn, [{"event_id": "e-now", "label": True, "known_at": datetime.now(timezone.utc)}],
                                 redactor=redactor_for(settings), source="api")
    refusal = summary.refusal()
    assert (refusal.code, refusal.http_status, refusal.details) == ("known_at_in_future", 422, {"field": "known_at"})
    assert refusal.message.startswith("label rejected: known_at: is in the future (more than 24 hours ahead of now)")
    assert ok.refusal() is None


async def test_a_key_name_taken_or_a_role_unknown_is_named_alike_over_http_and_the_cli(api, monkeypatch, capsys):
    """A taken key name was 409 `conflict` where a taken model name is `model_exists`; an unknown role and a bad
    key name were `invalid_input` naming no field on the CLI (HTTP's schema now refuses them by field)."""
    client, keys, env = api
    body = {"name": "ops-bot", "roles": ["operator"]}
    assert (await client.post("/v1/keys", json=body, headers=keys["admin"])).status_code == 201
    e = error(await client.post("/v1/keys", json=body, headers=keys["admin"]), 409)
    assert (e["code"], e["details"]) == ("key_exists", {"field": "name", "name": "ops-bot"}), e
    done = await sira(monkeypatch, capsys, env, "keys", "create", "--name", "ops-bot", "--role", "operator")
    assert (done.returncode, done.stderr.splitlines()[0].split(":")[:2]) == (2, ["error", " key_exists"]), done
    done = await sira(monkeypatch, capsys, env, "keys", "create", "--name", "bot2", "--role", "wizard", "--json")
    assert done.returncode == 2 and "invalid_input" in done.stderr and "wizard" in done.stderr, done
    e = error(await client.post("/v1/keys", json={"name": "a b/c?", "roles": ["operator"]}, headers=keys["admin"]), 422)
    assert e["details"]["field"] == "name", e


async def test_a_what_if_window_set_twice_over_http_is_refused_naming_days(api, clean_db, settings):
    """`days=7&from=…&to=…` was answered on from/to, days silently ignored (the CLI refused it already)."""
    client, keys, _ = api
    await make_version(clean_db, settings, 1)
    for query in ("days=7&from=2026-09-01&to=2026-09-20", "days=7&from=2026-09-01"):
        e = error(await client.get(f"/v1/models/fraud/thresholds?version=1&{query}", headers=keys["admin"]), 422)
        assert (e["code"], e["details"]["field"]) == ("invalid_window", "days"), e
    e = error(await client.post("/v1/models/fraud/versions/1/thresholds", headers=keys["admin"], json={
        "review": 0.4, "block": 0.8, "reason": "x", "days": 7, "from": "2026-09-01T00:00:00Z"}), 422)
    assert (e["code"], e["details"]["field"]) == ("invalid_window", "days"), e
