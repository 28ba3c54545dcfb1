"""The nightly retrain schedules: deploy/cron/sira-retrain.crontab and deploy/k8s/retrain-cronjob.yaml.

Both are read the way their runners read them, without a cluster: cron's line format (five time
fields, `%` escaped, NAME=value lines), Kubernetes' CronJob fields (checked against the API's field
names; the `kubernetes` client is not a dependency) and the kubelet's `$(VAR)` expansion, the shell's
syntax check (`sh -n`), and `sira jobs submit`'s own option parser (the command mints the job a short-lived
key: the scheduler's key never reaches the cluster, where a runtime env is readable by anyone who can list
jobs). jobs/retrain.py need not exist.
"""

import re
import shlex
import subprocess
import zoneinfo
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRONTAB = ROOT / "deploy" / "cron" / "sira-retrain.crontab"
CRONJOB = ROOT / "deploy" / "k8s" / "retrain-cronjob.yaml"
WEBHOOKS_CRONTAB = ROOT / "deploy" / "cron" / "sira-webhooks.crontab"
WEBHOOKS_CRONJOB = ROOT / "deploy" / "k8s" / "webhooks-cronjob.yaml"
NIGHTLY = ["30", "2", "*", "*", "*"]
JOB_ARGS = ["--model", "fraud", "--json"]
API_KEY_SHAPE = re.compile(r"sira_[0-9a-f]{12}_")  # sira.core.auth's key format

# --- cron fields -------------------------------------------------------------------------------

MONTHS = "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split()
DAYS = "SUN MON TUE WED THU FRI SAT".split()
# (low, high, names) per field, as crontab(5) documents them; day of week 7 is Sunday again.
CRON_FIELDS = [(0, 59, None), (0, 23, None), (1, 31, None), (1, 12, MONTHS), (0, 7, DAYS)]


def _cron_value(text: str, low: int, high: int, names: list[str] | None) -> int | None:
    if text.isdigit():
        value = int(text)
    elif names and text.upper() in names:
        value = names.index(text.upper()) + (1 if names is MONTHS else 0)
    else:
        return None
    return value if low <= value <= high else None


def cron_field_ok(field: str, low: int, high: int, names: list[str] | None = None) -> bool:
    """One cron time field: a comma list of `*`, N or N-M, each optionally `/STEP`."""
    for item in field.split(","):
        base, slash, step = item.partition("/")
        if slash and not (step.isdigit() and int(step) > 0):
            return False
        if base == "*":
            continue
        start, dash, end = base.partition("-")
        first = _cron_value(start, low, high, names)
        if first is None:
            return False
        if dash:
            last = _cron_value(end, low, high, names)
            if last is None or last < first:
                return False
        elif slash:  # "N/STEP" is not a range in every cron; write "N-M/STEP"
            return False
    return True


def schedule_ok(schedule: str) -> bool:
    fields = schedule.split()
    return len(fields) == 5 and all(cron_field_ok(f, *spec) for f, spec in zip(fields, CRON_FIELDS))


@pytest.mark.parametrize("schedule", [
    "30 2 * * *", "*/15 * * * *", "0 0-23/2 * * *", "5,35 9-17 * * MON-FRI", "0 3 1 JAN,jul *",
    "0 0 * * 7", "59 23 31 12 0",
])
def test_the_cron_validator_accepts(schedule):
    assert schedule_ok(schedule)


@pytest.mark.parametrize("schedule", [
    "60 2 * * *", "30 24 * * *", "30 2 0 * *", "30 2 * 13 *", "30 2 * * 8", "30 2 * *", "30 2 * * * *",
    "*/0 * * * *", "5-1 * * * *", "1,,2 * * * *", "a * * * *", "30 2 * * MON-", "@daily", "30/5 * * * *",
    "-1 * * * *", "30 2 * FOO *",
])
def test_the_cron_validator_rejects(schedule):
    assert not schedule_ok(schedule)


