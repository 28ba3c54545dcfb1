"""Who is acting, and what they may do: API keys and roles.

A key looks like ``sira_<prefix>_<secret>``. Only the prefix (to find the
row) and a keyed hash of the whole key (HMAC-SHA256 with the server's auth
pepper) are stored; the key itself is shown once, at creation. Keys can
expire and be revoked. Roles are fixed (CONVENTIONS.md): ``admin`` may do
everything, the others exactly what :data:`PERMISSIONS` grants them.

While no key exists, ``sira keys create --role admin`` works without a key
(bootstrap, recorded in the audit log as such); after that, managing keys
needs an admin key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import asyncpg

from sira.core import audit
from sira.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied, Unauthenticated

if TYPE_CHECKING:
    from sira.core.db import Connection

ROLES = ("service", "viewer", "analyst", "data_scientist", "approver", "operator", "admin")
_READERS = {"viewer", "analyst", "data_scientist", "approver", "operator"}
# action -> roles that may perform it (admin may perform every action)
PERMISSIONS: dict[str, frozenset[str]] = {
    "score": frozenset({"service"}),
    "events.write": frozenset({"service"}),
    # what of the events and labels it posted was set aside, and why (redacted as stored): never another caller's,
    # a stream's or a file's (posted_by, sql/035; sira.ingest.dead_letters.poster_of)
    "rejected.read": frozenset({"service"}),
    "feedback.write": frozenset({"service", "analyst"}),
    "models.read": frozenset(_READERS),
    "predictions.read": frozenset({"analyst"}),
    "models.write": frozenset({"data_scientist"}),
    "promotion.request": frozenset({"data_scientist"}),
    "promotion.decide": frozenset({"approver"}),
    "rollback": frozenset({"operator"}),
    "serving.reload": frozenset({"operator"}),
    "monitoring.run": frozenset({"operator"}),
    "batch.score": frozenset({"data_scientist"}),
    "features.read": frozenset({"analyst", "data_scientist"}),  # one entity's online snapshot
    "features.materialize": frozenset({"operator", "data_scientist"}),
    "keys.manage": frozenset(),
    "models.settings": frozenset(),
    "audit.read": frozenset(),
    "subject.access": frozenset(),  # everything stored about one person (sira subject export)
    "pii.rekey": frozenset(),  # re-key card tokens stored as sent (sira pii rekey-cards)
}
_KEY = re.compile(r"^sira_([0-9a-f]{12})_([A-Za-z0-9_-]{32,})$")


@dataclass(frozen=True)
class Identity:
    """An authenticated caller."""

    name: str
    roles: frozenset[str]
    kind: str = "api_key"  # api_key | jwt | bootstrap
    source_address: str | None = None  # where the call came from (HTTP), for the audit log
    # when the credentials stop working (a key's expires_at, a job key's no later than its submitter's; a JWT's
    # exp): a cached identity is never answered past it (sira.http.deps.IdentityCache)
    expires_at: datetime | None = None

    @property
    def is_job_key(self) -> bool:
        return self.kind == "api_key" and self.name.startswith(JOB_KEY_PREFIX)

    def actor(self) -> audit.Actor:
        return audit.Actor(self.name, self.kind, self.source_address)


def may(identity: Identity, action: str) -> bool:
    """Whether an identity's roles allow an action."""
    if action not in PERMISSIONS:
        raise KeyError(f"unknown action {action!r}")
    return "admin" in identity.roles or bool(identity.roles & PERMISSIONS[action])


def authorize(identity: Identity, action: str, *, target_type: str | None = None,
              target_id: str | None = None) -> None:
    """Raise :class:`PermissionDenied` (403) unless the identity may perform the action; the refusal is audited,
    naming what it was about (``target_type``, ``target_id``) and its code."""
    if not may(identity, action):
        allowed = sorted(PERMISSIONS[action] | {"admin"})
        message = f"{identity.name} may not {action}: it needs one of the roles {', '.join(allowed)}"
        raise audit.denied(PermissionDenied(message, details={"action": action, "roles": allowed}),
                           identity.actor(), action, target_type=target_type, target_id=target_id,
                           details={"reason": message, "code": PermissionDenied.code})


def hash_key(pepper: str, key: str) -> str:
    return hmac.new(pepper.encode("utf-8"), key.encode("utf-8"), hashlib.sha256).hexdigest()


