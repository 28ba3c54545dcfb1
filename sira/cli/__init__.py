"""The `sira` command."""

__all__ = ["main", "common", "database", "data", "train", "governance", "monitor", "serve", "demo", "jobs"]