# --- the submit command, shared by both files --------------------------------------------------

def submit_params(command: str) -> dict:
    """The options of the `sira jobs submit` in a shell command, as SIRA's CLI parses them."""
    import typer

    from sira.cli.main import app

    words = shlex.split(command)
    assert not any(words[i:i + 3] == ["ray", "job", "submit"] for i in range(len(words))), \
        "`ray job submit` would need the scheduler's own key in the job's runtime env"
    starts = [i for i in range(len(words) - 2) if words[i:i + 3] == ["sira", "jobs", "submit"]]
    assert len(starts) == 1, f"expected one `sira jobs submit` in {command!r}"
    submit = typer.main.get_command(app).commands["jobs"].commands["submit"]
    return submit.make_context("submit", words[starts[0] + 3:]).params  # unknown options raise here


def shell_syntax_ok(shell: str, command: str) -> None:
    checked = subprocess.run([shell, "-n", "-c", command], capture_output=True, text=True, timeout=5)
    assert checked.returncode == 0, checked.stderr


def check_submit(params: dict) -> None:
    assert params["address"] == "$RAY_ADDRESS"
    assert (params["job"], params["job_args"]) == ("retrain", JOB_ARGS)
    assert str(params["working_dir"]) == "/opt/sira"
    assert params["wait"] is True  # follows the job: the scheduler sees its status
    assert re.fullmatch(r"retrain-fraud-\$\(date -u \+%Y%m%d\)", params["submission_id"])
    assert params["api_key"] is None  # SIRA_API_KEY from the environment, never written here


def test_the_submission_id_is_the_utc_day():
    # What the shell makes of the id: a second submission on the same day reuses it and Ray refuses it.
    day = subprocess.run(["sh", "-c", 'printf %s "retrain-fraud-$(date -u +%Y%m%d)"'], capture_output=True,
                         text=True, timeout=5, check=True).stdout
    assert re.fullmatch(r"retrain-fraud-\d{8}", day)


# --- the crontab -------------------------------------------------------------------------------

ENV_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)")


def crontab(path: Path = CRONTAB) -> tuple[dict[str, str], list[tuple[list[str], str]]]:
    """(environment lines, [(five time fields, command)]) of the crontab, as cron reads it."""
    env: dict[str, str] = {}
    jobs: list[tuple[list[str], str]] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = ENV_LINE.fullmatch(stripped)
        if match:
            env[match[1]] = match[2]
            continue
        parts = stripped.split(None, 5)
        assert len(parts) == 6, f"line {number}: neither NAME=value nor five time fields and a command"
        jobs.append((parts[:5], parts[5]))
    return env, jobs


def cron_command(command: str) -> str:
    """The command cron hands to SHELL: `\\%` becomes `%` (an unescaped `%` would end it)."""
    return command.replace("\\%", "%")


def test_crontab_environment():
    env, _ = crontab()
    assert env["SHELL"] == "/bin/bash"
    assert re.fullmatch(r"https?://[\w.-]+:8265", env["RAY_ADDRESS"])
    assert env.get("CRON_TZ") == "UTC"
    assert "SIRA_API_KEY" not in env


def test_crontab_runs_the_retrain_job_nightly_at_0230():
    env, jobs = crontab()
    assert len(jobs) == 1
    [(fields, command)] = jobs
    assert schedule_ok(" ".join(fields))
    assert fields == NIGHTLY
    assert not re.search(r"(?<!\\)%", command), "an unescaped % ends a crontab command"
    shell_syntax_ok(env["SHELL"], cron_command(command))
    check_submit(submit_params(cron_command(command)))


def test_crontab_holds_no_secret():
    text = CRONTAB.read_text()
    assert not API_KEY_SHAPE.search(text)
    assert not re.search(r"SIRA_API_KEY=\S", text.replace("SIRA_API_KEY=...", ""))


# --- the Kubernetes CronJob --------------------------------------------------------------------

