"""JWT bearer tokens from the company's identity service, mapped to SIRA roles."""

import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sira.core.auth import JwtConfig, identity_from_jwt
from sira.core.errors import Unauthenticated
from sira.http.app import create_app


@pytest.fixture(scope="module")
def keypair():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, pem


def token(private, **claims):
    base = {"iss": "https://id.molam.test", "aud": "sira", "sub": "amina", "exp": int(time.time()) + 300,
            "roles": ["approver", "unknown-role"]}
    return jwt.encode({**base, **claims}, private, algorithm="RS256")


@pytest.fixture
def jwt_settings(settings, keypair, tmp_path):
    (tmp_path / "id.pem").write_bytes(keypair[1])
    return settings.model_copy(update={"jwt_issuer": "https://id.molam.test", "jwt_audience": "sira",
                                       "jwt_public_key_file": tmp_path / "id.pem"})


def test_tokens_map_to_roles_and_bad_ones_are_refused(jwt_settings, keypair):
    private, _ = keypair
    config = JwtConfig.from_settings(jwt_settings)
    who = identity_from_jwt(token(private), config)
    assert who.name == "jwt:amina" and who.roles == {"approver"} and who.kind == "jwt"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for bad, message in ((token(private, aud="elsewhere"), "invalid token"),
                         (token(private, iss="https://evil.test"), "invalid token"),
                         (token(private, exp=int(time.time()) - 90), "expired"),  # beyond the 30 s leeway
                         (token(other), "invalid token"),
                         (token(private, roles=["superuser"]), "no SIRA role"),
                         (jwt.encode({"iss": "https://id.molam.test", "aud": "sira", "sub": "x", "roles": ["admin"],
                                      "exp": int(time.time()) + 60}, "an-hmac-secret-that-is-long-enough-32b", algorithm="HS256"), "invalid token")):
        with pytest.raises(Unauthenticated, match=message):
            identity_from_jwt(bad, config)


