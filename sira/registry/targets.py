"""Decision targets: what the business asks of a model's approve / review / block bands.

A model carries them (``sira models create --targets``); the registry validates them, and training
chooses a version's thresholds from them (``sira.training.evaluation.choose_thresholds``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sira.core.errors import InvalidInput


def _invalid(name: str, message: str) -> InvalidInput:
    field = name if name == "decision_targets" else f"decision_targets.{name}"
    return InvalidInput(f"decision target {name}: {message}" if field != name else f"decision targets: {message}",
                        code="invalid_targets", details={"field": field})


@dataclass(frozen=True)
class DecisionTargets:
    """What the business asks of the decision bands."""

    review_rate: float = 0.02  # share of traffic sent to manual review (review + block)
    block_precision: float = 0.80  # precision required to block automatically
    max_block_rate: float = 0.005  # never block more than this share of traffic
    cost_missed_fraud: float = 100.0
    cost_false_alarm: float = 5.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "DecisionTargets":
        # every refusal names its field as the HTTP body and the targets file nest it (decision_targets.review_rate)
        if not isinstance(data, Mapping | None):
            raise _invalid("decision_targets", f"a mapping of targets, got {type(data).__name__}")
        data = dict(data or {})
        known = list(cls.__dataclass_fields__)
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InvalidInput(f"unknown decision target(s): {', '.join(unknown)}; valid targets: {', '.join(known)}",
                               code="invalid_targets", details={"field": f"decision_targets.{unknown[0]}", "valid": known,
                                                                "unknown": [f"decision_targets.{k}" for k in unknown]})
        values = {}
        for k, v in data.items():
            try:
                values[k] = float(v)
            except (TypeError, ValueError):
                raise _invalid(k, "must be a number") from None
            if not math.isfinite(values[k]) or values[k] < 0:
                raise _invalid(k, "must be a finite, non-negative number")
        targets = cls(**values)
        for name in ("review_rate", "block_precision", "max_block_rate"):
            if not 0 < getattr(targets, name) <= 1:
                raise _invalid(name, "must be in (0, 1]")
        return targets