def kubelet_expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of a container's command: `$(NAME)` of a defined variable becomes its value,
    `$$` becomes `$`, anything else stays as written."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            if text[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if text[i + 1] == "(" and ")" in text[i + 2:]:
                end = text.index(")", i + 2)
                name = text[i + 2:end]
                out.append(env.get(name, f"$({name})"))
                i = end + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


# The fields this manifest may use, by object, from the Kubernetes API reference (batch/v1, core/v1).
# A misspelt field is dropped with only a warning by `kubectl apply`; here it fails.
FIELDS = {
    "CronJob": {"apiVersion", "kind", "metadata", "spec"},
    "ObjectMeta": {"name", "namespace", "labels", "annotations"},
    "CronJobSpec": {"schedule", "timeZone", "startingDeadlineSeconds", "concurrencyPolicy", "suspend", "jobTemplate",
                    "successfulJobsHistoryLimit", "failedJobsHistoryLimit"},
    "JobTemplateSpec": {"metadata", "spec"},
    "JobSpec": {"activeDeadlineSeconds", "backoffLimit", "backoffLimitPerIndex", "completionMode", "completions",
                "manualSelector", "maxFailedIndexes", "parallelism", "podFailurePolicy", "podReplacementPolicy",
                "selector", "suspend", "template", "ttlSecondsAfterFinished"},
    "PodTemplateSpec": {"metadata", "spec"},
    "PodSpec": {"activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "containers", "dnsPolicy",
                "imagePullSecrets", "initContainers", "nodeSelector", "priorityClassName", "restartPolicy",
                "securityContext", "serviceAccountName", "terminationGracePeriodSeconds", "tolerations", "volumes"},
    "PodSecurityContext": {"fsGroup", "runAsGroup", "runAsNonRoot", "runAsUser", "seccompProfile",
                           "supplementalGroups"},
    "Container": {"args", "command", "env", "envFrom", "image", "imagePullPolicy", "name", "resources",
                  "securityContext", "volumeMounts", "workingDir"},
    "SecurityContext": {"allowPrivilegeEscalation", "capabilities", "privileged", "readOnlyRootFilesystem",
                        "runAsGroup", "runAsNonRoot", "runAsUser", "seccompProfile"},
    "EnvVar": {"name", "value", "valueFrom"},
    "EnvFromSource": {"configMapRef", "secretRef", "prefix"},
    "LocalObjectReference": {"name", "optional"},
    "SecretVolumeSource": {"secretName", "items", "defaultMode", "optional"},
    "EnvVarSource": {"configMapKeyRef", "secretKeyRef", "fieldRef", "resourceFieldRef"},
    "KeySelector": {"name", "key", "optional"},
    "ResourceRequirements": {"requests", "limits"},
    "VolumeMount": {"name", "mountPath", "readOnly", "subPath"},
    "Volume": {"name", "emptyDir", "configMap", "secret"},
}
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?")
UNITS = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
         "Ti": 2**40}


def cronjob(path: Path = CRONJOB) -> dict:
    return yaml.safe_load(path.read_text())  # one document, as `kubectl apply -f` reads it


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def only_known(kind: str, obj: dict, where: str) -> list[str]:
    assert isinstance(obj, dict), f"{where} must be a mapping"
    return [f"{where}.{key}" for key in obj if key not in FIELDS[kind]]


