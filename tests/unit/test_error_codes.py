"""docs/errors.md lists every error code SIRA raises, and nothing else, with the HTTP status and exit status its
error class gives. The codes are read from the source (every ``code=`` of an error, every error class's
``code``, the HTTP layer's own answers, the CLI's lines), so a new code fails here until it is published."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

from sira.core import errors
from sira.core.artifacts import ArtifactTampered
from sira.ingest.events import FIELD_CODES
from sira.ingest.labels import LABEL_CODES
from sira.registry.lifecycle import IllegalTransition

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "errors.md"
ERROR_CLASSES = {c.__name__: c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.SiraError)}
ERROR_CLASSES.update(IllegalTransition=IllegalTransition, ArtifactTampered=ArtifactTampered)
# functions that raise (or return) an error of this class with the ``code`` they are given
ERROR_FACTORIES = {"refused": errors.PermissionDenied, "read_yaml": errors.InvalidInput,
                   "check_window": errors.InvalidInput}  # sira.training.datasets: a window's labels
# calls taking a ``code`` that is no error's: a dead letter's reason (``sira rejected``, docs/features.md)
NOT_ERRORS = {"_dead_letter"}
CLI_LINE = re.compile(r"^error: ([a-z_]+): ")


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def raised_codes() -> dict[str, set[tuple[int | None, int | None]]]:
    """Every code raised in sira/, with the (HTTP status, exit status) pairs it is raised with (None: not known
    from the source)."""
    found: dict[str, set[tuple[int | None, int | None]]] = defaultdict(set)
    unclassified = []
    for path in sorted((ROOT / "sira").rglob("*.py")):
        where = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                codes = [c for k in node.keywords if k.arg == "code" for c in _strings(k.value)]
                cls = ERROR_CLASSES.get(name) or ERROR_FACTORIES.get(name)
                if cls is not None:
                    for code in codes:
                        found[code].add((cls.http_status, cls.exit_code))
                elif codes and name not in NOT_ERRORS:
                    unclassified.append(f"{where}:{node.lineno} {name}(code={codes})")
                if name == "error_response" and len(node.args) > 1:  # the HTTP layer's own answers
                    status = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
                    for code in _strings(node.args[1]):
                        found[code].add((status, None))
                if name == "_not_found" and node.args:  # the web UI's 404s
                    for code in _strings(node.args[0]):
                        found[code].add((404, None))
            elif isinstance(node, ast.ClassDef) and node.name in ERROR_CLASSES:
                cls = ERROR_CLASSES[node.name]
                for item in node.body:
                    if isinstance(item, ast.Assign) and [getattr(t, "id", None) for t in item.targets] == ["code"]:
                        found[item.value.value].add((cls.http_status, cls.exit_code))
            elif isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["code"]:
                # code = "usage" if ... else "cli";  code = {400: "malformed_body", ...}.get(status, "http_error")
                value = node.value
                strings = _strings(value)
                if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and \
                        isinstance(value.func.value, ast.Dict) and value.func.attr == "get":
                    strings += [s for v in value.func.value.values if v is not None for s in _strings(v)]
                    strings += [s for a in value.args[1:] for s in _strings(a)]
                for code in strings:
                    found[code].add((None, None))
            elif isinstance(node, ast.JoinedStr):  # the CLI's own lines: error: internal: ...
                for part in node.values:
                    if isinstance(part, ast.Constant) and isinstance(part.value, str) and CLI_LINE.match(part.value):
                        found[CLI_LINE.match(part.value)[1]].add((None, None))
    assert not unclassified, f"a code= the test cannot place (an error class or factory, or NOT_ERRORS): {unclassified}"
    for code in (*FIELD_CODES, *LABEL_CODES):  # pydantic error types answered under their own name
        found[code].add((422, None))
    return found


def published() -> dict[str, tuple[str, str]]:
    """The codes docs/errors.md lists: code -> (HTTP column, exit column)."""
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\| `([a-z_]+)` \| ([^|]+) \| ([^|]+) \|", line)
        if match:
            code, http, exit_status = match[1], match[2].strip(), match[3].strip()
            assert code not in rows, f"{code} is listed twice"
            rows[code] = (http, exit_status)
    return rows


def test_every_code_raised_is_published_and_every_published_code_is_raised():
    raised, listed = set(raised_codes()), set(published())
    assert len(raised) > 80  # the scan found the codes (it read the source)
    assert raised - listed == set(), "raised in sira/ but not in docs/errors.md"
    assert listed - raised == set(), "in docs/errors.md but raised nowhere in sira/"


def test_the_published_statuses_are_those_the_errors_carry():
    raised = raised_codes()
    for code, (http, exit_status) in published().items():
        statuses = {s for s, _ in raised[code] if s is not None}
        exits = {e for _, e in raised[code] if e is not None}
        assert len(statuses) <= 1 and len(exits) <= 1, f"{code} is raised with several statuses: {raised[code]}"
        if statuses:  # a dash: not answered there (a command-line refusal the HTTP API never gives)
            assert http in (str(*statuses), "—"), (code, http, statuses)
        if exits:
            # "130 / 143": a signal's exit, the class's default among them
            assert exit_status == "—" or str(*exits) in exit_status.split(" / "), (code, exit_status, exits)
        assert http != "—" or exit_status != "—" or code == "http_error", code


def test_one_condition_one_code():
    """The codes the review found split one mistake in two (or three) are gone from the source."""
    gone = {"reason_required", "missing_reason"}  # a missing reason is missing_field, naming "reason"
    assert gone & set(raised_codes()) == set()
    assert errors.UnknownModel("m").details == {"field": "model", "model": "m"}
    assert (errors.UnknownModel.http_status, errors.NoProductionVersion.http_status) == (404, 409)
    assert errors.invalid_format("pdf", ("md", "html")).code == "invalid_request"  # as HTTP answers format=pdf
