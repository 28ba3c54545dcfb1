"""SIRA_LOG_LEVEL sets the level of SIRA's loggers in every command (it was validated and documented, and every
command logged at WARNING whatever it said); --debug still shows everything; a bad value is the command's one-line
config error, not a crash of the logging setup. (`sira api` and the replicas: tests/integration/test_serve_startup.py,
tests/e2e/test_serve_cli.py.)"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.conftest import cli_in_process

LOCAL = Path(__file__).resolve().parents[2] / "serve_configs" / "local.yaml"


@pytest.fixture(autouse=True)
def _sira_logger_level_restored():
    level = logging.getLogger("sira").level
    yield
    logging.getLogger("sira").setLevel(level)


@pytest.mark.parametrize(("env", "args", "level"), [
    ({}, (), logging.WARNING),
    ({"SIRA_LOG_LEVEL": "info"}, (), logging.INFO),
    ({"SIRA_LOG_LEVEL": "ERROR"}, (), logging.ERROR),
    ({"SIRA_LOG_LEVEL": "ERROR"}, ("--debug",), logging.DEBUG),
])
def test_sira_log_level_is_the_level_of_siras_loggers(monkeypatch, capsys, env, args, level):
    done = cli_in_process(monkeypatch, capsys, env, *args, "serve", "check", str(LOCAL))
    assert done.returncode == 0, done.stderr
    assert logging.getLogger("sira.serving.service").getEffectiveLevel() == level


def test_a_bad_log_level_is_the_commands_one_line_config_error(monkeypatch, capsys):
    done = cli_in_process(monkeypatch, capsys, {"SIRA_LOG_LEVEL": "LOUD"}, "db", "status")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "error: config: SIRA_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL\n"