def unknown_fields(doc: dict) -> list[str]:
    bad = only_known("CronJob", doc, "")
    bad += only_known("ObjectMeta", doc["metadata"], "metadata")
    spec = doc["spec"]
    bad += only_known("CronJobSpec", spec, "spec")
    template = spec["jobTemplate"]
    bad += only_known("JobTemplateSpec", template, "spec.jobTemplate")
    bad += only_known("JobSpec", template["spec"], "spec.jobTemplate.spec")
    bad += only_known("PodTemplateSpec", template["spec"]["template"], "spec.jobTemplate.spec.template")
    pod = pod_spec(doc)
    where = "spec.jobTemplate.spec.template.spec"
    bad += only_known("PodSpec", pod, where)
    bad += only_known("PodSecurityContext", pod.get("securityContext", {}), f"{where}.securityContext")
    for i, container in enumerate(pod["containers"]):
        at = f"{where}.containers[{i}]"
        bad += only_known("Container", container, at)
        bad += only_known("SecurityContext", container.get("securityContext", {}), f"{at}.securityContext")
        bad += only_known("ResourceRequirements", container.get("resources", {}), f"{at}.resources")
        for j, var in enumerate(container.get("env", [])):
            bad += only_known("EnvVar", var, f"{at}.env[{j}]")
            source = var.get("valueFrom", {})
            bad += only_known("EnvVarSource", source, f"{at}.env[{j}].valueFrom")
            for ref in ("configMapKeyRef", "secretKeyRef"):
                if ref in source:
                    bad += only_known("KeySelector", source[ref], f"{at}.env[{j}].valueFrom.{ref}")
        for j, source in enumerate(container.get("envFrom", [])):
            bad += only_known("EnvFromSource", source, f"{at}.envFrom[{j}]")
            for ref in ("configMapRef", "secretRef"):
                if ref in source:
                    bad += only_known("LocalObjectReference", source[ref], f"{at}.envFrom[{j}].{ref}")
        for j, mount in enumerate(container.get("volumeMounts", [])):
            bad += only_known("VolumeMount", mount, f"{at}.volumeMounts[{j}]")
    for j, volume in enumerate(pod.get("volumes", [])):
        bad += only_known("Volume", volume, f"{where}.volumes[{j}]")
        if "secret" in volume:
            bad += only_known("SecretVolumeSource", volume["secret"], f"{where}.volumes[{j}].secret")
    return bad


def test_cronjob_is_a_batch_v1_cronjob_with_known_fields():
    doc = cronjob()
    assert doc["apiVersion"] == "batch/v1"
    assert doc["kind"] == "CronJob"
    assert unknown_fields(doc) == []
    name = doc["metadata"]["name"]
    # The controller appends 11 characters to name each Job, which must stay a 63-character label.
    assert DNS_LABEL.fullmatch(name) and len(name) <= 52


def test_cronjob_schedule_matches_the_crontab():
    spec = cronjob()["spec"]
    assert schedule_ok(spec["schedule"])
    assert spec["schedule"].split() == NIGHTLY == crontab()[1][0][0]
    zoneinfo.ZoneInfo(spec["timeZone"])  # an IANA name, as the controller requires
    assert spec["timeZone"] == "Etc/UTC"
    assert spec["concurrencyPolicy"] == "Forbid"
    for field in ("startingDeadlineSeconds", "successfulJobsHistoryLimit", "failedJobsHistoryLimit"):
        assert isinstance(spec[field], int) and spec[field] >= (1 if field == "startingDeadlineSeconds" else 0)
    job = spec["jobTemplate"]["spec"]
    assert isinstance(job["backoffLimit"], int) and 0 <= job["backoffLimit"] <= 3


def test_cronjob_pod_runs_the_same_submit_as_the_crontab():
    pod = pod_spec(cronjob())
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    [container] = pod["containers"]
    assert DNS_LABEL.fullmatch(container["name"])
    assert container["image"] == "ghcr.io/example/sira:latest"
    command = container["command"]
    assert all(isinstance(word, str) for word in command)
    assert command[:2] == ["/bin/sh", "-c"] and len(command) == 3 and "args" not in container
    env = {var["name"]: "value-of-" + var["name"] for var in container["env"]}
    script = kubelet_expand(command[2], env)
    shell_syntax_ok("sh", script)
    params = submit_params(script)
    check_submit(params)
    _, [(_, cron_line)] = crontab()
    assert params == submit_params(cron_command(cron_line))  # the two schedulers submit the same job


