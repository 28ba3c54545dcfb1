"""PII redaction: nothing personal is stored or logged in the clear.

Known fields follow :data:`FIELD_POLICY`: card numbers, emails, phones, IPs
and device ids become keyed HMAC tokens (equal inputs give equal tokens, so
features like "new device" still work, but a token cannot be reversed without
the key); names, addresses, national ids, CVVs and the like are dropped.
Every other string anywhere in the payload (unknown fields, ids) is scanned:
Luhn-valid card numbers, emails, phone numbers and IP addresses inside it are
replaced by tokens, and free text (two or more words, where a name or an
address could hide) becomes a token as a whole.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Action = Literal["tokenize", "drop"]

# field name -> (action, kind of token). Kinds namespace the HMAC so a phone
# and an email that share digits never share a token.
FIELD_POLICY: dict[str, tuple[Action, str]] = {
    "card_number": ("tokenize", "pan"),
    "pan": ("tokenize", "pan"),
    "email": ("tokenize", "email"),
    "phone": ("tokenize", "phone"),
    "phone_number": ("tokenize", "phone"),
    "ip_address": ("tokenize", "ip"),
    "ip": ("tokenize", "ip"),
    "device_id": ("tokenize", "device"),
    "name": ("drop", ""),
    "first_name": ("drop", ""),
    "last_name": ("drop", ""),
    "full_name": ("drop", ""),
    "cardholder_name": ("drop", ""),
    "address": ("drop", ""),
    "street": ("drop", ""),
    "postal_code": ("drop", ""),
    "zip": ("drop", ""),
    "birth_date": ("drop", ""),
    "date_of_birth": ("drop", ""),
    "dob": ("drop", ""),
    "national_id": ("drop", ""),
    "ssn": ("drop", ""),
    "passport": ("drop", ""),
    "iban": ("drop", ""),
    "cvv": ("drop", ""),
    "cvc": ("drop", ""),
    "pin": ("drop", ""),
    "card_expiry": ("drop", ""),
    "expiry": ("drop", ""),
    "password": ("drop", ""),
}

TOKEN_PREFIX = "tok_"
_TOKEN = re.compile(r"^tok_[a-z]+_[0-9a-f]{24}$")
# Two alphabetic words in a row: prose, which may name a person or an address.
_FREE_TEXT = re.compile(r"[^\W\d_]{2,}\.?\s+[^\W\d_]{1,}")
_DIGIT_RUNS = re.compile(r"\d+(?:[ -]\d+)*")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"(?<![\w+])\+\d[\d ().-]{6,18}\d(?!\d)")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
# Cheap pre-check: text without '@', ':', '+digit', a dotted number or 13 digits
# (single spaces or dashes between them allowed) holds none of the above.
_MAYBE_PII = re.compile(r"@|:|\+\d|\d\.\d|(?:\d[ -]?){12}\d")
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![0-9A-Fa-f:])")


def luhn_valid(digits: str) -> bool:
    """True when a string of digits passes the Luhn check (card numbers do)."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass(frozen=True)
