"""Tabular input files: Parquet, CSV or JSON Lines, one file or a folder of them.

Shared by event ingestion, label import, bring-your-own-table training and
batch scoring: finding the files, checking them before any work starts,
column mappings (``--map occurred_at=TX_DATETIME,...`` or a YAML file), and
writing a stream of Arrow tables to one Parquet file atomically.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pyarrow as pa

from sira.core.errors import InvalidInput, NotFound
from sira.core.outputs import partial_name, publish

ROW_GROUP = 65_536  # rows per row group of a file SIRA writes (the last one shorter)
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".json": "json"}


@dataclass(frozen=True)
class InputFiles:
    format: str  # parquet | csv | json
    paths: list[Path]
    text: tuple[str, ...] = ()  # CSV columns read as text whatever they look like (ids: "007" stays "007")
    # each file as a person names it: its path inside the folder given (``dt=2026-05-01/part-0.parquet``: a
    # partitioned folder repeats file names), or its own name when the file itself was given
    names: tuple[str, ...] = ()

    @property
    def strings(self) -> list[str]:
        return [str(p) for p in self.paths]

    def named(self) -> dict[str, str]:
        """Each file's path (as :attr:`strings` has it) -> its name (:attr:`names`)."""
        return dict(zip(self.strings, self.names or [p.name for p in self.paths]))


def is_numeric_type(t: pa.DataType) -> bool:
    """An Arrow column type a model can read as numbers (null: a column of missing values)."""
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)
            or pa.types.is_decimal(t))


# A URL given where a path goes: `s3://bucket/x.parquet` (a Path keeps `s3:/bucket/x.parquet` of it)
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):/+(.*)")


def refuse_url(path: Path | str) -> None:
    """Refuse a URL (``s3://...``, ``gs://...``, ``https://...``) given as a file: SIRA reads and writes local
    files (on a cluster, paths its nodes mount); it was read as a local path and not found (``s3:/bucket/...``),
    or, as an output, written into a local folder named ``s3:``."""
    match = _URL.fullmatch(str(path))
    if match:
        url = f"{match[1]}://{match[2]}"
        raise InvalidInput(f"{url}: {match[1]}:// URLs are not supported; give a local file or folder (on a "
                           "cluster, a path its nodes mount), e.g. after `aws s3 cp`", code="unsupported",
                           details={"path": url})


def output_file(out: Path, inputs: Sequence[Path], *, in_job: bool, option: str = "--out") -> Path:
    """A Parquet output (``--out``) made absolute, refused first when it cannot be right: not a .parquet file, a
    URL, relative inside a Ray job (``in_job``: it would land in the job's temporary copy of its working dir,
    deleted with it), a folder, one of the ``inputs`` (replaced by what was made of it) or inside an input folder
    (read back as input by the next run, and by anything else that reads the folder)."""
    refuse_url(out)
    if out.suffix.lower() not in (".parquet", ".pq"):
        raise InvalidInput(f"{option} must name a .parquet file, not {out}", code="invalid_output")
    if not out.is_absolute() and in_job:
        raise InvalidInput(f"{option} {out} is a relative path: in a Ray job it would be written into the job's "
                           "temporary copy of its working dir, deleted with it; name an absolute path on storage the "
                           "job's node writes (a shared mount)", code="invalid_output")
    out = out.resolve()
    if out.is_dir():
        raise InvalidInput(f"{option} {out} is a folder; name a .parquet file", code="invalid_output")
    for given in inputs:
        refuse_url(given)
        path = given.resolve()
        if path == out:
            raise InvalidInput(f"{option} {out} is the input itself: it would be overwritten; write elsewhere",
                               code="invalid_output")
        if path.is_dir() and out.is_relative_to(path):
            raise InvalidInput(f"{option} {out} is inside the input folder {path}: the next run (or anything reading "
                               "the folder) would read it as input; write elsewhere", code="invalid_output")
    try:  # its folder made, and written to: one that cannot be was found after 65,536 rows were scored, as `internal`
        out.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out.parent, prefix=f".{out.name}.").close()  # nameless where it can be, else removed
    except OSError as exc:
        raise _unwritable(out, exc, option) from None
    return out


