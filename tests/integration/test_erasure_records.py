"""What an erasure records and lists: the model artifacts trained on the person's events (listed in ``files``,
not rewritten), a reason without the personal data it was typed with, the files exports and reports wrote."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from sira.core import db


async def _erase(pool, settings, customer: str, reason: str = "the person asked") -> dict:
    """One person erased as the two-admin flow does it: ann asks, bob carries it out; bob's answer."""
    from sira.core.auth import Identity
    from sira.ingest.bulk import redactor_for
    from sira.monitoring.erasure import forget, request_forget

    secret, redactor = settings.secret("auth_secret"), redactor_for(settings)
    ann, bob = Identity("ann", frozenset({"admin"})), Identity("bob", frozenset({"admin"}))
    async with db.transaction(pool) as conn:
        request = await request_forget(conn, ann, customer, reason, secret=secret, redactor=redactor)
        return await forget(conn, bob, customer, request["request_id"], secret=secret, redactor=redactor)


async def _trained(conn, model, train_from: str, train_to: str) -> int:
    """A version registered from a feature-store training run over [train_from, train_to), as `sira train`
    records it (the run's dataset fingerprint holds its windows)."""
    from sira.core.artifacts import ArtifactRef
    from sira.core.auth import Identity
    from sira.registry import models as registry
    from sira.training.windows import Windows

    actor = Identity("ds", frozenset({"data_scientist"})).actor()
    run_id = await registry.start_run(conn, model["id"], kind="train", params={}, actor=actor, code_version=None)
    windows = Windows(datetime.fromisoformat(train_from), datetime.fromisoformat(train_to),
                      datetime.fromisoformat(train_to), datetime(2026, 11, 30, tzinfo=timezone.utc),
                      datetime(2026, 12, 1, tzinfo=timezone.utc), 30)
    await registry.finish_run(conn, run_id, metrics={}, fingerprint={
        "source": "feature_store", "feature_set": "payments", "feature_set_version": 2,
        "windows": windows.to_dict()}, timings={})
    return await registry.register_candidate(
        conn, model, run_id=run_id, artifact=ArtifactRef(f"file:///artifacts/fraudx/runs/{run_id}", "0" * 64),
        feature_schema=[], params={}, metrics={}, thresholds={"review": 0.5, "block": 0.9}, feature_set_version=2,
        actor=actor)


async def test_the_artifacts_of_versions_trained_on_the_persons_events_are_listed(clean_db, settings):
    """A model artifact holds rows of its training matrix (reference_sample.npy): the docs said "no row of
    anyone" and the erasure listed nothing. The versions whose training window holds one of the person's
    events are listed now, with the files; a version trained before them is not."""
    from sira.core.auth import Identity
    from sira.ingest.bulk import redactor_for, store_events
    from sira.registry import models as registry

    person = f"cus-art-{uuid.uuid4().hex[:6]}"
    async with db.transaction(clean_db) as conn:
        summary, _ = await store_events(conn, [
            {"event_id": f"{person}-{k}", "occurred_at": f"2026-09-0{k + 1}T10:00:00Z", "customer_id": person,
             "amount": 10.0} for k in range(2)], redactor=redactor_for(settings), source="file")
        assert summary.accepted == 2
        model, _ = await registry.ensure_model(conn, "fraudx", actor=Identity("ds", frozenset()).actor(),
                                               feature_set="payments", feature_set_version=2)
        theirs = await _trained(conn, model, "2026-08-01T00:00:00+00:00", "2026-09-02T00:00:00+00:00")
        before = await _trained(conn, model, "2026-06-01T00:00:00+00:00", "2026-09-01T00:00:00+00:00")
    done = await _erase(clean_db, settings, person)
    listed = [f for f in done["files"] if f["kind"] == "model_artifact"]
    assert [(f["model"], f["version"]) for f in listed] == [("fraudx", theirs)] and before != theirs
    assert "reference_sample.npy" in listed[0]["files"] and listed[0]["path"].startswith("file:///artifacts/")
    stored = await clean_db.fetchval("SELECT files FROM sira_erasure_requests WHERE id = $1", done["request_id"])
    assert any(f.get("kind") == "model_artifact" for f in stored)


async def test_the_reasons_personal_data_becomes_placeholders_not_the_installations_tokens(clean_db, settings):
    """The reason was redacted into the installation's own PII tokens, the very ones the person's events carry
    (their email's, their phone's): kept forever in the tombstone and the audit log, they linked the erasure to
    the person's other records. Placeholders of the kind now."""
    from sira.ingest.bulk import redactor_for, store_events

    redactor = redactor_for(settings)
    person, email, phone = "cus-reason-1", "ann.other@example.com", "+44 7700 900457"
    async with db.transaction(clean_db) as conn:
        summary, _ = await store_events(conn, [{"event_id": "rs-1", "occurred_at": "2026-09-01T10:00:00Z",
                                                "customer_id": person, "amount": 10.0, "email": email,
                                                "phone": phone}], redactor=redactor, source="file")
    assert summary.accepted == 1
    reason = f"asked by {email}, call back on {phone}; card 4111 1111 1111 1111 on file"
    done = await _erase(clean_db, settings, person, reason=reason)
    kept = [await clean_db.fetchval("SELECT reason FROM sira_erasure_requests WHERE id = $1", done["request_id"])]
    kept += [r[0] for r in await clean_db.fetch("SELECT details::text FROM sira_audit_log "
                                                "WHERE action LIKE 'subject.forget%'")]
    assert kept[0] == "asked by [email], call back on [phone]; card [card] on file", kept[0]
    tokens = [redactor.token("email", email), redactor.token("phone", phone), "tok_"]
    assert len(kept) == 3 and all(t not in text for t in tokens for text in kept), kept
    assert all("[email]" in text for text in kept)
