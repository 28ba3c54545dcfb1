"""Decision transparency: ``sira explain`` (one decision explained), ``sira subject`` (what SIRA holds about
one person, for an admin) and ``sira thresholds`` (what other thresholds would have done, for risk teams)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sira.cli.common import (
    ApiKeyOption,
    DateOption,
    JsonOption,
    ModelOption,
    app,
    emit,
    err,
    governed,
    group,
    kv_table,
    writable_file,
)
from sira.core.config import MAX_VERSION, get_settings

subject_app = group("subject", "Data subjects: export or erase one person's data.\n\nEverything stored about one "
                   "person (admin).")


@subject_app.command("export")
def subject_export_cmd(
    customer: Annotated[str, typer.Option("--customer", help="The person's customer id, as their events carry it.")],
    out: Annotated[Path, typer.Option("--out", help="The bundle: a .json file, or a .zip of one file per section.")],
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Export everything stored about one person.

    Every stored event, dead letter, feature row and state, prediction (with its reasons) and label, PII
    left as the tokens SIRA holds; audited, the subject named by a keyed hash."""
    from sira.core.errors import InvalidInput
    from sira.monitoring.subject import export_subject, write_bundle

    if out.suffix not in (".json", ".zip"):
        raise InvalidInput("--out must end in .json or .zip", code="invalid_value", details={"field": "out"})
    writable_file(out)
    settings = get_settings()

    async def export(conn: Any, who: Any) -> dict[str, Any]:
        return await export_subject(conn, who, customer, settings, out=str(out.resolve()))

    bundle = governed(export, api_key)
    write_bundle(bundle, out)
    found = any(bundle["counts"].values()) or bool(bundle["withheld"]["shared_identifiers"])
    summary = {"out": str(out), "found": found, "counts": bundle["counts"], "token_kinds": bundle["tokens"]["kinds"],
               "withheld_shared_identifiers": bundle["withheld"]["shared_identifiers"]}
    if not found:  # an empty bundle read as "nothing about them" where the id was most likely mistyped
        err.print("nothing is stored about this customer id (no event, dead letter, feature state, prediction or "
                  "label): check the id; the bundle written is empty")
    emit(summary, as_json, lambda: err.print(kv_table(f"Subject export → {out}", {
        **{k.replace("_", " "): f"{v:,}" for k, v in bundle["counts"].items()},
        "token kinds": ", ".join(bundle["tokens"]["kinds"]) or "none",
        "withheld (shared with another customer)": str(bundle["withheld"]["shared_identifiers"]),
    })))


