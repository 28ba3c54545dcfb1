"""Foundations every stage uses: settings, errors, the database (pool, transactions, migrations),
Ray's one initialiser, files, API keys and roles, the audit log, the artifact store, pure statistics
and progress bars. Imports nothing else of SIRA."""

__all__ = ["config", "errors", "db", "migrations", "ray_runtime", "files", "auth", "audit", "artifacts", "stats", "progress"]
