"""`python -m sira` runs the CLI."""

from sira.cli import run

run()
