"""``sira subject``: what SIRA holds about one person (subject access), for an admin."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sira.cli.common import ApiKeyOption, JsonOption, emit, err, governed, group, kv_table
from sira.core.config import get_settings

subject_app = group("subject", "Data subjects: export everything stored about one person (admin).")


@subject_app.command("export")
def subject_export_cmd(
    customer: Annotated[str, typer.Option("--customer", help="The person's customer id, as their events carry it.")],
    out: Annotated[Path, typer.Option("--out", help="The bundle: a .json file, or a .zip of one file per section.")],
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every stored event, dead letter, feature row and state, prediction (with its reasons) and label about
    one person, PII left as the tokens SIRA holds; audited, the subject named by a keyed hash."""
    from sira.core.errors import InvalidInput
    from sira.monitoring.subject import export_subject, write_bundle

    if out.suffix not in (".json", ".zip"):
        raise InvalidInput("--out must end in .json or .zip", code="invalid_value", details={"field": "out"})
    if not out.parent.is_dir():
        raise InvalidInput(f"--out: folder {out.parent} does not exist", code="invalid_value", details={"field": "out"})
    secret = get_settings().secret("auth_secret")

    async def export(conn: Any, who: Any) -> dict[str, Any]:
        return await export_subject(conn, who, customer, secret=secret)

    bundle = governed(export, api_key)
    write_bundle(bundle, out)
    summary = {"out": str(out), "counts": bundle["counts"], "token_kinds": bundle["tokens"]["kinds"],
               "withheld_shared_identifiers": bundle["withheld"]["shared_identifiers"]}
    emit(summary, as_json, lambda: err.print(kv_table(f"Subject export → {out}", {
        **{k.replace("_", " "): f"{v:,}" for k, v in bundle["counts"].items()},
        "token kinds": ", ".join(bundle["tokens"]["kinds"]) or "none",
        "withheld (shared with another customer)": str(bundle["withheld"]["shared_identifiers"]),
    })))
