import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from sira.db import describe_dsn
from sira.pii import luhn_valid
from sira.simulate import _luhn_complete


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
