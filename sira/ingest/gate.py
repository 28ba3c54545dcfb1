"""The erasure gate: what ingestion never stores again about an erased person (sql/017, sql/023).

An erasure keeps salted digests (``sha256(salt || id)``, the salt a random value of this database in
``sira_erasure_salt``): of the person's customer id in ``sira_erased_subjects`` (their events from before the
erasure, and any dead letter of theirs, are never stored again) and of their event ids in
``sira_erased_events`` (a label of one of their payments arriving later is never kept). The tables hold no id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import asyncpg

from sira.core import db

Gate = Literal["sira_erased_subjects", "sira_erased_events"]


def digest_of(column: str) -> str:
    """SQL: the gate's digest of ``column``, with the salt row aliased ``k``."""
    return f"sha256(k.salt || convert_to({column}, 'UTF8'))"


async def erased(conn: asyncpg.Connection, gate: Gate, ids: Iterable[str]) -> set[str]:
    """Those of ``ids`` the gate holds."""
    wanted = sorted(set(ids))
    if not wanted:
        return set()
    return {r["id"] for r in await conn.fetch(
        f"""SELECT i.id FROM unnest($1::text[]) AS i (id), sira_erasure_salt k
             WHERE EXISTS (SELECT 1 FROM {gate} x WHERE x.digest = {digest_of("i.id")})""", wanted)}


async def close(conn: asyncpg.Connection, gate: Gate, ids: Iterable[str]) -> int:
    """Put ``ids`` in the gate (now); the digests written: none when the salt row is missing."""
    return db.rows_affected(await conn.execute(
        f"""INSERT INTO {gate} (digest, erased_at)
            SELECT {digest_of("i.id")}, now() FROM unnest($1::text[]) AS i (id), sira_erasure_salt k
            ON CONFLICT (digest) DO UPDATE SET erased_at = excluded.erased_at""", sorted(set(ids))))