def parse_expiry(text: str, *, now: datetime | None = None, label: str = "--expires") -> datetime:
    """When a new key stops working, from ISO 8601 (``2030-01-31``, ``…T18:00:00Z``, ``…+02:00``; no offset:
    UTC). A time already past is refused: the key would be born expired. ``label`` names the input in the
    message (the CLI's option; over HTTP, the body's field)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(f"{label}: ISO 8601 expected (2030-01-31, 2030-01-31T18:00:00Z or with an offset "
                           f"such as +02:00), got {text[:60]!r}", details={"field": "expires"}) from None
    when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    if when <= (now or datetime.now(timezone.utc)):
        raise InvalidInput(f"{label} {when.isoformat()} is in the past: a key would be born expired",
                           details={"field": "expires"})
    return when


def validate_roles(roles: list[str]) -> list[str]:
    unknown = sorted(set(roles) - set(ROLES))
    if unknown or not roles:
        raise InvalidInput(f"roles must be among {', '.join(ROLES)}" + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
                           details={"field": "roles", "allowed": list(ROLES)})
    return sorted(set(roles), key=ROLES.index)


async def create_key(
    conn: Connection, *, name: str, roles: list[str], pepper: str, creator: Identity | None,
    expires_at: datetime | None = None,
) -> tuple[str, dict[str, Any]]:
    """A new key (returned once) for ``name``. Without a creator, only the bootstrap admin key is allowed."""
    roles = validate_roles(roles)
    if name.startswith(JOB_KEY_PREFIX):  # a job's key acts for whoever minted it (sira_principal)
        raise InvalidInput(f"key names starting with {JOB_KEY_PREFIX!r} are reserved for jobs' keys",
                           details={"field": "name"})
    # Serialise key creation so two bootstrap attempts cannot both succeed.
    await conn.execute("LOCK TABLE sira_api_keys IN SHARE ROW EXCLUSIVE MODE")
    any_key = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM sira_api_keys)")
    if creator is None:
        if any_key:
            raise Unauthenticated("an API key is required: keys exist already (use an admin key: SIRA_API_KEY)")
        if "admin" not in roles:
            raise InvalidInput("the first key must hold the admin role: sira keys create --role admin --name NAME")
        creator = Identity("bootstrap", frozenset({"admin"}), "bootstrap")
    else:
        authorize(creator, "keys.manage")
    return await _insert_key(conn, name=name, roles=roles, pepper=pepper, creator=creator, expires_at=expires_at,
                             details={"roles": roles, "bootstrap": creator.kind == "bootstrap"})


async def _insert_key(conn: Connection, *, name: str, roles: list[str], pepper: str, creator: Identity,
                      expires_at: datetime | None, details: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    prefix = secrets.token_hex(6)
    key = f"sira_{prefix}_{secrets.token_urlsafe(32)}"
    try:
        row = await conn.fetchrow(
            """INSERT INTO sira_api_keys (name, key_prefix, key_hash, roles, created_by, expires_at)
               VALUES ($1, $2, $3, $4, $5, $6) RETURNING name, roles, created_at, expires_at""",
            name, prefix, hash_key(pepper, key), roles, creator.name, expires_at,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"a key named {name!r} exists already", code="key_exists",
                       details={"field": "name", "name": name}) from None
    except asyncpg.CheckViolationError:
        raise InvalidInput(f"invalid key name {name!r}: letters, digits and . _ @ - (at most 100)",
                           details={"field": "name"}) from None
    await audit.record(conn, creator.actor(), "key.create", target_type="api_key", target_id=name, details=details)
    assert row is not None  # INSERT ... RETURNING returns the row it inserted
    return key, {"name": row["name"], "roles": list(row["roles"]), "created_at": row["created_at"].isoformat(),
                 "expires_at": row["expires_at"].isoformat() if row["expires_at"] else None}


JOB_KEY_PREFIX = "job-"
MAX_JOB_KEY_TTL = timedelta(days=7)


def job_role(identity: Identity, actions: tuple[str, ...]) -> str:
    """The one role a job's key gets: a role that allows every one of ``actions`` and that the submitter
    holds (an admin submitter: the first such role), so the key is never wider than its submitter nor
    than the job needs."""
    for action in actions:
        authorize(identity, action)
    fit = [r for r in ROLES if r != "admin" and all(r in PERMISSIONS[a] for a in actions)]
    held = [r for r in fit if r in identity.roles]
    if held or fit:
        return (held or fit)[0]
    raise InvalidInput(f"no single role allows {', '.join(actions)}")


async def create_job_key(conn: Connection, submitter: Identity, *, actions: tuple[str, ...], job_name: str,
                         ttl: timedelta, pepper: str) -> tuple[str, dict[str, Any]]:
    """A short-lived key for one Ray job, minted by whoever submits it: one role that allows ``actions``,
    named ``job-<submission id>``, expiring after ``ttl``, revoked when the job ends (:func:`revoke_job_key`).

    A runtime env's variables are visible in ``ray job list`` and the dashboard, so a job never carries
    its submitter's long-lived key: this key is worth one job's role for the job's lifetime.
    """
    if not timedelta(0) < ttl <= MAX_JOB_KEY_TTL:
        raise InvalidInput(f"a job key lives between 1 second and {MAX_JOB_KEY_TTL.days} days, got {ttl}",
                           details={"field": "key_ttl"})
    if submitter.is_job_key:  # a chain of job keys outlived its people and hid them from the four-eyes rules
        message = (f"{submitter.name} is a job's key: a job's key cannot mint another job's key (submit the job "
                   "with your own key or token)")
        raise audit.denied(PermissionDenied(message, code="job_key_cannot_mint", details={"action": "jobs.submit"}),
                           submitter.actor(), "key.create", target_type="api_key",
                           details={"reason": message, "code": "job_key_cannot_mint"})
    role = job_role(submitter, actions)
    await conn.execute("LOCK TABLE sira_api_keys IN SHARE ROW EXCLUSIVE MODE")
    # never longer than the submitter's own credentials: its key's expiry (read now: a key's expiry can only be
    # what it was created with), a JWT's exp
    own = submitter.expires_at
    if submitter.kind == "api_key":
        own = await conn.fetchval("SELECT expires_at FROM sira_api_keys WHERE name = $1", submitter.name)
    expires_at = await conn.fetchval("SELECT LEAST(now() + $1::interval, $2::timestamptz)", ttl, own)
    return await _insert_key(conn, name=f"{JOB_KEY_PREFIX}{job_name}"[:100], roles=[role], pepper=pepper,
                             creator=submitter, expires_at=expires_at,
                             details={"roles": [role], "job": job_name, "actions": list(actions)})


async def principals(conn: Connection, *names: str) -> list[str]:
    """Who acts behind each name (``sira_principal``, sql/020): a job's key acts for whoever minted it, so the
    four-eyes rules compare people, not keys; any other name is itself."""
    rows = await conn.fetch("SELECT sira_principal(n) AS who FROM unnest($1::text[]) WITH ORDINALITY AS t(n, i) "
                            "ORDER BY i", list(names))
    return [r["who"] for r in rows]


async def revoke_job_key(conn: Connection, identity: Identity, name: str) -> bool:
    """Revoke a job's key: by the job itself (acting with it) or by its submitter. False when it was
    revoked already (the job and its submitter both revoke it at the end; either may come first)."""
    if not name.startswith(JOB_KEY_PREFIX):
        raise InvalidInput(f"{name!r} is not a job key")
    row = await conn.fetchrow("SELECT created_by, revoked_at FROM sira_api_keys WHERE name = $1", name)
    if row is None:
        raise NotFound(f"no API key named {name!r}", details={"name": name})
    if identity.name not in (name, row["created_by"]) and not may(identity, "keys.manage"):
        raise audit.denied(PermissionDenied(f"{identity.name} may not revoke the job key {name!r}: only the job or "
                                            "its submitter may", details={"action": "keys.manage"}),
                           identity.actor(), "keys.manage")
    revoked = await conn.fetchval(
        """UPDATE sira_api_keys SET revoked_at = now(), revoked_by = $2
            WHERE name = $1 AND revoked_at IS NULL RETURNING name""", name, identity.name)
    if revoked is not None:
        await audit.record(conn, identity.actor(), "key.revoke", target_type="api_key", target_id=name,
                           details={"job_ended": True})
    return revoked is not None


@dataclass(frozen=True)
class JwtConfig:
    """How to trust the company's identity service: issuer, audience, signing keys, the roles claim."""

    issuer: str
    audience: str
    keys: tuple[Any, ...]  # public keys
    roles_claim: str = "roles"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway_s: float = 30.0  # clock skew allowed on exp, nbf and iat (the identity service's clock is not ours)
    max_lifetime_s: float = 86_400.0  # exp - iat (exp - now without iat) at most: a leaked token dies soon

    @classmethod
    def from_settings(cls, settings: Any) -> "JwtConfig | None":
        if not settings.jwt_issuer:
            return None
        import json

        import jwt
        from jwt.algorithms import get_default_algorithms

        from sira.core.errors import ConfigError

        if not settings.jwt_audience or not (settings.jwt_public_key_file or settings.jwt_jwks_file):
            raise ConfigError("SIRA_JWT_ISSUER needs SIRA_JWT_AUDIENCE and SIRA_JWT_PUBLIC_KEY_FILE or SIRA_JWT_JWKS_FILE")
        keys: list[Any] = []
        try:
            if settings.jwt_public_key_file:
                from cryptography.hazmat.primitives.serialization import load_pem_public_key

                keys.append(load_pem_public_key(settings.jwt_public_key_file.read_bytes()))
            if settings.jwt_jwks_file:
                for jwk in json.loads(settings.jwt_jwks_file.read_text())["keys"]:
                    keys.append(jwt.PyJWK(jwk).key)
        except (OSError, ValueError, KeyError, jwt.PyJWTError) as exc:
            raise ConfigError(f"cannot read the JWT signing keys: {exc}") from None
        algorithms = tuple(a.strip() for a in settings.jwt_algorithms.split(",") if a.strip())
        unknown = set(algorithms) - set(get_default_algorithms())
        if unknown or "none" in {a.lower() for a in algorithms}:
            raise ConfigError(f"SIRA_JWT_ALGORITHMS: unsupported {', '.join(sorted(unknown)) or 'none'}")
        return cls(settings.jwt_issuer, settings.jwt_audience, tuple(keys), settings.jwt_roles_claim, algorithms,
                   settings.jwt_leeway_s, settings.jwt_max_lifetime_s)


