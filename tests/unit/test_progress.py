"""Progress bars: drawn on a terminal only, on the stream given (stderr), never with --quiet."""

import io

import pytest

from sira import progress


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
