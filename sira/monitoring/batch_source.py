"""The input of a batch scoring run (:mod:`sira.monitoring.batch`): the request, the version it scores with and
where its rows come from, each checked before any scoring starts.

A table of the model's features (Parquet row groups or CSV files, read by the scoring actors themselves), or
a time range of stored events with their point-in-time features, read by day (only the days that hold events:
a range of ten years around one week of events is the week's seven reads, not 3,650).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from sira.core import db
from sira.core import files as input_files
from sira.core.config import Settings
from sira.core.errors import InvalidInput, inverted_window
from sira.ingest.pii import FREE_TEXT, MAYBE_PII, Redactor, field_policy
from sira.registry import models as registry

log = logging.getLogger(__name__)

ID_COLUMNS = ("event_id", "id", "transaction_id", "prediction_id")
TIME_COLUMNS = ("occurred_at", "event_time", "timestamp", "ts")
OUTPUT_COLUMNS = ("score", "decision", "model", "version", "reasons", "reason_codes")
READ_ROWS = 65_536  # rows per slice a Parquet row group is read in
# Rows per part a large row group is split into (sira.core.files.row_group_parts), so every scoring actor gets
# work whatever row groups the file was written with (one 1M-row group kept one actor busy while the
# others idled). Decoding the rows a part skips costs ~1 µs a row against ~16 µs to score one (~3 ms with
# --explain, hence its smaller parts).
PART_ROWS = 131_072
EXPLAIN_PART_ROWS = 2_048
SHOWN_INPUTS = 5  # input paths a summary and its audit record name (and how many more there are)


@dataclass(frozen=True)
class BatchRequest:
    model: str
    out: Path
    version: int | None = None
    data: list[Path] | None = None
    time_from: datetime | None = None
    time_to: datetime | None = None
    keep_columns: bool = False
    explain: bool = False
    id_col: str | None = None
    time_col: str | None = None
    batch_size: int = 8_192
    max_actors: int | None = None
    wait_for_cpus_s: float = 600.0  # when no scoring actor fits the free CPUs at the start
    local_below: int | None = None  # rows under which the calling process scores (0: always Ray Data; None:
    # LOCAL_BELOW, or CLUSTER_LOCAL_BELOW when a Ray cluster is configured)



@dataclass(frozen=True)
class Source:
    """Where the rows come from and what travels with the scores."""

    description: str
    rows: int | None  # known up front (Parquet metadata, a count of events), else None
    passthrough: list[str]
    parts: list[dict[str, Any]]  # units of reading, in output order: a row group, a CSV file, a day of events
    read: Callable[[dict[str, np.ndarray]], Iterator[pa.Table]]  # a batch of parts -> their rows, in order
    read_by_scorer: bool  # the scoring actors read the parts (files); else read tasks do (events)
    passthrough_schema: pa.Schema | None = None  # the passthrough columns' types across every input file
    at_most: int | None = None  # rows there can be at most, when not known (a CSV's lines): where to score
    # passthrough columns redacted on their way to the output (:func:`redact_columns`): name -> "token" (a column
    # the PII policy tokenizes: each value its token) or "text" (scrubbed as a stored event's ids are); a table's
    # only (stored events were redacted as they were stored)
    redact: dict[str, str] | None = None
    inputs: tuple[str, ...] = ()  # the paths given (resolved), the first SHOWN_INPUTS of them
    more_inputs: int = 0  # and how many more were given


def _pick(columns: list[str], named: str | None, candidates: tuple[str, ...], role: str) -> str | None:
    if named is not None:
        if named not in columns:
            shown = ", ".join(columns[:8]) + (f" and {len(columns) - 8} more" if len(columns) > 8 else "")
            raise InvalidInput(f"{role} column {named} is not in the input (its columns: {shown})",
                               code="missing_columns", details={"columns": [named]})
        return named
    return next((c for c in candidates if c in columns), None)


def read_part(batch: dict[str, np.ndarray]) -> Iterator[pa.Table]:
    """Parquet row groups (``row_group`` >= 0; rows ``start``..``stop`` of it), or whole CSV files (their
    types inferred from all of each), streamed in slices of at most :data:`READ_ROWS` rows
    (:func:`sira.core.files.read_part`).

    A row group is written by whoever made the file and can be any size; read whole it would
    make a block of that size (and its copies) whatever the job, so memory would grow with
    the input's row groups rather than stay bounded by the pipeline.
    """
    n = len(batch["path"])
    starts = batch["start"].tolist() if "start" in batch else [0] * n  # a whole row group
    stops = batch["stop"].tolist() if "stop" in batch else [-1] * n
    texts = batch["text"].tolist() if "text" in batch else [""] * n  # CSV columns read as text, \x1f-joined
    for path, group, start, stop, text in zip(batch["path"].tolist(), batch["row_group"].tolist(), starts, stops,
                                              texts):
        yield from input_files.read_part(path, group, "parquet" if group >= 0 else "csv", READ_ROWS, start, stop,
                                  text=tuple(text.split("\x1f")) if text else ())


def _file_schema(path: Path, file_format: str, text: tuple[str, ...] = ()) -> tuple[pa.Schema | None, Any, bool]:
    """A file's columns and types, from its footer (Parquet, returned too: rows and row groups) or its
    first block (CSV, no footer: None; ``text`` columns as text), and whether it has rows (a CSV of no
    bytes, or blank lines only, has no columns either: None)."""
    try:
        if file_format == "parquet":
            import pyarrow.parquet as pq

            footer = pq.ParquetFile(path)
            return footer.schema_arrow, footer.metadata, footer.metadata.num_rows > 0
        import pyarrow.csv as pacsv

        reader = pacsv.open_csv(path, convert_options=input_files.csv_options(text))
        return reader.schema, None, next(iter(reader), None) is not None  # its first block: read already
    except (pa.ArrowInvalid, OSError) as exc:
        if file_format == "csv" and str(exc).startswith("Empty CSV file"):
            return None, None, False
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise InvalidInput(f"{path}: cannot read as {file_format}: {reason}", code="invalid_input",
                           details={"file": str(path)}) from None


def file_source(files: input_files.InputFiles, feature_schema: list[dict[str, Any]], req: BatchRequest) -> Source:
    """A Parquet or CSV table that carries the model's features as columns; every file is checked before
    any scoring starts (readable, the features present and numeric where the model wants numbers, the
    columns that travel to the output of one type across files)."""
    if files.format == "json":
        raise InvalidInput("batch scoring reads Parquet or CSV files", code="unsupported_format")
    found = {p: _file_schema(p, files.format) for p in files.paths}  # each footer read once
    if not any(has_rows for _, _, has_rows in found.values()):
        raise _no_rows(files, found)
    # a CSV of no bytes has no columns: left out (one with a header only is checked like the others)
    read = {p: (schema, footer) for p, (schema, footer, _) in found.items() if schema is not None}
    paths = list(read)
    schemas = [(p, schema) for p, (schema, _) in read.items()]
    feature_names = [f["name"] for f in feature_schema]
    for path, schema in schemas:
        missing = [n for n in feature_names if n not in schema.names]
        if missing:
            where = f" ({path.name})" if len(schemas) > 1 else ""
            hint = ""
            if "occurred_at" in schema.names and len(missing) > len(feature_names) // 2:
                hint = ("; this looks like raw events, not features: ingest them (sira ingest) and score the "
                        "stored events with --from/--to (add --keep-columns to get a feature table)")
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            count = f"{len(missing)} feature{'s' if len(missing) > 1 else ''}"
            raise InvalidInput(f"the input lacks {count} of the model{where}: {shown}{hint}",
                               code="missing_columns", details={"columns": missing, "file": str(path)})
        for f in feature_schema:
            kind, t = f.get("type", "numeric"), schema.field(f["name"]).type  # FeatureSpec.to_dict's keys
            if kind != "categorical" and not input_files.is_numeric_type(t):
                raise InvalidInput(f"{path.name}: column {f['name']} must be numeric, not {t}", code="invalid_column",
                                   details={"column": f["name"], "file": str(path)})
    columns = schemas[0][1].names
    rows = sum(footer.num_rows for _, footer in read.values()) if files.format == "parquet" else None
    id_col = _pick(columns, req.id_col, ID_COLUMNS, "id")
    if id_col is None:
        log.warning("%s: no id column (%s): the scores match the input rows by position only; name one with "
                    "--id-col", ", ".join(files.named().values()), ", ".join(ID_COLUMNS))
    key_columns = [c for c in (id_col, _pick(columns, req.time_col, TIME_COLUMNS, "time")) if c]
    text: tuple[str, ...] = ()
    if files.format == "csv" and id_col and id_col not in feature_names:
        # an id of digits is text: inferred as a number, "007" and "7" became one id in the output
        text = (id_col,)
        for p in paths:
            typed, footer, _ = _file_schema(p, files.format, text)
            read[p] = (typed or schemas[0][1], footer)  # (None: emptied since the first pass)
        schemas = [(p, schema) for p, (schema, _) in read.items()]
    passthrough = [c for c in columns if c not in OUTPUT_COLUMNS] if req.keep_columns else key_columns
    passthrough_schema, redact = _redacted(_passthrough_schema(schemas, passthrough), key_columns)
    passthrough = passthrough_schema.names

    # Our own reads, one part per row group (CSV: per file), rather than read_parquet: Ray 2.60's
    # file listing step asks for a whole CPU whatever the read's num_cpus, and beside a scoring
    # actor on 2 CPUs it never gets one (the job hangs without an error).
    if files.format == "parquet":
        part_rows = EXPLAIN_PART_ROWS if req.explain else PART_ROWS
        parts = [part for p, (_, footer) in read.items() for part in input_files.row_group_parts(p, footer, part_rows)]
    else:
        parts = [{"path": str(p), "row_group": -1, "start": 0, "stop": -1, "text": "\x1f".join(text)}
                 for p in paths]
    given = [str(p.resolve()) for p in req.data or files.paths]
    inputs, more = tuple(given[:SHOWN_INPUTS]), max(0, len(given) - SHOWN_INPUTS)
    description = f"{len(files.paths)} {files.format} file(s) from {', '.join(inputs)}" + \
        (f" and {more} more" if more else "")
    return Source(description, rows, passthrough, parts, read_part,
                  read_by_scorer=True, passthrough_schema=passthrough_schema,
                  at_most=None if rows is not None else sum(_lines(p) for p in paths), redact=redact,
                  inputs=inputs, more_inputs=more)


def _no_rows(files: input_files.InputFiles, found: dict[Path, tuple[pa.Schema | None, Any, bool]]) -> InvalidInput:
    """``empty_input`` naming the file (or the first few), whatever form its emptiness takes: a Parquet file of no
    rows, a CSV of a header only or of no bytes at all."""
    first = files.paths[0]
    if len(files.paths) == 1:
        header = " (only a header)" if files.format == "csv" and found[first][0] is not None else ""
        return InvalidInput(f"{first}: no rows{header}", code="empty_input", details={"file": str(first)})
    shown = ", ".join(files.strings[:3]) + (f" and {len(files.paths) - 3} more" if len(files.paths) > 3 else "")
    return InvalidInput(f"no rows in any of the {len(files.paths)} files ({shown})", code="empty_input",
                        details={"file": str(first)})


def _redacted(schema: pa.Schema, key_columns: list[str]) -> tuple[pa.Schema, dict[str, str]]:
    """The passthrough columns as they reach the output, and which are redacted how (:func:`redact_columns`), as
    a stored event's fields are: a column the PII policy drops (``cvv``, ``full_name``, ...) is left out; one it
    tokenizes (``card_number``, ``email``, ``phone``, ``ip_address``, ...) becomes its tokens; other text is
    scrubbed (card numbers, emails, ... inside it become tokens; free text a token as a whole); numbers, booleans
    and times are kept; a column of another type (bytes, lists, structs), which cannot be scrubbed column by
    column, is left out."""
    fields, redact, left_out = [], {}, {}
    for f in schema:
        policy, t = field_policy(f.name), f.type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if policy is not None and policy[0] == "drop":
            left_out[f.name] = "personal data"
        elif policy is not None:
            redact[f.name] = "token"
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            redact[f.name] = "text"
        elif not (input_files.is_numeric_type(t) or pa.types.is_temporal(t)):
            left_out[f.name] = f"{t}: cannot be scrubbed"
        if f.name not in left_out:
            fields.append(pa.field(f.name, pa.string()) if f.name in redact else f)
    lost = [c for c in key_columns if c in left_out]
    if lost:
        why = ", ".join(f"{c}: {left_out[c]}" for c in lost)
        raise InvalidInput(f"the {' and '.join(lost)} column{'s' if len(lost) > 1 else ''} cannot go to the output "
                           f"({why}); name another with --id-col/--time-col", code="invalid_column",
                           details={"column": lost[0]})
    if left_out:
        log.warning("--keep-columns: left out of the output: %s",
                    ", ".join(f"{c} ({why})" for c, why in left_out.items()))
    return pa.schema(fields), redact


_PRINTABLE = r"^[\x20-\x7e]*$"  # where Arrow's regex engine reads the redactor's pre-checks as Python does


def _suspects(values: Any) -> np.ndarray:
    """Where the redactor's pre-checks could find something in text values (or Arrow cannot tell: not printable
    ASCII); elsewhere :meth:`Redactor.scrub_value` returns the value as it is."""
    import pyarrow.compute as pc

    suspect: Any = pc.or_(pc.or_(pc.match_substring_regex(values, MAYBE_PII), pc.match_substring_regex(values, FREE_TEXT)),
                          pc.invert(pc.match_substring_regex(values, _PRINTABLE)))
    return np.asarray(pc.fill_null(suspect, False).to_numpy(zero_copy_only=False), dtype=bool)


def redact_columns(redactor: Redactor, table: pa.Table, names: list[str], redact: dict[str, str]) -> dict[str, Any]:
    """The columns ``names`` of ``table``, those ``redact`` names redacted (see :func:`_redacted`): each distinct
    value once, and text by :meth:`Redactor.scrub_value` only where its own pre-checks, run by Arrow, could find
    something (an id column of plain ids costs two regex passes, no Python call per row)."""
    import pyarrow.compute as pc

    out: dict[str, Any] = {}
    for name in names:
        column, how = table.column(name), redact.get(name)
        if how is None:
            out[name] = column
            continue
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if how == "text" and not pa.types.is_string(column.type):
            column = column.cast(pa.string())
        if how == "text" and not _suspects(column).any():
            out[name] = column  # the common case (plain ids): nothing to look up
            continue
        distinct = column.unique()
        if how == "text":
            mask = _suspects(distinct)
            values = distinct.to_pylist()
            for i in np.flatnonzero(mask).tolist():
                value = values[i]
                values[i] = value if value is None else redactor.scrub_value(value)
        else:
            values = [None if v is None else redactor.feature(name, v)[1] for v in distinct.to_pylist()]
        out[name] = pc.take(pa.array(values, pa.string()), pc.index_in(column, value_set=distinct))
    return out


def _lines(path: Path) -> int:
    """A text file's line breaks: at least its rows (a quoted field may hold more), read at disk speed."""
    count = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            count += chunk.count(b"\n")
    return count + 1