def identity_from_jwt(token: str, config: JwtConfig) -> Identity:
    """The identity of a verified JWT: ``sub`` as the name, SIRA roles from the roles claim. Its times are checked
    with ``config.leeway_s`` of clock skew, and it may live ``config.max_lifetime_s`` at most."""
    import time

    import jwt

    if len(token) > MAX_JWT_BYTES:  # verified before anything else: a signature check of megabytes costs the loop
        raise Unauthenticated(f"invalid token: larger than {MAX_JWT_BYTES // 1024} KiB")
    last: Exception | None = None
    for key in config.keys:
        try:
            claims = jwt.decode(token, key=key, algorithms=list(config.algorithms), audience=config.audience,
                                issuer=config.issuer, options={"require": ["exp", "iss", "aud", "sub"]},
                                leeway=config.leeway_s)
            break
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except (jwt.PyJWTError, TypeError, ValueError) as exc:  # PyJWT raises TypeError for a key of
            last = exc                                             # another family than the token's algorithm
    else:
        raise Unauthenticated(f"invalid token ({type(last).__name__ if last else 'no key'})")
    # PyJWT has read exp and iat as integers (as int() does), iat no later than now with the leeway: an iat in the
    # future cannot stretch the life allowed
    issued = int(claims["iat"]) if "iat" in claims else time.time()
    if int(claims["exp"]) - issued > config.max_lifetime_s:
        raise Unauthenticated(f"the token lives longer than SIRA accepts (at most {_duration(config.max_lifetime_s)} "
                              f"from {'its iat' if 'iat' in claims else 'now'}): ask the identity service for a "
                              "shorter-lived one")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip():  # "jwt:" would make every such token one person
        raise Unauthenticated("invalid token: its subject (sub) is empty")
    if not _SUBJECT.fullmatch(subject):  # it names the caller in the audit log and in the four-eyes rules
        raise Unauthenticated(f"invalid token: its subject (sub) must be at most {MAX_SUBJECT} printable ASCII "
                              "characters without spaces")
    raw = claims.get(config.roles_claim) or []
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(r, str) for r in raw):
        raise Unauthenticated(f"the token's roles claim {config.roles_claim!r} must be a string or a list of strings")
    roles = frozenset(r for r in raw if r in ROLES)
    if not roles:
        raise Unauthenticated(f"the token grants no SIRA role (claim {config.roles_claim!r})")
    return Identity(f"jwt:{claims['sub']}", roles, "jwt",
                    expires_at=datetime.fromtimestamp(int(claims["exp"]) + config.leeway_s, timezone.utc))


