"""A long-lived consumer's log during an outage (sira.ingest.log_limits): one line per distinct failure, then
a count of its repeats; a traceback as one line."""

import logging
import time

from sira.ingest.log_limits import OncePer


def test_a_repeated_failure_is_shown_once_then_with_the_count_of_its_repeats():
    logger = logging.getLogger("sira.test.log_limits")
    logger.setLevel(logging.WARNING)
    shown: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = shown.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.propagate = False
    limiter = OncePer(every_s=0.2)
    logger.addFilter(limiter)
    try:
        for attempt in range(5):  # the same failure, its numbers aside
            logger.warning("Connect to 127.0.0.1:%d failed (after %dms)", 9092, attempt)
        logger.warning("1/1 brokers are down")  # another one: shown at once
        time.sleep(0.3)  # past every_s: the next repeat says how many it stands for
        logger.warning("Connect to 127.0.0.1:%d failed (after %dms)", 9092, 7)
        try:
            raise ConnectionRefusedError(111, "Connect call failed")
        except OSError:
            logger.warning("Failed to restore the pool connection floor; retrying", exc_info=True)
    finally:
        logger.removeFilter(limiter)
        logger.removeHandler(handler)
    lines = [r.getMessage() for r in shown]
    assert lines[:2] == ["Connect to 127.0.0.1:9092 failed (after 0ms)", "1/1 brokers are down"]
    assert lines[2].startswith("Connect to 127.0.0.1:9092 failed (after 7ms) (and 4 more like it in ")
    assert lines[3] == ("Failed to restore the pool connection floor; retrying: ConnectionRefusedError: "
                        "[Errno 111] Connect call failed")
    assert shown[3].exc_info is None and len(lines) == 4
