"""Every date option of the CLI takes ISO 8601 as the HTTP API's ``from``/``to`` and ``--expires`` do: a date, or
a time to the minute or finer, with ``Z`` or an offset. `sira drift --from 2026-09-01T00:00:00Z` was a usage
error (exit 2): the options took only ``%Y-%m-%d`` and ``%Y-%m-%dT%H:%M:%S``."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import typer

from sira.cli.common import iso_datetime
from sira.cli.main import app, main

pytestmark = pytest.mark.unit
UTC = timezone.utc


@pytest.mark.parametrize("text, expected", [
    ("2026-09-01", datetime(2026, 9, 1, tzinfo=UTC)),
    ("2026-09-01T12:30", datetime(2026, 9, 1, 12, 30, tzinfo=UTC)),
    ("2026-09-01T12:30:15", datetime(2026, 9, 1, 12, 30, 15, tzinfo=UTC)),
    ("2026-09-01T00:00:00Z", datetime(2026, 9, 1, tzinfo=UTC)),
    ("2026-09-01T00:00:00.250Z", datetime(2026, 9, 1, 0, 0, 0, 250_000, tzinfo=UTC)),
    ("2026-09-01T02:00+02:00", datetime(2026, 9, 1, tzinfo=UTC)),
    ("2026-08-31T19:00:00-05:00", datetime(2026, 9, 1, tzinfo=UTC)),
    (" 2026-09-01 ", datetime(2026, 9, 1, tzinfo=UTC)),
])
def test_a_date_option_takes_iso_8601_dates_and_times_as_utc(text, expected):
    when = iso_datetime(text)
    assert when == expected and when.tzinfo is UTC


@pytest.mark.parametrize("text", ["tomorrow", "2026-13-01", "01/09/2026", "", "0001-01-01T00:00+02:00"])
def test_a_date_that_is_not_iso_8601_is_refused_naming_the_forms(text):
    with pytest.raises(typer.BadParameter, match="is not an ISO 8601 date or time .2026-09-01, 2026-09-01T12:30"):
        iso_datetime(text)


def _date_options(command, path=()):
    """(command path, option) of every datetime option of the CLI."""
    for name, sub in getattr(command, "commands", {}).items():
        yield from _date_options(sub, (*path, name))
    for param in getattr(command, "params", []):
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is not None and descriptor.annotation is datetime:
            yield " ".join(path), param


def test_every_date_option_of_the_cli_is_the_one_iso_8601_type():
    options = list(_date_options(typer.main.get_command(app)))
    names = {(path, param.opts[0]) for path, param in options}
    # the options the review found refusing Z and offsets, and --expires, which took them
    assert {("drift", "--from"), ("drift", "--to"), ("thresholds", "--from"), ("score", "--to"),
            ("train", "--train-from"), ("train", "--test-to"), ("performance", "--as-of"),
            ("keys create", "--expires"), ("simulate", "--start")} <= names
    for path, param in options:
        assert param.type_descriptor.parameter_info.parser is iso_datetime, (path, param.opts)


def test_a_bad_date_is_a_one_line_usage_error(capsys):
    assert main(["drift", "--model", "fraud", "--from", "2026-09-01T00:00:00Z", "--to", "20 Sept"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "error: usage: sira drift: Invalid value for '--to': '20 Sept' is not an ISO 8601 date or time"), err


def test_simulate_start_is_a_day_not_a_time_of_day(capsys, tmp_path):
    assert main(["simulate", "--start", "2026-09-01T10:00", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("error: invalid_value: --start: a day (2026-09-01), not a time of day "
                                       "(2026-09-01T10:00:00+00:00 in UTC)\n")
