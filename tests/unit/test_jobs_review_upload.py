"""`sira jobs submit --working-dir DIR`: what Ray would upload is measured before Ray is asked or a key minted. Until
2026-12-07 a 138 MB untracked exports/history.csv (or a 145 MB .mypy_cache where no .gitignore was read) failed the
submission after the job's key was made, `error: internal: RuntimeError: ... 413`, exit 1."""

from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

from sira.cli.jobs import MAX_UPLOAD_BYTES, upload_files, working_dir_excludes


def tree(root, files):
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    return root


def what_ray_packages(root, excludes, read_gitignore):
    """The files Ray's own packaging walk (the one that zips a working dir) keeps."""
    found = set()

    def keep(path):
        if path.is_file():
            found.add(str(path.relative_to(root)))

    _dir_travel(root, [_get_excludes(root, excludes)], keep, include_gitignore=read_gitignore)
    return found


def test_the_walk_keeps_what_ray_packages_and_leaves_out_tools_caches(tmp_path):
    root = tree(tmp_path / "wd", [
        "jobs/train.py", "sira/x.py", "notes.log", "exports/history.csv", "sub/.rayignore", "sub/secret.txt",
        "sub/keep.py", "sub/.gitignore", "sub/local.cfg", "data/churn.parquet", "data/other.csv",
        ".mypy_cache/3.11/big.json", ".ruff_cache/x", ".pytest_cache/v", "node_modules/a/index.js",
        ".venv/lib/x.py", "sira/__pycache__/x.pyc", "deep/node_modules/y.js"])
    (root / "sub" / ".rayignore").write_text("secret.txt\n")
    (root / "sub" / ".gitignore").write_text("local.cfg\n")
    no_gitignore = set(upload_files(root, working_dir_excludes(root), read_gitignore=True))
    assert {path for path, _ in no_gitignore} == what_ray_packages(root, working_dir_excludes(root), True)
    kept = {path for path, _ in no_gitignore}
    assert not [p for p in kept if p.split("/")[0] in (".mypy_cache", ".ruff_cache", "node_modules")
                or "/node_modules/" in p or "__pycache__" in p]
    assert {"jobs/train.py", "exports/history.csv", "sub/keep.py"} <= kept and "sub/secret.txt" not in kept
    assert "sub/local.cfg" not in kept

    (root / ".gitignore").write_text("*.log\nexports/\n")
    for uploads in ([], ["data/churn.parquet"]):
        excludes = working_dir_excludes(root, uploads)
        kept = {path for path, _ in upload_files(root, excludes, read_gitignore=not uploads)}
        assert kept == what_ray_packages(root, excludes, not uploads)
        assert "exports/history.csv" not in kept and "notes.log" not in kept
        assert ("data/churn.parquet" in kept) == bool(uploads) and "data/other.csv" not in kept


def submit(cli, root, *job_args):
    return cli("jobs", "submit", "--address", "http://127.0.0.1:9", "--working-dir", str(root), "--json",
               "batch_score", "--", "--model", "fraud", *job_args)


def test_a_working_dir_ray_would_refuse_is_refused_first_in_one_line(tmp_path, monkeypatch, capsys):
    from tests.conftest import cli_in_process

    def cli(*args):
        # a database nobody listens on: a key minted (or Ray asked) before the check would fail otherwise
        return cli_in_process(monkeypatch, capsys, {"SIRA_DATABASE_URL": "postgresql://u@127.0.0.1:9/none",
                                                     "SIRA_WORKSPACE": str(tmp_path / "ws")}, *args)

    root = tree(tmp_path / "wd", ["jobs/batch_score.py", "sira/x.py"])
    (root / "exports").mkdir()
    with open(root / "exports" / "history.csv", "wb") as f:
        f.truncate(138 * 10**6)  # sparse: its size without the disk
    done = submit(cli, root)
    assert done.returncode == 2 and done.stdout == ""
    line, = done.stderr.strip().splitlines()
    assert line.startswith("error: upload_too_large: the job's working dir")
    assert "exports/history.csv (131.6 MiB)" in line and ".rayignore" in line

    # left out by a .rayignore, as the message says: the upload passes (and Ray is asked: nobody answers here)
    (root / ".rayignore").write_text("exports/history.csv\n")
    done = submit(cli, root)
    assert done.returncode == 1 and done.stderr.startswith("error: ray_unavailable:"), done.stderr

    # a tool's cache is never uploaded, .gitignore or not
    (root / ".mypy_cache").mkdir()
    with open(root / ".mypy_cache" / "cache.db", "wb") as f:
        f.truncate(MAX_UPLOAD_BYTES + 45 * 10**6)
    done = submit(cli, root)
    assert done.returncode == 1 and done.stderr.startswith("error: ray_unavailable:"), done.stderr
