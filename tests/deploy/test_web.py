"""The web UI's own tests (Vitest + Testing Library, web/src/**/*.test.tsx) and type check, run with the
machine's Node: part of `make test`, skipped naming the package where Node or the installed packages are absent."""

import shutil
import subprocess
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "web"


def npm() -> str:
    found = shutil.which("npm")
    if not found:
        pytest.skip("npm not found: install Debian's nodejs and npm (20.19+) for the web UI's tests")
    if not (WEB / "node_modules" / ".sira-installed").exists():
        pytest.skip("web/node_modules is not installed: `make web` (npm ci)")
    return found


def test_the_components_tests_pass():
    done = subprocess.run([npm(), "test", "--silent"], cwd=WEB, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout


def test_the_types_check():
    done = subprocess.run([npm(), "run", "--silent", "typecheck"], cwd=WEB, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
