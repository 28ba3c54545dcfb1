"""cluster.yaml: accepted by Ray's cluster launcher (the checks `ray up` runs before its first AWS call),
launchable by EC2, and right for SIRA: Ray's port, the mounted source tree, settings, no secrets.

No AWS access and no network: `ray up` loads the file with `yaml.safe_load`, then
`commands._bootstrap_config` calls `util.prepare_config` (merges the AWS defaults, the common
setup commands and per-type worker limits) and `util.validate_config` (`ray-schema.json` plus
the head/worker rules) before the AWS-specific steps. Those two are what run here.
"""

import copy
import re
import socket
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from sira.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
MOUNT_ROOT = "/home/ubuntu/sira"
# Jobs written in parallel with this file; drop a name from here once its script exists.
SECRET_FILES = ("pii_key", "auth_secret", "webhook_secret")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("checking cluster.yaml must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())  # as `ray up` reads it


def ray_up_checks(config: dict) -> dict:
    """Ray's own preparation and validation of a cluster config, as `ray up` runs them."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def ray_start(commands: list[str]) -> str:
    [command] = [c for c in commands if "ray start" in c]
    return command


def cluster_env(config: dict) -> dict[str, str]:
    """The settings the setup commands write to ~/.sira/cluster.env."""
    [command] = [c for c in config["setup_commands"] if "> ~/.sira/cluster.env" in c]
    return dict(re.findall(r"'([A-Z][A-Z0-9_]*)=([^']*)'", command))


def test_ray_accepts_the_cluster_config():
    from ray.autoscaler._private.providers import _NODE_PROVIDERS

    config = ray_up_checks(load())
    assert config["cluster_name"] == "sira" and config["provider"]["type"] == "aws"
    assert config["provider"]["type"] in _NODE_PROVIDERS
    assert config["head_node_type"] == "head" and config["auth"]["ssh_user"] == "ubuntu"
    types = config["available_node_types"]
    assert types["head"]["max_workers"] == 0
    assert 0 <= types["cpu_worker"]["min_workers"] <= 1 <= types["cpu_worker"]["max_workers"] <= config["max_workers"]
    # Ray's defaults would otherwise pip-install boto3 into the system Python of the head.
    assert config["head_setup_commands"] == config["setup_commands"] == config["worker_setup_commands"]


@pytest.mark.parametrize(
    "break_it, error, message",
    [
        (lambda c: c.update(sira_replicas=3), jsonschema.ValidationError, "sira_replicas"),
        (lambda c: c["available_node_types"]["cpu_worker"].update(min_worker=1), jsonschema.ValidationError,
         "min_worker"),
        (lambda c: c["available_node_types"]["head"].pop("resources"), jsonschema.ValidationError, "resources"),
        (lambda c: c.update(idle_timeout_minutes="ten"), jsonschema.ValidationError, "ten"),
        (lambda c: c.update(head_node_type="gpu_head"), ValueError, "head_node_type"),
    ],
    ids=["unknown-top-level-key", "unknown-node-type-key", "no-resources", "bad-type", "unknown-head-type"],
)
def test_ray_rejects_a_broken_copy(break_it, error, message):
    config = load()
    break_it(config)
    with pytest.raises(error, match=message):
        ray_up_checks(config)


def test_node_configs_are_valid_ec2_launch_requests():
    # Ray's schema leaves node_config free-form and hands it to EC2's RunInstances (with
    # MinCount/MaxCount added, SubnetIds resolved): check it against botocore's own model.
    import botocore.session
    from botocore.validate import ParamValidator

    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape

    def problems(node_config: dict) -> str | None:
        request = {k: v for k, v in node_config.items() if k != "SubnetIds"} | {"MinCount": 1, "MaxCount": 1}
        report = ParamValidator().validate(request, shape)
        return report.generate_report() if report.has_errors() else None

    types = load()["available_node_types"]
    for name, node_type in types.items():
        assert problems(node_type["node_config"]) is None, name
        config = node_type["node_config"]
        assert config["ImageId"].startswith("ami-")
        assert config["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
        [root] = config["BlockDeviceMappings"]
        assert root["Ebs"]["Encrypted"] is True and root["Ebs"]["VolumeType"] == "gp3"
    typo = dict(types["head"]["node_config"])
    typo["BlockDeviceMapping"] = typo.pop("BlockDeviceMappings")
    assert "BlockDeviceMapping" in problems(typo)


def test_head_offers_no_cpus_and_no_node_has_a_gpu():
    types = load()["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}
    assert types["cpu_worker"]["resources"]["CPU"] > 0
    for node_type in types.values():
        assert "GPU" not in node_type["resources"]
        assert not re.match(r"(g|p|inf|trn|dl)\d", node_type["node_config"]["InstanceType"])


def test_ray_runs_on_an_explicit_port_that_is_never_redis_s():
    config = load()
    head = ray_start(config["head_start_ray_commands"])
    worker = ray_start(config["worker_start_ray_commands"])
    assert "--head" in head
    [port] = re.findall(r"--port[= ](\d+)", head)
    assert port != "6379"
    assert f"--address=$RAY_HEAD_IP:{port}" in worker
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        assert "6379" not in command
    assert "--dashboard-host=0.0.0.0" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head


def test_file_mounts_carry_the_source_tree_and_leave_local_state_behind():
    from sira.core.ray_runtime import WORKING_DIR_EXCLUDES

    config = load()
    mounts = config["file_mounts"]
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    for needed in ("pyproject.toml", readme, "sira", "sql", "jobs", "serve_configs"):
        assert mounts[f"{MOUNT_ROOT}/{needed}"] == needed  # same layout as the checkout
    for remote, local in mounts.items():
        assert remote.startswith(MOUNT_ROOT + "/")
        assert (ROOT / local).exists(), f"`ray up` from the checkout's root would not find {local}"
        assert Path(local).parts[0] not in (".", ".venv", ".sira", ".git", "data")
    excludes = set(config["rsync_exclude"])
    assert {".venv/", ".git/", ".sira/", "data/", "*.parquet", "__pycache__/"} <= excludes
    assert set(WORKING_DIR_EXCLUDES) <= excludes  # one list for rsync and --working-dir uploads
    assert config["rsync_filter"] == [".gitignore"]


def test_setup_installs_sira_from_the_mounted_tree_with_the_launchers_ray():
    import ray

    config = load()
    [install] = [c for c in config["setup_commands"] if f"-e {MOUNT_ROOT}" in c]
    assert re.search(r"\bpip install\b", install)
    assert re.search(r'"ray\[[a-z,]+\]==([^"]+)"', install).group(1) == ray.__version__
    assert config["head_setup_commands"] == [] and config["worker_setup_commands"] == []


def test_every_node_starts_ray_with_sira_settings():
    config = load()
    env = cluster_env(config)
    workspace = env["SIRA_WORKSPACE"]
    assert workspace.startswith("/")  # jobs run in a temporary working directory
    assert env["SIRA_ARTIFACT_URI"].startswith("s3://")
    assert env["SIRA_REDIS_URL"].split("://")[0] in ("redis", "rediss")
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    # Serve's proxies believe no X-Forwarded-For (uvicorn's default trusts 127.0.0.1, where HAProxy passes it on)
    assert env["FORWARDED_ALLOW_IPS"] == ""
    assert env["AWS_DEFAULT_REGION"] == config["provider"]["region"]
    assert all(z.startswith(config["provider"]["region"]) for z in config["provider"]["availability_zone"].split(","))
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = ray_start(commands)
        loads = ". ~/.sira/cluster.env && . ~/.sira/secrets.env && set +a &&"
        assert start.index(loads) < start.index("ray start")
    # Every node fetches the same secrets (one YAML anchor), into the files the settings name.
    [fetch] = [c for c in config["head_start_ray_commands"] if "secretsmanager" in c]
    assert fetch in config["worker_start_ray_commands"]
    assert "database_url" in fetch and '"/secrets.env"' in fetch
    for name in SECRET_FILES:
        assert env[f"SIRA_{name.upper()}_FILE"] == f"{workspace}/secrets/{name}"
        assert f'"{name}"' in fetch
    # Pydantic ignores unknown SIRA_ variables: every one named here must be a setting.
    known = {f"SIRA_{field.upper()}" for field in Settings.model_fields} | {"SIRA_API_KEY"}  # the CLI's
    assert set(re.findall(r"\bSIRA_[A-Z0-9_]+", CLUSTER_YAML.read_text())) <= known


def test_fetched_secrets_become_the_settings_sira_reads(monkeypatch, tmp_path):
    # The start commands' secret fetch, run against an in-process Secrets Manager (moto), then
    # both env files loaded as `ray start` loads them: SIRA sees the DSN and its three keys.
    import json
    import os
    import subprocess

    import boto3
    from moto import mock_aws

    config = load()
    [fetch] = [c for c in config["head_start_ray_commands"] if "secretsmanager" in c]
    code = fetch.split("-c '", 1)[1].rsplit("'", 1)[0]
    env = cluster_env(config)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".sira").mkdir()
    (home / ".sira" / "cluster.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    for key in list(os.environ):
        if key.startswith("SIRA_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    for key, value in {"HOME": str(home), "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": env["AWS_DEFAULT_REGION"],
                       "CLUSTER_SECRET_ID": env["CLUSTER_SECRET_ID"]}.items():
        monkeypatch.setenv(key, value)
    dsn = "postgresql://sira:it's $ecret@db.internal:5432/sira"
    with mock_aws():
        boto3.client("secretsmanager").create_secret(Name=env["CLUSTER_SECRET_ID"], SecretString=json.dumps(
            {"database_url": dsn, "pii_key": "pii-key-1-0123456789", "auth_secret": "auth-secret-2-0123456789",
             "webhook_secret": "hook-secret-3-0123456789"}))
        exec(compile(code, "fetch_secrets", "exec"), {})
    assert (home / ".sira" / "secrets.env").stat().st_mode & 0o077 == 0
    assert (home / ".sira" / "secrets" / "pii_key").stat().st_mode & 0o077 == 0
    shell = "set -a && . ~/.sira/cluster.env && . ~/.sira/secrets.env && set +a && env -0"
    loaded = subprocess.run(["bash", "-c", shell], env={"HOME": str(home), "PATH": os.environ["PATH"]},
                            capture_output=True, text=True, check=True).stdout
    for item in loaded.split("\0"):
        key, _, value = item.partition("=")
        if key.startswith("SIRA_"):
            monkeypatch.setenv(key, value.replace("/home/ubuntu", str(home)))  # the node's home is here
    settings = Settings()
    assert settings.database_url.get_secret_value() == dsn
    assert settings.workspace == home / ".sira" and settings.artifact_location == env["SIRA_ARTIFACT_URI"]
    assert [settings.secret(name) for name in SECRET_FILES] == ["pii-key-1-0123456789", "auth-secret-2-0123456789",
                                                            "hook-secret-3-0123456789"]


def test_no_secret_values_in_the_file():
    text = CLUSTER_YAML.read_text()
    secret_settings = [f"SIRA_{name.upper()}" for name, field in Settings.model_fields.items()
                       if "SecretStr" in str(field.annotation)] + ["SIRA_API_KEY"]
    assert "SIRA_DATABASE_URL" in secret_settings and "SIRA_PII_KEY" in secret_settings
    for name in secret_settings:
        assert not re.search(rf"\b{name}\s*=\s*\S|^\s*{name}\s*:", text, re.MULTILINE), f"{name} is given a value"
    for pattern in (
        r"(?i)password\s*[=:]",
        r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
        r"(?i)aws_secret_access_key|aws_session_token",
        r"-----BEGIN [A-Z ]*PRIVATE KEY",
        r"://[^\s/@:'\"]+:[^\s/@'\"]+@",  # user:password@ in a URL
        r"(?i)\b(secret|token|api_key)\s*[=:]\s*['\"]?[A-Za-z0-9+/_-]{12,}",
    ):
        assert not re.search(pattern, text), pattern


def test_jobs_named_in_the_comments_exist():
    """The comments submit each job with `sira jobs submit JOB` (a key of its own: never the user's in a runtime
    env), and each job names a script of jobs/."""
    from sira.core.ray_runtime import job_kind

    comments = "\n".join(line for line in CLUSTER_YAML.read_text().splitlines() if line.lstrip().startswith("#"))
    named = set(re.findall(r"\bsira jobs submit (?:--json )?(\w+)", comments))
    assert {"train", "materialize", "batch_score", "drift", "performance"} <= named
    assert {Path(job_kind(job).script).name for job in named} <= {p.name for p in (ROOT / "jobs").glob("*.py")}
    assert "SIRA_API_KEY\\\": " not in comments  # no key in a runtime env
