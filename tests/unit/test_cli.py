"""The CLI's contract: one-line errors with exit 2 for bad input, --json prints one object."""

import json

import pytest

from sira.cli.main import main


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_commands_with_descriptions(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("db", "simulate", "demo"):
        assert command in out
    code, out, _ = run(capsys, "db", "--help")
    for verb in ("migrate", "status", "start", "stop"):
        assert verb in out


# sira/cli/serve.py's commands are another change's to word (`api`, `serve`, `serve check|reload`)
def test_every_command_says_what_it_does_in_a_line_help_shows_whole(capsys, monkeypatch):
    """`sira --help` cut most one-liners ("Simulate payments, fraud and delayed labels into..."): click shows a
    command's first sentence when it fits the column (80-column terminal), else cuts it with "...". """
    monkeypatch.setenv("COLUMNS", "80")

    def listed(*path: str) -> dict[str, str]:
        code, out, err = run(capsys, *path, "--help")
        assert code == 0, err
        rows = out.split("Commands:\n", 1)[1].splitlines()
        return {row.split()[0]: row.split(None, 1)[1] for row in rows if row.startswith("  ") and row.strip()}

    commands = listed()
    groups = [name for name in commands if main([name, "--help"]) == 0 and "Commands:" in capsys.readouterr()[0]]
    assert {"db", "features", "models", "versions", "jobs"} <= set(groups)
    for path, rows in [((), commands), *(((g,), listed(g)) for g in groups)]:
        for name, line in rows.items():
            assert not line.endswith("..."), f"sira {' '.join((*path, name))}: {line}"
            assert line.endswith("."), f"sira {' '.join((*path, name))}: {line}"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["simulate", "--config", "/no/such/file.yaml"], "error: not_found: file not found: /no/such/file.yaml"),
        (["simulate", "--start", "2026-13-01"], "error: usage: sira simulate: Invalid value for '--start'"),
        (["simulate", "--no-such-option"], "error: usage: sira simulate: No such option: --no-such-option"),
        (["frobnicate"], "error: usage: sira: No such command 'frobnicate'"),
        (["simulate", "--days", "0"], "error: invalid_input: days must be between 1 and 3650"),
        (["simulate", "--fraud-rate", "abc"], "error: usage: sira simulate: Invalid value for '--fraud-rate'"),
        (["ingest", "/no/such/events.parquet"], "error: not_found: file not found: /no/such/events.parquet"),
        (["ingest"], "error: invalid_input: name at least one file or folder to ingest"),
        (["jobs", "submit", "--submission-id", "retrain fraud; rm", "retrain"],
         "error: invalid_input: --submission-id: 1 to 90 letters, digits"),
        (["ingest", "x.parquet", "--map", "occurred_at"], "error: invalid_input: invalid --map entry 'occurred_at'"),
        (["ingest", "x.parquet", "--map-file", "/no/map.yaml"], "error: not_found: file not found: /no/map.yaml"),
        # a name that is no SIRA field was stored as an attribute of that name, the mapping silently void
        (["ingest", "typo.parquet", "--map", "devce_id=DEV"], "error: invalid_input: --map devce_id: not a SIRA event "
                                                               "field (valid: account_id, amount, card_number, "),
        (["ingest", "x.parquet", "--map", "known_at=KNOWN"], "error: invalid_input: --map known_at: not a SIRA event"),
        (["feedback", "import", "/no/labels.csv", "--map", "customer_id=C"], "error: invalid_input: --map "
                                                                             "customer_id: not a SIRA label field"),
        (["feedback", "import", "/no/labels.csv"], "error: not_found: file not found: /no/labels.csv"),
        (["features", "show", "customer"], "error: usage: sira features show: Missing argument"),
        (["features", "rebuild", "--feature-set", "payments@two"], "error: invalid_input: invalid feature set"),
        (["features", "rebuild", "--feature-set", "payments@9"], "error: unknown_feature_set: feature set payments has no version 9"),
        (["features", "rebuild", "--feature-set", "payments@1"], "error: invalid_input: payments@1 keeps its"),
        (["features", "rebuild"], "error: usage: sira features rebuild: Missing option '--feature-set'"),
        (["features", "materialize", "--feature-set", "payments@9"], "error: unknown_feature_set: feature set payments has no version 9"),
        # options of another mode were accepted and ignored (`--max-events 10` ingested the whole file)
        (["ingest", "x.parquet", "--max-events", "10"], "error: invalid_option: --max-events does not apply to "
                                                        "ingesting files"),
        (["ingest", "--stream", "--source", "pos", "--topic", "t"], "error: invalid_option: --source, --topic do not "
                                                                    "apply to --stream"),
        (["ingest", "--kafka", "b:9092", "--topic", "t", "--source", "pos"], "error: invalid_option: --source does"),
        # `sira thresholds` ran the what-if and ignored them
        (["thresholds", "--model", "fraud", "--review", "0.3", "--block", "0.8"],
         "error: invalid_option: --review, --block do not apply without --apply"),
        (["thresholds", "--model", "fraud", "--reason", "why"], "error: invalid_option: --reason does not apply"),
        (["thresholds", "--model", "fraud", "--version", "1", "--history", "--html", "/tmp/w.html"],
         "error: invalid_option: --html does not apply to --history"),
        (["thresholds", "--model", "fraud", "--version", "1", "--history", "--apply", "--review", "0.3", "--block",
          "0.8", "--reason", "why"], "error: invalid_option: --apply and --history"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, args, needle):
    code, out, err = run(capsys, *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(needle), lines[0]


def test_bad_config_file_is_one_line(capsys, tmp_path):
    bad = tmp_path / "sim.yaml"
    bad.write_text("days: 5\nwobble: 3\n")
    code, _, err = run(capsys, "simulate", "--config", str(bad))
    assert code == 2 and "unknown setting(s) wobble" in err and len(err.strip().splitlines()) == 1


def test_simulate_json_is_one_object_on_stdout(capsys, tmp_path):
    config = tmp_path / "sim.yaml"
    config.write_text("customers: 60\nfraud_rate: 0.05\nstart: '2026-01-05'\n")
    code, out, _ = run(
        capsys, "simulate", "--days", "3", "--seed", "5", "--out", str(tmp_path / "o"), "--config", str(config), "--json"
    )
    assert code == 0
    payload = json.loads(out)  # exactly one JSON document
    assert payload["summary"]["events"] > 0
    assert payload["summary"]["first_event_at"].startswith("2026-01-05")
    assert (tmp_path / "o" / "events.parquet").exists()


def test_unexpected_failure_is_one_line_exit_1(capsys, monkeypatch):
    import sira.demo.simulate

    def boom(*_a, **_k):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(sira.demo.simulate, "simulate", boom)
    code, _, err = run(capsys, "simulate", "--days", "2", "--customers", "20")
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "error: internal: RuntimeError: disk on fire second line (run with --debug for a traceback)"
    )
    code, _, err = run(capsys, "--debug", "simulate", "--days", "2", "--customers", "20")
    assert code == 1 and "Traceback" in err


