import gc
import ipaddress
import random
import re
import time
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sira.ingest.pii import Redactor, is_token, luhn_valid

R = Redactor(b"test-key")


@pytest.mark.parametrize(
    "text, secret",
    [
        ("card 4111 1111 1111 1111 declined", "4111 1111 1111 1111"),
        ("pan=4111-1111-1111-1111;", "4111-1111-1111-1111"),
        ("4000056655665556", "4000056655665556"),
        ("mail jane.doe+x@example.org now", "jane.doe+x@example.org"),
        ("mail josé@gmail.com now", "josé@gmail.com"),  # a local part beyond ASCII (was kept as sent)
        ("from Ünal.Öz@firma.de", "Ünal.Öz@firma.de"),
        ("jose\u0301@example.org", "jose\u0301@example.org"),  # é as e and a combining accent
        ("用户@例子.cn x 李@example.cn", "李@example.cn"),
        ("call +221 77 123 45 67", "+221 77 123 45 67"),
        ("from 203.0.113.7 via", "203.0.113.7"),
        ("blocked 203.0.113.7.", "203.0.113.7"),  # at a sentence's end (the full stop kept it raw)
        ("card 4111.1111.1111.1111 used", "4111.1111.1111.1111"),
        ("card 4111/1111/1111/1111 used", "4111/1111/1111/1111"),
        ("card 4111_1111_1111_1111 used", "4111_1111_1111_1111"),
        ("card 4111  1111  1111  1111 used", "4111  1111  1111  1111"),
        ("v6 2001:db8::8a2e:370:7334 ok", "2001:db8::8a2e:370:7334"),
    ],
)
def test_pii_inside_free_text_becomes_a_token(text, secret):
    scrubbed = R.scrub_text(text)
    assert secret not in scrubbed
    assert "tok_" in scrubbed


@pytest.mark.parametrize("text", ["order 1234567890123", "amount 12.50 EUR", "ref 2026-09-01", "999.1.2.3 x",
                                  "version 1.2.3.4.5", "at 2026/09/01 10:00"])
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


# -- Linear time on adversarial input ---------------------------------------------------------------
#
# The regex engine retries a pattern at every start position; a pattern that can scan to the end of
# a long run and fail there costs n steps per start (quadratic), and the card-number finder tried
# every pair of digit groups (cubic). A million characters of each shape below took hours before.