def _unwritable(out: Path, exc: OSError, option: str = "--out") -> InvalidInput:
    reason = os.strerror(exc.errno) if exc.errno else exc.strerror  # pyarrow's strerror repeats the path
    return InvalidInput(f"{option} {out}: cannot write in {out.parent} ({reason})", code="invalid_output")


def find_files(paths: list[Path], *, exclude: Path | None = None, verb: str = "ingest") -> InputFiles:
    """The data files named (folders expanded, leaving out hidden and ``_``-prefixed files and folders
    such as ``_temporary/`` or ``.ipynb_checkpoints/``, and ``exclude``: a job's own output); all of one
    format, at least one (``verb``: what the command does with them, as a refusal of mixed formats says it)."""
    found: list[Path] = []
    names: list[str] = []
    skip = exclude.resolve() if exclude is not None else None
    for path in paths:
        refuse_url(path)
        if not path.exists():
            raise NotFound(f"file not found: {path}", details={"path": str(path)})
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS
                            and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
                            and p.resolve() != skip)
            found += inside
            names += [p.relative_to(path).as_posix() for p in inside]
        else:
            if path.suffix.lower() not in FORMATS:
                raise InvalidInput(f"{path}: unsupported file type {path.suffix or '(none)'}; use .parquet, .csv or .jsonl")
            found.append(path)
            names.append(path.name)
    if not found:
        raise InvalidInput(f"no .parquet, .csv or .jsonl files in {', '.join(map(str, paths))}")
    formats = {FORMATS[p.suffix.lower()] for p in found}
    if len(formats) > 1:
        raise InvalidInput(f"mixed file formats ({', '.join(sorted(formats))}): {verb} one format at a time")
    return InputFiles(formats.pop(), [p.resolve() for p in found], names=tuple(names))


# Only an empty cell is a missing number (text columns keep it as ""): pyarrow's default list ("NA", "N/A", "null", "NaN", "None",
# ...) read Namibia's country code "NA", a terminal "N/A" or a merchant called "None" as nothing.
CSV_NULLS = [""]


def csv_options(text: Sequence[str] = ()) -> Any:
    """How CSV columns are typed: inferred from the values, except ``text`` columns, always strings (an id
    of digits inferred as a number loses its leading zeros: "007" and "7" would be one customer); only an
    empty cell is missing (:data:`CSV_NULLS`)."""
    import pyarrow.csv as pacsv

    return pacsv.ConvertOptions(column_types={name: pa.string() for name in text}, null_values=CSV_NULLS)


def read_sample(files: InputFiles, rows: int = 1_000) -> tuple[Path, pa.Table]:
    """The first file that has rows, and its first rows, read the way the full load will read them."""
    for path in files.paths:
        sample = _sample_of(path, files.format, rows, files.text)
        if sample.num_rows:
            return path, sample
    if len(files.paths) > 1:
        raise InvalidInput(f"no rows in any of the {len(files.paths)} files", code="empty_input")
    header = " (only a header)" if files.format == "csv" and sample.num_columns else ""
    raise InvalidInput(f"{files.paths[0]}: no rows{header}", code="empty_input",
                       details={"file": str(files.paths[0])})


def _sample_of(path: Path, file_format: str, rows: int, text: Sequence[str] = ()) -> pa.Table:
    try:
        if file_format == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            batch = next(pf.iter_batches(batch_size=rows), None)
            return pa.Table.from_batches([batch]) if batch is not None else pf.schema_arrow.empty_table()
        if file_format == "csv":
            import pyarrow.csv as pacsv

            reader = pacsv.open_csv(path, convert_options=csv_options(text))
            batch = next(iter(reader), None)  # none: a header without rows
            return as_text(pa.Table.from_batches([batch]))[0] if batch is not None else reader.schema.empty_table()
        first = next(json_lines(path, rows), None)
        if first is None:
            return pa.table({})
        texts = cast("list[bytes]", first["text"].to_pylist())  # json_lines' text column: bytes, no nulls
        decoded = [decode_json_line(text) for text in texts]
        records = [r for r in decoded if isinstance(r, dict)]
        if not records:
            raise InvalidInput(f"{path}: cannot read as json: none of the first {len(decoded)} lines is a JSON "
                               f"object (line {first['line'][0]}: {decoded[0]})", details={"file": str(path)})
        return json_table(records)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInput(f"{path}: cannot read as {file_format}: {_reason(exc)}",
                           details={"file": str(path)}) from None


