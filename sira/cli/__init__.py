"""The `sira` command."""

__all__ = ["main"]
