"""The HTTP layer: the FastAPI application, its routes and schemas, and the Ray Serve deployment."""

__all__ = ["app", "deps", "middleware", "scoring", "deployment"]