# A reader's message quotes the input: the row a CSV parser choked on ("Expected 3 columns, got 5: 4,5,
# 4111111111111111,jane@x.com"), the value a conversion refused ("invalid value 'jane@x.com'"). The file's
# data never goes into an error, which reaches stderr, Ray's logs and job records.
_QUOTED_INPUT = re.compile(r"(columns, got \d+)\s*:.*|(invalid value)\s*'.*?'(?=[\s,;)]|$)", re.S)


def _reason(exc: BaseException) -> str:
    text = _QUOTED_INPUT.sub(lambda m: m.group(1) or m.group(2), str(exc))
    return " ".join(text.split())[:300] or type(exc).__name__


def columns_of(files: InputFiles) -> list[tuple[Path, list[str]]]:
    """Each Parquet or CSV file's columns, from its footer or header (no data read), so a load can check every
    file's before it loads any; none for JSON Lines, whose records have no fixed columns (each is checked as
    it is read)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if files.format == "json":
        return []
    out = []
    for path in files.paths:
        try:
            schema = pq.read_schema(path) if files.format == "parquet" else \
                pacsv.open_csv(path, convert_options=csv_options(files.text)).schema
        except (pa.ArrowInvalid, OSError) as exc:
            raise InvalidInput(f"{path}: cannot read as {files.format}: {_reason(exc)}",
                               details={"file": str(path)}) from None
        out.append((path, schema.names))
    return out


SMALL_TEXT_BYTES = 64 << 20  # a CSV or JSON Lines file this small has its lines counted (~30 ms at most)


def _lines(path: Path) -> int:
    """An upper bound of the rows of a small text file (its newlines, and one for a last line without one); -1
    for a big file. A small CSV then loads in the caller's process: it started a local Ray (seconds; a raylet
    that did not come up in 30 s on a loaded machine failed a 6-row load) because its size was unknown."""
    if path.stat().st_size > SMALL_TEXT_BYTES:
        return -1
    with open(path, "rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b"")) + 1


def read_parts(files: InputFiles) -> list[dict[str, Any]]:
    """What a load reads in parallel: Parquet row groups (from the footers, so a damaged footer
    fails here, before anything is loaded), whole CSV and JSON Lines files; ``first``: the number of a
    part's first row in its file (1: the file's first row of data)."""
    if files.format != "parquet":  # rows: at most its lines, counted in a small file (unknown in a big one: -1)
        return [{"path": str(p), "row_group": -1, "rows": _lines(p), "first": 1} for p in files.paths]
    import pyarrow.parquet as pq

    parts = []
    for path in files.paths:
        try:
            meta = pq.ParquetFile(path).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            raise InvalidInput(f"{path}: cannot read as parquet: {_reason(exc)}",
                               details={"file": str(path)}) from None
        first = 1
        for g in range(meta.num_row_groups):
            parts.append({"path": str(path), "row_group": g, "rows": meta.row_group(g).num_rows, "first": first})
            first += meta.row_group(g).num_rows
    return parts


def row_group_parts(path: Path, footer: Any, part_rows: int) -> list[dict[str, Any]]:
    """A Parquet file's row groups as parts of at most about ``part_rows`` rows (a larger group split in
    equal row ranges ``start``..``stop``; -1: to its end), so parallel readers share a file of one big group."""
    parts = []
    for g in range(footer.num_row_groups):
        n = footer.row_group(g).num_rows
        k = max(1, math.ceil(n / part_rows))
        if k == 1:
            parts.append({"path": str(path), "row_group": g, "start": 0, "stop": -1})
            continue
        bounds = [n * i // k for i in range(k + 1)]
        parts.extend({"path": str(path), "row_group": g, "start": lo, "stop": hi} for lo, hi in zip(bounds, bounds[1:]))
    return parts


def read_part(path: str, row_group: int, file_format: str, rows: int, start: int = 0,
              stop: int = -1, text: Sequence[str] = ()) -> Iterator[pa.Table]:
    """One part's rows (of a Parquet row group: rows ``start``..``stop``, -1: its end), at most ``rows`` a
    table; damage found only now (a Parquet page past the footer, a malformed CSV line) is an input error
    naming the file.

    CSV types are inferred from the whole file, so a value of another type deep in it is one bad
    row (dead-lettered) rather than a failed file; JSON Lines come as undecoded lines
    (:func:`json_lines`) that the loader decodes one by one for the same reason.
    """
    try:
        if file_format == "parquet":
            import pyarrow.parquet as pq

            step = rows if stop < 0 else max(1, min(rows, stop - start))
            at = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=step, row_groups=[row_group]):
                lo, hi = at, at + batch.num_rows
                at = hi
                if hi <= start:
                    continue  # before the range: decoded and dropped (Parquet has no row-range read)
                if 0 <= stop <= lo:
                    break
                yield pa.Table.from_batches([batch.slice(max(0, start - lo), (hi if stop < 0 else min(hi, stop))
                                                         - max(lo, start))])
        elif file_format == "csv":
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(path, convert_options=csv_options(text))
            for offset in range(0, table.num_rows, rows):
                yield table.slice(offset, rows)
        else:
            yield from json_lines(Path(path), rows)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInput(f"{path}: cannot read as {file_format}: {_reason(exc)}", details={"file": path}) from None


# Columns a numbered read (:func:`numbered`) adds to a CSV or Parquet table: each row's file and row number, which
# a dead letter keeps as its position (a JSON Lines table has its own: file, line); and to a CSV table, the first
# column of each row whose value is no UTF-8 text (:func:`as_text`; null: none).
FILE, ROW, UNDECODABLE = "__sira_file", "__sira_row", "__sira_undecodable"


def read_numbered(batch: dict[str, Any], *, file_format: str, rows: int, text: tuple[str, ...]) -> Iterator[pa.Table]:
    """Ray Data task: the rows of parts of the input (:func:`read_parts`: a Parquet row group, a CSV or JSON Lines
    file), :func:`numbered`."""
    for path, group, first in zip(batch["path"].tolist(), batch["row_group"].tolist(), batch["first"].tolist()):
        yield from numbered(path, group, first, file_format, rows, text)


def numbered(path: str, row_group: int, first: int, file_format: str, rows: int, text: tuple[str, ...]
             ) -> Iterator[pa.Table]:
    """:func:`read_part`'s tables of one part, whose first row is row ``first`` of its file, with :data:`FILE`
    and :data:`ROW`."""
    for table in read_part(path, row_group, file_format, rows, text=text):
        if file_format == "csv":
            table, undecodable = as_text(table)
            table = table.append_column(UNDECODABLE, pa.array(undecodable or [None] * table.num_rows, pa.string()))
        if file_format != "json":
            table = table.append_column(FILE, pa.repeat(path, table.num_rows)).append_column(
                ROW, pa.array(range(first, first + table.num_rows), pa.int64()))
        first += table.num_rows
        yield table


def as_text(table: pa.Table) -> tuple[pa.Table, list[str | None] | None]:
    """A CSV table whose binary columns are text, and the first column of each row that held bytes that are no
    UTF-8 (None: no such row). Arrow reads a column with one such value as binary, and every value of it was
    stored as a Python bytes repr (``"b'caf\\xe9'"``); each is now decoded, undecodable bytes as U+FFFD, and
    the rows with any are named for the loader to set aside."""
    binary = [f.name for f in table.schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    if not binary:
        return table, None
    undecodable: list[str | None] = [None] * table.num_rows
    for name in binary:
        values = table.column(name).to_pylist()
        for row, value in enumerate(values):
            if value is not None:
                try:
                    values[row] = value.decode("utf-8")
                except UnicodeDecodeError:
                    values[row] = value.decode("utf-8", "replace")
                    undecodable[row] = undecodable[row] or name
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.string()))
    return table, undecodable


def json_lines(path: Path, rows: int) -> Iterator[pa.Table]:
    """A JSON Lines file's non-blank lines, undecoded, in tables of (file, line number, text); a UTF-8 byte order
    mark opening the file is left out (as ``utf-8-sig`` reads it: there only)."""
    numbers: list[int] = []
    texts: list[bytes] = []
    with open(path, "rb") as handle:
        for number, text in enumerate(handle, 1):
            if number == 1 and text.startswith(codecs.BOM_UTF8):
                text = text[len(codecs.BOM_UTF8):]
            if text.strip():
                numbers.append(number)
                texts.append(text)
            if len(texts) >= rows:
                yield _lines_table(str(path), numbers, texts)
                numbers, texts = [], []
    if texts:
        yield _lines_table(str(path), numbers, texts)


def _lines_table(path: str, numbers: list[int], texts: list[bytes]) -> pa.Table:
    return pa.table({"file": pa.array([path] * len(texts)), "line": pa.array(numbers, pa.int64()),
                     "text": pa.array(texts, pa.binary())})


def decode_json_line(text: bytes) -> dict[str, Any] | str:
    """One JSON Lines record, or why it is not one. orjson (~3x faster than the standard library),
    which turns an integer beyond 64 bits into a float: a record with a float that large is read
    again by the standard library, which keeps the integer (a long numeric ``event_id`` stays itself
    and validation refuses an attribute out of range)."""
    import orjson

    try:
        value = orjson.loads(text)
        if _huge_float(value):
            value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError (both), bad UTF-8, nesting past the stack
        return f"not valid JSON ({type(exc).__name__}: {str(exc)[:200]})"
    return value if isinstance(value, dict) else f"not a JSON object but {type(value).__name__}"


def _huge_float(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float and not -(2.0**63) <= item < 2.0**63:
            return True
        if kind is dict:
            stack += item.values()
        elif kind is list:
            stack += item
    return False


def json_table(records: list[dict[str, Any]]) -> pa.Table:
    """Records as a table with a column for every field any of them has; a field whose values Arrow
    cannot hold in one type (a number here, text there) becomes text (a sample, not what is stored)."""
    names = list(dict.fromkeys(k for r in records for k in r))
    columns = {}
    for name in names:
        values = [r.get(name) for r in records]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowException, OverflowError):  # OverflowError: an integer beyond 64 bits
            columns[name] = pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values])
    return pa.table(columns)


def read_table(files: InputFiles) -> pa.Table:
    """Every row of the files (for small inputs such as label files)."""
    try:
        if files.format == "parquet":
            import pyarrow.parquet as pq

            return pa.concat_tables([pq.read_table(p) for p in files.paths], promote_options="permissive")
        if files.format == "csv":
            import pyarrow.csv as pacsv

            return pa.concat_tables([pacsv.read_csv(p, convert_options=csv_options(files.text)) for p in files.paths],
                                    promote_options="permissive")
        import pyarrow.json as pajson

        return pa.concat_tables([pajson.read_json(p) for p in files.paths], promote_options="permissive")
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInput(f"cannot read {files.format} input: {_reason(exc)}") from None


def read_yaml(path: Path, *, code: str = "invalid_input") -> Any:
    """A YAML file's content. A path that is no readable UTF-8 YAML file is a one-line error (a directory,
    a file of another encoding or without read rights failed as ``internal``)."""
    import yaml

    if not path.exists():
        raise NotFound(f"file not found: {path}", details={"path": str(path)})
    if not path.is_file():
        raise InvalidInput(f"{path} is not a file", code=code)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not UTF-8 text", code=code) from None
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot be read ({exc.strerror})", code=code) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML ({str(exc).splitlines()[0]})", code=code) from None


def check_mapped(columns: Collection[str], mapping: dict[str, str] | Any) -> None:
    """A mapping's source columns must be in the file, and a name it maps to must not be one of the file's own
    columns too (which of the two would be the field? the renamed one silently replaced the other)."""
    absent = [c for c in mapping.values() if c not in columns]
    if absent:
        raise InvalidInput(f"mapped column(s) not in the file: {', '.join(absent)}", details={"columns": absent})
    both = sorted(name for name, c in mapping.items() if name != c and name in columns and name not in mapping.values())
    if both:
        pairs = ", ".join(f"{name}={mapping[name]}" for name in both)
        raise InvalidInput(f"--map {pairs}: the file has its own {', '.join(both)} column too; rename or drop one",
                           details={"columns": both})


def parse_mapping(spec: str | None, mapping_file: Path | None = None, *, fields: Collection[str] | None = None,
                  what: str = "") -> dict[str, str]:
    """A column mapping (SIRA name -> source column) from ``a=B,c=D`` and/or a YAML file. ``fields``: the SIRA
    names the caller's records have (``what`` they are: event, label); another name is refused (a typo made
    the mapping void, the column kept under its own name)."""
    mapping: dict[str, str] = {}
    if mapping_file is not None:
        data: Any = read_yaml(mapping_file) or {}
        data = data.get("columns", data) if isinstance(data, dict) else data
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise InvalidInput(f"{mapping_file}: expected `columns:` mapping SIRA names to source column names")
        mapping.update(data)
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, sep, source = part.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise InvalidInput(f"invalid --map entry {part.strip()!r}: use sira_name=SOURCE_COLUMN")
        mapping[name.strip()] = source.strip()
    sources = list(mapping.values())
    if len(sources) != len(set(sources)):
        raise InvalidInput("--map uses a source column twice")
    unknown = sorted(set(mapping) - set(fields)) if fields is not None else []
    if unknown:
        raise InvalidInput(f"--map {', '.join(unknown)}: not a SIRA {what} field (valid: {', '.join(sorted(fields or ()))})",
                           details={"unknown": unknown, "valid": sorted(fields or ())})
    return mapping


def in_row_groups(batches: Any, rows: int = ROW_GROUP, passthrough: pa.Schema | None = None) -> Iterator[pa.Table]:
    """The stream of Arrow tables re-cut into tables of exactly ``rows`` rows (the last one shorter), all
    in the first table's schema (``passthrough``: those columns' types across every input file first):
    a file's row groups do not depend on how the blocks were cut."""
    pending: list[pa.Table] = []
    held = 0
    schema = None
    for batch in batches:
        if passthrough is not None:
            for field in passthrough:
                at = batch.schema.get_field_index(field.name)
                if at >= 0 and batch.schema.field(at).type != field.type:
                    batch = batch.set_column(at, field, batch.column(at).cast(field.type))
        if schema is None:
            schema = batch.schema
        elif batch.schema != schema:
            batch = batch.cast(schema)
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.concat_tables(pending)  # no copy: the chunks are kept
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, held = ([rest] if rest.num_rows else []), rest.num_rows
    if held:
        yield pa.concat_tables(pending)


