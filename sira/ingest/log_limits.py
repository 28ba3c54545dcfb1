"""A long-lived consumer's log during an outage: one line per distinct failure, not one per retry.

A Kafka consumer whose brokers were down wrote ~38 stderr lines a second (librdkafka's own ``%3|...|FAIL|``
line and SIRA's copy of it from the error callback, per reconnection), and during a PostgreSQL outage
asyncpg's pool printed a full traceback per attempt to restore its connection floor. :class:`OncePer` lets
the first record of each distinct failure through, counts its repeats, and lets one through again after
``every_s`` saying how many it stood for; a record's traceback becomes one line (``--debug`` keeps it).
"""

from __future__ import annotations

import logging
import re
import time

DIGITS = re.compile(r"\d+")
EVERY_S = 60.0
MOST_KEYS = 1_000  # distinct failures remembered (more: forgotten, each then shown again once)


class OncePer(logging.Filter):
    """Each distinct message (its digits aside: ports, counts, durations) once per ``every_s`` per logger and
    level, the line after a pause saying how many were held back."""

    def __init__(self, every_s: float = EVERY_S) -> None:
        super().__init__()
        self.every_s = every_s
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # key -> [when last shown, held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        debug = logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        if record.exc_info and not debug:
            one_line(record)
        if debug:
            return True
        message = record.getMessage()
        key = (record.name, record.levelno, DIGITS.sub("#", message))
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.every_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg, record.args = f"{message} (and {seen[1]:.0f} more like it in {now - seen[0]:.0f} s)", ()
        if len(self._seen) >= MOST_KEYS:
            self._seen.clear()
        self._seen[key] = [now, 0]
        return True


def one_line(record: logging.LogRecord) -> None:
    """The record's exception as the end of its message, not a traceback."""
    assert record.exc_info is not None
    _kind, exc, _tb = record.exc_info
    if exc is not None:
        detail = " ".join(str(exc).split())
        record.msg, record.args = f"{record.getMessage()}: {type(exc).__name__}{': ' + detail if detail else ''}", ()
    record.exc_info, record.exc_text = None, None


def limit(*names: str, every_s: float = EVERY_S) -> None:
    """Limit these loggers' records (once: a logger already limited keeps its filter)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OncePer) for f in logger.filters):
            logger.addFilter(OncePer(every_s))
