"""A JWT is bounded before its signature is checked (8 KiB), and its ``sub``, which names the caller in the audit
log and to the four-eyes rules, is at most 200 printable ASCII characters (2026-12-07 review)."""

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
            "roles": ["approver"]}
    return jwt.encode({**base, **claims}, private, algorithm="RS256")


@pytest.fixture
def jwt_settings(settings, keypair, tmp_path):
    (tmp_path / "id.pem").write_bytes(keypair[1])
    return settings.model_copy(update={"jwt_issuer": "https://id.molam.test", "jwt_audience": "sira",
                                       "jwt_public_key_file": tmp_path / "id.pem"})


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
