"""The promotion policy: whether a retrained challenger may replace the champion, as pure functions (no I/O).

A model's policy lives in its settings (``sira models create/update --policy
p.yaml``, stored in ``sira_models.promotion_policy``); the retraining job
gathers the :class:`Evidence` and records the :class:`Decision` and its
reasons in the audit log and the report. Challenger and champion are scored on
the same recent evaluation window, and the challenger is judged by:

- **AP gain**: challenger average precision minus the champion's must be at
  least ``min_ap_gain`` (absolute AP points; default 0.0, "no worse"). With no
  champion (a model's first version) the rule passes.
- **Calibration**: the challenger's expected calibration error must be at most
  ``max_calibration_error`` (default 0.05): the decision thresholds read
  scores as probabilities.
- **Score drift**: the PSI of the challenger's scores against the champion's
  scores on the window must be at most ``max_score_psi`` (default 0.25, the
  "major shift" line of :mod:`sira.core.stats`): a challenger that moves the score
  distribution that much changes review and block rates overnight.
- **Blockers**, whatever the metrics say: a failed data check
  (``block_on_failed_checks``, default on) and a dataset drift verdict at or
  above ``block_on_drift`` ("alert" by default; "warn" is stricter, "never"
  ignores drift). With no drift verdict given there is nothing to block on,
  and the reason says so.
- **Checks that could not run** (``Evidence.not_run``, e.g. the drift check
  with too few recent events): ``on_missing_check: block`` (the default)
  makes each one a blocker, ``warn`` lets the challenger through with a
  reason that names the check and why it did not run.

Outcomes: "reject" when a blocker applies or a rule fails; otherwise "hold"
(no decision) when the evidence cannot support one: fewer than
``min_positives`` positives in the window (default 20), or a metric missing or
NaN; otherwise "stage". A blocker rejects even without enough positives: a
failed data check needs no metric to be conclusive.

"stage" means the challenger may go to ``staging`` (when ``auto_stage``);
production still needs the model's approvals unless its
``required_approvals`` is 0 and ``auto_promote`` is on (see
:meth:`PromotionPolicy.auto_statuses`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sira.core.errors import InvalidInput
from sira.core.stats import SEVERITIES

__all__ = ["DRIFT_BLOCK_LEVELS", "Decision", "Evidence", "PromotionPolicy", "drift_not_run", "evidence_of"]

DRIFT_BLOCK_LEVELS = ("alert", "warn", "never")
ON_MISSING_CHECK = ("block", "warn")
OUTCOMES = ("stage", "reject", "hold")
# Float rounding must not turn "gain exactly the minimum" into a rejection.
_TOLERANCE = 1e-12


def _invalid(field_name: str, message: str) -> InvalidInput:
    # the field as the HTTP body and the policy file nest it (promotion_policy.min_ap_gain)
    return InvalidInput(f"promotion policy {field_name}: {message}", code="invalid_policy",
                        details={"field": f"promotion_policy.{field_name}"})


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is missing, NaN or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class PromotionPolicy:
    """The rules a challenger must pass to be staged; every field has a default."""

    min_ap_gain: float = 0.0  # challenger AP - champion AP on the same window, absolute AP points
    max_calibration_error: float = 0.05  # challenger's expected calibration error on that window
    max_score_psi: float = 0.25  # PSI of challenger vs champion scores on the window ("maximum score drift")
    block_on_drift: str = "alert"  # dataset drift verdict at or above which promotion is blocked; "never" ignores it
    block_on_failed_checks: bool = True
    on_missing_check: str = "block"  # a check that could not run: "block" promotion, or "warn" and go on
    min_positives: int = 20  # fewer positives in the window: no decision ("hold")
    auto_stage: bool = True  # a challenger that passes goes to staging without a person
    auto_promote: bool = True  # and on to production, only when the model's required_approvals is 0

    def __post_init__(self) -> None:
        for f in fields(self):  # f.type is the annotation's text (postponed annotations)
            value = getattr(self, f.name)
            if f.type == "bool":
                if not isinstance(value, bool):
                    raise _invalid(f.name, f"must be true or false, got {value!r}")
            elif f.type == "int":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise _invalid(f.name, f"must be a whole number, got {value!r}")
            elif f.type == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise _invalid(f.name, f"must be a finite number, got {value!r}")
                object.__setattr__(self, f.name, float(value))  # YAML's 0 is as good as 0.0
        if not -1 <= self.min_ap_gain <= 1:
            raise _invalid("min_ap_gain", f"must be in [-1, 1] (AP points), got {self.min_ap_gain}")
        if not 0 <= self.max_calibration_error <= 1:
            raise _invalid("max_calibration_error", f"must be in [0, 1], got {self.max_calibration_error}")
        if self.max_score_psi <= 0:
            raise _invalid("max_score_psi", f"must be positive, got {self.max_score_psi}")
        if self.block_on_drift not in DRIFT_BLOCK_LEVELS:
            raise _invalid("block_on_drift",
                           f"must be one of {', '.join(DRIFT_BLOCK_LEVELS)}, got {self.block_on_drift!r}")
        if self.on_missing_check not in ON_MISSING_CHECK:
            raise _invalid("on_missing_check",
                           f"must be one of {', '.join(ON_MISSING_CHECK)}, got {self.on_missing_check!r}")
        if self.min_positives < 1:
            raise _invalid("min_positives", f"must be at least 1, got {self.min_positives}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> PromotionPolicy:
        """A policy from a model's settings (parsed YAML or jsonb); None or {} gives the defaults."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InvalidInput(f"a promotion policy is a mapping of settings, got {type(data).__name__}",
                               code="invalid_policy", details={"field": "promotion_policy"})
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                raise InvalidInput(f"unknown promotion policy setting {key!r}; valid settings: {', '.join(known)}",
                                   code="invalid_policy", details={"field": f"promotion_policy.{key}", "valid": known})
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The policy as stored in ``sira_models.promotion_policy``."""
        return asdict(self)

    def decide(self, evidence: Evidence) -> Decision:
        """Stage, reject or hold the challenger, with one reason per rule checked, and apart the reasons of the
        rules that decided a reject or a hold (most rules pass: the first reasons are mostly passes)."""
        reasons: list[str] = []
        blockers: list[str] = []
        deciding: list[str] = []
        checks: dict[str, bool] = {}

        def said(reason: str, *, passed: bool = True) -> None:
            reasons.append(reason)
            if not passed:
                deciding.append(reason)

        failed = ", ".join(evidence.failed_checks)
        if not evidence.failed_checks:
            checks["data_checks"] = True
            reasons.append("no data check failed")
        elif self.block_on_failed_checks:
            checks["data_checks"] = False
            blockers.append(f"data checks failed: {failed}")
            said(f"data checks failed ({failed}): promotion is blocked", passed=False)
        else:
            checks["data_checks"] = True
            reasons.append(f"data checks failed ({failed}), but this policy does not block on failed checks")

        for check, why in evidence.not_run.items():
            if self.on_missing_check == "block":
                checks[check] = False
                blockers.append(f"{check} check not run")
                said(f"the {check} check could not run ({why}): promotion is blocked (on_missing_check: block)",
                     passed=False)
            else:
                checks[check] = True
                reasons.append(f"the {check} check could not run ({why}); this policy warns only "
                               "(on_missing_check: warn)")

        verdict = evidence.drift_verdict
        if verdict is None and "drift" in evidence.not_run:
            pass  # said above
        elif verdict is None:
            checks["drift"] = True
            reasons.append("no dataset drift verdict was given: nothing to block on")
        elif self.block_on_drift == "never":
            checks["drift"] = True
            reasons.append(f"dataset drift verdict {verdict!r}: this policy never blocks on drift")
        elif SEVERITIES.index(verdict) >= SEVERITIES.index(self.block_on_drift):
            checks["drift"] = False
            blockers.append(f"dataset drift {verdict!r}")
            said(f"dataset drift verdict {verdict!r} is at or above {self.block_on_drift!r}: promotion is blocked",
                 passed=False)
        else:
            checks["drift"] = True
            reasons.append(f"dataset drift verdict {verdict!r} is below {self.block_on_drift!r}")

        missing = self._missing_evidence(evidence)
        checks["evidence"] = not missing
        if missing:
            for reason in missing:
                said(reason, passed=False)
            outcome = "reject" if blockers else "hold"
            return Decision(outcome, tuple(reasons), tuple(blockers), checks, tuple(deciding))
        positives = int(evidence.challenger["positives"])
        reasons.append(f"the evaluation window holds {positives} positives (minimum {self.min_positives})")

        # _missing_evidence found nothing missing: every number read below is there and finite
        challenger_ap = _number(evidence.challenger["average_precision"])
        assert challenger_ap is not None
        champion_ap = _number(evidence.champion["average_precision"]) if evidence.champion is not None else None
        if champion_ap is None:
            checks["ap_gain"] = True
            reasons.append(f"no champion to compare with (first version): challenger AP {challenger_ap:.3f}, "
                           "the AP-gain rule passes")
        else:
            gain = challenger_ap - champion_ap
            checks["ap_gain"] = gain >= self.min_ap_gain - _TOLERANCE
            verb = "meets" if checks["ap_gain"] else "is below"
            said(f"AP gain {gain:+.3f} over the champion ({champion_ap:.3f} → {challenger_ap:.3f}) {verb} the minimum "
                 f"{self.min_ap_gain:+.3f}", passed=checks["ap_gain"])

        ece = _number(evidence.challenger["expected_calibration_error"])
        assert ece is not None
        checks["calibration"] = ece <= self.max_calibration_error + _TOLERANCE
        verb = "is within" if checks["calibration"] else "exceeds"
        said(f"expected calibration error {ece:.3f} {verb} the maximum {self.max_calibration_error:.3f}",
             passed=checks["calibration"])

        if evidence.champion is None:
            checks["score_psi"] = True
            reasons.append("no champion scores to compare with: the score-drift rule passes")
        else:
            psi = _number(evidence.score_psi)
            assert psi is not None
            checks["score_psi"] = psi <= self.max_score_psi + _TOLERANCE
            verb = "is within" if checks["score_psi"] else "exceeds"
            said(f"score PSI {psi:.3f} against the champion's scores {verb} the maximum {self.max_score_psi:.3f}",
                 passed=checks["score_psi"])

        outcome = "stage" if all(checks.values()) else "reject"
        return Decision(outcome, tuple(reasons), tuple(blockers), checks, tuple(deciding))

    def _missing_evidence(self, evidence: Evidence) -> list[str]:
        """Why the evidence cannot support a decision (empty when it can)."""
        challenger, champion = evidence.challenger, evidence.champion
        positives = _number(challenger.get("positives"))
        if positives is None:
            return ["the challenger's metrics have no positive count: insufficient evidence"]
        if positives < self.min_positives:
            return [f"the evaluation window holds {int(positives)} positives, fewer than the {self.min_positives} "
                    "needed for a decision: insufficient evidence"]
        missing = [f"the challenger's {name} is missing or NaN" for name in ("average_precision",
                                                                               "expected_calibration_error")
                   if _number(challenger.get(name)) is None]
        if champion is not None:
            if _number(champion.get("average_precision")) is None:
                missing.append("the champion's average_precision is missing or NaN")
            if _number(evidence.score_psi) is None:
                missing.append("the score PSI against the champion is missing or NaN")
            if evidence.champion_overlap:
                missing.append(f"the champion was trained on part of the evaluation window "
                               f"({evidence.champion_overlap}), which flatters it")
            sizes = (challenger.get("n"), champion.get("n"))
            if None not in sizes and sizes[0] != sizes[1]:
                missing.append(f"challenger and champion were not evaluated on the same window "
                               f"(n {sizes[0]} vs {sizes[1]})")
        return [f"{m}: insufficient evidence" for m in missing]

    def auto_statuses(self, decision: Decision, *, required_approvals: int) -> tuple[str, ...]:
        """The statuses the policy itself moves a challenger through: (), ("staging",) or ("staging", "production").

        Production only when the model needs no approvals (``required_approvals`` 0)
        and ``auto_promote`` is on; otherwise a staged challenger waits for ``sira promote``.
        """
        if decision.outcome != "stage" or not self.auto_stage:
            return ()
        if required_approvals == 0 and self.auto_promote:
            return ("staging", "production")
        return ("staging",)


@dataclass(frozen=True)
class Evidence:
    """What the retraining job measured, as :func:`sira.training.evaluation.evaluate` returns metrics."""

    challenger: Mapping[str, Any]  # metrics on the evaluation window
    champion: Mapping[str, Any] | None  # the production version's metrics on the same window; None: no champion
    score_psi: float | None  # challenger's scores vs the champion's on the window
    drift_verdict: str | None  # the dataset's drift verdict ("ok"/"warn"/"alert"), None: not measured
    failed_checks: tuple[str, ...] = field(default=())  # names of failed data checks
    not_run: Mapping[str, str] = field(default_factory=dict)  # check that could not run -> why (e.g. "drift")
    champion_overlap: str | None = None  # how the champion's training data reaches into the window (unfair)

    def __post_init__(self) -> None:
        if self.drift_verdict is not None and self.drift_verdict not in SEVERITIES:
            raise InvalidInput(f"unknown drift verdict {self.drift_verdict!r}; expected one of {', '.join(SEVERITIES)}",
                               details={"field": "drift_verdict"})
        if isinstance(self.failed_checks, str):  # one name, not its characters
            object.__setattr__(self, "failed_checks", (self.failed_checks,))
        elif not isinstance(self.failed_checks, tuple):
            object.__setattr__(self, "failed_checks", tuple(self.failed_checks))


@dataclass(frozen=True)
class Decision:
    """The policy's verdict on one challenger, with a plain sentence per rule checked."""

    outcome: str  # "stage" | "reject" | "hold"
    reasons: tuple[str, ...]
    blockers: tuple[str, ...]
    checks: dict[str, bool]  # rule name → passed, for the rules that were checked
    deciding: tuple[str, ...] = ()  # of ``reasons``, those of the rules that failed: why a reject or a hold

    def to_dict(self) -> dict[str, Any]:
        """For the audit log and the report."""
        return {"outcome": self.outcome, "reasons": list(self.reasons), "blockers": list(self.blockers),
                "checks": dict(self.checks), "deciding": list(self.deciding)}



def drift_not_run(drift: Mapping[str, Any]) -> dict[str, str]:
    """A retraining run's drift step as the policy's ``not_run`` evidence (steps recorded before ``status``
    existed held a ``note`` and no verdict when the check could not run)."""
    if drift.get("status") == "not_run" or (drift.get("verdict") is None and "note" in drift):
        return {"drift": drift.get("reason") or drift.get("note") or "no reason recorded"}
    return {}


def evidence_of(evaluation: Mapping[str, Any], drift: Mapping[str, Any]) -> Evidence:
    """The evidence a retraining run's ``evaluate`` and ``drift`` steps hold (as the run stores them), for the
    policy to decide on: by the run itself, or later on a person's promotion request."""
    checks = tuple(f"feature {name} missing from the recent window" for name in drift.get("missing_features", []))
    return Evidence(challenger=evaluation["challenger"], champion=evaluation.get("champion"),
                    score_psi=evaluation.get("score_psi"), drift_verdict=drift.get("verdict"),
                    failed_checks=checks, not_run=drift_not_run(drift),
                    champion_overlap=evaluation.get("champion_overlap"))
