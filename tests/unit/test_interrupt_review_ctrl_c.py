"""Ctrl-C (SIGINT) in a command that sets no handler of its own ends it with one line, `error: interrupted: ...`,
and exit 130, as docs/cli.md and docs/errors.md say; `--debug` adds the traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

# a command that waits, in a plain sleep or in an event loop (as `sira train`, `tune` and `demo` do, whose
# asyncio.run turns Ctrl-C into a cancellation and then a KeyboardInterrupt), registered on the real CLI
DRIVER = """
import asyncio, sys, time
from sira.cli.common import app
from sira.cli.main import main

async def waiting_in_a_loop() -> None:
    print("waiting", file=sys.stderr, flush=True)  # once the loop runs (a signal while it is built: Python's noise)
    await asyncio.sleep(120)

@app.command("wait-a-while")
def wait_a_while(in_loop: bool = False) -> None:
    if in_loop:
        asyncio.run(waiting_in_a_loop())
    else:
        print("waiting", file=sys.stderr, flush=True)
        time.sleep(120)

sys.exit(main(sys.argv[1:], own_process=True))
"""


@pytest.mark.parametrize("args", [["wait-a-while"], ["wait-a-while", "--in-loop"], ["--debug", "wait-a-while"]])
def test_ctrl_c_ends_a_command_in_one_line_and_exit_130(tmp_path, args):
    """Typer turns a KeyboardInterrupt into a silent exit 130, which main() returned as it was: `sira train`,
    `sira tune` and `sira demo` stopped by Ctrl-C said nothing, even with --debug."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIRA_", "RAY_"))}
    env.update({"SIRA_WORKSPACE": str(tmp_path)})
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, *args], env=env, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stderr is not None and proc.stderr.readline() == "waiting\n"
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the process group
        assert proc.wait(timeout=60) == 128 + signal.SIGINT
        said = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    if "--debug" in args:
        assert "Traceback" in said and "KeyboardInterrupt" in said, said
        said = said.splitlines(keepends=True)[-1]
    assert said == "error: interrupted: wait-a-while stopped by Ctrl-C (SIGINT)\n", said