@subject_app.command("forget")
def subject_forget_cmd(
    customer: Annotated[str, typer.Option("--customer", help="The person's customer id, as their events carry it.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (asking for an erasure).")] = None,
    approve: Annotated[int | None, typer.Option("--approve", min=1, help="Carry out this pending request (a second "
                                                "admin, not the one who asked).")] = None,
    spool_dir: Annotated[list[Path] | None, typer.Option("--spool-dir", help="A serving spool folder on this "
                                                         "machine (default: the workspace's).")] = None,
    force: Annotated[bool, typer.Option("--force", help="With --reason: ask even though SIRA holds nothing about "
                                        "the id (refused otherwise: a mistyped id, most likely).")] = False,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Erase one person, asked by one admin, done by a second.

    An admin asks with --reason; a second admin carries it out with --approve REQUEST. Their events, dead letters, features, states, predictions and labels are deleted, and their entries in
    Redis and this machine's spool; aggregates and models are kept; files written elsewhere are listed."""
    import asyncio

    from sira.core.errors import InvalidInput
    from sira.monitoring.erasure import forget, forget_outside, record_outside, request_forget

    settings = get_settings()
    secret = settings.secret("auth_secret")
    if (approve is None) == (reason is None):
        raise InvalidInput("give --reason to ask for an erasure, or --approve REQUEST to carry one out",
                           code="missing_field")
    if force and approve is not None:
        raise InvalidInput("--force does not apply to --approve: it goes with the request (--reason)",
                           code="invalid_option")
    from sira.ingest.bulk import redactor_for

    redactor = redactor_for(settings)
    if approve is None:
        asked = governed(lambda conn, who: request_forget(conn, who, customer, reason or "", secret=secret,
                                                          redactor=redactor, force=force), api_key)
        emit(asked, as_json, lambda: err.print(f"erasure request {asked['request_id']} ({asked['subject']}) waits "
                                               f"for a second admin: {asked['next']}"))
        return
    done = governed(lambda conn, who: forget(conn, who, customer, approve, secret=secret, redactor=redactor), api_key)
    outside = done.pop("_outside")
    folders = spool_dir or [settings.workspace / "spool"]
    removed = asyncio.run(forget_outside(settings.redis_url, folders, customer, outside))
    governed(lambda conn, who: record_outside(conn, who, done["request_id"], removed), api_key)
    done["counts"].update(removed)
    failed = sorted(k for k, v in removed.items() if str(v).startswith("failed"))
    if failed:
        from sira.core.errors import SiraError

        raise SiraError(f"erasure {done['request_id']}: the database part is done, {' and '.join(failed)} could "
                        f"not be cleaned ({'; '.join(str(removed[k]) for k in failed)}): run the same --approve "
                        "again to retry them", code="erasure_incomplete")
    emit(done, as_json, lambda: err.print(kv_table(f"Erasure {done['request_id']} ({done['subject']})", {
        **{k.replace("_", " "): f"{v:,}" if isinstance(v, int) else str(v) for k, v in done["counts"].items()},
        "files to look at": str(len(done["files"])),
        "kept (shared with another customer)": str(done["withheld_shared_identifiers"]),
    })))


pii_app = group("pii", "Personal data already stored: re-key it (admin).\n\nWhat older versions kept as sent.")


@pii_app.command("rekey-cards")
def pii_rekey_cards_cmd(
    apply: Annotated[bool, typer.Option("--apply", help="Re-key and rebuild (default: only count).")] = False,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-key card tokens stored as a source sent them.

    Card tokens stored as a source sent them (before 2026-12-06 a card number sent as `card_token` was
    kept raw) become their keyed tokens in events, dead letters and feature rows; the feature sets with stored
    state are rebuilt from the log; replicas and Redis drop the old keys. Ingest waits while it applies.
    Audited."""
    import asyncio

    from sira.ingest.bulk import redactor_for
    from sira.monitoring.rekey import clean_redis, rekey_cards

    settings = get_settings()
    redactor = redactor_for(settings)
    done = governed(lambda conn, who: rekey_cards(conn, who, redactor, apply=apply), api_key)
    if apply:
        done["redis"] = asyncio.run(clean_redis(settings.redis_url, redactor))
    title = "Card tokens re-keyed" if apply else "Card tokens stored as sent (dry run: --apply to re-key)"
    emit(done, as_json, lambda: err.print(kv_table(title, {
        "card tokens": f"{done['card_tokens']:,}", "events": f"{done['events']:,}",
        **({"dead letters": f"{done['dead_letters']:,}", "feature rows": f"{done['feature_rows']:,}",
            "rebuilt": ", ".join(done["rebuilt"]) or "none", "redis": done["redis"]} if apply else {}),
    })))


def thresholds_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    from sira.cli.common import fmt
    from sira.monitoring.thresholds import caught_in_words

    marks = {v: f"current {k}" for k, v in result["current"].items()}
    marks.update({v: (marks.get(v, "") + " " if v in marks else "") + f"meets targets ({k})"
                  for k, v in result["meets_targets"].items()})
    table = Table(title=f"{result['model']} v{result['version']}: thresholds on {result['labelled']:,} labelled answers "
                        f"({result['positives']:,} fraud), {result['window']['from'][:10]}..{result['window']['to'][:10]}",
                  title_justify="left")
    for column in ("threshold", "flagged", "precision", "recall", "fraud amount caught", "false alarms", "total cost", ""):
        table.add_column(column, justify="left" if column == "" else "right")
    for r in result["thresholds"]:
        table.add_row(fmt(r["threshold"]), f"{r['flag_rate']:.2%}", fmt(r["precision"], 3), fmt(r["recall"], 3),
                      caught_in_words(r), f"{r['false_alarms']:,}",
                      f"{r['total_cost']:,.0f}", marks.get(r["threshold"], ""))
    return table


def threshold_sets_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"{result['model']} v{result['version']}: threshold sets (active: {result['active']})",
                  title_justify="left")
    for column in ("revision", "review", "block", "status", "requested by", "decided", "reason"):
        table.add_column(column)
    for s in result["sets"]:
        decided = ", ".join(f"{d['decision']} by {d['approver']}" for d in s["decisions"]) or (s["decided_at"] or "")[:19]
        table.add_row(str(s["revision"]), f"{s['review']:.4f}", f"{s['block']:.4f}", s["status"], s["requested_by"],
                      decided, s["reason"] or "")
    return table


@app.command("thresholds")
def thresholds_cmd(
    model: ModelOption,
    version: Annotated[int | None, typer.Option("--version", min=1, max=MAX_VERSION, help="Default: production's.")] = None,
    days: Annotated[int | None, typer.Option("--days", min=1, max=3650, help="Days of the window (default 28), which "
                                             "ends at --to or the version's newest labelled answer (not with "
                                             "--from: docs/windows.md).")] = None,
    time_from: DateOption("--from", "Start of the window (event time).") = None,
    time_to: DateOption("--to", "End of the window (exclusive).") = None,
    apply: Annotated[bool, typer.Option("--apply", help="Ask for --review/--block on the version: a threshold "
                                        "change approved as a promotion is (sira approve --thresholds).")] = False,
    review: Annotated[float | None, typer.Option("--review", min=0, max=1, help="With --apply: the review threshold.")] = None,
    block: Annotated[float | None, typer.Option("--block", min=0, max=1, help="With --apply: the block threshold.")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="With --apply: why (required).")] = None,
    history: Annotated[bool, typer.Option("--history", help="The version's threshold sets, newest first.")] = False,
    html_out: Annotated[Path | None, typer.Option("--html", help="Also write the what-if as a page with its chart "
                                                  "(precision, recall, share flagged by threshold).")] = None,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """What other review/block thresholds would have done.

    On a labelled window: rates, precision, recall, fraud amount caught, false alarms, costs; and the
    thresholds that meet the model's targets. --apply asks for new ones (governed); --history lists the
    version's threshold sets."""
    from sira.core.errors import InvalidInput, check_window_options
    from sira.monitoring import thresholds

    check_window_options(time_from, time_to, days, days_after_from=False)
    days = thresholds.DEFAULT_DAYS if days is None else days
    if apply and history:
        raise InvalidInput("--apply and --history cannot be combined: one asks for new thresholds, the other lists "
                           "the sets", code="invalid_option")
    # accepted and ignored before: `--review 0.3 --block 0.8` without --apply showed the what-if, changed nothing
    ignored = [flag for flag, value in (("--review", review), ("--block", block), ("--reason", reason))
               if value is not None and not apply]
    if ignored:
        raise InvalidInput(f"{', '.join(ignored)} do{'es' if len(ignored) == 1 else ''} not apply without --apply "
                           "(add --apply to ask for new thresholds)", code="invalid_option")
    if html_out is not None and (apply or history):
        raise InvalidInput(f"--html does not apply to {'--apply' if apply else '--history'}: it writes the what-if",
                           code="invalid_option")
    if apply and (review is None or block is None or not reason):
        raise InvalidInput("--apply needs --review, --block and --reason", code="missing_field")
    if html_out is not None and (html_out.suffix != ".html" or not html_out.parent.is_dir()):
        raise InvalidInput("--html must name a .html file in an existing folder", code="invalid_value",
                           details={"field": "html"})
    if (apply or history) and version is None:
        raise InvalidInput("--apply and --history need --version", code="missing_field")
    if apply and version is not None and review is not None and block is not None and reason:
        changed = governed(lambda conn, who: thresholds.apply(conn, who, model, version, review=review, block=block,
                                                              reason=reason, time_from=time_from,
                                                              time_to=time_to, days=days), api_key, notify=True)
        emit(changed, as_json, lambda: err.print(
            f"{model} v{version}: thresholds review {changed['review']}, block {changed['block']} "
            + ("active (the model needs no approval)" if changed["status"] == "active" else
               f"requested (revision {changed['revision']}), waiting for {changed['required_approvals']} "
               f"approval(s): sira approve --model {model} --version {version} --thresholds")))
        return
    if history and version is not None:
        from sira.registry.thresholds import history as threshold_history

        sets = governed(lambda conn, who: threshold_history(conn, who, model, version), api_key)
        emit(sets, as_json, lambda: err.print(threshold_sets_table(sets)))
        return

    async def run(conn: Any, who: Any) -> dict[str, Any]:
        return await thresholds.what_if(conn, who, model, version=version, time_from=time_from,
                                        time_to=time_to, days=days)

    result = governed(run, api_key)
    if html_out is not None:
        html_out.write_text(thresholds.to_html(result))
    emit(result, as_json, lambda: err.print(thresholds_table(result)))


REPORT_SUFFIXES = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html", ".json": "json"}


@app.command("explain")
def explain_cmd(
    prediction: Annotated[str, typer.Option("--prediction", help="The stored prediction's id.")],
    fmt: Annotated[str | None, typer.Option("--format", help="md, html or json (default: the --out file's suffix, "
                                                             "else md).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the report here (default: stdout).")] = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Explain one decision to the person it was about.

    The factors ranked by their exact TreeSHAP contribution, their values against typical ranges, the data
    used, human review (audited)."""
    import json
    import sys

    from sira.core.errors import InvalidInput, invalid_format
    from sira.monitoring.explanation import explain_prediction, to_html, to_markdown
    from sira.monitoring.subject import private_file

    if fmt is not None and fmt not in ("md", "html", "json"):
        raise invalid_format(fmt, ("md", "html", "json"))
    implied = REPORT_SUFFIXES.get(out.suffix.lower()) if out is not None else None
    if fmt is not None and out is not None and implied not in (None, fmt):  # report.html of Markdown: refused
        raise InvalidInput(f"--format {fmt} contradicts --out {out.name} (a {implied} file): give "
                           "one of them, or both alike", code="invalid_option", details={"field": "format"})
    fmt = fmt or implied or "md"
    writable_file(out)
    settings = get_settings()

    async def run(conn: Any, who: Any) -> dict[str, Any]:
        return await explain_prediction(conn, settings, who, prediction,
                                        out=str(out.resolve()) if out is not None else None)

    report = governed(run, api_key)
    text = (to_markdown(report) if fmt == "md" else to_html(report) if fmt == "html"
            else json.dumps(report, sort_keys=True, default=str) + "\n")
    if out is None:
        sys.stdout.write(text)
    else:
        with private_file(out) as fh:  # 0600: the report is about a person (0644 until 2026-12-07)
            fh.write(text.encode())
        err.print(f"report {report['report_id']} → {out}")
