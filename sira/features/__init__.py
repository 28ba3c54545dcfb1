"""Feature definitions and entity history: the pure window maths and the snapshots serving and
training read (point in time)."""

__all__ = ["definitions", "store", "tiles"]
