"""Data in: ``sira simulate``, ``sira ingest``, ``sira feedback import``, ``sira features``."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sira.cli.common import (
    ApiKeyOption,
    JsonOption,
    actor_for,
    app,
    audited,
    emit,
    err,
    features_app,
    feedback_app,
    identity_for,
    iso_datetime,
    kv_table,
    load_yaml_mapping,
)
from sira.core.config import get_settings
from sira.core.errors import InvalidInput


@app.command("simulate")
def simulate_cmd(
    out: Annotated[Path | None, typer.Option("--out", help="Output folder. Default: <workspace>/simulation.")] = None,
    days: Annotated[int | None, typer.Option("--days", help="Days of traffic (default 30).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed: same seed, same files.")] = None,
    start: Annotated[
        datetime | None, typer.Option("--start", parser=iso_datetime, metavar="DAY",
                                      help="First day, ISO 8601: 2026-09-01 (default 2026-09-01), UTC.")
    ] = None,
    customers: Annotated[int | None, typer.Option("--customers", help="Number of customers (default 2000).")] = None,
    fraud_rate: Annotated[float | None, typer.Option("--fraud-rate", help="Share of fraudulent events (default 0.01).")] = None,
    shift_day: Annotated[
        int | None, typer.Option("--shift-day", help="Day from which the fraud pattern shifts (default: none).")
    ] = None,
    label_delay_days: Annotated[
        float | None, typer.Option("--label-delay-days", help="Median chargeback delay in days (default 10).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file of simulation settings; options override it.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Simulate payments, fraud and delayed labels.

    Writes events.parquet, labels.parquet and simulation.json (the configuration and a summary)."""
    from sira.demo.simulate import SimulationConfig, simulate

    values: dict[str, Any] = load_yaml_mapping(config) if config else {}
    unknown = set(values) - set(SimulationConfig.__dataclass_fields__)
    if unknown:
        raise InvalidInput(f"{config}: unknown setting(s) {', '.join(sorted(unknown))}")
    if start is not None and start.time() != datetime.min.time():  # a day, not a time: none dropped unsaid
        raise InvalidInput(f"--start: a day (2026-09-01), not a time of day ({start.isoformat()} in UTC)",
                           code="invalid_value", details={"field": "start"})
    overrides = {
        "days": days, "seed": seed, "start": start.date() if start else None, "customers": customers,
        "fraud_rate": fraud_rate, "shift_day": shift_day, "label_delay_days": label_delay_days,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(values.get("start"), str):
        try:
            values["start"] = datetime.strptime(values["start"], "%Y-%m-%d").date()
        except ValueError:
            raise InvalidInput(f"start: expected YYYY-MM-DD, got {values['start']!r}") from None
    try:
        cfg = SimulationConfig(**values)
    except (TypeError, AttributeError, ValueError) as exc:  # a setting of the wrong shape (a list for a mapping)
        raise InvalidInput(f"invalid simulation settings: {exc}") from None
    out_dir = (out or get_settings().workspace / "simulation").resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInput(f"--out: {out_dir} is a file; name a folder", code="invalid_value", details={"field": "out"})
    with err.status("simulating payments…"):
        result = simulate(cfg, out_dir)
    payload = {
        "events": str(result.events_path), "labels": str(result.labels_path),
        "manifest": str(result.manifest_path), "summary": result.summary,
    }

    def render() -> None:
        s = result.summary
        err.print(kv_table("Simulation", {
            "events": f"{s['events']:,} → {result.events_path}",
            "fraud": f"{s['fraud_events']:,} ({s['fraud_rate']:.2%})",
            "by scenario": ", ".join(f"{k} {v:,}" for k, v in s["fraud_by_scenario"].items()) or "none",
            "labels": f"{s['labels']:,} ({s['positive_labels']:,} fraud, {s['negative_labels']:,} reviewed legit)"
            f" → {result.labels_path}",
            "median chargeback delay": f"{s['median_chargeback_delay_days']} days",
            "shift day": s["shift_day"],
        }))

    emit(payload, as_json, render)



MapOption = Annotated[
    str | None, typer.Option("--map", help="Column mapping: sira_name=SOURCE_COLUMN,... (e.g. occurred_at=TX_DATETIME).")
]
MapFileOption = Annotated[Path | None, typer.Option("--map-file", help="YAML file with a `columns:` mapping.")]


def _summary_table(title: str, summary: dict[str, Any]) -> Table:
    rows = {k.replace("_", " "): v for k, v in summary.items() if not isinstance(v, dict)}
    reasons = summary.get("rejected_by_reason") or {}
    if reasons:
        rows["rejected by reason"] = ", ".join(f"{k} {v:,}" for k, v in reasons.items())
    return kv_table(title, rows)


def _print_summary(title: str, summary: dict[str, Any]) -> None:
    err.print(_summary_table(title, summary))
    if summary.get("rejected"):
        err.print("what was set aside, and why: sira rejected (newest first; --json for the records)")


@app.command("ingest")
def ingest_cmd(
    paths: Annotated[list[Path] | None, typer.Argument(help="Event files or folders (.parquet, .csv, .jsonl).")] = None,
    mapping: MapOption = None,
    map_file: MapFileOption = None,
    source: Annotated[str | None, typer.Option("--source", help="Name of the source system, stored as file:NAME (default: the file).")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Consume the Redis stream sira:events until stopped.")] = False,
    max_events: Annotated[
        int | None, typer.Option("--max-events", min=1, help="With --stream or --kafka: stop after this many "
                                                  "events.")
    ] = None,
    batch: Annotated[int | None, typer.Option("--batch", min=1, max=10_000, help="With --stream or --kafka: entries "
                                              "per transaction (default 200).")] = None,
    consumer: Annotated[
        str | None,
        typer.Option("--consumer", help="With --stream or --kafka: consumer name; a restarted Redis consumer of the "
                     "same name first finishes its own unacknowledged entries (default: host-pid)."),
    ] = None,
    kafka: Annotated[str | None, typer.Option("--kafka", help="Consume Kafka until stopped: the brokers, "
                                                "host:port[,host:port] (security: SIRA_KAFKA_* settings).")] = None,
    topic: Annotated[str | None, typer.Option("--topic", help="With --kafka: the events topic.")] = None,
    labels_topic: Annotated[str | None, typer.Option("--labels-topic", help="With --kafka: a topic of labels "
                                                     "(default: labels come on --topic with a kind: label header).")] = None,
    group: Annotated[str | None, typer.Option("--group", help="With --kafka: the consumer group (default "
                                              "sira-features).")] = None,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ingest events from files, the Redis stream or Kafka.

    Each event is validated, its PII redacted, a duplicate dropped, and its features computed."""
    from sira.core.files import parse_mapping
    from sira.ingest.events import EventIn
    from sira.ingest.labels import FeedbackIn

    settings = get_settings()
    mode = "--kafka" if kafka is not None else "--stream" if stream else "files"
    # a stream's mapping applies to its label entries too
    column_map = parse_mapping(mapping, map_file, fields=set(EventIn.model_fields) if mode == "files" else
                               set(EventIn.model_fields) | set(FeedbackIn.model_fields),
                               what="event" if mode == "files" else "event or label")
    applies = {"--source": ("files",), "--max-events": ("--stream", "--kafka"), "--batch": ("--stream", "--kafka"),
               "--consumer": ("--stream", "--kafka"), "--topic": ("--kafka",), "--labels-topic": ("--kafka",),
               "--group": ("--kafka",)}
    given = {"--source": source, "--max-events": max_events, "--batch": batch, "--consumer": consumer, "--topic": topic,
             "--labels-topic": labels_topic, "--group": group}
    ignored = [flag for flag, value in given.items() if value is not None and mode not in applies[flag]]
    if ignored:  # they were accepted and did nothing: `--max-events 10` ingested a whole file
        raise InvalidInput(f"{', '.join(ignored)} do{'es' if len(ignored) == 1 else ''} not apply to "
                           f"{'ingesting files' if mode == 'files' else mode}", code="invalid_option")
    batch = batch or 200
    if kafka is not None:
        if paths or stream:
            raise InvalidInput("give files, --stream or --kafka, one of them")
        if not topic:
            raise InvalidInput("--kafka needs --topic (the events topic)", code="missing_field", details={"field": "topic"})
        asyncio.run(actor_for("events.write", api_key))
        from sira.ingest.kafka import DEFAULT_GROUP, consume_kafka

        summary = asyncio.run(consume_kafka(settings, kafka, topic, labels_topic=labels_topic, group=group or DEFAULT_GROUP,
                                            mapping=column_map, max_events=max_events, batch=batch, consumer=consumer,
                                            notify=None if as_json else err.print))
        payload = summary.to_dict()
    elif stream:
        if paths:
            raise InvalidInput("give files or --stream, not both")
        asyncio.run(actor_for("events.write", api_key))
        from sira.ingest.stream import consume_forever

        summary = asyncio.run(consume_forever(settings, mapping=column_map, max_events=max_events,
                                              batch=batch, consumer=consumer, notify=None if as_json else err.print))
        payload = summary.to_dict()
    else:
        if not paths:
            raise InvalidInput("name at least one file or folder to ingest (or use --stream)")
        from sira.core.files import find_files
        from sira.ingest.bulk import ingest_files

        find_files(paths)  # a missing or unsupported file fails before anything else
        actor = asyncio.run(actor_for("events.write", api_key))  # None: no key exists yet, the local user
        summary = ingest_files(settings, paths, mapping=column_map, source=source, actor=actor,
                               progress=not as_json, notify=(lambda _m: None) if as_json else err.print)
        payload = summary.to_dict()
    emit(payload, as_json, lambda: _print_summary("Ingest", payload))


@app.command("rejected")
def rejected_cmd(
    source: Annotated[str | None, typer.Option("--source", help="Those whose source starts with this (file:NAME, "
                                               "api:, stream, kafka), and that source's rejected labels "
                                               "(feedback:SOURCE; feedback: for every rejected label).")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="A reason code (invalid_field, missing_field, "
                                               "undecodable, future_time, ...).")] = None,
    before: Annotated[int | None, typer.Option("--before", min=1, help="Older than this id: the next page "
                                               "(the last answer's next_before).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many.")] = 50,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the records ingestion set aside (dead letters).

    Newest first, with why (admin: every one; a service key: those of the events it posted). Payloads are shown
    redacted, as stored; --json carries them."""
    from sira.core import db
    from sira.ingest.dead_letters import list_dead_letters, poster_of

    settings = get_settings()
    poster = poster_of(asyncio.run(identity_for("rejected.read", api_key)))  # a service key: what it posted

    async def run() -> dict[str, Any]:
        async with db.open_pool(settings) as pool:
            async with pool.acquire() as conn:
                return await list_dead_letters(conn, source=source, reason=reason, before=before, limit=limit,
                                               poster=poster)

    payload = asyncio.run(run())

    def render() -> None:
        table = Table(title=f"Dead letters ({len(payload['entries'])}, newest first)", title_justify="left")
        for column in ("id", "rejected at", "source", "position", "event id", "reason", "field", "why"):
            table.add_column(column)
        for e in payload["entries"]:
            table.add_row(str(e["id"]), e["rejected_at"][:19], e["source"], e["position"] or "", e["event_id"] or "",
                          e["reason_code"], e["field"] or "", e["reason"])
        err.print(table)
        if payload["next_before"]:
            err.print(f"older ones: --before {payload['next_before']}")

    emit(payload, as_json, render)


@feedback_app.command("import")
def feedback_import_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Label files or folders (.parquet, .csv, .jsonl).")],
    mapping: MapOption = None,
    map_file: MapFileOption = None,
    source: Annotated[str | None, typer.Option("--source", help="Source of labels without one (no source column, "
                                               "or an empty cell; default: import; an analyst's labels are "
                                               "analyst:<name>).")] = None,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import labels: chargebacks, reviews, outcomes.

    Columns event_id, label, known_at[, source, label_name, occurred_at]. Only service and admin keys name
    a label's source (chargeback, review, ...); an analyst's labels are their own, as over HTTP."""
    from sira.core.audit import Actor
    from sira.core.files import find_files, parse_mapping
    from sira.ingest.labels import FeedbackIn, import_label_files

    column_map = parse_mapping(mapping, map_file, fields=set(FeedbackIn.model_fields), what="label")
    find_files(paths)  # a missing or unsupported file fails before anything else
    who = asyncio.run(identity_for("feedback.write", api_key))
    summary = asyncio.run(import_label_files(get_settings(), paths, mapping=column_map,
                                             source=source, who=who,
                                             created_by=(who.name if who else Actor.local().name)))
    payload = summary.to_dict()
    emit(payload, as_json, lambda: _print_summary("Labels", payload))


@features_app.command("materialize")
def features_materialize_cmd(
    full: Annotated[bool, typer.Option("--full", help="Rebuild every snapshot, not only changed entities.")] = False,
    feature_set: Annotated[str | None, typer.Option("--feature-set", help="NAME@VERSION (default: the current "
                                                    "version), e.g. payments@1 while models trained on it serve.")
                           ] = None,
    as_json: JsonOption = False,
    api_key: ApiKeyOption = None,
) -> None:
    """Bring entities' online state up to date with new events.

    New events and labels (operator or data scientist): the snapshots of a history-engine set, the states
    and daily checkpoints of a feature engine v2 set."""
    from sira.features.definitions import get_feature_set, parse_feature_set
    from sira.features.states import refresh

    fs = parse_feature_set(feature_set) if feature_set else get_feature_set()
    actor = asyncio.run(actor_for("features.materialize", api_key))
    payload = asyncio.run(refresh(get_settings(), fs, full=full))
    asyncio.run(audited(actor, "features.materialize", f"{fs.name}@{fs.version}",
                        {"full": full, "entities": payload["entities"]}))
    emit(payload, as_json, lambda: err.print(kv_table("Snapshots refreshed", payload["entities"])))


@features_app.command("rebuild")
def features_rebuild_cmd(
    feature_set: Annotated[str, typer.Option("--feature-set", help="NAME@VERSION of a feature set computed by "
                                             "feature engine v2, e.g. payments@2.")],
    checkpoints: Annotated[bool, typer.Option("--checkpoints/--no-checkpoints",
                                              help="Write a daily checkpoint of every state that changed.")] = True,
    as_json: JsonOption = False,
    api_key: ApiKeyOption = None,
) -> None:
    """Build every entity's state of a feature set from the log.

    States and daily checkpoints, from the event log, so an installation can switch to the set (operator or
    data scientist). Once data retention removed events, each entity starts from the checkpoint retention kept
    (the report's kept_from) and folds the kept log after it: no history is lost."""
    from sira.features.definitions import parse_feature_set
    from sira.features.states import rebuild_all

    fs = parse_feature_set(feature_set)
    if fs.engine != "tiles":
        raise InvalidInput(f"{fs.name}@{fs.version} keeps its snapshots with `sira features materialize`; "
                           "rebuild is for feature sets of feature engine v2 (e.g. payments@2)")
    actor = asyncio.run(actor_for("features.materialize", api_key))
    payload = asyncio.run(rebuild_all(get_settings(), fs, checkpoints=checkpoints))
    asyncio.run(audited(actor, "features.rebuild", f"{fs.name}@{fs.version}",
                        {**{k: payload[k] for k in ("entities", "events", "labels", "days", "checkpoints")},
                         "kept_from": payload["kept_from"] and payload["kept_from"].isoformat()}))
    emit(payload, as_json, lambda: err.print(kv_table(f"Rebuilt {payload['feature_set']}", {
        **payload["entities"], "events": payload["events"], "labels": payload["labels"], "days": payload["days"],
        "checkpoints": payload["checkpoints"], "seconds": payload["seconds"],
        **({"from checkpoints as of": f"{payload['kept_from']:%Y-%m-%d}"} if payload["kept_from"] else {})})))


@features_app.command("list")
def features_list_cmd(as_json: JsonOption = False) -> None:
    """Show the feature set definition and its feature names."""
    from sira.features.definitions import get_feature_set

    fs = get_feature_set()
    payload = {**fs.to_dict(), "features": fs.names()}

    def render() -> None:
        table = Table(title=f"Feature set {fs.name} v{fs.version}", title_justify="left")
        table.add_column("entity")
        table.add_column("features")
        table.add_row("event", ", ".join(fs.event_features))
        for spec in fs.entities:
            table.add_row(spec.entity, ", ".join(spec.names()))
        err.print(table)

    emit(payload, as_json, render)


@features_app.command("show")
def features_show_cmd(
    entity_type: Annotated[str, typer.Argument(help="customer, card, terminal, ...")],
    entity_id: Annotated[str, typer.Argument(help="The entity's id (card: its token).")],
    feature_set: Annotated[str | None, typer.Option("--feature-set", help="NAME@VERSION (default: the current "
                                                    "version).")] = None,
    as_json: JsonOption = False,
    api_key: ApiKeyOption = None,
) -> None:
    """Show one entity's online features and how fresh they are.

    An analyst or data scientist key."""
    from sira.core import db
    from sira.features.definitions import get_feature_set, parse_feature_set
    from sira.features.states import online_features

    settings = get_settings()
    fs = parse_feature_set(feature_set) if feature_set else get_feature_set()
    asyncio.run(actor_for("features.read", api_key))

    async def run():
        async with db.open_pool(settings) as pool:
            async with pool.acquire() as conn:
                return await online_features(conn, fs, entity_type, entity_id)

    snap = asyncio.run(run())
    payload = {"entity_type": snap.entity_type, "entity_id": snap.entity_id, "as_of": snap.as_of.isoformat(),
               "age_seconds": round(snap.age_seconds, 3), "stale": snap.stale, "features": snap.features}
    emit(payload, as_json, lambda: err.print(kv_table(
        f"{entity_type} {entity_id} as of {payload['as_of']}{' (STALE)' if snap.stale else ''}", snap.features
    )))
