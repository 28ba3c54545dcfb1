"""Events in: validation, PII tokenisation, bulk loads on Ray, the stream consumer and labels."""

__all__ = ["events", "pii", "bulk", "stream", "labels"]
