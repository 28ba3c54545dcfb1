"""The HTTP layer: the FastAPI application, its routes and schemas, and the Ray Serve deployment."""

__all__ = ["app", "deps", "errors", "middleware", "health", "events", "registry", "access", "scoring", "deployment"]
