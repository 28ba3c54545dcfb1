"""A scoring request checked against the version that will score it: the event its model needs (with
its entity's key) or the features, the event redacted into a row, and the digest of what was asked."""

from __future__ import annotations

import uuid
from typing import Any

from sira.core.errors import InvalidInput
from sira.features.definitions import ENTITY_COLUMNS
from sira.ingest.events import Rejection, event_row
from sira.serving.idempotency import request_digest
from sira.serving.schemas import Item, ScoreItem
from sira.serving.slots import Slot


def prepare(slot: Slot, redactor: Any, model: str, body: ScoreItem, started: float, prefix: str = "") -> Item:
    """Validate one request against the served version; redact its event (``started``: its arrival)."""
    runtime = slot.production
    request_id = body.request_id or f"auto-{uuid.uuid4()}"
    if redactor is not None and body.request_id:
        request_id = redactor.scrub_value(body.request_id)
    if runtime.feature_set is not None:
        if body.event is None:
            raise InvalidInput(f"{prefix}event: {model} is a feature-store model: send the event",
                               code="missing_field", details={"field": f"{prefix}event"})
        event = body.event
        key = ENTITY_COLUMNS.get(slot.entity_type)
        if key and getattr(event, key) is None and not (key == "card_token" and event.card_number):
            raise InvalidInput(f"{prefix}event.{key}: required to score {model} (its entity is {slot.entity_type})",
                               code="missing_entity_key", details={"field": f"{prefix}event.{key}"})
        # validated by the request model already: redacted into a row without validating again
        row = event_row(event, redactor, "score", event.attributes)
        if isinstance(row, Rejection):
            raise InvalidInput(f"{prefix}event.{row.field or ''}: {row.reason}", code=row.reason_code,
                               details={"field": f"{prefix}event.{row.field}" if row.field else f"{prefix}event"})
        digest = None
        if body.request_id is not None:  # occurred_at left to the server is "now": not part of what was asked
            digest = request_digest(model, {**row, "occurred_at": row["occurred_at"]
                                            if "occurred_at" in event.model_fields_set else None})
        return Item(runtime, slot.shadow, request_id, body.request_id is not None, row, None, body.record,
                    body.explain, started, digest=digest)
    if body.features is None:
        raise InvalidInput(f"{prefix}features: {model} takes ready features, not an event",
                           code="missing_field", details={"field": f"{prefix}features"})
    try:
        missing = runtime.check_features(body.features)
    except InvalidInput as exc:
        exc.message = prefix + exc.message
        exc.details = {"field": prefix + exc.details.get("field", "")}
        raise
    # redacted as the model's table was at training (a category of e-mails is one of tokens): the values are
    # stored with the prediction, in the spool and in Redis
    features = ({name: redactor.feature(name, value)[1] for name, value in body.features.items()}
                if redactor is not None else dict(body.features))
    return Item(runtime, slot.shadow, request_id, body.request_id is not None, None, features, False,
                body.explain, started, missing,
                digest=request_digest(model, features) if body.request_id is not None else None)