MAX_JWT_BYTES = 8192  # a token is a few hundred bytes to a couple of KiB
MAX_SUBJECT = 200
_SUBJECT = re.compile(rf"[\x21-\x7e]{{1,{MAX_SUBJECT}}}")


def _duration(seconds: float) -> str:
    """A length of time as a person reads it: 24 h, 10 min, 90 s."""
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def is_jwt(key: str, jwt_config: JwtConfig | None) -> bool:
    """A bearer credential to verify as a JWT (JWTs are accepted; SIRA keys start with ``sira_``)."""
    return jwt_config is not None and key.count(".") == 2 and not key.startswith("sira_")


async def authenticate(conn: Connection, key: str | None, *, pepper: str,
                       jwt_config: JwtConfig | None = None) -> Identity:
    """The identity behind a key or a JWT; 401 (:class:`Unauthenticated`) for missing, unknown, revoked or
    expired credentials."""
    if not key:
        raise Unauthenticated("missing credentials: send an API key (Authorization: Bearer ..., or SIRA_API_KEY)")
    if jwt_config is not None and is_jwt(key, jwt_config):
        return identity_from_jwt(key.strip(), jwt_config)
    match = _KEY.match(key.strip())
    if match is None:
        raise Unauthenticated("invalid API key")
    # a job's key (job-...) works only while its submitter's key does: s, the submitter's row (none for a JWT's)
    row = await conn.fetchrow(
        """SELECT k.name, k.roles, k.key_hash, k.revoked_at, k.expires_at,
                  (k.expires_at IS NOT NULL AND k.expires_at <= now()) AS expired,
                  s.name AS submitter, s.revoked_at AS submitter_revoked_at, s.expires_at AS submitter_expires_at,
                  (s.expires_at IS NOT NULL AND s.expires_at <= now()) AS submitter_expired
             FROM sira_api_keys k
             LEFT JOIN sira_api_keys s ON k.name LIKE 'job-%' AND s.name = k.created_by
            WHERE k.key_prefix = $1""",
        match.group(1),
    )
    if row is None or not hmac.compare_digest(row["key_hash"], hash_key(pepper, key.strip())):
        raise Unauthenticated("invalid API key")
    if row["revoked_at"] is not None:
        raise Unauthenticated("this API key was revoked")
    if row["expired"]:
        raise Unauthenticated("this API key has expired")
    expires_at = row["expires_at"]
    if row["submitter"] is not None:
        if row["submitter"].startswith(JOB_KEY_PREFIX):  # minted by a job's key before that was refused
            raise Unauthenticated("this job's key was minted by another job's key: it is no longer accepted")
        if row["submitter_revoked_at"] is not None:
            raise Unauthenticated(f"this job's key acts for {row['submitter']}, whose key was revoked")
        if row["submitter_expired"]:
            raise Unauthenticated(f"this job's key acts for {row['submitter']}, whose key has expired")
        if row["submitter_expires_at"] is not None:
            expires_at = min(expires_at or row["submitter_expires_at"], row["submitter_expires_at"])
    # Record use at most once a minute per key: a scoring service must not write on every call.
    await conn.execute(
        """UPDATE sira_api_keys SET last_used_at = now()
            WHERE key_prefix = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')""",
        match.group(1),
    )
    return Identity(row["name"], frozenset(row["roles"]), expires_at=expires_at)


