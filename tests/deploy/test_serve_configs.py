"""The Serve configs in serve_configs/: valid for Ray Serve and for SIRA; bad ones refused with the field named."""

from pathlib import Path

import pytest
import yaml

from sira.core.errors import InvalidInput
from sira.http.deployment import ServeSpec
from sira.serving.config import ServingConfig

CONFIGS = Path(__file__).resolve().parents[2] / "serve_configs"


@pytest.mark.parametrize("name", ["local.yaml", "production.yaml"])
def test_shipped_configs_are_valid_for_ray_serve_and_for_sira(name):
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load((CONFIGS / name).read_text())
    schema = ServeDeploySchema.model_validate(data)  # Ray's own validation of `serve deploy` files
    app = schema.applications[0]
    assert app.import_path == "sira.http.deployment:build_app" and app.route_prefix == "/"
    spec = ServeSpec.from_file(CONFIGS / name)
    config = ServingConfig.from_dict(spec.options["user_config"])
    assert config.models == ["fraud"] and config.max_batch_size >= 1
    assert {"autoscaling_config", "max_ongoing_requests", "ray_actor_options"} <= set(spec.options)
    assert spec.application() is not None  # binds without a running Ray


def test_production_keeps_secrets_out_and_durability_on():
    text = (CONFIGS / "production.yaml").read_text()
    assert "postgresql://" not in text and "sira_" not in text.replace("sira.serving.service", "")
    spec = ServeSpec.from_file(CONFIGS / "production.yaml")
    assert spec.options["user_config"]["spool_fsync"] is True
    assert spec.options["autoscaling_config"]["min_replicas"] >= 2


def test_bad_serving_configs_name_the_field(tmp_path):
    with pytest.raises(InvalidInput) as err:
        ServingConfig.from_dict({"max_batch_size": 0})
    assert err.value.code == "invalid_config" and "max_batch_size" in err.value.message
    with pytest.raises(InvalidInput, match="spoolz"):
        ServingConfig.from_dict({"spoolz": 1})
    with pytest.raises(InvalidInput, match="models"):
        ServingConfig.from_dict({"models": ["Not A Name"]})
    bad = yaml.safe_load((CONFIGS / "local.yaml").read_text())
    bad["applications"][0]["deployments"][0]["replicas_please"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(InvalidInput, match="replicas_please"):
        ServeSpec.from_file(path)
    path.write_text("applications: [")
    with pytest.raises(InvalidInput, match="not valid YAML"):
        ServeSpec.from_file(path)
    with pytest.raises(InvalidInput, match="no Serve config"):
        ServeSpec.from_file(tmp_path / "missing.yaml")


def test_sira_serve_reads_the_local_config_shipped_with_the_package(tmp_path, monkeypatch):
    """One copy of the local config: the package's is serve_configs/local.yaml itself, found from any folder."""
    monkeypatch.chdir(tmp_path)
    assert ServeSpec.local() == ServeSpec.from_file(CONFIGS / "local.yaml")


def test_the_wheel_carries_the_local_config(tmp_path):
    """Installed from a wheel (no checkout beside it), `sira serve` still has its config: the file itself."""
    import subprocess
    import sys
    import zipfile

    root = CONFIGS.parent
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(root)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    [wheel] = tmp_path.glob("sira-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert z.read("sira/http/local.yaml") == (CONFIGS / "local.yaml").read_bytes()


def test_the_deployment_itself_sets_no_option_the_configs_set():
    """Deployment options live in serve_configs/*.yaml alone (they were written three times)."""
    from ray import serve

    from sira.http.deployment import SiraIngress

    @serve.deployment(name="sira")
    class Bare:  # Serve's defaults
        pass

    assert SiraIngress._deployment_config == Bare._deployment_config
    assert SiraIngress.ray_actor_options == Bare.ray_actor_options


def test_each_local_serve_has_a_fallback_proxy_port_of_its_own(monkeypatch):
    """HAProxy's backup server, Serve's fallback proxy, listened on 8500 with SO_REUSEPORT in every local Serve:
    two `sira serve` on one machine shared it, and one answered the other's callers (bearer keys included)
    while its own replica was starting. Each local Ray now takes ports the kernel hands out; set ones stay."""
    import socket

    from sira.core.ray_runtime import FALLBACK_PROXY_PORTS, haproxy_ports

    for name in FALLBACK_PROXY_PORTS:
        monkeypatch.delenv(name, raising=False)
    # another local Serve's fallback proxy, bound as Serve binds it (SO_REUSEPORT: a second bind would share it)
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("0.0.0.0", 0))
    other.listen()
    try:
        first, second = haproxy_ports(), haproxy_ports()  # two SIRAs starting their Rays
        for name in FALLBACK_PROXY_PORTS:
            ports = {int(first[name]), int(second[name])}
            assert len(ports) == 2 and not ports & {8500, 9500, other.getsockname()[1]}
            with socket.socket() as probe:  # free when chosen
                probe.bind(("0.0.0.0", int(first[name])))
    finally:
        other.close()
    monkeypatch.setenv("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "12345")
    assert "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT" not in haproxy_ports()  # what the operator set is Ray's


def test_haproxy_listeners_never_take_their_fixed_defaults(monkeypatch):
    """Free when Ray started, 9101 was bound by another local Serve before this one's HAProxy started (a demo
    tunes first): HAProxy crashed on start. A local Ray's listeners take ports the kernel hands out."""
    from sira.core.ray_runtime import HAPROXY_PORTS, haproxy_ports

    for name in HAPROXY_PORTS:
        monkeypatch.delenv(name, raising=False)
    for _ in range(3):
        ports = haproxy_ports()
        assert {ports[name] for name in HAPROXY_PORTS}.isdisjoint({str(p) for p in HAPROXY_PORTS.values()}), ports


def test_haproxy_listeners_move_off_taken_ports(monkeypatch):
    import socket

    from sira.core.ray_runtime import HAPROXY_PORTS, haproxy_ports

    for name in HAPROXY_PORTS:
        monkeypatch.delenv(name, raising=False)
    taken = socket.socket()
    try:
        taken.bind(("0.0.0.0", HAPROXY_PORTS["RAY_SERVE_HAPROXY_STATS_PORT"]))
        taken.listen()
    except OSError:
        pass  # something else already holds it: the same situation
    try:
        ports = haproxy_ports()
        assert ports["RAY_SERVE_HAPROXY_STATS_PORT"] != "8404"
        with socket.socket() as probe:  # the port chosen instead is free
            probe.bind(("0.0.0.0", int(ports["RAY_SERVE_HAPROXY_STATS_PORT"])))
    finally:
        taken.close()
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "12345")
    assert "RAY_SERVE_HAPROXY_STATS_PORT" not in haproxy_ports()  # what is set is left alone
