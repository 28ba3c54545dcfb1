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
        data = dict(data or {})
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidInput(f"unknown decision target(s): {', '.join(sorted(unknown))}")
        values = {}
        for k, v in data.items():
            try:
                values[k] = float(v)
            except (TypeError, ValueError):
                raise InvalidInput(f"decision target {k} must be a number", details={"field": k}) from None
            if not math.isfinite(values[k]) or values[k] < 0:
                raise InvalidInput(f"decision target {k} must be a finite, non-negative number", details={"field": k})
        targets = cls(**values)
        for name in ("review_rate", "block_precision", "max_block_rate"):
            if not 0 < getattr(targets, name) <= 1:
                raise InvalidInput(f"decision target {name} must be in (0, 1]")
        return targets
