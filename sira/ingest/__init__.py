"""Events in: validation, PII tokenisation, bulk loads on Ray, the stream consumers (Redis Streams, Kafka) and labels."""

__all__ = ["events", "pii", "columnar", "bulk", "stream", "kafka", "labels"]
