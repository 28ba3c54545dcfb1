import os
import stat
from pathlib import Path

import pytest

from sira.core.config import Settings, get_settings, reset_settings
from sira.core.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("SIRA_") or key == "RAY_ADDRESS":
            monkeypatch.delenv(key)
    reset_settings()
    yield
    reset_settings()


def test_workspace_is_always_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIRA_WORKSPACE", "rel/ws")
    settings = Settings()
    assert settings.workspace == tmp_path / "rel" / "ws"
    assert settings.artifact_location == str(tmp_path / "rel" / "ws" / "artifacts")


def test_reading_settings_touches_nothing(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    Settings()
    assert list(tmp_path.iterdir()) == []


def test_defaults_mean_embedded_postgres_and_no_redis():
    settings = Settings()
    assert settings.database_url is None
    assert settings.redis_url is None
    assert settings.ray_address is None


def test_ray_address_falls_back_to_ray_env(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6380")
    assert Settings().ray_address == "10.0.0.1:6380"
    monkeypatch.setenv("SIRA_RAY_ADDRESS", "auto")
    assert Settings().ray_address == "auto"


def test_database_url_is_secret_and_validated(monkeypatch):
    monkeypatch.setenv("SIRA_DATABASE_URL", "postgresql://u:hunter2@db:5432/sira")
    settings = Settings()
    assert "hunter2" not in repr(settings)
    monkeypatch.setenv("SIRA_DATABASE_URL", "mysql://u@db/sira")
    with pytest.raises(ConfigError, match="SIRA_DATABASE_URL"):
        get_settings()


def test_invalid_redis_url_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("SIRA_REDIS_URL", "http://nope")
    with pytest.raises(ConfigError, match="SIRA_REDIS_URL: .*redis://"):
        get_settings()


def test_trusted_proxies_are_addresses_or_networks_and_none_by_default(monkeypatch):
    """uvicorn takes an entry that is not an address for a host name that never matches: a typo would silently
    trust nobody (or, `*`, everybody). SIRA refuses it by name."""
    assert get_settings().trusted_proxies == ""
    reset_settings()
    monkeypatch.setenv("SIRA_TRUSTED_PROXIES", " 10.0.0.5, 10.1.0.0/16,::1 ")
    assert get_settings().trusted_proxies == "10.0.0.5,10.1.0.0/16,::1"
    for bad in ("*", "10.0.0.300", "proxy.internal"):
        reset_settings()
        monkeypatch.setenv("SIRA_TRUSTED_PROXIES", f"10.0.0.5,{bad}")
        with pytest.raises(ConfigError, match=f"SIRA_TRUSTED_PROXIES: .*{bad.replace('*', '[*]')}"):
            get_settings()


def test_secret_from_env_then_file_then_generated(monkeypatch, tmp_path):
    monkeypatch.setenv("SIRA_WORKSPACE", str(tmp_path / "ws"))
    generated = Settings().secret("pii_key")
    path = tmp_path / "ws" / "secrets" / "pii_key"
    assert path.read_text() == generated and len(generated) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Settings().secret("pii_key") == generated  # stable across processes

    key_file = tmp_path / "key.txt"
    key_file.write_text("from-a-file-0123456789\n")
    monkeypatch.setenv("SIRA_PII_KEY_FILE", str(key_file))
    assert Settings().secret("pii_key") == "from-a-file-0123456789"
    monkeypatch.setenv("SIRA_PII_KEY", "from-env-0123456789")
    assert Settings().secret("pii_key") == "from-env-0123456789"
    assert "from-env" not in repr(Settings())


@pytest.mark.parametrize("name", ["PII_KEY", "AUTH_SECRET", "WEBHOOK_SECRET"])
@pytest.mark.parametrize("value", ["", " ", "\t\n", "fifteen-bytes!!"])
def test_a_blank_or_short_secret_value_is_refused_in_one_line_naming_it(monkeypatch, tmp_path, name, value):
    """`SIRA_PII_KEY= sira ingest` tokenised with HMAC(b"", ...), and SIRA_AUTH_SECRET=" " was the pepper " ":
    an empty value was taken for a key, over a *_FILE set beside it. Now refused (at least 16 bytes), never
    shown."""
    good = tmp_path / "key"
    good.write_text("a-good-key-from-a-file-0123456789")
    monkeypatch.setenv(f"SIRA_{name}_FILE", str(good))  # a blank value wins over the file: refused all the same
    monkeypatch.setenv(f"SIRA_{name}", value)
    with pytest.raises(ConfigError) as refused:
        get_settings()
    message = refused.value.one_line()
    assert message.startswith(f"error: config: SIRA_{name}: set, but ") and "at least 16 bytes" in message
    assert "\n" not in message and (not value.strip() or value not in message)
    monkeypatch.setenv(f"SIRA_{name}", "sixteen-bytes!!!")
    reset_settings()
    assert get_settings().secret(name.lower()) == "sixteen-bytes!!!"


@pytest.mark.parametrize("name", ["pii_key", "auth_secret", "webhook_secret"])
def test_a_short_secret_file_is_refused_and_check_secrets_reads_every_named_one(monkeypatch, tmp_path, name):
    short = tmp_path / "short"
    short.write_text("pii-1\n")
    monkeypatch.setenv(f"SIRA_{name.upper()}_FILE", str(short))
    monkeypatch.setenv("SIRA_WORKSPACE", str(tmp_path / "ws"))
    settings = Settings()
    with pytest.raises(ConfigError, match=f"SIRA_{name.upper()}_FILE: the key in .* is 5 bytes long") as refused:
        settings.check_secrets()
    assert "pii-1" not in str(refused.value)
    monkeypatch.setenv(f"SIRA_{name.upper()}_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=f"cannot read SIRA_{name.upper()}_FILE"):
        Settings().check_secrets()
    monkeypatch.delenv(f"SIRA_{name.upper()}_FILE")
    Settings().check_secrets()  # nothing named: nothing read, nothing generated yet
    assert not (tmp_path / "ws" / "secrets").exists()


def test_a_secret_generated_beside_an_external_database_is_said(monkeypatch, tmp_path, caplog):
    """A pod with an emptyDir workspace and no SIRA_AUTH_SECRET_FILE made a pepper of its own: every key of the
    installation failed as `invalid API key`. The generation is said, naming the setting to give."""
    monkeypatch.setenv("SIRA_WORKSPACE", str(tmp_path / "ws"))
    with caplog.at_level("WARNING", logger="sira.core.config"):
        Settings().secret("auth_secret")  # the embedded database's own workspace: nothing to say
    assert not caplog.records
    monkeypatch.setenv("SIRA_WORKSPACE", str(tmp_path / "pod"))
    monkeypatch.setenv("SIRA_DATABASE_URL", "postgresql://sira@db.internal/sira")
    with caplog.at_level("WARNING", logger="sira.core.config"):
        generated = Settings().secret("auth_secret")
        assert Settings().secret("auth_secret") == generated  # once: the workspace has it now
    [said] = caplog.records
    assert "generating a new auth secret" in said.getMessage() and "SIRA_AUTH_SECRET_FILE" in said.getMessage()
    assert "invalid API key" in said.getMessage() and generated not in said.getMessage()


def test_unreadable_secret_file_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SIRA_AUTH_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="SIRA_AUTH_SECRET_FILE"):
        Settings().secret("auth_secret")


def test_embedded_data_dir_is_outside_the_checkout_for_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SIRA_WORKSPACE", str(tmp_path / "ws"))
    settings = Settings()
    if os.geteuid() == 0:
        assert settings.embedded_pg_data.is_relative_to(Path("/var/lib/sira"))
    else:
        assert settings.embedded_pg_data == tmp_path / "ws" / "postgres"
    monkeypatch.setenv("SIRA_EMBEDDED_PG_DIR", str(tmp_path / "pg"))
    assert Settings().embedded_pg_data == tmp_path / "pg"


def test_the_local_rays_metrics_port_is_fixed_unless_taken():
    import socket

    from sira.core.ray_runtime import free_port

    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        unused = probe.getsockname()[1]
    assert free_port(unused) == unused
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = free_port(port)
        assert other != port and other > 0


def test_a_malformed_webhook_url_is_named_by_position_never_shown(monkeypatch):
    """An incoming-webhook URL is a credential (its path is the token): a scheme-less one was echoed whole."""
    monkeypatch.setenv("SIRA_WEBHOOK_URLS", "https://ok.example/h,hooks.slack.com/services/T0/B0/S3CRETTOKEN")
    with pytest.raises(ConfigError) as caught:
        get_settings().webhook_url_list
    assert "entry 2 of 2" in str(caught.value) and "S3CRETTOKEN" not in str(caught.value)


def test_a_file_that_cannot_be_read_is_reported_without_its_data(tmp_path):
    """pyarrow's message quotes the row it choked on and the value it refused: a card number and an e-mail
    went to stderr, Ray's logs and job records."""
    from sira.core.errors import InvalidInput
    from sira.core.files import find_files, read_table

    (tmp_path / "rows.csv").write_text("a,b,c\n1,2,3\n4,5,6,4111111111111111,jane@x.com\n")
    with pytest.raises(InvalidInput) as caught:
        read_table(find_files([tmp_path / "rows.csv"]))
    assert "Expected 3 columns, got 5" in caught.value.message
    assert "4111111111111111" not in caught.value.message and "jane@x.com" not in caught.value.message
