"""Features: definitions as data, and two engines behind them. Feature set v1's ("history": exact windows over
raw events kept per entity; ``history`` its maths, ``store`` its snapshots and point-in-time reads) and
feature engine v2 ("tiles": bounded per-entity state and one compiled fold for online and offline; ``tiles``
its kernels, ``hashing`` stable value hashes, ``packing`` the stored bytes, ``daily`` the one-replay daily
checkpoints, ``engine`` online and offline drivers, ``columns`` the log as Arrow columns, ``states`` stored states,
daily checkpoints and their writers)."""

__all__ = ["definitions", "history", "store", "tiles", "hashing", "packing", "daily", "engine", "columns", "states"]
