"""The scoring engine: the model runtime and reason codes, the scoring service (histories,
idempotency, hot swap, prediction records, resilience) and the spool. No web code."""

__all__ = ["scoring", "config", "schemas", "intake", "service", "replica", "histories", "idempotency", "answers",
           "notifications", "slots", "records", "spool", "resilience", "metrics"]
