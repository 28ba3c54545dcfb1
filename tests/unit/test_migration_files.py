import pytest

from sira.core import migrations
from sira.core.errors import ConfigError


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
