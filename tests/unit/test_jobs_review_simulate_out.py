"""`sira simulate --out` a folder SIRA cannot write is refused before anything is simulated, as `sira score` refuses its
--out (`invalid_output`, exit 2). Until 2026-12-07: `internal: NotADirectoryError`, exit 1, once the payments were
simulated."""

import pytest

from tests.conftest import cli_in_process


@pytest.mark.parametrize("where, reason", [("afile/x", "Not a directory"), ("/proc/sira-out", "No such file or directory")])
def test_an_output_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch, capsys, where, reason):
    (tmp_path / "afile").write_text("a file, not a folder\n")
    out = tmp_path / where  # an absolute `where` stays itself
    done = cli_in_process(monkeypatch, capsys, {"SIRA_WORKSPACE": str(tmp_path / "ws")},
                          "simulate", "--days", "2", "--out", str(out), "--json")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"error: invalid_output: --out {out}: cannot write in {out} ({reason})"
    assert done.stdout == ""