MILLION = 1_000_000
ADVERSARIAL = {
    "letters": "a" * MILLION,  # free-text prose check
    "letters then @": "a" * MILLION + "@",  # email local part
    "accented letters then an email's domain": "é" * MILLION + "@x.io",
    "accented emails": "é@x.io " * (MILLION // 7),
    "@ then dotted letters": "@" + "a." * (MILLION // 2),
    "dotted letters then @": "a." * (MILLION // 2) + "@",
    "email then dotted letters": "x@" + "a." * (MILLION // 2),
    "a@ repeated": "a@" * (MILLION // 2),
    "spaced digit groups": "1 " * (MILLION // 2),  # card numbers
    "dashed digit groups": "1-" * (MILLION // 2),
    "alternating separators": "12 3-" * (MILLION // 5),
    "digits": "1" * MILLION,
    "dotted digits": "1." * (MILLION // 2),  # IPv4
    "colons": ":" * MILLION,  # IPv6
    "hex and colons": "ffff:a" * (MILLION // 6),
    "phone prefixes": "+1 " * (MILLION // 3),  # phones
    "letters then spaces": "ab" + " " * MILLION + "1",
    "words": "ab " * (MILLION // 3),
    "IBAN starts": "AB12" * (MILLION // 4),  # IBANs
    "IBAN starts in groups": "GB82 " * (MILLION // 5),
    "IBAN groups after a start": "GB82" + " WEST" * (MILLION // 5),
    "track 2 starts": ";4111111111111111=" * (MILLION // 18),  # track data
    "track 2 then digits": ";4111111111111111=2912101" + "1" * MILLION,
    "track 1 starts": "%B4111111111111111^" * (MILLION // 19),
    "track 1 then a long name": "%B4111111111111111^" + "A" * MILLION,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_adversarial_input_is_scrubbed_in_linear_time(text):
    started = time.perf_counter()
    R.scrub_value(text)  # scrub_text and the free-text check
    assert time.perf_counter() - started < 20  # generous: a few seconds on a busy machine; hours before


# -- Same answers as the original (backtracking) implementation ----------------------------------------

_OLD_FREE_TEXT = re.compile(r"[^\W\d_]{2,}\.?\s+[^\W\d_]{1,}")
_OLD_DIGIT_RUNS = re.compile(r"\d+(?:(?:[./_-]| {1,3})\d+)*")
# (its local part since widened to letters, digits and combining marks beyond ASCII: josé@gmail.com)
_OLD_EMAIL = re.compile(r"(?:[A-Za-z0-9._%+-]|[^\x00-\x7f](?<=[^\W_])|[\u0300-\u036f])+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_OLD_PHONE = re.compile(r"(?<![\w+])\+\d[\d ().-]{6,18}\d(?!\d)")
_OLD_IPV4 = re.compile(r"(?<!\d)(?<!\d\.)(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")
_OLD_MAYBE_PII = re.compile(r"@|:|\+\d|\d\.\d|(?:\d(?:[./_-]| {1,3})?){12}\d")
_OLD_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![0-9A-Fa-f:])")


def _old_replace_pans(text, token):
    out, last = [], 0
    for run in _OLD_DIGIT_RUNS.finditer(text):
        groups = [(m.start() + run.start(), m.end() + run.start()) for m in re.finditer(r"\d+", run.group(0))]
        i = 0
        while i < len(groups):
            found = None
            for j in range(len(groups) - 1, i - 1, -1):
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


def _old_scrub_text(text):
    if not text or is_token(text) or not _OLD_MAYBE_PII.search(text):
        return text
    text = _OLD_EMAIL.sub(lambda m: R.token("email", m.group(0)), text)
    text = _old_replace_pans(text, lambda digits: R.token("pan", digits))
    text = _OLD_PHONE.sub(lambda m: R.token("phone", m.group(0)), text)

    def ip(m):
        try:
            ipaddress.ip_address(m.group(0))
        except ValueError:
            return m.group(0)
        return R.token("ip", m.group(0))

    return _OLD_IPV6.sub(ip, _OLD_IPV4.sub(ip, text))


def _old_scrub_value(text):
    text = _old_scrub_text(text)
    return R.token("text", text) if _OLD_FREE_TEXT.search(text) else text


FRAGMENTS = ["a", "Zé", "e\u0301", "李", "Ω", "¿", "b.", ".co", ".", "@", "@ex", "x.y@", "@a.co", "%", "_", "-", " ", "  ", "\t", "1", "42",
             "4111", "1111", "5556", "4000056655665556", "+33", "+", "(", ")", ":", "::", "ff", "10.0.0.1", "x y",
             "Mr. X", "tok_pan_"]
SMALL_TEXT = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), max_size=16).map("".join),
    st.text(alphabet="0123456789 -.@:+abAZé_%\t\u0301李¿", max_size=48),
    st.lists(st.tuples(st.text(alphabet="0123456789", min_size=1, max_size=7),
                       st.sampled_from([" ", "-", "  ", "x", "--", ".", "/", "_", "    "])), max_size=10).map(
        lambda groups: "".join(g + sep for g, sep in groups)),
)


@settings(max_examples=1500, deadline=None)
@given(SMALL_TEXT)
def test_scrubbing_matches_the_original_implementation(text):
    assert R.scrub_text(text) == _old_scrub_text(text)
    assert R.scrub_value(text) == _old_scrub_value(text)


# -- No raw value in a cache ------------------------------------------------------------------------


def _holds(obj, needle, depth=0):
    if isinstance(obj, str):
        return needle in obj
    if isinstance(obj, (bytes, bytearray)):
        return needle.encode() in obj
    return isinstance(obj, tuple) and depth < 4 and any(_holds(o, needle, depth + 1) for o in obj)


def _scrub_a_card_number(pan):
    R.scrub({"card_number": pan, "note": f"paid with {pan}", "ref": pan})
    R.scrub_value(f"order-{pan}")
    R.token("pan", pan)


def test_no_cache_keeps_a_raw_card_number():
    # a fresh number built at run time, so nothing else in the process holds it
    body = "4" + "".join(random.choices("0123456789", k=14))
    pan = next(body + d for d in "0123456789" if luhn_valid(body + d))
    _scrub_a_card_number(pan)
    gc.collect()
    holders = []
    for obj in gc.get_objects():
        if isinstance(obj, (types.FrameType, types.CellType)):
            continue  # this test's own frame holds the needle
        for ref in gc.get_referents(obj):
            if _holds(ref, pan):
                holders.append(type(obj).__name__)
    assert not holders, f"raw card number kept in memory by {holders}"


def test_scrubbing_is_idempotent_when_a_tokens_hex_looks_like_a_card_number():
    r = Redactor.from_secret("k")
    # a token-shaped id whose 24 hex characters start with a Luhn-valid card number
    text = "order tok_pan_4111111111111111abcdefab paid by a@b.co"
    once = r.scrub_text(text)
    assert "tok_pan_4111111111111111abcdefab" in once and "a@b.co" not in once
    assert r.scrub_text(once) == once
    assert r.scrub_value(r.scrub_value("ref-4111 1111 1111 1111")) == r.scrub_value("ref-4111 1111 1111 1111")


def test_personal_fields_are_known_by_their_name_however_a_sender_spells_it():
    """Only exact snake_case names were known: {"firstName": "Alice", "dateOfBirth": ..., "cvv2": ...} were kept
    as sent in attributes and dead letters (one-word values, which no pattern scan finds)."""
    sent = {"firstName": "Alice", "dateOfBirth": "1985-03-02", "cvv2": 123, "postalCode": "10115",
            "billingAddress": "Main", "ZIP_CODE": "75001", "cardExpiry": "12/29", "Surname": "Doe",
            "deviceId": "abc-123", "mobileNumber": "0700900123", "contactEmail": "x", "clientIpAddress": "1",
            "merchant_name": "Cafe", "pinpad_id": "p1", "cidade": "Dakar", "channel": "pos",
            "customer_name": "Jane", "payerName": "Bob", "tel": "0700900123", "contact_number": "415-555-0100"}
    kept = R.scrub(sent)
    assert set(kept) == {"deviceId", "mobileNumber", "contactEmail", "clientIpAddress", "merchant_name",
                         "pinpad_id", "cidade", "channel", "tel", "contact_number"}
    assert is_token(kept["tel"]) and is_token(kept["contact_number"])
    assert all(is_token(kept[k]) for k in ("deviceId", "mobileNumber", "contactEmail", "clientIpAddress"))
    assert kept["merchant_name"] == "Cafe" and kept["pinpad_id"] == "p1" and kept["channel"] == "pos"
    assert kept["deviceId"] == R.scrub({"device_id": "abc-123"})["device_id"]  # one device, one token


def test_a_payload_redacts_mapped_columns_as_the_fields_they_are_mapped_to():
    """Dead letters are kept under the source's column names; those names told the policy nothing (DEV, TELNO
    kept as sent) or the wrong thing (a column "name" mapped to customer_id was dropped: the record lost its
    customer)."""
    raw = {"ID": "e1", "DEV": "dev-SECRET99", "TELNO": "0687654321", "name": "c1", "note": "n"}
    kept = R.payload(raw, {"event_id": "ID", "device_id": "DEV", "phone": "TELNO", "customer_id": "name"})
    assert kept == {"ID": "e1", "DEV": R.field("device_id", "dev-SECRET99")[1],
                    "TELNO": R.field("phone", "0687654321")[1], "name": "c1", "note": "n"}
    assert R.payload({"DEV": "x"}) == {"DEV": "x"}  # unmapped: by its own name, as before
    # a column name written as words is kept when the mapping names it (its record can be sent again as it was)
    assert R.payload({"Device Id": "d1", "Shop Name": "x"}, {"device_id": "Device Id"}) == {
        "Device Id": R.field("device_id", "d1")[1], R.token("text", "Shop Name"): "x"}


def test_card_codes_names_tax_ids_and_account_numbers_are_dropped_wherever_their_word_is_in_the_name():
    """card_cvv, cardCvc, security_code, firstname, lastname, nameOnCard, taxId and account_number were kept as
    sent in attributes (cvv/cvc were known only at the start of a name; names only as first_name-like pairs).
    Each is dropped, like the policy's other fields of its kind (cvv, first_name, national_id, iban): a CVV may
    not be stored at all, and a token of a name would still link a person's events."""
    dropped = {"card_cvv": "123", "cardCvc": "456", "CVV2": "789", "security_code": "321", "cardSecurityCode": "1",
               "cardCode": "2", "firstname": "Jane", "lastname": "Doe", "fullname": "Jane", "MiddleName": "Q",
               "forename": "J", "nickname": "JJ", "nameOnCard": "JANE", "name_on_account": "J", "cardName": "JANE",
               "billingName": "J", "shipping_name": "J", "cardholder": "Jane", "AccountHolder": "Jane",
               "username": "jdoe", "taxId": "123-45-6789", "TIN": "1", "taxpayer_number": "2",
               "tax_identification_number": "3", "account_number": "00012345678", "accountNo": "1", "acct_num": "2",
               "bank_account": "3", "customer": {"name": "Jane", "taxId": "4"}}
    kept = {"terminal_name": "T1", "merchant_name": "Cafe", "product_name": "Gift", "bank_name": "BNP",
            "channel": "web", "country": "SN", "tax_amount": 1.5, "tax_code": "txcd_1", "tax_rate": 0.2,
            "account_id": "a1", "account_type": "savings", "cardholder_present": True, "name_match": "Y",
            "syntax_id": "s1", "distinct_terminals": 3, "pinned": True, "security_level": "high"}
    scrubbed = R.scrub({**dropped, **kept})
    assert scrubbed == {**kept, "customer": {}}
    assert all(R.feature(name, "x") == (False, None) for name in dropped if name != "customer")  # a table column too


def test_no_feature_of_sira_is_named_like_personal_data():
    """Feature names go through the same policy when a table comes with them: none of SIRA's own is caught."""
    from sira.features.definitions import PAYMENTS_V1, PAYMENTS_V2
    from sira.ingest.pii import field_policy

    assert [n for fs in (PAYMENTS_V1, PAYMENTS_V2) for n in fs.names() if field_policy(n)] == []


def test_an_email_whose_local_part_is_not_ascii_is_a_token_in_ids_and_attributes():
    """josé@gmail.com was not taken for an email (the local part was read as ASCII only): stored as sent in
    ids and attributes."""
    token = R.token("email", "josé@gmail.com")
    assert R.scrub_value("josé@gmail.com") == token == R.token("email", "José@Gmail.com")
    assert R.scrub({"ref": "josé@gmail.com", "customer": {"id": "order/josé@gmail.com"}}) == {
        "ref": token, "customer": {"id": f"order/{token}"}}


# -- Payment identifiers: IBANs by value, bank and card fields by name, track data -----------------------

IBAN = "GB82WEST12345698765432"  # the IBAN registry's example for GB: mod-97 valid
IBANS = [IBAN, "DE89370400440532013000", "FR1420041010050500013M02606", "NL91ABNA0417164300",
         "NO9386011117947", "MT84MALT011000012345MTLCAST001S", "LC55HEMM000100010012001200023015"]


def test_an_iban_is_a_token_wherever_it_is_sent():
    """An IBAN was known only in a field named iban (dropped): sent in ids, a card token, free attributes, nested
    lists or prose, it was stored as sent. It is now recognised by its value (a registered country, that
    country's length, the mod-97 check), in one run or printed in groups of four, and tokenised as a card
    number inside an id is: the rest of the id stays readable, and one account is one token."""
    token = R.token("iban", IBAN)
    assert is_token(token) and token.startswith("tok_iban_")
    assert token == R.token("iban", "gb82 west 1234 5698 7654 32")  # normalised: case and spaces
    for iban in IBANS:
        assert R.scrub_value(iban) == R.token("iban", iban), iban
    event = {"event_id": f"evt-{IBAN}", "customer_id": IBAN, "terminal_id": f"t/{IBAN}", "card_token": IBAN,
             "ref": IBAN.lower(), "memo": "refund to GB82 WEST 1234 5698 7654 32 please",
             "payee": {"refs": [f"{IBANS[1]},{IBANS[2]}", {"x": IBANS[3]}]}, "request_id": f"req_{IBAN}"}
    scrubbed = R.scrub(event)
    flat = repr(scrubbed)
    assert not [i for i in IBANS[:4] if i in flat or i.lower() in flat], flat
    assert "GB82" not in flat and "WEST" not in flat and "5698" not in flat
    assert scrubbed["event_id"] == f"evt-{token}" and scrubbed["customer_id"] == scrubbed["card_token"] == token
    assert scrubbed["terminal_id"] == f"t/{token}" and scrubbed["ref"] == token
    assert scrubbed["request_id"] == f"req_{token}"
    assert scrubbed["payee"]["refs"][0] == f"{R.token('iban', IBANS[1])},{R.token('iban', IBANS[2])}"
    assert R.scrub_text(f"IBAN: {IBAN}.") == f"IBAN: {token}."
    assert R.scrub({"iban": IBAN, "IBAN_number": IBAN}) == {}  # by its field's name: dropped, as before
    assert R.payload({"ID": IBAN}) == {"ID": token}  # a dead letter's payload


@pytest.mark.parametrize("text", [
    "GB82WEST12345698765433",  # one digit off: the mod-97 check fails
    "GB82WEST1234569876543",  # a digit short of GB's length
    "XX82WEST12345698765432",  # no such country
    "AB12CDEF3456789012",
    "GB82WEST12345698765432X",  # part of a longer word
    "refGB82WEST12345698765432",
    "cust_000123", "evt-20260901-000042", "ord_AB12CD34EF56GH78", "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
    "3F2504E04F8911D39A0C0305E82C3301", "5f2b8c1e9a7d4e3b2c1a0f9e", "SN2026090100000042", "TX20260901123456",
    "DE12 3456", "FR14 2004 1010", "amount 1234.56 EUR", "terminal T-0042-DAKAR", "BE68 5390 0754 7035 paid",
])
def test_ids_and_amounts_that_only_look_like_an_iban_are_kept(text):
    assert R.scrub_text(text) == text


def test_few_iban_shaped_ids_pass_the_check():
    """Ordinary ids of an IBAN's shape (a country, two digits, the country's length) are caught only when the
    mod-97 check passes by chance: about 1 in 97, as 1 in 10 random 16-digit numbers pass Luhn."""
    rng = random.Random(7)
    ids = [f"DE{rng.randrange(100):02d}{rng.randrange(10**18):018d}" for _ in range(5000)]
    caught = sum(R.scrub_value(i) != i for i in ids)
    assert 0 < caught < 5000 / 97 * 1.6


def test_an_iban_printed_in_groups_ends_where_its_country_says():
    """Groups of four end the IBAN at its country's length: a word after it is not part of it."""
    token = R.token("iban", "BE68539007547034")
    assert R.scrub_text("to BE68 5390 0754 7034 from Jan") == f"to {token} from Jan"
    assert R.scrub_text("NO93 8601 1117 947 ok") == f"{R.token('iban', 'NO9386011117947')} ok"
    assert R.scrub_text("x DE12 GB82 WEST 1234 5698 7654 32") == f"x DE12 {R.token('iban', IBAN)}"


TRACK2 = ";4111111111111111=29121010000000000000?"
TRACK1 = "%B4111111111111111^DOE/JOHN Q^29121010000000000000000000000?"
EMV57 = "4111111111111111D29121010000000000000F"  # EMV tag 57, track 2 equivalent data


@pytest.mark.parametrize("track", [TRACK2, TRACK1, EMV57, "4111111111111111=2912101123", ";4111111111111111==101?"])
def test_track_data_is_never_kept_only_its_cards_token(track):
    """Track data (the magnetic stripe's, or EMV's track 2 equivalent) had its card number tokenised and the
    rest kept: expiry, service code, discretionary data (and track 1's name), which PCI DSS forbids storing
    after authorisation. The whole track is replaced by the card's token, so the card is still known."""
    pan = R.token("pan", "4111111111111111")
    assert R.scrub_value(track) == pan
    assert R.scrub_text(f"swiped {track} at pos") == f"swiped {pan} at pos"
    assert R.scrub({"ref": [f"ord-{track}"]}) == {"ref": [f"ord-{pan}"]}
    assert R.field("card_number", track) == (True, pan)  # the card's field sent the track: the card's token
    assert R.scrub({"pan_emv": track}) == {"pan_emv": pan}


def test_track_data_fields_are_dropped_by_name():
    sent = {"track2": TRACK2, "Track1": TRACK1, "track_2": "x", "trackData": "x", "track2_equivalent": "x",
            "track2Equivalent": "x", "emvTag57": EMV57, "tag_57": "x", "magstripe": "x", "magneticStripe": "x",
            "track_id": "t1", "tracking_number": "1Z999", "order_tracking": "x"}
    assert R.scrub(sent) == {"track_id": "t1", "tracking_number": "1Z999", "order_tracking": "x"}


def test_bank_details_national_ids_addresses_places_and_expiry_dates_are_dropped_by_name():
    """Each was kept as sent in attributes and dead letters: bank account numbers and codes, national ids by
    their local names (an SSN without its dashes is a plain 9-digit number no pattern finds), parts of an
    address (ZIP codes however prefixed, a home city), coordinates, and card expiry dates. Each is dropped, like
    the policy's fields of its kind (bank_account, national_id, address, card_expiry)."""
    dropped = {"acct": "12345678", "payee_account": "12345678", "payerAccount": "1", "beneficiary_acct": "2",
               "bank_account_number": "3", "sort_code": "20-00-00", "sortCode": "200000", "routing_number": "021000021",
               "routingNumber": "1", "aba_number": "2", "bsb": "062-000", "social": "078051120",
               "social_security_number": "078051120", "socialSecurity": "1", "nin": "QQ123456C", "nino": "QQ1",
               "cpf": "123.456.789-09", "aadhaar": "2345 6789 0123", "aadhar_number": "1", "dni": "1", "nric": "S1",
               "sin_number": "046 454 286",
               "billing_zip": "10115", "shippingZip": "75001", "zip": "1", "post_code": "SW1A 1AA",
               "home_city": "Thiès", "billingCity": "Lyon", "shipping_town": "Kaolack", "customer_district": "x",
               "lat": 14.69, "lon": -17.44, "lng": 1.0, "latitude": 1.0, "geoLocation": "14.6,-17.4",
               "card_exp": "12/29", "exp_date": "1229", "cardExp": "12/29", "expMonth": 12, "exp_year": 2029,
               "ccexp": "1229", "exp": "12/29", "validThru": "12/29",
               "geo": {"lat": 14.69, "lon": -17.44}, "customer": {"sortCode": "1", "home_city": "x"}}
    kept = {"account_id": "a1", "account_type": "savings", "account": "acc-1", "routing": "visa", "city": "Dakar",
            "merchant_city": "Dakar", "country": "SN", "billing_country": "SN", "latency_ms": 3, "social_score": 1,
            "exp_id": "e7", "experiment": "b", "expected_loss": 1.0, "export_date": "2026-09-01", "hour_sin": 0.5,
            "zipped": True, "flat_fee": 1.0, "slat": 1, "geo_country": "SN",
            "card_expired": False, "cnp": True, "bank_name": "BNP", "bic": "BNPAFRPP", "nonce": "n1",
            "photo_acct": "p1", "velocity_1h": 3, "exp_mode": "b"}
    scrubbed = R.scrub({**dropped, **kept})
    assert scrubbed == {**kept, "geo": {}, "customer": {}}
    assert all(R.feature(name, "x") == (False, None) for name in dropped if name not in ("geo", "customer"))
