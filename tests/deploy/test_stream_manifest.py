"""deploy/k8s/stream-consumer.yaml: the Kafka consumer as a Kubernetes Deployment. Its fields are the API's,
its command is one `sira ingest` parses, its settings are SIRA's (they build the SASL_SSL client
configuration with the password read from the mounted Secret), secrets are files or Secret references,
never values, and the metrics port is the consumer's."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from sira.core.config import Settings, reset_settings
from sira.ingest.kafka import client_config
from sira.ingest.stream import STREAM_METRICS_PORT
from tests.deploy.test_schedules import API_KEY_SHAPE, DNS_LABEL, FIELDS, _quantity, kubelet_expand

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "stream-consumer.yaml"
DEPLOYMENT_FIELDS = {
    **FIELDS,
    "Deployment": {"apiVersion", "kind", "metadata", "spec"},
    "DeploymentSpec": {"minReadySeconds", "paused", "progressDeadlineSeconds", "replicas", "revisionHistoryLimit",
                       "selector", "strategy", "template"},
    "Container": FIELDS["Container"] | {"ports", "livenessProbe", "readinessProbe", "startupProbe"},
    "ContainerPort": {"name", "containerPort", "protocol"},
    "SecretVolumeSource": {"secretName", "items", "defaultMode", "optional"},
    "ConfigMapVolumeSource": {"name", "items", "defaultMode", "optional"},
}


def only_known(kind: str, obj: dict, where: str) -> list[str]:
    assert isinstance(obj, dict), f"{where} must be a mapping"
    return [f"{where}.{key}" for key in obj if key not in DEPLOYMENT_FIELDS[kind]]


def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def container(doc: dict) -> dict:
    [found] = doc["spec"]["template"]["spec"]["containers"]
    return found


def test_it_is_an_apps_v1_deployment_with_known_fields_whose_selector_matches_its_pods():
    doc = manifest()
    assert (doc["apiVersion"], doc["kind"]) == ("apps/v1", "Deployment")
    spec, pod = doc["spec"], doc["spec"]["template"]["spec"]
    bad = only_known("Deployment", doc, "") + only_known("ObjectMeta", doc["metadata"], "metadata")
    bad += only_known("DeploymentSpec", spec, "spec") + only_known("PodSpec", pod, "pod")
    bad += only_known("PodSecurityContext", pod["securityContext"], "pod.securityContext")
    c = container(doc)
    bad += only_known("Container", c, "container") + only_known("SecurityContext", c["securityContext"], "c.sc")
    bad += [f for p in c["ports"] for f in only_known("ContainerPort", p, "port")]
    bad += [f for v in c["env"] for f in only_known("EnvVar", v, "env")]
    bad += [f for m in c["volumeMounts"] for f in only_known("VolumeMount", m, "mount")]
    for volume in pod["volumes"]:
        bad += only_known("Volume", volume, "volume")
        for kind, source in (("SecretVolumeSource", "secret"), ("ConfigMapVolumeSource", "configMap")):
            if source in volume:
                bad += only_known(kind, volume[source], f"volume.{source}")
    assert bad == [], bad
    assert DNS_LABEL.fullmatch(doc["metadata"]["name"])
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["replicas"] >= 2 and spec["strategy"]["rollingUpdate"]["maxSurge"] == 0


def test_its_command_is_one_sira_ingest_parses_as_a_kafka_consumer():
    import typer

    from sira.cli.main import app

    c = container(manifest())
    env = {v["name"]: "broker-1:9093,broker-2:9093" if v["name"] == "KAFKA_BOOTSTRAP" else "x" for v in c["env"]}
    assert c["command"] == ["sira"]
    args = [kubelet_expand(a, env) for a in c["args"]]
    ingest = typer.main.get_command(app).commands["ingest"]  # type: ignore[attr-defined]
    ctx = ingest.make_context("ingest", list(args))
    assert ctx.params["kafka"] == "broker-1:9093,broker-2:9093"
    assert (ctx.params["topic"], ctx.params["labels_topic"], ctx.params["group"]) == ("payments", "chargebacks",
                                                                                       "sira-features")


def test_its_settings_build_the_sasl_ssl_client_with_the_password_from_the_mounted_secret(tmp_path, monkeypatch):
    doc = manifest()
    c = container(doc)
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"]["volumes"]}
    files = {}
    for var in c["env"]:
        if var["name"].endswith("_FILE"):
            mount = next(m for path, m in mounts.items() if var["value"].startswith(path + "/"))
            assert mount.get("readOnly") is True
            volume = volumes[mount["name"]]
            kind = "secret" if re.search("PASSWORD|KEY|SECRET", var["name"]) else "configMap"
            assert kind in volume, f"{var['name']} must be mounted from a {kind}"
            local = tmp_path / var["value"].lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(f"contents of {var['name']}")
            files[var["name"]] = local
    for var in c["env"]:
        if var["name"].startswith("SIRA_") and var["name"] != "SIRA_API_KEY":
            field = var["name"].removeprefix("SIRA_").lower()
            assert field in Settings.model_fields, f"{var['name']} is not a SIRA setting"
            monkeypatch.setenv(var["name"], str(files.get(var["name"], var.get("value", "postgresql://h/db"))))
    reset_settings()
    settings = Settings()
    config = client_config(settings, "broker-1:9093", "sira-features")
    assert (config["security.protocol"], config["sasl.mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert config["sasl.password"] == "contents of SIRA_KAFKA_SASL_PASSWORD_FILE"
    assert config["ssl.ca.location"] == str(files["SIRA_KAFKA_SSL_CA_FILE"])
    assert settings.secret("pii_key") == "contents of SIRA_PII_KEY_FILE"
    assert settings.secret("auth_secret") == "contents of SIRA_AUTH_SECRET_FILE"  # the installation's pepper
    reset_settings()


def test_secrets_are_never_values_and_the_metrics_port_is_the_consumers():
    doc = manifest()
    c = container(doc)
    for var in c["env"]:
        assert ("value" in var) != ("valueFrom" in var), var["name"]
        if re.search(r"PASSWORD|SECRET|TOKEN|API_KEY|DATABASE_URL|PII_KEY", var["name"]) \
                and not var["name"].endswith("_FILE"):  # a file's path: mounted from a Secret (tested above)
            assert "secretKeyRef" in var.get("valueFrom", {}), f"{var['name']} must come from a Secret"
    assert not API_KEY_SHAPE.search(MANIFEST.read_text())
    env = {v["name"]: v.get("value") for v in c["env"]}
    [port] = c["ports"]
    annotations = doc["spec"]["template"]["metadata"]["annotations"]
    assert port["containerPort"] == STREAM_METRICS_PORT == int(env["SIRA_STREAM_METRICS_PORT"])
    assert int(annotations["prometheus.io/port"]) == STREAM_METRICS_PORT
    sc, pod_sc = c["securityContext"], doc["spec"]["template"]["spec"]["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    assert pod_sc["runAsNonRoot"] and pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert _quantity(c["resources"]["limits"]["memory"]) >= _quantity(c["resources"]["requests"]["memory"])
