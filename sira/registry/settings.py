"""A model's settings: which there are, which need an admin, and their checks (one set for creating a model
and for changing one)."""

from __future__ import annotations

import re
from typing import Any

from sira.core.errors import Conflict, InvalidInput
from sira.features.definitions import LABEL_NAME
from sira.registry import receivers

MODEL_SETTINGS = ("display_name", "description", "owner", "label_name", "label_maturity_days", "decision_targets",
                  "required_approvals", "promotion_policy", "feature_set_version", "notify")
GOVERNANCE = ("required_approvals", "promotion_policy", "decision_targets", "notify")  # an admin's
FREE_TEXT = ("display_name", "description", "owner")  # stored with PII patterns redacted


def redacted(text: str | None) -> str | None:
    """Governance text as stored (reasons, comments, descriptions, errors): card numbers (and track data), IBANs,
    emails, phone numbers and IP addresses in it become tokens, keyed as the events' are; the rest stays
    readable."""
    if not text:
        return text
    from sira.core.config import get_settings
    from sira.ingest.pii import redactor_for

    return redactor_for(get_settings()).scrub_text(text)


# sira_models' checks (sql/003_registry.sql), as a person reads them: field, and what it takes
_MODEL_CHECKS = {
    "sira_models_name_check": ("name", "lowercase letters, digits, '-' and '_', starting with a letter, at most 63"),
    "sira_models_model_type_check": ("model_type", "one of fraud_detection, churn, anomaly"),
    "sira_models_entity_type_check": ("entity_type", "lowercase letters, digits and '_', starting with a letter"),
    "sira_models_feature_set_version_check": ("feature_set_version", "1 or more"),
    "sira_models_label_maturity_days_check": ("label_maturity_days", "between 0 and 3650"),
    "sira_models_required_approvals_check": ("required_approvals", "between 0 and 20"),
}


def refused_setting(exc: Any) -> InvalidInput:
    """A model setting a check of ``sira_models`` refused (``exc``: asyncpg's CheckViolationError), named in
    words, not by the constraint's name."""
    field, takes = _MODEL_CHECKS.get(getattr(exc, "constraint_name", None) or "", ("settings", "as docs/governance.md describes"))
    return InvalidInput(f"invalid model {field}: {takes}", details={"field": field})


def checked(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings given (None: not given) as stored: each checked (a policy or targets are refused when set,
    not when a retrain reads them), free text redacted, receivers named as the receivers file names them."""
    from sira.registry.policy import PromotionPolicy
    from sira.registry.targets import DecisionTargets

    values: dict[str, Any] = {k: redacted(v) if k in FREE_TEXT else v for k, v in settings.items() if v is not None}
    name = values.get("label_name")
    if name is not None and not (isinstance(name, str) and re.fullmatch(LABEL_NAME, name)):
        raise InvalidInput("label name: lower-case letters, digits and _, starting with a letter (as labels "
                           "name it, e.g. fraud, chargeback, churn_90d)", details={"field": "label_name"})
    if "decision_targets" in values:
        DecisionTargets.from_dict(values["decision_targets"])
    if "promotion_policy" in values:
        PromotionPolicy.from_mapping(values["promotion_policy"])
    if "notify" in values:
        values["notify"] = receivers.names(values["notify"])
    return values


def check_feature_set(model: str, feature_set: str | None, version: int | None) -> None:
    """A feature set version a model (``model``) may train on: a registered version of its feature set, else
    422 ``unknown_feature_set`` naming the field and the versions there are (a model trained on a table it
    brings has no feature set)."""
    from sira.features.definitions import FEATURE_SETS

    if feature_set is None:
        raise InvalidInput(f"{model} is trained on a table it brings: it has no feature set, so no "
                           "feature_set_version", code="unknown_feature_set", details={"field": "feature_set_version"})
    if (feature_set, version) not in FEATURE_SETS:
        versions = sorted(v for n, v in FEATURE_SETS if n == feature_set)
        raise InvalidInput(f"feature set {feature_set} has no version {version}"
                           + (f" (versions: {', '.join(map(str, versions))})" if versions else ""),
                           code="unknown_feature_set",
                           details={"field": "feature_set_version", "feature_set": feature_set, "versions": versions})


def check_source(model: Any, feature_store: bool) -> None:
    """A training run on an existing model reads the model's source (its feature set, or tables): a table's
    version under a feature-store model failed its scoring of stored events and its drift with
    missing_columns (and the other way round)."""
    if (model["feature_set"] is not None) != feature_store:
        source = (f"the feature store ({model['feature_set']} v{model['feature_set_version']}): train it without "
                  "--data" if model["feature_set"] else "tables of its own: train it with --data")
        raise Conflict(f"model {model['name']} trains on {source}, or use another model name", code="model_source",
                       details={"model": model["name"], "feature_set": model["feature_set"]})