def write_atomically(batches: Any, out: Path, on_batch: Callable[[pa.Table], None],
                     passthrough: pa.Schema | None = None, *, tmp: Path | None = None) -> str:
    """Write Arrow batches to one Parquet file, in row groups of :data:`ROW_GROUP` rows, under a temporary name
    (``tmp``, else :func:`partial_name`; made before the first batch is asked for, else ``invalid_output``), then
    rename; returns its sha256. ``on_batch`` sees each row group once written. The file is its owner's alone
    (0600, as model artifacts are): scores, ids and what ``--keep-columns`` copies are about people."""
    import hashlib

    import pyarrow.parquet as pq

    tmp = tmp or partial_name(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask, and a leftover file of the same name its mode
        finally:
            os.close(fd)
        sink = pa.OSFile(str(tmp), "wb")  # truncates it, keeping its mode
    except OSError as exc:
        raise _unwritable(out, exc) from None
    writer = None
    try:
        for batch in in_row_groups(batches, passthrough=passthrough):
            if writer is None:
                writer = pq.ParquetWriter(sink, batch.schema, compression="zstd")
            writer.write_table(batch, row_group_size=ROW_GROUP)
            on_batch(batch)
        if writer is None:
            raise InvalidInput("the input has no rows", code="empty_input")
        writer.close()
        writer = None
        sink.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        publish(tmp, out)
        return digest
    finally:
        if writer is not None:
            writer.close()
        sink.close()
        tmp.unlink(missing_ok=True)
