"""`python -m sira` runs the CLI."""

from sira.cli.main import run

run()
