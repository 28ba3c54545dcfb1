"""A workspace SIRA cannot write is a setting to fix (`config`, exit 2), said before anything claims to be written
into it. Until 2026-12-07 `SIRA_WORKSPACE=<a file>/ws sira keys list` warned it was "generating a new auth secret
into ..." then failed `internal: NotADirectoryError`, exit 1 (`FileNotFoundError` under /proc)."""

import pytest

from tests.conftest import cli_in_process


@pytest.mark.parametrize("where, reason", [("afile/ws", "Not a directory"), ("/proc/sira-ws", "No such file or directory")])
def test_a_workspace_that_cannot_be_written_is_a_config_error(pg_dsn, tmp_path, monkeypatch, capsys, caplog, where,
                                                              reason):
    (tmp_path / "afile").write_text("a file, not a folder\n")
    workspace = tmp_path / where  # an absolute `where` stays itself
    done = cli_in_process(monkeypatch, capsys, {"SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(workspace)},
                          "keys", "list")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"error: config: SIRA_WORKSPACE {workspace} cannot be written ({reason})"
    assert done.stdout == ""
    assert not [r for r in caplog.records if "generating" in r.getMessage()]  # nothing generated: nothing said