async def list_keys(conn: Connection, identity: Identity) -> list[dict[str, Any]]:
    authorize(identity, "keys.manage")
    rows = await conn.fetch(
        "SELECT name, roles, created_by, created_at, expires_at, last_used_at, revoked_at FROM sira_api_keys ORDER BY id"
    )
    return [{k: (v.isoformat() if isinstance(v, datetime) else list(v) if k == "roles" else v) for k, v in r.items()}
            for r in rows]


async def revoke_key(conn: Connection, identity: Identity, name: str) -> None:
    """Revoke a key. The last admin key that still works is kept (409 ``last_admin``): a revoked key still
    counts as "keys exist", so without a working admin key nothing could manage keys again but SQL."""
    authorize(identity, "keys.manage")
    # Serialise with key creation and other revocations: two admins revoking each other must not both succeed.
    await conn.execute("LOCK TABLE sira_api_keys IN SHARE ROW EXCLUSIVE MODE")
    last = await conn.fetchval(
        """SELECT 'admin' = ANY(roles) AND NOT EXISTS (
                  SELECT 1 FROM sira_api_keys o WHERE o.name <> k.name AND 'admin' = ANY(o.roles)
                     AND o.revoked_at IS NULL AND (o.expires_at IS NULL OR o.expires_at > now()))
             FROM sira_api_keys k WHERE name = $1 AND revoked_at IS NULL
              AND (expires_at IS NULL OR expires_at > now())""", name)
    if last:
        raise Conflict(f"{name!r} is the last admin key that works: revoking it would leave no one to manage "
                       "keys (create another admin key first)", code="last_admin", details={"name": name})
    revoked = await conn.fetchval(
        "UPDATE sira_api_keys SET revoked_at = now(), revoked_by = $2 WHERE name = $1 AND revoked_at IS NULL RETURNING name",
        name, identity.name,
    )
    if revoked is None:
        exists = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM sira_api_keys WHERE name = $1)", name)
        if not exists:
            raise NotFound(f"no API key named {name!r}", details={"name": name})
        raise Conflict(f"the API key {name!r} is already revoked", details={"name": name})
    await audit.record(conn, identity.actor(), "key.revoke", target_type="api_key", target_id=name)