class Redactor:
    """Tokenises and drops PII with one HMAC key."""

    key: bytes

    @classmethod
    def from_secret(cls, secret: str) -> "Redactor":
        return cls(secret.encode("utf-8"))

    def token(self, kind: str, value: str) -> str:
        """The keyed token of a normalised PII value."""
        return _token(self.key, kind, _normalize(kind, value))

    def scrub_text(self, text: str) -> str:
        """Replace card numbers, emails, phones and IPs inside free text by tokens."""
        if not text or is_token(text) or not _MAYBE_PII.search(text):
            return text
        text = _EMAIL.sub(lambda m: self.token("email", m.group(0)), text)

        text = _replace_pans(text, lambda digits: self.token("pan", digits))
        text = _PHONE.sub(lambda m: self.token("phone", m.group(0)), text)

        def ip(m: re.Match[str]) -> str:
            try:
                ipaddress.ip_address(m.group(0))
            except ValueError:
                return m.group(0)
            return self.token("ip", m.group(0))

        text = _IPV4.sub(ip, text)
        return _IPV6.sub(ip, text)

    def scrub_value(self, text: str) -> str:
        """A data value made safe: :meth:`scrub_text`, and free text (two or more words) replaced
        by a token, since names and addresses inside prose cannot be recognised reliably."""
        return _scrub_value(self, text)

    def field(self, name: str, value: Any) -> tuple[bool, Any]:
        """Apply the policy to one top-level field: (keep?, redacted value)."""
        policy = FIELD_POLICY.get(name.lower())
        if value is None:
            return policy is None or policy[0] != "drop", None
        if policy is not None:
            action, kind = policy
            if action == "drop":
                return False, None
            return True, value if is_token(str(value)) else self.token(kind, str(value))
        return True, self.scrub(value)

    def scrub(self, value: Any) -> Any:
        """Scrub any JSON-like value recursively (nested field names follow the policy too)."""
        if isinstance(value, str):
            return self.scrub_value(value)
        if isinstance(value, Mapping):
            out = {}
            for k, v in value.items():
                keep, redacted = self.field(str(k), v)
                if keep:
                    out[self.scrub_text(str(k))] = redacted
            return out
        if isinstance(value, (list, tuple)):
            return [self.scrub(v) for v in value]
        if isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer():
            # a card or phone number sent as a JSON number is still one
            digits = str(int(value))
            scrubbed = self.scrub_value(digits)
            return scrubbed if scrubbed != digits else value
        return value

    def payload(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A whole raw record made safe to store (used for dead letters and logs): redacted, NUL
        characters (which PostgreSQL refuses) replaced, nesting cut at :data:`MAX_NESTING` levels."""
        return self.scrub(_storable(dict(record)))


MAX_NESTING = 16  # levels of objects/lists SIRA stores in free-form fields


def _storable(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, (Mapping, list, tuple)) and depth >= MAX_NESTING:
        return f"<nested more than {MAX_NESTING} levels deep>"
    if isinstance(value, Mapping):
        return {_storable(str(k)): _storable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_storable(v, depth + 1) for v in value]
    return value


@functools.lru_cache(maxsize=262_144)
def _scrub_value(redactor: "Redactor", text: str) -> str:
    # Ids (customers, terminals, cards) repeat across events: scrub each once.
    text = redactor.scrub_text(text)
    if _FREE_TEXT.search(text):
        return redactor.token("text", text)
    return text


def _replace_pans(text: str, token: Callable[[str], str]) -> str:
    """Replace card numbers: 13-19 digits passing Luhn, in groups split by single spaces or dashes.

    A candidate starts and ends on group boundaries, so "order-4111111111111111-2"
    and "ref 12 4111 1111 1111 1111" are both caught, and a longer number is
    never cut in the middle of a group.
    """
    out, last = [], 0
    for run in _DIGIT_RUNS.finditer(text):
        groups = [(m.start() + run.start(), m.end() + run.start()) for m in re.finditer(r"\d+", run.group(0))]
        i = 0
        while i < len(groups):
            found = None
            for j in range(len(groups) - 1, i - 1, -1):  # the longest candidate first
                digits = "".join(text[a:b] for a, b in groups[i: j + 1])
                if 13 <= len(digits) <= 19 and luhn_valid(digits):
                    found = (j, digits)
                    break
            if found is None:
                i += 1
                continue
            j, digits = found
            out += [text[last: groups[i][0]], token(digits)]
            last = groups[j][1]
            i = j + 1
    out.append(text[last:])
    return "".join(out)


@functools.lru_cache(maxsize=262_144)
def _token(key: bytes, kind: str, normalized: str) -> str:
    # Cards, devices and emails repeat across a customer's events: hash each once.
    digest = hmac.new(key, f"{kind}:{normalized}".encode(), hashlib.sha256).hexdigest()
    return f"{TOKEN_PREFIX}{kind}_{digest[:24]}"


def is_token(value: str) -> bool:
    return bool(_TOKEN.match(value))


def _normalize(kind: str, value: str) -> str:
    value = value.strip()
    if kind == "pan":
        return re.sub(r"\D", "", value)
    if kind == "email":
        return value.lower()
    if kind == "phone":
        digits = re.sub(r"\D", "", value)
        return f"+{digits}"
    if kind == "ip":
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            return value
    return value
