"""Every schedule and manifest under deploy/ that acts with an API key gives the process the installation's auth
secret and PII key. deploy/k8s/stream-consumer.yaml set SIRA_API_KEY and SIRA_PII_KEY_FILE but no
SIRA_AUTH_SECRET(_FILE): the pod generated a pepper of its own into its emptyDir workspace, and the service key,
hashed with the installation's, failed as "error: unauthenticated: invalid API key"."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
CRONTABS = sorted((DEPLOY / "cron").glob("*.crontab"))
NEEDED = ("SIRA_AUTH_SECRET_FILE", "SIRA_PII_KEY_FILE")


def pod_spec(doc: dict) -> dict:
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def created_secret_keys(text: str) -> dict[str, set[str]]:
    """The keys of each Secret the manifest's header tells the operator to create (`kubectl create secret generic
    NAME --from-file=KEY=PATH | --from-file=PATH | --from-literal=KEY=VALUE`)."""
    command = " ".join(" ".join(line.lstrip("#").strip().removesuffix("\\").split()) for line in text.splitlines()
                       if line.startswith("#"))
    found: dict[str, set[str]] = {}
    for match in re.finditer(r"kubectl create secret generic (\S+)((?: --from-(?:file|literal)=\S+)+)", command):
        keys = set()
        for option in shlex.split(match[2]):
            kind, _, value = option.removeprefix("--from-").partition("=")
            keys.add(value.split("=", 1)[0] if kind == "literal" or "=" in value else Path(value).name)
        found[match[1]] = keys
    return found


def file_settings(path: Path) -> list[tuple[dict, dict, dict[str, dict], dict[str, set[str]]]]:
    """(container, its env by name, the pod's volumes by name, the Secrets' keys the header creates) of each
    container of a manifest."""
    text = path.read_text()
    created = created_secret_keys(text)
    found = []
    for doc in yaml.safe_load_all(text):
        pod = pod_spec(doc)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            found.append((container, {v["name"]: v for v in container.get("env", [])}, volumes, created))
    return found


def assert_read_from_a_mounted_secret(path: Path, container: dict, env: dict[str, dict], volumes: dict[str, dict],
                                      created: dict[str, set[str]], name: str) -> None:
    """``name`` is a file path set in the container's env, in a read-only mount of a Secret whose key the
    manifest's header creates."""
    assert name in env and "value" in env[name], f"{path.name}: {container['name']} does not set {name}"
    file = Path(env[name]["value"])
    [mount] = [m for m in container["volumeMounts"] if file.parent == Path(m["mountPath"])]
    assert mount.get("readOnly") is True, (path.name, name)
    secret = volumes[mount["name"]].get("secret")
    assert secret, f"{path.name}: {name} must be mounted from a Secret"
    items = {i["path"]: i["key"] for i in secret.get("items", [])}
    key = items.get(file.name, file.name) if items else file.name
    assert not items or file.name in items, f"{path.name}: {secret['secretName']} mounts no {file.name}"
    assert key in created.get(secret["secretName"], set()), \
        f"{path.name}: the header creates {secret['secretName']} without the key {key}"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_a_pod_with_an_api_key_reads_the_installations_secrets_from_a_mounted_secret(path):
    for container, env, volumes, created in file_settings(path):
        if "SIRA_API_KEY" in env:
            for name in NEEDED:
                assert_read_from_a_mounted_secret(path, container, env, volumes, created, name)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_a_pod_that_submits_ray_jobs_sends_the_heads_token(path):
    """The retrain CronJob's pod (HOME=/tmp: no ~/.ray/auth_token) submitted without the token Ray 2.60 heads
    require: "error: ray_unavailable: ... Missing authentication token"."""
    for container, env, volumes, created in file_settings(path):
        if "sira jobs submit" in " ".join(container.get("command", []) + container.get("args", [])):
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", path.name
            assert_read_from_a_mounted_secret(path, container, env, volumes, created, "RAY_AUTH_TOKEN_PATH")


def test_the_stream_consumer_is_one_of_them():
    stream = DEPLOY / "k8s" / "stream-consumer.yaml"
    [container] = pod_spec(yaml.safe_load(stream.read_text()))["containers"]
    assert {"SIRA_API_KEY", *NEEDED} <= {v["name"] for v in container["env"]}


@pytest.mark.parametrize("path", CRONTABS, ids=lambda p: p.name)
def test_a_schedule_acting_with_an_api_key_names_the_secret_files_its_env_file_holds(path):
    text = path.read_text()
    if "SIRA_API_KEY" not in text:
        return
    header = " ".join(line.lstrip("#") for line in text.splitlines() if line.startswith("#"))
    for name in NEEDED:
        assert name in header, f"{path.name}: its env file's settings must name {name}"


@pytest.mark.parametrize("path", CRONTABS, ids=lambda p: p.name)
def test_a_schedule_that_submits_ray_jobs_sends_the_heads_token(path):
    text = path.read_text()
    if "sira jobs submit" not in text:
        return
    assert re.search(r"^RAY_AUTH_MODE=token$", text, re.M), f"{path.name}: RAY_AUTH_MODE=token"
    header = " ".join(line.lstrip("#") for line in text.splitlines() if line.startswith("#"))
    assert "auth_token" in header and "RAY_AUTH_TOKEN_PATH" in header, f"{path.name}: where the token is read"
