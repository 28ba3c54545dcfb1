"""Every documented `ray job submit` of a SIRA job is one that works: its runtime env comes from `sira jobs
runtime-env` (the settings, the working dir and a key minted for the job), and a train or retrain driver reserves
its CPU. A plain `ray job submit --working-dir . -- python jobs/...` carries no key: on any installation with API
keys the job fails with `unauthenticated: missing credentials` (docs/cluster.md and jobs/*.py showed it)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLACES = [ROOT / "README.md", ROOT / "cluster.yaml", *sorted((ROOT / "docs").glob("*.md")),
          *sorted((ROOT / "jobs").glob("*.py")), *sorted((ROOT / "sira").rglob("*.py")),
          *sorted((ROOT / "deploy").rglob("*.*"))]


def job_commands(text: str) -> list[str]:
    """The `ray job submit ... python jobs/...` command lines of a file (a line that starts with the command,
    after a comment's `#`; continued by trailing backslashes)."""
    commands, current = [], None
    for line in text.splitlines():
        words = line.strip().lstrip("#").strip()
        if current is not None:
            current += " " + words.rstrip("\\").strip()
        elif words.startswith("ray job submit"):
            current = words.rstrip("\\").strip()
        if current is not None and not words.endswith("\\"):
            commands.append(current)
            current = None
    return [c for c in commands if "python jobs/" in c]


def test_documented_ray_job_submissions_carry_a_runtime_env_with_a_key():
    found = {}
    for path in PLACES:
        if path.is_file():
            for command in job_commands(path.read_text(errors="replace")):
                found.setdefault(str(path.relative_to(ROOT)), []).append(command)
    assert {"README.md", "docs/cluster.md", "jobs/train.py", "jobs/drift.py"} <= set(found), found
    for where, commands in found.items():
        for command in commands:
            assert "--runtime-env" in command and "--working-dir" not in command, (where, command)
            job = re.search(r"python jobs/(\w+)\.py", command)[1]
            env = re.search(r"--runtime-env (\S+)", command)[1]
            assert env.endswith("-job.yaml"), (where, command)  # `sira jobs runtime-env JOB > JOB-job.yaml`,
            # which .gitignore keeps out of git (it holds the job's key)
            if job in ("train", "retrain"):
                assert "--entrypoint-num-cpus 1" in command, (where, command)