def test_unsupported_and_empty_inputs_are_refused_before_any_work(capsys, tmp_path):
    (tmp_path / "events.xlsx").write_text("nope")
    code, _, err = run(capsys, "ingest", str(tmp_path / "events.xlsx"))
    assert code == 2 and "unsupported file type .xlsx" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "ingest", str(tmp_path / "empty"))
    assert code == 2 and "no .parquet, .csv or .jsonl files" in err


def test_features_list_json(capsys):
    code, out, _ = run(capsys, "features", "list", "--json")
    payload = json.loads(out)
    assert code == 0 and payload["name"] == "payments" and "terminal_risk_7d" in payload["features"]


def test_serve_check_validates_a_config_before_serve_deploy(tmp_path, capsys):
    from pathlib import Path

    from sira.cli.main import main

    local = Path(__file__).resolve().parents[2] / "serve_configs" / "local.yaml"
    assert main(["serve", "check", str(local)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(local.read_text().replace("max_batch_size: ", "max_batch_size: -3 #", 1))
    assert "max_batch_size: -3" in bad.read_text()
    assert main(["serve", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: invalid_config: serving config max_batch_size: Input should be greater than or equal to 1"


@pytest.mark.parametrize("content, needle", [
    (b"days: \xe9t\xe9\n", "not UTF-8 text"),  # Latin-1
    (None, "is not a file"),  # a folder
    (b"pre_shift_mix: [card_testing]\n", "invalid simulation settings"),  # a list where a mapping goes
])
def test_config_files_that_cannot_be_read_are_one_line_exit_2(capsys, tmp_path, content, needle):
    """A non-UTF-8 file, a folder, a setting of the wrong shape: `error: internal` (UnicodeDecodeError,
    IsADirectoryError, AttributeError), exit 1."""
    path = tmp_path / "sim.yaml"
    path.mkdir() if content is None else path.write_bytes(content)
    code, out, err = run(capsys, "simulate", "--config", str(path))
    assert (code, out) == (2, "") and len(err.strip().splitlines()) == 1 and needle in err, err


@pytest.mark.parametrize("config, needle", [
    ("- a list\n", "the file must be a mapping"),
    ("applications: [1]\n", "expected one application"),
    ("applications:\n- import_path: sira.http.deployment:build_app\n  deployments: [x]\n", "a deployment must be"),
    ("http_options: {port: abc}\napplications:\n- import_path: sira.http.deployment:build_app\n",
     "http_options.port must be a port number"),
])
def test_serve_check_says_what_is_malformed(capsys, tmp_path, config, needle):
    """Each of these failed as `internal` (an attribute or value error deep in the check)."""
    path = tmp_path / "serve.yaml"
    path.write_text(config)
    code, _, err = run(capsys, "serve", "check", str(path))
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: invalid_config:") and needle in err, err


@pytest.mark.parametrize("old, new, option", [
    ("min_replicas: 1", "min_replicas: 3", "autoscaling_config"),  # above max_replicas 2
    ("target_ongoing_requests: 16", "target_ongoing_requests: -3", "autoscaling_config.target_ongoing_requests"),
    ("num_cpus: 0.5", "num_cpus: lots", "ray_actor_options.num_cpus"),
    ("max_ongoing_requests: 64", "max_ongoing_requests: 0", "max_ongoing_requests"),
])
def test_serve_check_refuses_deployment_options_serve_refuses(capsys, tmp_path, old, new, option):
    """These printed "valid", exit 0, and `sira serve --config` with the file then failed `error: internal:
    ValidationError`, exit 1, once Ray was up: Ray Serve's own schema checks them now, without Ray."""
    from pathlib import Path

    local = (Path(__file__).resolve().parents[2] / "serve_configs" / "local.yaml").read_text()
    assert old in local
    path = tmp_path / "serve.yaml"
    path.write_text(local.replace(old, new, 1))
    code, out, err = run(capsys, "serve", "check", str(path))
    last = err.strip().splitlines()[-1]
    assert (code, out) == (2, "") and last.startswith(f"error: invalid_config: {path}: deployment option {option}: "), err


def test_output_paths_are_checked_before_the_work(capsys, tmp_path):
    """`simulate --out` an existing file failed after the whole simulation; `versions card --out` and
    `explain --out` into a missing folder after the work (and the report's audit entry)."""
    afile = tmp_path / "afile"
    afile.write_text("")
    for args, needle in ((["simulate", "--days", "2", "--customers", "10", "--out", str(afile)], "is a file"),
                         (["versions", "card", "--model", "m", "--version", "1", "--out", "/no/such/dir/c.md"],
                          "folder /no/such/dir does not exist"),
                         (["explain", "--prediction", "p1", "--out", str(tmp_path)], "is a folder")):
        code, out, err = run(capsys, *args)
        assert (code, out) == (2, "") and needle in err, (args, err)


def test_debug_after_the_double_dash_is_the_jobs_own(capsys):
    """`sira jobs submit train -- --model fraud --debug`: the job's --debug was taken out of its options (and
    debug turned on for the submitter)."""
    from sira.cli.main import take_debug

    assert take_debug(["jobs", "submit", "train", "--", "--model", "x", "--debug"]) == \
        (False, ["jobs", "submit", "train", "--", "--model", "x", "--debug"])
    assert take_debug(["--debug", "jobs", "submit", "train", "--", "--debug"]) == \
        (True, ["jobs", "submit", "train", "--", "--debug"])


def test_version_arguments_are_bounded_as_options_are(capsys):
    code, _, err = run(capsys, "versions", "compare", "--model", "m", "1", "3000000000")
    assert code == 2 and err.startswith("error: usage:") and "'b'" in err


@pytest.mark.parametrize("command", [["api", "--no-scoring"], ["serve"]])
def test_a_port_in_use_is_one_line_before_anything_starts(capsys, command):
    """`sira api` on a busy port exited 3 with uvicorn's own log line; `sira serve` failed after ~40 s with Ray's
    HAProxy traceback on one 1,900-character line. Now: refused before Ray or a model starts."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = run(capsys, *command, "--host", "127.0.0.1", "--port", str(port))
    assert (code, out) == (2, "") and err.startswith(f"error: port_in_use: 127.0.0.1:{port} is in use"), err
    assert len(err.strip().splitlines()) == 1


def test_a_jobs_result_is_the_last_json_object_of_its_logs():
    from sira.cli.jobs import job_result

    logs = ("2026-12-06 INFO something {not json\n"
            '{"model": "fraud", "version": 2}\n'
            "[1, 2]\n"
            "done\n")
    assert job_result(logs) == {"model": "fraud", "version": 2}
    assert job_result("error: not_found: file not found\n") is None


def test_batch_scoring_refuses_an_output_it_would_lose_or_read_back(monkeypatch, capsys, tmp_path):
    """`sira score --data X.parquet --out X.parquet` replaced its input with its scores; an output inside the input
    folder was read back by anything reading the folder; a relative --out in a Ray job landed in the job's temporary
    working dir; an s3:// input was read as the local path s3:/bucket/... Each is one line, exit 2, before any
    database or model is touched (this one is unreachable)."""
    from tests.conftest import cli_in_process

    monkeypatch.chdir(tmp_path)  # where a relative path would land
    folder = tmp_path / "history"
    folder.mkdir()
    (folder / "week.parquet").write_bytes(b"PAR1")
    env = {"SIRA_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none", "SIRA_WORKSPACE": str(tmp_path / "ws")}
    cases = [
        (["--data", str(folder / "week.parquet"), "--out", str(folder / "week.parquet")], "invalid_output",
         "is the input itself"),
        (["--data", str(folder), "--out", str(folder / "scores" / "week.parquet")], "invalid_output",
         f"is inside the input folder {folder}"),
        (["--data", "s3://bucket/week.parquet", "--out", str(tmp_path / "o.parquet")], "unsupported",
         "s3://bucket/week.parquet: s3:// URLs are not supported"),
        (["--data", str(folder), "--out", "s3://bucket/o.parquet"], "unsupported", "s3://bucket/o.parquet"),
    ]
    for args, code, words in cases:
        done = cli_in_process(monkeypatch, capsys, env, "score", "--model", "fraud", *args)
        assert (done.returncode, done.stdout) == (2, ""), (args, done.stderr)
        assert done.stderr.startswith(f"error: {code}:") and words in done.stderr, (args, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "ws").exists() and not (tmp_path / "s3:").exists()
    # in a Ray job (Ray sets this in every job's driver), a relative --out is refused; an absolute one is not
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"metadata": {"job_submission_id": "t"}}')
    done = cli_in_process(monkeypatch, capsys, env, "score", "--model", "fraud", "--data", str(folder), "--out",
                          "week-scores.parquet")
    assert done.returncode == 2 and done.stderr.startswith("error: invalid_output: --out week-scores.parquet is a "
                                                           "relative path: in a Ray job"), done.stderr
