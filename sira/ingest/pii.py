"""PII redaction: nothing personal is stored or logged in the clear.

Known fields follow :data:`FIELD_POLICY`: card numbers, emails, phones, IPs
and device ids become keyed HMAC tokens (equal inputs give equal tokens, so
features like "new device" still work, but a token cannot be reversed without
the key); names, addresses (down to a ZIP code or a home city), coordinates,
national ids, bank details (IBAN, account number, sort code, routing number),
CVVs, card expiry dates, track data and the like are dropped.
Every other string anywhere in the payload (unknown fields, ids) is scanned:
Luhn-valid card numbers, IBANs (a registered country, its length, the mod-97
check), emails, phone numbers and IP addresses inside it are replaced by
tokens; a card's track data (track 1, track 2, EMV's track 2 equivalent) by
its card number's token, the rest of it (expiry, service code, discretionary
data, a name) never stored nor hashed, as PCI DSS requires after
authorisation; and free text (two or more words, where a name or an address
could hide) becomes a token as a whole.

Every scan is linear in the length of its input: no pattern here can retry a
long run from each of its starting points (emails are found by a scanner
anchored on each '@', card numbers by a window of at most 19 digits, IBANs
and track data by patterns of bounded length), so a megabyte of crafted text
costs a second or two, not hours.

Two caches save repeated work (ids, cards and emails recur across events), and
neither keeps a raw value: both are keyed by a keyed BLAKE2b digest of the
input (the key is derived from the redactor's secret, so a digest can no more
be matched against a list of card numbers than a token can), and they hold
only what is safe to store anyway: tokens, and scrubbed values of at most
:data:`CACHED_TEXT_LIMIT` characters.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import re
import string
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
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
    "tel": ("tokenize", "phone"),
    "contact_number": ("tokenize", "phone"),
    "fax": ("tokenize", "phone"),
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
    "cid": ("drop", ""),
    "card_pin": ("drop", ""),
    "pin_code": ("drop", ""),
    "bank_account": ("drop", ""),
}

# Field names as senders spell them (firstName, Date-Of-Birth, CVV2, billingAddress) are read as snake_case
# words; a name matching no policy entry is matched by the words it contains (a short or common word, such as
# name, tin or account, only where it is a word of its own, so merchant_name, distinct_terminals or account_id
# are not taken for a person's name, a tax id or an account number).
_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|[^A-Za-z0-9]+")
_PERSON = ("first|last|full|given|family|middle|maiden|fore|sur|nick|user|holder|customer|payer|payee|account|"
           "beneficiary|sender|recipient|receiver|contact|owner|person|client|card|billing|shipping|buyer|shopper|"
           "consumer|member")
_NUMBER = "(?:number|num|no|nr|code)"
_CONTAINS: tuple[tuple[re.Pattern[str], tuple[Action, str]], ...] = (
    (re.compile("email"), ("tokenize", "email")),
    (re.compile("phone|mobile|msisdn"), ("tokenize", "phone")),
    (re.compile("|".join((
        r"cvv|cvc|security_?code|(?:^|_)card_?code$",  # card codes: cvv2, card_cvv, cardCvc, securityCode
        r"birth|passport|ssn|national_?id|iban|password|expiry|expiration|address|street|postal|post_?code|"
        r"zip_?code|(?:^|_)(?:zip|pin_?code)(?:_|$)",  # billing_zip, shippingZip
        rf"(?:^|_)(?:{_PERSON}|home|mailing|delivery|residen(?:ce|tial)|domicile)_?"
        r"(?:city|town|village|suburb|district|county|neighbou?rhood)(?:_|$)",  # home_city, billingCity
        r"(?:^|_)(?:lat|lon|lng|latitude|longitude|geo_?location|geo_?point|coords|coordinates|gps)(?:_|$)",
        rf"(?:{_PERSON})_?name|^name_on(?:_|$)|(?:^|_)(?:card|account)_?holder$",  # firstname, payerName, nameOnCard
        r"(?:^|_)(?:tax(?:payer)?_?(?:id|identification|identifier|number|num|no|nr)|tin)(?:_|$)",  # taxId, TIN
        # national ids by their local names (an SSN sent as "social", without its dashes: nine plain digits)
        r"(?:^|_)social(?:_?(?:sec(?:urity)?|ins(?:urance)?)(?:_|$)|$)|"
        rf"(?:^|_)(?:nino?|cpf|aadhaa?r|pesel|curp|nric|dni|nie|nif|bsn|tfn|hkid|personnummer|sin_?{_NUMBER})(?:_|$)",
        # bank details: account_number, acctNo, acct, payee_account, sort_code, routing_number, ABA, BSB
        rf"(?:^|_)acc(?:oun)?t_?{_NUMBER}(?:_|$)|^acct$|"
        rf"(?:^|_)(?:{_PERSON}|bank|debtor|creditor|counterparty|destination|dest|source|src|from|to)_?acc(?:oun)?t$|"
        rf"(?:^|_)(?:sort_?code|routing_?{_NUMBER}|(?:aba|bsb)(?:_?{_NUMBER})?)(?:_|$)",
        # card expiry dates (expiry and expiration above): card_exp, exp_date, cardExp, expMonth, validThru
        r"(?:^|_)exp_?(?:date|dt|month|year|mo|yr|mm|yy|yyyy|mmyy|yymm)(?:_|$)|(?:^|_)(?:card|cc)_?exp(?:_|$)|"
        r"^exp$|valid_?thr(?:u|ough)",
        # track data (magnetic stripe, EMV tag 57): never stored after authorisation (PCI DSS)
        r"(?:^|_)track_?[123](?:_|$)|(?:^|_)track_?(?:[123]_?)?(?:data|equiv)|(?:^|_)(?:emv_?)?tag_?57(?:_|$)|"
        r"mag(?:netic)?_?stripe",
    ))), ("drop", "")),
)


@functools.lru_cache(maxsize=4096)
def field_policy(name: str) -> tuple[Action, str] | None:
    """What :data:`FIELD_POLICY` says of a field, by its name as any sender spells it (``firstName``,
    ``date-of-birth``, ``CVV2``, ``billing_address``): None when it names nothing personal."""
    key = "_".join(w for w in _WORD_BOUNDARY.split(name) if w).lower()
    if key in FIELD_POLICY:
        return FIELD_POLICY[key]
    if key.endswith(("ip_address", "ip_addr")):
        return FIELD_POLICY["ip_address"]
    for words, policy in _CONTAINS:
        if words.search(key):
            return policy
    return None


TOKEN_PREFIX = "tok_"
_TOKEN = re.compile(r"^tok_[a-z]+_[0-9a-f]{24}$")
# a token inside longer text (a kind is a short lowercase word, so the scan stops at the next '_')
_EMBEDDED_TOKEN = re.compile(r"(?<![A-Za-z0-9])(tok_[a-z]{1,16}_[0-9a-f]{24})(?![0-9A-Za-z])")
# Two alphabetic words in a row: prose, which may name a person or an address. (A word of two
# letters or more, then an optional dot, spaces and a letter; only the last two letters of the first
# word are matched, so a long run of letters is not rescanned from each of its letters.)
FREE_TEXT = r"[^\W\d_]{2}\.?\s+[^\W\d_]"
_FREE_TEXT = re.compile(FREE_TEXT)
_DIGIT_RUNS = re.compile(r"\d+(?:(?:[./_-]| {1,3})\d+)*")  # 4111 1111.., 4111-1111.., 4111.1111.., ...
_DIGITS = re.compile(r"\d+")
# Emails: a local part of ASCII letters, digits and ._%+-, or of letters, digits and combining marks beyond
# ASCII (josé@, Ünal.Öz@: RFC 6531), then @[A-Za-z0-9.-]+\.[A-Za-z]{2,} (see _emails). The domain part alone is
# linear: it starts only at an '@', and the runs after two '@' never overlap.
_EMAIL_LOCAL = frozenset(string.ascii_letters + string.digits + "._%+-")
_EMAIL_DOMAIN = re.compile(r"@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"(?<![\w+])\+\d[\d ().-]{6,18}\d(?!\d)")
_IPV4 = re.compile(r"(?<!\d)(?<!\d\.)(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")  # ends a sentence: "from 1.2.3.4."
# IBANs (ISO 13616): a registered country's code, two check digits, and the rest to that country's length (the
# SWIFT IBAN registry's); in one run or printed in groups of four, a whole word (no letter or digit either side).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29,
    "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    "YE": 30,
}
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}"
                   r"(?:[A-Za-z0-9]{11,30}|(?: [A-Za-z0-9]{4}){2,8}(?: [A-Za-z0-9]{1,3})?)(?![A-Za-z0-9])")
# A card's track data, after authorisation never to be stored (PCI DSS), from its card number on (group 1; the
# start sentinel before it, ';' or '%B', is taken with it by _replace_tracks): track 2 (PAN=YYMM, service code,
# discretionary data?), EMV's track 2 equivalent (tag 57: D for =, padded with F) and track 1 (PAN^NAME^YYMM...?).
_TRACK = re.compile(r"(\d{13,19})(?:[=Dd](?:\d{4}|=)(?:\d{3}|=)\d{0,40}[Ff]?"
                    r"|\^[^^?\n]{0,26}\^(?:\d{4}|\^)(?:\d{3}|\^)[0-9 ]{0,79})\??")
# Cheap pre-check: text without '@', ':', '+digit', a dotted number, 13 digits (separators between them
# allowed) or an IBAN's start (two letters, two digits, eleven letters or digits, single spaces between them)
# holds none of the above.
MAYBE_PII = r"@|:|\+\d|\d\.\d|(?:\d(?:[./_-]| {1,3})?){12}\d|[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11}"
_MAYBE_PII = re.compile(MAYBE_PII)
# MAYBE_PII and FREE_TEXT are also run by Arrow (RE2) on printable ASCII in sira.ingest.columnar, where both
# engines read them alike (\d is [0-9], \s a space, [^\W\d_] a letter): keep them in the syntax both share.
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![0-9A-Fa-f:])")


def iban_valid(text: str) -> bool:
    """True when ``text`` (letters and digits, no spaces) is an IBAN: a registered country's code, that country's
    length, and the mod-97 check (ISO 7064) passing."""
    if IBAN_LENGTHS.get(text[:2].upper()) != len(text) or not (text.isascii() and text.isalnum()):
        return False
    total = 0
    for ch in text[4:] + text[:4]:  # letters count as two digits (A = 10 ... Z = 35)
        total = (total * (100 if ch.isalpha() else 10) + int(ch, 36)) % 97
    return total == 1


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
    # keys this redactor's cache entries (see the module docstring); a secret like ``key``
    _cache_key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cache_key = hashlib.blake2b(self.key, digest_size=32, person=b"sira-pii-cache").digest()
        object.__setattr__(self, "_cache_key", cache_key)

    @classmethod
    def from_secret(cls, secret: str) -> "Redactor":
        return cls(secret.encode("utf-8"))

    def token(self, kind: str, value: str) -> str:
        """The keyed token of a normalised PII value."""
        message = f"{kind}:{_normalize(kind, value)}".encode()
        digest = hashlib.blake2b(message, key=self._cache_key, digest_size=16).digest()
        token = _TOKENS.get(digest)
        if token is None:
            token = f"{TOKEN_PREFIX}{kind}_{hmac.new(self.key, message, hashlib.sha256).hexdigest()[:24]}"
            _TOKENS.put(digest, token)
        return token

    def scrub_text(self, text: str) -> str:
        """Replace card numbers (and track data), IBANs, emails, phones and IPs inside free text by tokens.
        Idempotent: tokens already in the text are kept as they are (a token's hex digits can look like a card
        number)."""
        if not text or is_token(text) or not _MAYBE_PII.search(text):
            return text
        if TOKEN_PREFIX in text:
            pieces = _EMBEDDED_TOKEN.split(text)  # text, token, text, token, ...
            return "".join(p if i % 2 else self._scrub_plain(p) for i, p in enumerate(pieces))
        return self._scrub_plain(text)

    def _scrub_plain(self, text: str) -> str:
        if not text or not _MAYBE_PII.search(text):
            return text
        text = _replace_ibans(text, lambda iban: self.token("iban", iban))
        text = _replace_tracks(text, lambda pan: self.token("pan", pan))
        text = _replace_emails(text, lambda email: self.token("email", email))
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
        if len(text) > CACHED_TEXT_LIMIT:
            return self._scrub_value(text)
        # Ids (customers, terminals, cards) repeat across events: scrub each once.
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), key=self._cache_key, digest_size=16).digest()
        scrubbed = _SCRUBBED.get(digest)
        if scrubbed is None:
            scrubbed = self._scrub_value(text)
            _SCRUBBED.put(digest, scrubbed)
        return scrubbed

    def _scrub_value(self, text: str) -> str:
        text = self.scrub_text(text)
        if _FREE_TEXT.search(text):
            return self.token("text", text)
        return text

    def field(self, name: str, value: Any) -> tuple[bool, Any]:
        """Apply the policy to one top-level field: (keep?, redacted value)."""
        policy = field_policy(name)
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
            return self._fields(value, {})
        if isinstance(value, (list, tuple)):
            return [self.scrub(v) for v in value]
        if isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer():
            # a card or phone number sent as a JSON number is still one
            digits = str(int(value))
            scrubbed = self.scrub_value(digits)
            return scrubbed if scrubbed != digits else value
        return value

    def feature(self, name: str, value: Any) -> tuple[bool, Any]:
        """A bring-your-own feature's value as SIRA keeps it: (keep?, value). Text and values of a field the
        policy names are redacted as an event's field of that name is (a category of e-mails becomes one of
        tokens); other numbers and booleans are kept as they are."""
        policy = field_policy(name)
        if policy is None and (value is None or isinstance(value, (bool, int, float))):
            return True, value
        if policy is not None and policy[0] == "drop":
            return False, None
        return (True, None) if value is None else self.field(name, value if isinstance(value, str) else str(value))

    def table(self, table: Any, exclude: set[str]) -> tuple[Any, dict[str, str]]:
        """A bring-your-own table (pyarrow) with its personal data out, before anything reads its values:
        columns the policy drops are removed (their reason returned), text columns and columns the policy
        tokenizes are redacted, each distinct value once (:meth:`feature`); ``exclude``: columns kept as they are."""
        import pyarrow as pa
        import pyarrow.compute as pc

        dropped: dict[str, str] = {}
        for name in list(table.column_names):
            if name in exclude:
                continue
            policy = field_policy(name)
            column = table.column(name)
            if policy is not None and policy[0] == "drop":
                table = table.drop_columns([name])
                dropped[name] = "personal data (the PII policy drops this field)"
            elif policy is not None or pa.types.is_string(column.type) or pa.types.is_large_string(column.type) \
                    or pa.types.is_dictionary(column.type):
                if pa.types.is_dictionary(column.type):
                    column = column.cast(column.type.value_type)
                distinct = column.unique()
                redacted = pa.array([None if v is None else self.feature(name, v)[1] for v in distinct.to_pylist()],
                                    pa.string())
                values = pc.take(redacted, pc.index_in(column, value_set=distinct))
                table = table.set_column(table.column_names.index(name), name, values)
        return table, dropped

    def _fields(self, value: Mapping[Any, Any], names: Mapping[str, str]) -> dict[str, Any]:
        """An object's fields, each redacted as the field ``names`` maps its name to (else its own name). A
        field's name is scrubbed as a value is (a name written as prose, which may be a person's, becomes a
        token), but for a name ``names`` holds: the source's own column name, kept for replay."""
        out = {}
        for k, v in value.items():
            name = str(k)
            keep, redacted = self.field(names.get(name, name), v)
            if keep:
                out[self.scrub_text(name) if name in names else self.scrub_value(name)] = redacted
        return out

    def payload(self, record: Mapping[str, Any], mapping: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A whole raw record made safe to store (used for dead letters and logs): redacted, NUL
        characters (which PostgreSQL refuses) replaced, nesting cut at :data:`MAX_NESTING` levels.
        ``mapping`` (SIRA's field name -> source column, as ``--map`` gives it): a mapped column is redacted
        as the field it is mapped to, and keeps its source name (the record can be sent again as it was)."""
        return self._fields(_storable(dict(record)), {source: name for name, source in (mapping or {}).items()})



def redactor_for(settings: Any) -> Redactor:
    """The installation's redactor (its PII key from the settings)."""
    return Redactor.from_secret(settings.secret("pii_key"))

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


class _DigestCache:
    """A bounded least-recently-used map from keyed digests to tokens or scrubbed text."""

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._data: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()  # serving and ingest scrub from several threads

    def get(self, digest: bytes) -> str | None:
        with self._lock:
            value = self._data.get(digest)
            if value is not None:
                self._data.move_to_end(digest)
            return value

    def put(self, digest: bytes, value: str) -> None:
        with self._lock:
            self._data[digest] = value
            if len(self._data) > self._maxsize:
                self._data.popitem(last=False)


CACHED_TEXT_LIMIT = 256  # longer values (prose, not ids) rarely repeat: scrubbed each time, not cached
_TOKENS = _DigestCache(262_144)  # digest of (kind, normalised value) -> token
_SCRUBBED = _DigestCache(262_144)  # digest of a value -> Redactor.scrub_value of it


def _in_local_part(char: str) -> bool:
    """Whether a character may be part of an email's local part (ASCII's few, and beyond ASCII any letter,
    digit or combining mark)."""
    return char in _EMAIL_LOCAL or not char.isascii() and (char.isalnum() or unicodedata.category(char)[0] == "M")


def _emails(text: str) -> Iterator[tuple[int, int]]:
    """Spans of the emails in text: what a regex of a local part (:func:`_in_local_part`), '@' and a domain
    (``[A-Za-z0-9.-]+\\.[A-Za-z]{2,}``) finds with ``finditer``, in linear time (such a regex rescans a long
    run of local-part characters from each of them).

    Only an '@' followed by a domain is looked at; its local part is the run of local-part characters
    before it, not reaching back past the previous email or an earlier '@' (so each character is looked
    at once).
    """
    pos = 0
    for domain in _EMAIL_DOMAIN.finditer(text):
        at = domain.start()
        start = at
        while start > pos and _in_local_part(text[start - 1]):
            start -= 1
        if start < at:
            yield start, domain.end()
            pos = domain.end()
        else:
            pos = at + 1


def _replace_emails(text: str, token: Callable[[str], str]) -> str:
    out, last = [], 0
    for start, end in _emails(text):
        out += [text[last:start], token(text[start:end])]
        last = end
    out.append(text[last:])
    return "".join(out)


_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # a digit doubled by the Luhn check


def _replace_pans(text: str, token: Callable[[str], str]) -> str:
    """Replace card numbers: 13-19 digits passing Luhn, in groups split by a dash, dot, slash, underscore or
    up to three spaces.

    A candidate starts and ends on group boundaries, so "order-4111111111111111-2"
    and "ref 12 4111 1111 1111 1111" are both caught, and a longer number is
    never cut in the middle of a group. From each group only the few candidates
    of 13 to 19 digits are tried, each checked in constant time (prefix sums of
    the Luhn terms), so the scan is linear in the text.
    """
    out, last = [], 0
    for run in _DIGIT_RUNS.finditer(text):
        if run.end() - run.start() < 13:
            continue  # fewer than 13 digits
        groups = [m.span() for m in _DIGITS.finditer(text, run.start(), run.end())]
        digits = "".join(text[a:b] for a, b in groups)
        offsets = list(accumulate((b - a for a, b in groups), initial=0))  # group g is digits[offsets[g]:offsets[g+1]]
        values = [int(d) for d in digits]
        # Luhn sums of any digits[s:e] in O(1): the digits doubled are those an odd distance from the last one,
        # i.e. the odd positions when e is odd (``odd``) and the even ones when e is even (``even``).
        odd = list(accumulate((_DOUBLED[v] if t % 2 else v for t, v in enumerate(values)), initial=0))
        even = list(accumulate((v if t % 2 else _DOUBLED[v] for t, v in enumerate(values)), initial=0))
        i, window = 0, 0  # window: the first group past those from i holding at most 19 digits
        while i < len(groups):
            window = max(window, i)
            while window < len(groups) and offsets[window + 1] - offsets[i] <= 19:
                window += 1
            found = None
            for j in range(window - 1, i - 1, -1):  # the longest candidate first
                s, e = offsets[i], offsets[j + 1]
                if e - s < 13:
                    break
                sums = odd if e % 2 else even
                if (sums[e] - sums[s]) % 10 == 0:
                    found = j
                    break
            if found is None:
                i += 1
                continue
            out += [text[last: groups[i][0]], token(digits[offsets[i]: offsets[found + 1]])]
            last = groups[found][1]
            i = found + 1
    out.append(text[last:])
    return "".join(out)


def _replace_tracks(text: str, token: Callable[[str], str]) -> str:
    """Replace track data (see :data:`_TRACK`), its sentinels included, by its card number's token: a card
    number (a whole run of digits passing Luhn) followed by the rest of a track."""
    out, last = [], 0
    for track in _TRACK.finditer(text):
        start, pan = track.start(), track.group(1)
        if start > last and text[start - 1].isdigit() or not luhn_valid(pan):
            continue
        if text[track.end(1)] == "^":  # track 1: its format code, then its start sentinel
            start -= start > last and text[start - 1] == "B"
            start -= start > last and text[start - 1] == "%" and text[start] == "B"
        else:  # track 2
            start -= start > last and text[start - 1] == ";"
        out += [text[last:start], token(pan)]
        last = track.end()
    out.append(text[last:])
    return "".join(out)


def _replace_ibans(text: str, token: Callable[[str], str]) -> str:
    """Replace IBANs (see :data:`_IBAN`). A candidate that is none may hold one from one of its groups on
    (``XX12 GB82 WEST ...``): the search goes on from its next character, each try reading at most 40."""
    out, last, pos = [], 0, 0
    while (found := _IBAN.search(text, pos)) is not None:
        length = _iban_length(found.group(0))
        if length is None:
            pos = found.start() + 1
            continue
        out += [text[last: found.start()], token(text[found.start(): found.start() + length])]
        last = pos = found.start() + length
    out.append(text[last:])
    return "".join(out)


def _iban_length(candidate: str) -> int | None:
    """How many characters of a candidate are an IBAN (None: none): all of it written in one run; printed in
    groups, as many groups as make its country's length (a word may follow)."""
    length = IBAN_LENGTHS.get(candidate[:2].upper())
    if length is None or " " not in candidate:
        return length if length is not None and iban_valid(candidate) else None
    seen = 0
    for i, ch in enumerate(candidate):
        seen += ch != " "
        if seen == length:
            ends_group = i + 1 == len(candidate) or candidate[i + 1] == " "
            return i + 1 if ends_group and iban_valid(candidate[: i + 1].replace(" ", "")) else None
    return None


def is_token(value: str) -> bool:
    return bool(_TOKEN.match(value))


def _normalize(kind: str, value: str) -> str:
    value = value.strip()
    if kind == "pan":  # a card number, or its track data: the card's own number either way
        track = _TRACK.search(value)
        return track.group(1) if track else re.sub(r"\D", "", value)
    if kind == "iban":
        return re.sub(r"\s", "", value).upper()
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
