"""Tabular input files: Parquet, CSV or JSON Lines, one file or a folder of them.

Shared by event ingestion, label import, bring-your-own-table training and
batch scoring: finding the files, checking them before any work starts, and
column mappings (``--map occurred_at=TX_DATETIME,...`` or a YAML file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from sira.errors import InvalidInput, NotFound

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".json": "json"}


@dataclass(frozen=True)
class InputFiles:
    format: str  # parquet | csv | json
    paths: list[Path]

    @property
    def strings(self) -> list[str]:
        return [str(p) for p in self.paths]


def is_numeric_type(t: pa.DataType) -> bool:
    """An Arrow column type a model can read as numbers (null: a column of missing values)."""
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)
            or pa.types.is_decimal(t))


def find_files(paths: list[Path], *, exclude: Path | None = None) -> InputFiles:
    """The data files named (folders expanded, leaving out hidden and ``_``-prefixed files and folders
    such as ``_temporary/`` or ``.ipynb_checkpoints/``, and ``exclude``: a job's own output); all of one
    format, at least one."""
    found: list[Path] = []
    skip = exclude.resolve() if exclude is not None else None
    for path in paths:
        if not path.exists():
            raise NotFound(f"file not found: {path}", details={"path": str(path)})
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS
                            and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
                            and p.resolve() != skip)
        else:
            if path.suffix.lower() not in FORMATS:
                raise InvalidInput(f"{path}: unsupported file type {path.suffix or '(none)'}; use .parquet, .csv or .jsonl")
            found.append(path)
    if not found:
        raise InvalidInput(f"no .parquet, .csv or .jsonl files in {', '.join(map(str, paths))}")
    formats = {FORMATS[p.suffix.lower()] for p in found}
    if len(formats) > 1:
        raise InvalidInput(f"mixed file formats ({', '.join(sorted(formats))}): ingest one format at a time")
    return InputFiles(formats.pop(), [p.resolve() for p in found])


def read_sample(files: InputFiles, rows: int = 1_000) -> pa.Table:
    """The first rows of the first file, read the way the full load will read them."""
    path = files.paths[0]
    try:
        if files.format == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            batches = pf.iter_batches(batch_size=rows)
            first = next(batches, None)
            return pa.Table.from_batches([first]) if first is not None else pf.schema_arrow.empty_table()
        if files.format == "csv":
            import pyarrow.csv as pacsv

            reader = pacsv.open_csv(path)
            first = reader.read_next_batch()
            return pa.Table.from_batches([first])
        import pyarrow.json as pajson

        return pajson.read_json(path).slice(0, rows)
    except (pa.ArrowInvalid, OSError, StopIteration) as exc:
        raise InvalidInput(f"{path}: cannot read as {files.format}: {' '.join(str(exc).split())[:300]}") from None


def read_table(files: InputFiles) -> pa.Table:
    """Every row of the files (for small inputs such as label files)."""
    try:
        if files.format == "parquet":
            import pyarrow.parquet as pq

            return pa.concat_tables([pq.read_table(p) for p in files.paths], promote_options="permissive")
        if files.format == "csv":
            import pyarrow.csv as pacsv

            return pa.concat_tables([pacsv.read_csv(p) for p in files.paths], promote_options="permissive")
        import pyarrow.json as pajson

        return pa.concat_tables([pajson.read_json(p) for p in files.paths], promote_options="permissive")
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInput(f"cannot read {files.format} input: {' '.join(str(exc).split())[:300]}") from None


def parse_mapping(spec: str | None, mapping_file: Path | None = None) -> dict[str, str]:
    """A column mapping (SIRA name -> source column) from ``a=B,c=D`` and/or a YAML file."""
    mapping: dict[str, str] = {}
    if mapping_file is not None:
        import yaml

        if not mapping_file.is_file():
            raise NotFound(f"file not found: {mapping_file}", details={"path": str(mapping_file)})
        try:
            data: Any = yaml.safe_load(mapping_file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise InvalidInput(f"{mapping_file}: not valid YAML ({str(exc).splitlines()[0]})") from None
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
    return mapping