def test_a_token_signed_for_another_key_family_or_with_odd_roles_is_a_401(jwt_settings, keypair):
    """An ES256 token against the RSA key made PyJWT raise TypeError (a 500 to an unauthenticated caller)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    private, _ = keypair
    config = JwtConfig.from_settings(jwt_settings)
    claims = {"iss": "https://id.molam.test", "aud": "sira", "sub": "x", "roles": ["admin"],
              "exp": int(time.time()) + 60}
    es256 = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    with pytest.raises(Unauthenticated, match="invalid token"):
        identity_from_jwt(es256, config)
    for roles in (7, {"admin": True}, ["admin", 3]):
        with pytest.raises(Unauthenticated, match="roles claim"):
            identity_from_jwt(token(private, roles=roles), config)


async def test_jwt_over_http(clean_db, jwt_settings, keypair):
    app = create_app(jwt_settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            ok = await client.get("/v1/models", headers={"Authorization": f"Bearer {token(keypair[0])}"})
            assert ok.status_code == 200 and ok.json() == {"models": []}
            denied = await client.get("/v1/audit", headers={"Authorization": f"Bearer {token(keypair[0])}"})
            assert denied.status_code == 403
            expired = await client.get("/v1/models", headers={
                "Authorization": f"Bearer {token(keypair[0], exp=int(time.time()) - 90)}"})
            assert expired.status_code == 401 and json.loads(expired.text)["error"]["code"] == "unauthenticated"
            forever = await client.get("/v1/models", headers={
                "Authorization": f"Bearer {token(keypair[0], exp=int(time.time()) + 10 * 365 * 86_400)}"})
            assert forever.status_code == 401 and forever.json()["error"]["code"] == "unauthenticated"
            assert "at most 24 h" in forever.json()["error"]["message"], forever.text


def test_a_token_with_an_empty_subject_is_refused_like_one_without(jwt_settings, keypair):
    """An empty ``sub`` was accepted as the identity "jwt:": every such token one person, in the audit log and
    to four-eyes rules alike."""
    private, _ = keypair
    config = JwtConfig.from_settings(jwt_settings)
    for sub in ("", "   "):
        with pytest.raises(Unauthenticated, match="subject"):
            identity_from_jwt(token(private, sub=sub), config)
    with pytest.raises(Unauthenticated, match="invalid token"):  # no sub at all: PyJWT's required claims
        identity_from_jwt(jwt.encode({"iss": "https://id.molam.test", "aud": "sira", "exp": int(time.time()) + 60,
                                      "roles": ["admin"]}, private, algorithm="RS256"), config)


def test_a_clock_a_little_ahead_is_allowed_and_a_token_may_not_live_for_years(jwt_settings, keypair):
    """A token from an identity service whose clock ran 3 s ahead (iat, nbf) was refused as not yet valid; one
    that expired in ten years was accepted: a leaked token worked for as long."""
    private, _ = keypair
    config = JwtConfig.from_settings(jwt_settings)
    assert (config.leeway_s, config.max_lifetime_s) == (30, 86_400)  # the defaults
    now = int(time.time())
    assert identity_from_jwt(token(private, iat=now + 3, nbf=now + 3), config).name == "jwt:amina"
    assert identity_from_jwt(token(private, exp=now - 10), config).name == "jwt:amina"  # expired within the leeway
    with pytest.raises(Unauthenticated, match="invalid token"):
        identity_from_jwt(token(private, iat=now + 120, exp=now + 600), config)  # further ahead than the leeway
    # the longest life: exp - iat, or exp - now without iat
    assert identity_from_jwt(token(private, iat=now, exp=now + 86_400), config).name == "jwt:amina"
    assert identity_from_jwt(token(private, exp=now + 86_000), config).name == "jwt:amina"
    for claims in ({"exp": now + 10 * 365 * 86_400}, {"iat": now, "exp": now + 10 * 365 * 86_400},
                   {"iat": now - 3 * 86_400, "exp": now + 3_600}, {"iat": now, "exp": now + 86_401}):
        with pytest.raises(Unauthenticated, match=r"lives longer than SIRA accepts \(at most 24 h"):
            identity_from_jwt(token(private, **claims), config)
    strict = JwtConfig.from_settings(jwt_settings.model_copy(update={"jwt_leeway_s": 0, "jwt_max_lifetime_s": 600}))
    with pytest.raises(Unauthenticated, match="invalid token"):
        identity_from_jwt(token(private, iat=now + 3), strict)
    with pytest.raises(Unauthenticated, match=r"at most 10 min"):
        identity_from_jwt(token(private, exp=now + 3_600), strict)
    assert identity_from_jwt(token(private, exp=now + 300), strict).name == "jwt:amina"


# A JWT is bounded before its signature is checked (8 KiB), and its ``sub``, which names the caller in the audit
# log and to the four-eyes rules, is at most 200 printable ASCII characters (2026-12-07 review).
def test_a_huge_token_or_an_odd_subject_is_refused(jwt_settings, keypair):
    private, _ = keypair
    config = JwtConfig.from_settings(jwt_settings)
    assert identity_from_jwt(token(private, sub="auth0|5f3c@molam.test"), config).name == "jwt:auth0|5f3c@molam.test"
    assert identity_from_jwt(token(private), config).expires_at is not None  # its exp: no cache answers it past
    with pytest.raises(Unauthenticated, match="larger than 8 KiB"):  # a valid signature, a padded claim
        identity_from_jwt(token(private, pad="x" * 9000), config)
    for sub in ("a" * 201, "amina\n", "ami na", "amina\x00", "émilie"):
        with pytest.raises(Unauthenticated, match="subject"):
            identity_from_jwt(token(private, sub=sub), config)


async def test_over_http_a_huge_token_is_a_401_and_answers_are_not_cached(clean_db, jwt_settings, keypair):
    private, _ = keypair
    app = create_app(jwt_settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            huge = await client.get("/v1/me", headers={"Authorization": f"Bearer {token(private, pad='x' * 9000)}"})
            assert huge.status_code == 401 and "8 KiB" in huge.json()["error"]["message"]
            me = await client.get("/v1/me", headers={"Authorization": f"Bearer {token(private)}"})
            assert me.status_code == 200 and me.headers["cache-control"] == "no-store"