def test_cronjob_takes_the_address_from_a_configmap_and_the_key_from_a_secret():
    [container] = pod_spec(cronjob())["containers"]
    env = {var["name"]: var for var in container["env"]}
    for var in env.values():
        assert ("value" in var) != ("valueFrom" in var), var["name"]
        if re.search(r"KEY|SECRET|TOKEN|PASSWORD", var["name"]) and not var["name"].endswith(("_FILE", "_PATH")):
            # a *_FILE or *_PATH names a file of a mounted Secret: tests/deploy/test_deploy_secrets.py
            assert "value" not in var, f"{var['name']} must come from a Secret"
    assert set(env["RAY_ADDRESS"]["valueFrom"]["configMapKeyRef"]) >= {"name", "key"}
    for name in ("SIRA_API_KEY", "SIRA_DATABASE_URL"):  # a DSN may hold a password
        secret = env[name]["valueFrom"]["secretKeyRef"]
        assert set(secret) >= {"name", "key"} and not secret.get("optional", False)
    assert not API_KEY_SHAPE.search(CRONJOB.read_text())
    # the secrets the settings name as files: a Secret volume, read-only
    pod = pod_spec(cronjob())
    secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
    assert [m["readOnly"] for m in container["volumeMounts"] if m["name"] in secret_volumes] == [True]


def _quantity(text: str | int) -> float:
    match = QUANTITY.fullmatch(str(text))
    assert match, f"not a Kubernetes quantity: {text!r}"
    return float(match[1]) * UNITS[match[2]]


def test_cronjob_container_is_bounded_and_locked_down():
    pod = pod_spec(cronjob())
    [container] = pod["containers"]
    resources = container["resources"]
    for resource in ("cpu", "memory"):
        assert _quantity(resources["requests"][resource]) <= _quantity(resources["limits"][resource])
    effective = {**pod.get("securityContext", {}), **container["securityContext"]}
    assert effective["runAsNonRoot"] is True
    assert effective["readOnlyRootFilesystem"] is True
    assert effective["allowPrivilegeEscalation"] is False
    # A read-only root needs a writable /tmp for ray's packaging of the working dir.
    volumes = {volume["name"] for volume in pod.get("volumes", [])}
    mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
    assert mounts.get("/tmp") in volumes


# --- the webhook delivery schedule (retries; the retrain's events if its job could not deliver) ----------

def test_webhook_delivery_is_scheduled_every_5_minutes_on_cron_and_kubernetes():
    from typer.testing import CliRunner

    from sira.cli.main import app

    env, jobs = crontab(WEBHOOKS_CRONTAB)
    assert env["SHELL"] == "/bin/bash" and env.get("CRON_TZ") == "UTC" and "SIRA_API_KEY" not in env
    [(fields, command)] = jobs
    assert schedule_ok(" ".join(fields)) and fields == ["*/5", "*", "*", "*", "*"]
    shell_syntax_ok(env["SHELL"], cron_command(command))
    assert "sira webhooks deliver --json" in command
    assert not API_KEY_SHAPE.search(WEBHOOKS_CRONTAB.read_text())
    doc = cronjob(WEBHOOKS_CRONJOB)
    assert doc["apiVersion"] == "batch/v1" and doc["kind"] == "CronJob" and unknown_fields(doc) == []
    assert DNS_LABEL.fullmatch(doc["metadata"]["name"]) and len(doc["metadata"]["name"]) <= 52
    assert doc["spec"]["schedule"].split() == fields and doc["spec"]["concurrencyPolicy"] == "Forbid"
    zoneinfo.ZoneInfo(doc["spec"]["timeZone"])
    [container] = pod_spec(doc)["containers"]
    assert container["command"] == ["sira", "webhooks", "deliver", "--json"]
    assert {v["name"] for v in container["env"]} >= {"SIRA_DATABASE_URL", "SIRA_WEBHOOK_SECRET_FILE"}
    # the command both run is one the CLI has, with these options
    assert CliRunner().invoke(app, ["webhooks", "deliver", "--help"]).exit_code == 0
