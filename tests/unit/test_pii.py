import pytest

from sira.pii import Redactor, is_token, luhn_valid

R = Redactor(b"test-key")


@pytest.mark.parametrize(
    "text, secret",
    [
        ("card 4111 1111 1111 1111 declined", "4111 1111 1111 1111"),
        ("pan=4111-1111-1111-1111;", "4111-1111-1111-1111"),
        ("4000056655665556", "4000056655665556"),
        ("mail jane.doe+x@example.org now", "jane.doe+x@example.org"),
        ("call +221 77 123 45 67", "+221 77 123 45 67"),
        ("from 203.0.113.7 via", "203.0.113.7"),
        ("v6 2001:db8::8a2e:370:7334 ok", "2001:db8::8a2e:370:7334"),
    ],
)
def test_pii_inside_free_text_becomes_a_token(text, secret):
    scrubbed = R.scrub_text(text)
    assert secret not in scrubbed
    assert "tok_" in scrubbed


@pytest.mark.parametrize("text", ["order 1234567890123", "amount 12.50 EUR", "ref 2026-09-01", "999.1.2.3 x"])
def test_ordinary_text_is_left_alone(text):
    assert R.scrub_text(text) == text


def test_tokens_are_keyed_and_deterministic():
    a = R.token("pan", "4111 1111 1111 1111")
    assert a == R.token("pan", "4111111111111111")  # normalised
    assert a != Redactor(b"other-key").token("pan", "4111111111111111")
    assert is_token(a) and a.startswith("tok_pan_")
    assert R.token("email", "Jane@Example.com") == R.token("email", "jane@example.com")


def test_policy_tokenises_and_drops_fields_and_nested_values():
    scrubbed = R.scrub(
        {"email": "a@b.co", "first_name": "Jane", "note": {"cvv": "123", "text": "card 4111111111111111"},
         "tags": ["ip 10.1.2.3"], "ok": 3}
    )
    assert set(scrubbed) == {"email", "note", "tags", "ok"}
    assert is_token(scrubbed["email"])
    assert scrubbed["note"].keys() == {"text"} and "4111" not in scrubbed["note"]["text"]
    assert "10.1.2.3" not in scrubbed["tags"][0]
    assert scrubbed["ok"] == 3


def test_luhn():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
