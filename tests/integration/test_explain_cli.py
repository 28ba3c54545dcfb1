"""`sira explain --out FILE`: the report's format follows the file's suffix when --format is not given (the
documented `--out report.html` wrote Markdown into the .html file), and a --format that contradicts it is
refused in one line before anything is issued."""

from __future__ import annotations

import asyncio
import json

from tests.conftest import scoring_client
from tests.integration.test_scoring_service import auth, event


def test_the_format_follows_the_out_files_suffix_and_a_contradiction_is_refused(fraud_model, tmp_path, monkeypatch,
                                                                             capsys):
    from sira.cli.main import main
    from sira.core.config import reset_settings

    async def scored() -> str:
        async with scoring_client(fraud_model, tmp_path / "spool") as (client, service):
            r = await client.post("/v1/score", headers=auth(fraud_model, "service"),
                                  json={"model": "fraud", "event": event(fraud_model, 5)})
            assert r.status_code == 200, r.text
            await service.flush()
            return r.json()["prediction_id"]

    prediction = asyncio.run(scored())
    monkeypatch.setenv("SIRA_DATABASE_URL", fraud_model.dsn)
    monkeypatch.setenv("SIRA_WORKSPACE", str(fraud_model.settings.workspace))
    monkeypatch.setenv("SIRA_API_KEY", fraud_model.keys["analyst"])

    def sira(*args: str):
        reset_settings()
        try:
            return main(["explain", "--prediction", prediction, *args]), capsys.readouterr()
        finally:
            reset_settings()

    code, out = sira("--out", str(tmp_path / "report.html"))
    assert code == 0, out.err
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "<h2>Main factors</h2>" in page
    code, out = sira("--out", str(tmp_path / "report.JSON"))
    assert code == 0 and json.loads((tmp_path / "report.JSON").read_text())["summary"]["prediction_id"] == prediction
    code, out = sira("--out", str(tmp_path / "report.txt"))  # a suffix that names no format: Markdown
    assert code == 0 and (tmp_path / "report.txt").read_text().startswith("# Decision ")
    code, out = sira("--format", "html", "--out", str(tmp_path / "same.html"))  # both alike
    assert code == 0 and (tmp_path / "same.html").read_text().startswith("<!doctype html>")

    code, out = sira("--format", "md", "--out", str(tmp_path / "other.html"))
    assert code == 2 and out.out == "" and len(out.err.strip().splitlines()) == 1, out.err
    assert out.err.startswith("error: invalid_option: --format md contradicts --out other.html (a html file)")
    assert not (tmp_path / "other.html").exists()
