import asyncio

import asyncpg
import numpy as np
import pytest
from asyncpg import exceptions as pg
from hypothesis import given
from hypothesis import strategies as st

from sira.core.db import UNAVAILABLE, describe_dsn, is_unavailable
from sira.demo.simulate import _luhn_complete
from sira.ingest.pii import luhn_valid


@given(st.lists(st.integers(0, 9), min_size=15, max_size=15))
def test_generated_card_numbers_always_pass_luhn(digits):
    (number,) = _luhn_complete(np.array([digits]))
    assert luhn_valid(number) and number[:15] == "".join(map(str, digits))


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789!*-_", min_size=1, max_size=30))
def test_described_dsn_never_shows_the_password(password):
    dsn = f"postgresql://sira:{password}@db.internal:5432/sira"
    assert describe_dsn(dsn) == "postgresql://sira@db.internal:5432/sira"


def test_socket_dsn_names_the_socket_folder():
    assert describe_dsn("postgresql://postgres:@/sira?host=/var/lib/sira/x/pgdata") == (
        "postgresql://postgres@/var/lib/sira/x/pgdata/sira"
    )


# -- "the database is unavailable": one classification -------------------------------------------

@pytest.mark.parametrize("exc", [
    pg.CannotConnectNowError("the database system is starting up"),
    pg.CannotConnectNowError("the database system is in recovery mode"),
    pg.CrashShutdownError("terminating connection because of crash of another server process"),
    pg.AdminShutdownError("terminating connection due to administrator command"),
    pg.TooManyConnectionsError("sorry, too many clients already"),
    pg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    pg.ConnectionFailureError("connection failure"),
    pg.QueryCanceledError("canceling statement due to statement timeout"),
    pg.InterfaceError("connection is closed"),
    pg.InterfaceError("pool is closing"),
    pg._base.InternalClientError("cannot switch to state 11; another operation (2) is in progress"),
], ids=lambda e: type(e).__name__)
def test_postgres_going_away_is_unavailable(exc):
    assert isinstance(exc, UNAVAILABLE) and is_unavailable(exc)


def test_a_socket_error_is_unavailable_when_the_database_client_raised_it():
    """Where a route's OSError came from decides: the database client's (the Unix socket gone, the port
    refusing, an acquire timing out) is an outage; a file the route itself could not read is not."""

    async def connect(dsn: str) -> None:
        await asyncpg.connect(dsn, timeout=5)

    for dsn in ("postgresql://sira@/sira?host=/nonexistent-sira-socket-folder", "postgresql://sira@127.0.0.1:1/sira"):
        with pytest.raises(OSError) as raised:
            asyncio.run(connect(dsn))
        assert is_unavailable(raised.value), repr(raised.value)
    with pytest.raises(OSError) as raised:
        open("/nonexistent-sira-folder/artifact.txt")  # noqa: SIM115
    assert not is_unavailable(raised.value)
    assert not is_unavailable(TimeoutError("a webhook's receiver"))


@pytest.mark.parametrize("exc", [
    pg.UniqueViolationError("duplicate key value violates unique constraint"),
    asyncpg.DataError("invalid input syntax for type integer"),
    pg._base.DataError("invalid input for query argument $1: 'x' (an integer is required)"),
    pg.PostgresSyntaxError("syntax error at or near"),
    pg.InvalidPasswordError("password authentication failed"),
    ValueError("not the database"),
    RuntimeError("not the database"),
], ids=lambda e: type(e).__name__)
def test_mistakes_and_refusals_are_not_outages(exc):
    assert not is_unavailable(exc)


def test_a_connection_or_pool_that_cannot_be_made_is_an_outage(tmp_path):
    """Serving's flusher trips the database breaker on what db.is_unavailable calls an outage: the recorder's
    pool failing to connect must count (it became a plain ServiceUnavailable when db.create_pool wrapped it)."""
    from sira.core import db
    from sira.core.errors import ServiceUnavailable

    dsn = f"postgresql://postgres@/sira?host={tmp_path}"  # no server listens on this socket folder
    for make in (lambda: db.connect(dsn), lambda: db.create_pool(dsn, min_size=1, max_size=1, timeout=2)):
        with pytest.raises(ServiceUnavailable) as caught:
            asyncio.run(make())
        assert caught.value.code == "unavailable" and is_unavailable(caught.value)
