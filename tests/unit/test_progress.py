"""Progress bars: drawn on a terminal only, on the stream given (stderr), never with --quiet."""

import io

import pytest

from sira.core import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def loud():
    progress.set_quiet(False)
    yield
    progress.set_quiet(False)


def test_a_bar_is_drawn_on_a_terminal():
    stream = Terminal()
    with progress.bar("ingest: loading events", 100, stream=stream) as advance:
        advance(40)
        advance(60)
    assert "ingest: loading events" in stream.getvalue()


@pytest.mark.parametrize("stream, quiet, show", [(io.StringIO(), False, True), (Terminal(), True, True),
                                                 (Terminal(), False, False)])
def test_no_bar_off_a_terminal_with_quiet_or_when_the_caller_hides_it(stream, quiet, show):
    progress.set_quiet(quiet)
    with progress.bar("ingest", 10, stream=stream, show=show) as advance:
        advance(10)
    assert stream.getvalue() == ""
    if show:  # the row bar has no caller's switch: the CLI does not make one with --json
        rows = progress.RowProgress("scoring", stream=stream)
        rows(5, 10)
        rows.close()
        assert stream.getvalue() == ""


def test_a_row_bar_starts_with_its_first_report():
    stream = Terminal()
    rows = progress.RowProgress("scoring", stream=stream)
    rows.close()  # nothing reported: nothing drawn (an error before the first batch stays one line)
    assert stream.getvalue() == ""
    rows = progress.RowProgress("scoring", stream=stream)
    rows(5, 10)
    rows.close()
    assert "scoring" in stream.getvalue()


def test_the_clusters_messages_to_the_driver_go_to_the_log_not_stdout(capsys):
    """Ray's driver printed "(raylet) Task ... failed" on stdout in ANSI colours at every Serve shutdown."""
    import logging

    from ray._private import worker as ray_worker

    from sira.core.ray_runtime import _log_driver_messages

    _log_driver_messages()
    _log_driver_messages()  # once is enough: not wrapped twice
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    driver_log = logging.getLogger("ray.driver")  # Ray's loggers do not propagate to the root's
    driver_log.addHandler(handler)
    level = driver_log.level
    driver_log.setLevel(logging.INFO)
    try:
        ray_worker.print_to_stdstream({"lines": ["Task ServeController.graceful_shutdown failed"], "pid": "raylet",
                                       "is_err": False}, ignore_prefix=False)
    finally:
        driver_log.removeHandler(handler)
        driver_log.setLevel(level)
    out = capsys.readouterr()
    assert out.out == "" and "\x1b[" not in out.err
    assert [r.getMessage() for r in records] == ["Task ServeController.graceful_shutdown failed"]
