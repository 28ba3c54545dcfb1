"""`sira demo`: the simulator and the end-to-end story."""

__all__ = ["simulate", "story"]
