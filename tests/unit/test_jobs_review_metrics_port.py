"""SIRA_RAY_METRICS_PORT naming a port another program holds is refused at once, as `sira serve` refuses its own
port. Until 2026-12-07 the local Ray waited ~40 s for its metrics agent, then `error: internal: Exception: The
current node timed out during startup`, exit 1."""

import os
import socket
import subprocess
import sys
import textwrap

DRIVER = textwrap.dedent("""
    import sys
    from sira.core.config import get_settings
    from sira.core.errors import SiraError
    from sira.core.ray_runtime import init_ray
    try:
        init_ray(get_settings(), "postgresql://sira@127.0.0.1:9/none")
    except SiraError as exc:
        print(exc.one_line())
        sys.exit(exc.exit_code)
    print("started")
""")


def test_a_metrics_port_in_use_is_refused_before_ray_starts(tmp_path):
    with socket.create_server(("0.0.0.0", 0)) as holder:  # another program's server on the port
        port = holder.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SIRA_", "RAY_"))}
        env.update({"SIRA_RAY_METRICS_PORT": str(port), "SIRA_WORKSPACE": str(tmp_path)})
        done = subprocess.run([sys.executable, "-c", DRIVER], env=env, capture_output=True, text=True, timeout=300,
                              cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr[-2000:])
    assert done.stdout.strip() == f"error: port_in_use: SIRA_RAY_METRICS_PORT {port} is in use (another SIRA's Ray, " \
                                  "or another program): free it, name another port, or unset it (8090, else a free port)"
