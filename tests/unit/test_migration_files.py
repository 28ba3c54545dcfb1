import hashlib
import subprocess
from pathlib import Path

import pytest

from sira.core import migrations
from sira.core.errors import ConfigError, SchemaOutOfDate


def test_shipped_migrations_are_numbered_in_order():
    found = migrations.discover()
    versions = [m.version for m in found]
    assert versions == sorted(versions) and versions[0] == 1
    assert versions == list(range(1, len(versions) + 1)), "no gaps between migrations"


def test_misnamed_migration_is_refused(tmp_path):
    (tmp_path / "001_ok.sql").write_text("SELECT 1;")
    (tmp_path / "2_bad.sql").write_text("SELECT 1;")
    with pytest.raises(ConfigError, match="2_bad.sql"):
        migrations.discover(tmp_path)


def test_duplicate_versions_are_refused(tmp_path):
    (tmp_path / "001_one.sql").write_text("SELECT 1;")
    (tmp_path / "001_two.sql").write_text("SELECT 2;")
    with pytest.raises(ConfigError, match="share version 001"):
        migrations.discover(tmp_path)


def test_every_seed_and_convention_table_is_created():
    sql = "\n".join(m.sql for m in migrations.discover())
    for table in (
        "sira_features", "sira_feature_snapshots", "sira_models", "sira_model_versions", "sira_training_runs",
        "sira_predictions", "sira_feedback", "sira_data_drift", "sira_model_performance", "sira_events",
        "sira_rejected_events", "sira_promotion_requests", "sira_approvals", "sira_audit_log", "sira_api_keys",
    ):
        assert f"CREATE TABLE {table} (" in sql, table


# -- a committed migration never changes (sql/manifest.toml) --------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
HISTORY = ROOT / "tests" / "integration" / "migration_history"


def test_every_migration_is_as_committed():
    listed = migrations.manifest()["files"]
    for m in migrations.discover():
        assert m.filename in listed, (
            f"{m.filename} is not in sql/manifest.toml: once it is final, add under [files]: "
            f'"{m.filename}" = "{m.checksum}"')
        assert listed[m.filename] == m.checksum, (
            f"{m.filename} changed after it was committed (sha256 {m.checksum}, committed {listed[m.filename]}): "
            "databases that applied it refuse it now; put the change in a new migration and restore the file")
    assert sorted(listed) == [m.filename for m in migrations.discover()], "a listed migration is gone from sql/"


def test_each_earlier_content_names_the_migration_that_mends_it():
    today = {m.filename: m for m in migrations.discover()}
    earlier = migrations.predecessors()
    assert {p.filename for p in earlier} >= {"017_erasure.sql", "019_card_rekey.sql"}
    for p in earlier:
        assert p.now in today and p.checksum != today[p.now].checksum and today[p.now].name == p.name, p
        if p.mended_by is None:  # nothing to mend: the same statements, renumbered
            assert _statements((HISTORY / f"{p.filename}@{p.commits.split()[0]}").read_text("utf-8")) == _statements(
                today[p.now].sql), p
        else:
            assert p.mended_by in today and p.mended_by > p.now, p
    # each is kept beside the upgrade tests, as committed
    kept = {hashlib.sha256(f.read_text("utf-8").encode()).hexdigest(): f.name for f in HISTORY.iterdir()}
    assert sorted(kept) == sorted(p.checksum for p in earlier)
    assert all(kept[p.checksum].startswith(p.filename + "@") for p in earlier)


def _statements(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.startswith("--"))


def test_no_committed_migration_changed_but_those_listed():
    """Every content a file under sql/ has had in the history is today's or a listed predecessor."""
    git = ["git", "-C", str(ROOT)]
    if not (ROOT / ".git").exists() or subprocess.run(
            [*git, "rev-parse", "--is-shallow-repository"], capture_output=True, text=True).stdout.strip() != "false":
        pytest.skip("no full git history here (an archive or a shallow clone)")
    log = subprocess.run([*git, "log", "--format=", "--raw", "--no-abbrev", "--no-renames", "-m", "HEAD", "--", "sql/"],
                         capture_output=True, text=True, check=True).stdout
    blobs = {}
    for line in log.splitlines():  # :old_mode new_mode old_sha new_sha status\tpath
        meta, path = line.split("\t")
        sha = meta.split()[3]
        if path.endswith(".sql") and set(sha) != {"0"}:
            blobs[sha] = Path(path).name
    contents = subprocess.run([*git, "cat-file", "--batch"], input="\n".join(blobs).encode() + b"\n",
                              capture_output=True, check=True).stdout
    accepted = {(m.filename, m.checksum) for m in migrations.discover()}
    accepted |= {(p.filename, p.checksum) for p in migrations.predecessors()}
    pos = 0
    for sha, name in blobs.items():
        end = contents.index(b"\n", pos)
        size = int(contents[pos:end].split()[2])
        text = contents[end + 1:end + 1 + size].decode("utf-8")
        pos = end + 2 + size
        checksum = migrations.Migration(0, "", text).checksum
        assert (name, checksum) in accepted, (
            f"sql/{name} once held content {sha[:12]} (sha256 {checksum}), which is neither today's file nor a "
            "predecessor in sql/manifest.toml: a committed migration was edited")


def _row(version, name, checksum):
    return {"version": version, "name": name, "checksum": checksum, "applied_at": None}


def test_an_earlier_content_is_accepted_and_what_mends_it_is_pending():
    known = migrations.discover()
    old = next(p for p in migrations.predecessors() if p.filename == "017_erasure.sql")
    ledger = {m.version: _row(m.version, m.name, m.checksum) for m in known[:16]}
    ledger[17] = _row(17, "erasure", old.checksum)  # as af55753 wrote it
    pending = migrations._compare(known, ledger)
    assert [m.version for m in pending] == [m.version for m in known[17:]]
    assert old.mended_by in [m.filename for m in pending]
    # any other content is refused, as before
    ledger[17] = _row(17, "erasure", "0" * 64)
    with pytest.raises(SchemaOutOfDate, match="017_erasure.sql changed after it was applied"):
        migrations._compare(known, ledger)


def test_a_renumbered_migration_counts_for_its_file_today():
    known = migrations.discover()
    old = next(p for p in migrations.predecessors() if p.now != p.filename)
    ledger = {m.version: _row(m.version, m.name, m.checksum) for m in known[: old.version - 1]}
    ledger[old.version] = _row(old.version, old.name, old.checksum)  # 026_label_history on its branch
    pending = [m.version for m in migrations._compare(known, ledger)]
    assert old.version in pending and int(old.now[:3]) not in pending
    # once `sira db migrate` moved its row
    del ledger[old.version]
    ledger[int(old.now[:3])] = _row(int(old.now[:3]), old.name, old.checksum)
    assert [m.version for m in migrations._compare(known, ledger)] == pending
