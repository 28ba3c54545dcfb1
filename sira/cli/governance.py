"""Governance: ``sira promote|stage|approve|reject|rollback|history``, ``sira models``, ``sira versions``,
``sira webhooks``, ``sira audit``, ``sira keys``."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sira.cli.common import (
    DATE_FORMS,
    ApiKeyOption,
    CommentOption,
    JsonOption,
    ModelOption,
    ReasonOption,
    VersionOption,
    acting,
    app,
    emit,
    err,
    governed,
    iso_datetime,
    keys_app,
    kv_table,
    load_yaml_mapping,
    models_app,
    versions_app,
    webhooks_app,
    writable_file,
)
from sira.core.config import MAX_VERSION, get_settings


@app.command("promote")
def promote_cmd(model: ModelOption, version: VersionOption, reason: ReasonOption = None,
                api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """Request production for a version; approvals complete it.

    A candidate is validated first."""
    from sira.registry.models import request_promotion

    result = governed(lambda conn, who: request_promotion(conn, get_settings(), who, model, version, reason), api_key,
                       notify=True)
    emit(result, as_json, lambda: err.print(
        f"{model} v{version}: promotion request {result['request_id']} {result['status']}"
        + (f", needs {max(result['required_approvals'], 1)} approval(s)" if result["status"] == "pending" else "")
        + _verdict_note(result) + _policy_note(result)))


def _policy_note(result: dict[str, Any]) -> str:
    """A model that requires no approvals: what its promotion policy said, and why it did not promote."""
    said = result.get("policy")
    if not said:
        return ""
    if said["promotes"]:
        return "\npolicy: promoted it"
    return f"\npolicy: did not promote it ({said['outcome']}): " + "; ".join(said["deciding"])


@app.command("stage")
def stage_cmd(model: ModelOption, version: VersionOption, reason: ReasonOption = None,
              api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """Put a version in staging: scored in shadow beside production.

    A candidate is validated first."""
    from sira.registry.models import stage_version

    result = governed(lambda conn, who: stage_version(conn, get_settings(), who, model, version, reason), api_key,
                       notify=True)
    emit(result, as_json, lambda: err.print(
        f"{model} v{version}: staging (shadow scoring)"
        + (f"; v{result['replaced']} back to validated" if result["replaced"] else "") + _verdict_note(result)))


def _verdict_note(result: dict[str, Any]) -> str:
    """A version the retraining policy judged and did not stage: the person acting on it is told (the audit entry
    and the approvers' evidence keep it too)."""
    verdict = result.get("retrain_verdict")
    if not verdict:
        return ""
    why = "; ".join(verdict["deciding"])  # the rules that failed: the first reasons are mostly ones that passed
    return (f"\nnote: retrain run {verdict['run']}'s policy decided {verdict['decision'].upper()} for this version"
            + (f" ({why})" if why else ""))


def _decide(decision: str, model: str, version: int, comment: str | None, api_key: str | None, as_json: bool,
            thresholds: bool, asked: int | None = None) -> None:
    from sira.registry.models import decide
    from sira.registry.thresholds import decide_change

    act = decide_change if thresholds else decide
    what = "threshold change" if thresholds else "request"
    result = governed(lambda conn, who: act(conn, who, model, version, decision, comment, asked), api_key, notify=True)
    emit(result, as_json, lambda: err.print(
        f"{model} v{version}: {decision} recorded; {what} {result['outcome']} "
        f"({result['approvals']}/{result['required_approvals']} approvals)"))


ThresholdsFlag = Annotated[bool, typer.Option("--thresholds", help="Decide the version's pending threshold change "
                                              "(sira thresholds --apply), not its promotion.")]
RequestOption = Annotated[int | None, typer.Option(
    "--request", min=1, max=2**63 - 1, metavar="ID",
    help="The request you read: the promotion request's id (sira versions show), with --thresholds the "
         "threshold set's (sira thresholds --history --json); refused (request_closed) unless still pending.")]


@app.command("approve")
def approve_cmd(model: ModelOption, version: VersionOption, comment: CommentOption = None,
                thresholds: ThresholdsFlag = False, request: RequestOption = None, api_key: ApiKeyOption = None,
                as_json: JsonOption = False) -> None:
    """Approve a version's promotion or threshold change.

    The pending promotion request (the last required approval promotes it), or with --thresholds the
    pending threshold change (the last required approval activates it)."""
    _decide("approve", model, version, comment, api_key, as_json, thresholds, request)


@app.command("reject")
def reject_cmd(model: ModelOption, version: VersionOption, comment: CommentOption = None,
               thresholds: ThresholdsFlag = False, request: RequestOption = None, api_key: ApiKeyOption = None,
               as_json: JsonOption = False) -> None:
    """Reject a version's promotion or threshold change.

    The pending promotion request, or with --thresholds the pending threshold change."""
    _decide("reject", model, version, comment, api_key, as_json, thresholds, request)


@app.command("rollback")
def rollback_cmd(model: ModelOption,
                 reason: Annotated[str, typer.Option("--reason", help="Why (required, kept in the history).")],
                 expected_version: Annotated[int | None, typer.Option(
                     "--expected-version", min=1, max=MAX_VERSION,
                     help="The production version to replace (default: the one production is as the command "
                          "starts); refused if production is another.")] = None,
                 api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """Make the previous production version production again.

    The command names the version it replaces, so two rollbacks started together step back once."""
    from sira.registry.models import rollback, show_model

    async def action(conn: Any, who: Any) -> dict[str, Any]:
        expected = expected_version
        if expected is None:  # read before the rollback locks the model, as a person reads it before acting
            versions = (await show_model(conn, who, model))["versions"]
            expected = next((v["version"] for v in versions if v["status"] == "production"), None)
        return await rollback(conn, who, model, reason, expected)

    result = governed(action, api_key, notify=True)
    emit(result, as_json, lambda: err.print(
        f"{model}: v{result['production']} is production again, v{result['archived']} archived"))


@app.command("history")
def history_cmd(model: ModelOption, api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """Every change of a model's production version.

    When, who, from, to, how, why and who asked; with --json the answer of GET /v1/models/{name}/history
    (with the production version and the one a rollback restores)."""
    from sira.registry.history import history

    result = governed(lambda conn, who: history(conn, who, model), api_key)

    def render() -> None:
        table = Table(title=f"Production history of {model}", title_justify="left")
        for column in ("at", "from", "to", "via", "actor", "requested by", "reason"):
            table.add_column(column)
        for r in result["history"]:
            table.add_row(r["at"], str(r["from"] or ""), str(r["to"]), r["via"] or "", r["actor"],
                          r["requested_by"] or "", r["reason"] or "")
        err.print(table)
        if result["production"] is not None:
            err.print(f"production: v{result['production']}; a rollback restores "
                      + (f"v{result['rollback_to']}" if result["rollback_to"] is not None else "nothing"))
        if result.get("rollback_blocked"):
            blocked = result["rollback_blocked"]
            err.print(f"that rollback would be refused now ({blocked['code']}): {blocked['message']}")

    emit(result, as_json, render)


def _model_settings(targets: Path | None, policy: Path | None, **values: Any) -> dict[str, Any]:
    out = {k: v for k, v in values.items() if v is not None}
    if targets is not None:
        out["decision_targets"] = load_yaml_mapping(targets)
    if policy is not None:
        out["promotion_policy"] = load_yaml_mapping(policy)
    return out


ApprovalsOption = Annotated[int | None, typer.Option("--required-approvals", min=0, max=20,
                                                     help="Distinct approvers production needs (0: policy may promote).")]
TargetsOption = Annotated[Path | None, typer.Option("--targets", help="YAML: review_rate, block_precision, costs.")]
PolicyOption = Annotated[Path | None, typer.Option("--policy", help="YAML promotion policy.")]
MaturityOption = Annotated[int | None, typer.Option("--label-maturity", min=0, max=3650,
                                                    help="Days until an unlabelled event counts as legitimate.")]


@models_app.command("create")
def models_create_cmd(
    name: Annotated[str, typer.Argument(help="Model name: lowercase letters, digits, - and _.")],
    model_type: Annotated[str, typer.Option("--type", help="fraud_detection, churn or anomaly.")] = "fraud_detection",
    entity: Annotated[str, typer.Option("--entity", help="The entity it scores.")] = "customer",
    label: Annotated[str | None, typer.Option("--label-source", help="Label name in sira_feedback (default fraud).")] = None,
    required_approvals: ApprovalsOption = None, targets: TargetsOption = None, policy: PolicyOption = None,
    label_maturity: MaturityOption = None,
    description: Annotated[str | None, typer.Option("--description", help="What it is for.")] = None,
    api_key: ApiKeyOption = None, as_json: JsonOption = False,
) -> None:
    """Create a model (governance settings need an admin key)."""
    from sira.registry.models import create_model

    settings = _model_settings(targets, policy, required_approvals=required_approvals, label_name=label,
                               label_maturity_days=label_maturity, description=description)
    row = governed(lambda conn, who: create_model(conn, who, name, model_type=model_type, entity_type=entity,
                                                   **settings), api_key)
    emit(row, as_json, lambda: err.print(f"created model {name} ({model_type}), {row['required_approvals']} "
                                           "approval(s) for production"))


@models_app.command("update")
def models_update_cmd(
    name: Annotated[str, typer.Argument(help="Model name.")],
    required_approvals: ApprovalsOption = None, targets: TargetsOption = None, policy: PolicyOption = None,
    label_maturity: MaturityOption = None,
    description: Annotated[str | None, typer.Option("--description", help="What it is for.")] = None,
    feature_set: Annotated[str | None, typer.Option(
        "--feature-set", help="NAME@VERSION its next versions train on, e.g. payments@2 (versions already "
        "registered keep theirs).")] = None,
    notify: Annotated[str | None, typer.Option(
        "--notify", help="Receivers told of its governance events, comma-separated names from "
        "SIRA_NOTIFY_RECEIVERS_FILE ('' for none).")] = None,
    api_key: ApiKeyOption = None, as_json: JsonOption = False,
) -> None:
    """Change a model's settings (admin)."""
    from sira.features.definitions import FEATURE_SETS, parse_feature_set
    from sira.registry.models import update_model

    changes = _model_settings(targets, policy, required_approvals=required_approvals,
                              label_maturity_days=label_maturity, description=description)
    if feature_set is not None:
        named, _, number = feature_set.strip().partition("@")
        if number.isdigit() and any(n == named for n, _ in FEATURE_SETS):  # an unknown version: the registry's answer
            changes["feature_set_version"] = int(number)  # (unknown_feature_set, as over HTTP)
        else:
            changes["feature_set_version"] = parse_feature_set(feature_set).version
    if notify is not None:
        from sira.core.config import get_settings
        from sira.core.errors import InvalidInput
        from sira.registry import receivers

        names = [n.strip() for n in notify.split(",") if n.strip()]
        known = receivers.load(get_settings())
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InvalidInput(f"--notify: no receiver {', '.join(unknown)} in SIRA_NOTIFY_RECEIVERS_FILE"
                               + ("" if known else " (unset or empty)"), code="unknown_receiver",
                               details={"field": "notify"})
        changes["notify"] = names
    row = governed(lambda conn, who: update_model(conn, who, name, **changes), api_key)
    emit(row, as_json, lambda: err.print(f"updated {name}: {', '.join(changes)}"))


@models_app.command("list")
def models_list_cmd(api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """List models with their latest, staging and production versions."""
    from sira.registry.models import list_models

    rows = governed(list_models, api_key)

    def render() -> None:
        table = Table(title="Models", title_justify="left")
        for column in ("name", "type", "latest", "staging", "production", "approvals"):
            table.add_column(column)
        for r in rows:
            table.add_row(r["name"], r["model_type"], str(r["latest_version"] or ""), str(r["staging_version"] or ""),
                          str(r["production_version"] or ""), str(r["required_approvals"]))
        err.print(table)

    emit({"models": rows}, as_json, render)


@models_app.command("show")
def models_show_cmd(name: Annotated[str, typer.Argument(help="Model name.")], api_key: ApiKeyOption = None,
                    as_json: JsonOption = False) -> None:
    """Show a model's settings and versions."""
    from sira.registry.models import show_model

    model = governed(lambda conn, who: show_model(conn, who, name), api_key)

    def render() -> None:
        err.print(kv_table(f"Model {name}", {k: model[k] for k in (
            "model_type", "entity_type", "feature_set", "label_name", "label_maturity_days", "required_approvals",
            "decision_targets", "promotion_policy", "created_by")}))
        table = Table(title="Versions", title_justify="left")
        for column in ("version", "status", "test AP", "created by", "last request", "retrain policy"):
            table.add_column(column)
        for v in model["versions"]:
            ap = v["test_ap"]
            table.add_row(str(v["version"]), v["status"], "" if ap is None else f"{float(ap):.4f}", v["created_by"],
                          v["last_request"] or "", v["retrain_decision"] or "")
        err.print(table)

    emit(model, as_json, render)


@versions_app.command("show")
def versions_show_cmd(model: ModelOption, version: VersionOption, api_key: ApiKeyOption = None,
                      as_json: JsonOption = False) -> None:
    """Show one version: status, metrics, thresholds, artifact.

    And its promotion requests; --json adds everything the registry keeps of it."""
    from sira.cli.train import metrics_table
    from sira.registry.models import show_version

    row = governed(lambda conn, who: show_version(conn, who, model, version), api_key)

    def render() -> None:
        err.print(kv_table(f"{model} v{version}", {k: row[k] for k in (
            "status", "created_by", "created_at", "artifact_uri", "artifact_sha256", "thresholds",
            "promotion_requests")}))
        if row.get("metrics"):  # the help promised metrics; only --json had them
            err.print(metrics_table(f"{model} v{version}: metrics at training", row["metrics"]))

    emit(row, as_json, render)


@versions_app.command("compare")
def versions_compare_cmd(model: ModelOption,
                         a: Annotated[int, typer.Argument(min=1, max=MAX_VERSION, help="First version.")],
                         b: Annotated[int, typer.Argument(min=1, max=MAX_VERSION, help="Second version.")],
                         api_key: ApiKeyOption = None,
                         as_json: JsonOption = False) -> None:
    """Two versions' metrics side by side."""
    from sira.core.errors import InvalidInput
    from sira.registry.models import compare_versions

    if a == b:  # as GET /v1/models/{name}/compare: one column, every difference zero
        raise InvalidInput(f"compare two different versions (a and b are both {a})", code="invalid_value",
                           details={"field": "b"})
    result = governed(lambda conn, who: compare_versions(conn, who, model, a, b), api_key)

    def render() -> None:
        table = Table(title=f"{model}: v{a} against v{b}", title_justify="left")
        for column in ("window", "metric", f"v{a}", f"v{b}", "difference"):
            table.add_column(column, justify="right")
        fmt = lambda v: "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
        for r in result["metrics"]:
            table.add_row(r["window"], r["metric"], fmt(r[f"v{a}"]), fmt(r[f"v{b}"]), fmt(r["difference"]))
        err.print(table)

    emit(result, as_json, render)


@versions_app.command("card")
def versions_card_cmd(
    model: ModelOption, version: VersionOption,
    fmt: Annotated[str, typer.Option("--format", help="md or html.")] = "md",
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file instead of stdout.")] = None,
    api_key: ApiKeyOption = None,
) -> None:
    """The version's model card (Markdown or self-contained HTML)."""
    from sira.registry.card import render_card

    writable_file(out)
    text = governed(lambda conn, who: render_card(conn, get_settings(), who, model, version, fmt), api_key)
    if out is not None:
        out.write_text(text, encoding="utf-8")
        err.print(f"wrote {out}")
    else:
        sys.stdout.write(text)


@webhooks_app.command("deliver")
def webhooks_deliver_cmd(as_json: JsonOption = False) -> None:
    """Deliver pending webhook events now, with retries.

    Run it from cron or a scheduler."""
    from sira.core import db
    from sira.registry import webhooks

    settings = get_settings()

    async def run() -> dict[str, int]:
        async with db.open_pool(settings) as pool:
            return await webhooks.deliver_due(pool, settings)

    counts = asyncio.run(run())
    emit(counts, as_json, lambda: err.print(", ".join(f"{k} {v}" for k, v in counts.items())))


@app.command("audit")
def audit_cmd(
    target: Annotated[str | None, typer.Option("--target", help="A target id, e.g. fraud or fraud:v3.")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Who acted.")] = None,
    action: Annotated[str | None, typer.Option("--action", help="Action prefix, e.g. promotion.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="Most rows to show.")] = 100,
    before: Annotated[int | None, typer.Option("--before", min=1, help="Only entries older than this id (the "
                                               "next page: the last answer's next_before).")] = None,
    api_key: ApiKeyOption = None, as_json: JsonOption = False,
) -> None:
    """Read the audit log, newest first, a page at a time (admin)."""
    from sira.registry.models import read_audit

    rows = governed(lambda conn, who: read_audit(conn, who, target=target, actor=actor, action=action,
                                                 limit=limit + 1, before=before), api_key)
    next_before = rows[limit - 1]["id"] if len(rows) > limit else None  # one more read: whether the page is cut
    rows = rows[:limit]

    def render() -> None:
        table = Table(title="Audit log", title_justify="left")
        for column in ("at", "actor", "action", "target", "outcome"):
            table.add_column(column)
        for r in rows:
            table.add_row(r["occurred_at"], r["actor"], r["action"], r["target_id"] or "", r["outcome"])
        err.print(table)
        if next_before is not None:
            err.print(f"older entries: --before {next_before}")

    emit({"entries": rows, "next_before": next_before}, as_json, render)


@keys_app.command("create")
def keys_create_cmd(
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for.")],
    role: Annotated[list[str], typer.Option("--role", help="A role (repeat for several): " + ", ".join(
        ("service", "viewer", "analyst", "data_scientist", "approver", "operator", "admin")))],
    expires: Annotated[datetime | None, typer.Option(
        "--expires", parser=iso_datetime, metavar="WHEN", help=f"When the key stops working, ISO 8601: {DATE_FORMS}. "
        "Not in the past.")] = None,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API key (the first one, an admin key, needs no key)."""
    from sira.core import db
    from sira.core.auth import create_key, parse_expiry

    settings = get_settings()
    expires_at = parse_expiry(expires.isoformat()) if expires is not None else None  # refuses the past

    async def run() -> tuple[str, dict[str, Any]]:
        async with db.open_pool(settings) as pool:
            async with db.transaction(pool) as conn:
                creator = await acting(conn, api_key, required=False)
                return await create_key(conn, name=name, roles=role, pepper=settings.secret("auth_secret"),
                                        creator=creator, expires_at=expires_at)

    key, info = asyncio.run(run())
    payload = {"name": info["name"], "roles": info["roles"], "key": key}
    emit(payload, as_json, lambda: (
        err.print(f"created key {info['name']} with roles {', '.join(info['roles'])}"),
        err.print("the key is shown once; store it now:"),
        print(key),
    ))


@keys_app.command("list")
def keys_list_cmd(api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """List API keys (never the keys themselves)."""
    from sira.core import db
    from sira.core.auth import list_keys

    settings = get_settings()

    async def run() -> list[dict[str, Any]]:
        async with db.open_pool(settings) as pool:
            async with pool.acquire() as conn:
                return await list_keys(conn, await acting(conn, api_key))

    keys = asyncio.run(run())

    def render() -> None:
        table = Table(title="API keys", title_justify="left")
        for column in ("name", "roles", "created_by", "last_used_at", "revoked_at"):
            table.add_column(column)
        for k in keys:
            table.add_row(k["name"], ", ".join(k["roles"]), k["created_by"], k["last_used_at"] or "",
                          k["revoked_at"] or "")
        err.print(table)

    emit({"keys": keys}, as_json, render)


@keys_app.command("revoke")
def keys_revoke_cmd(name: Annotated[str, typer.Argument(help="The key's name.")], api_key: ApiKeyOption = None,
                    as_json: JsonOption = False) -> None:
    """Revoke an API key.

    It stops working at once for the API server and the CLI; a serving replica may still accept it for up to
    its auth_cache_ttl_s (10 s)."""
    from sira.core import db
    from sira.core.auth import revoke_key

    settings = get_settings()

    async def run() -> None:
        async with db.open_pool(settings) as pool:
            async with db.transaction(pool) as conn:
                await revoke_key(conn, await acting(conn, api_key), name)

    asyncio.run(run())
    emit({"revoked": name}, as_json, lambda: err.print(f"revoked key {name}"))