def _passthrough_schema(schemas: list[tuple[Path, pa.Schema]], passthrough: list[str]) -> pa.Schema:
    """One type per output column across the files (an int and a float column make a float one; a
    column empty in one file takes the others' type); a column that is text in one file and numbers in
    another, or missing from one, is refused here rather than after most of the scoring."""
    fields = []
    for name in passthrough:
        seen = []
        for path, schema in schemas:
            if name not in schema.names:
                raise InvalidInput(f"{path.name}: column {name} is missing (the first file has it)",
                                   code="missing_columns", details={"columns": [name], "file": str(path)})
            seen.append((path, schema.field(name)))
        try:
            unified = pa.unify_schemas([pa.schema([f]) for _, f in seen], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            kinds = ", ".join(f"{f.type} in {path.name}" for path, f in seen[:4])
            raise InvalidInput(f"column {name} has different types across the files ({kinds}); make them agree",
                               code="invalid_column", details={"column": name}) from None
        fields.append(unified.field(name))
    return pa.schema(fields)


EVENT_COLUMNS = ("event_id", "occurred_at", "country", "channel")


def events_source(dsn: str, fs: Any, label_name: str, lo: datetime, hi: datetime, rows: int,
                  keep_columns: bool, *, days: list[int] | None = None) -> Source:
    """Stored events of a time range with their point-in-time features, read by day in parallel: the days
    ``lo + k`` for each ``k`` of ``days`` (those that hold events), else every day of the range."""
    if days is None:
        days = list(range(-(-(hi - lo) // timedelta(days=1))))
    shards = [{"lo": (lo + timedelta(days=k)).isoformat(), "hi": min(lo + timedelta(days=k + 1), hi).isoformat()}
              for k in days]
    names = fs.names()
    schema = pa.schema([("event_id", pa.string()), ("occurred_at", pa.timestamp("us", tz="UTC")),
                        ("country", pa.string()), ("channel", pa.string()),
                        *((n, pa.float64()) for n in names)])

    def read_tiles(batch: dict[str, np.ndarray]) -> pa.Table:
        """Feature engine v2: a day's events folded from their checkpoints (or a horizon of the log)."""
        from sira.training.columnar import tiles_vectors

        parts = []
        for shard_lo, shard_hi in zip(batch["lo"].tolist(), batch["hi"].tolist()):
            X, events, rows = tiles_vectors(dsn, fs, datetime.fromisoformat(shard_lo), datetime.fromisoformat(shard_hi))
            parts.append(pa.table({
                "event_id": pa.array(events.event_id[rows].tolist(), pa.string()),
                "occurred_at": pa.array(events.ts[rows], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                "country": events.columns["country"].take(pa.array(rows)),
                "channel": events.columns["channel"].take(pa.array(rows)),
                **{n: pa.array(X[rows, j], pa.float64(), mask=np.isnan(X[rows, j])) for j, n in enumerate(names)},
            }, schema=schema))
        return pa.concat_tables(parts) if parts else schema.empty_table()

    def read(batch: dict[str, np.ndarray]) -> pa.Table:
        from sira.training.datasets import read_feature_shard

        out = []
        for shard_lo, shard_hi in zip(batch["lo"].tolist(), batch["hi"].tolist()):
            out += read_feature_shard(dsn, fs.name, fs.version, datetime.fromisoformat(shard_lo),
                                      datetime.fromisoformat(shard_hi), None, label_name)
        columns = {"event_id": [r["event_id"] for r in out],
                   "occurred_at": pa.array([r["ts"] for r in out], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                   "country": [r["country"] for r in out], "channel": [r["channel"] for r in out],
                   **{n: [r[n] for r in out] for n in names}}
        return pa.table(columns, schema=schema)

    passthrough = [*EVENT_COLUMNS, *names] if keep_columns else list(EVENT_COLUMNS)
    return Source(f"events {lo:%Y-%m-%d %H:%M}..{hi:%Y-%m-%d %H:%M}", rows, passthrough, shards,
                  read_tiles if fs.engine == "tiles" else read, read_by_scorer=False)


async def resolve_source(settings: Settings, req: BatchRequest) -> tuple[dict[str, Any], Source]:
    """The version to score with and the input, checked before any Ray work starts (``req.out`` checked by
    :func:`sira.core.files.output_file`)."""
    if (req.data is None) == (req.time_from is None and req.time_to is None):
        raise InvalidInput("give either --data or a time range (--from/--to) of stored events", code="invalid_input")
    if req.data is None and (req.id_col or req.time_col):  # they were ignored: stored events name their own
        given = " and ".join(o for o, v in (("--id-col", req.id_col), ("--time-col", req.time_col)) if v)
        raise InvalidInput(f"{given}: for a table (--data) only; stored events carry their own event_id and "
                           "occurred_at", code="invalid_input")
    async with db.open_pool(settings) as pool:
        async with pool.acquire() as conn:
            row = await registry.version_in_use(conn, req.model, req.version)
            version = registry.loadable(row)
            if req.data is not None:
                files = input_files.find_files(req.data, verb="score")
                return version, file_source(files, list(row["feature_schema"]), req)
            if not row["feature_set"]:
                raise InvalidInput(f"{req.model} was trained on a table of its own; score a table with --data",
                                   code="invalid_input")
            lo, hi = await _time_range(conn, req.time_from, req.time_to)
            # the days (from lo) that hold events, with their counts: only those are read (each read of a day
            # costs ~30 ms even when empty, and one Ray Data block each)
            days = await conn.fetch(
                """SELECT extract(day FROM occurred_at - $1)::int AS day, count(*) AS n FROM sira_events
                    WHERE occurred_at >= $1 AND occurred_at < $2 GROUP BY 1 ORDER BY 1""", lo, hi)
            if not days:
                raise InvalidInput(f"no stored events between {lo:%Y-%m-%d %H:%M} and {hi:%Y-%m-%d %H:%M}",
                                   code="empty_input")
            model = await registry.get_model(conn, req.model)
    from sira.features.definitions import get_feature_set

    fs = get_feature_set(row["feature_set"], row["feature_set_version"] or row["model_fs_version"])
    return version, events_source(db.resolve_dsn(settings), fs, model["label_name"], lo, hi,
                                  sum(d["n"] for d in days), req.keep_columns, days=[d["day"] for d in days])


async def _time_range(conn: Any, lo: datetime | None, hi: datetime | None) -> tuple[datetime, datetime]:
    """``--from``..``--to``, an open end up to the newest stored event (included) or from the oldest; a start
    before the oldest stored event starts there (the same rows: ``--from 0001-01-01``, which PostgreSQL's driver
    sends as -infinity, failed the day count as ``internal``)."""
    if lo is not None and hi is not None and hi <= lo:
        raise inverted_window(lo, hi)
    first, last = await conn.fetchrow("SELECT min(occurred_at), max(occurred_at) FROM sira_events")
    if first is None:
        raise InvalidInput("no stored events to score (ingest some first: sira ingest)", code="empty_input")
    if lo is not None and hi is not None:
        if hi <= first or lo > last:
            raise InvalidInput(f"no stored events between {lo:%Y-%m-%d %H:%M} and {hi:%Y-%m-%d %H:%M}",
                               code="empty_input")
        return max(lo, first), hi
    if lo is not None and lo > last:
        raise InvalidInput(f"no stored events after {lo:%Y-%m-%d %H:%M} (the newest stored event is from "
                           f"{last:%Y-%m-%d %H:%M}); "
                           "give an earlier --from", code="empty_input")
    if hi is not None and hi <= first:
        raise InvalidInput(f"no stored events before {hi:%Y-%m-%d %H:%M} (the oldest stored event is from "
                           f"{first:%Y-%m-%d %H:%M}); "
                           "give a later --to", code="empty_input")
    return max(lo, first) if lo is not None else first, hi or last + timedelta(microseconds=1)
