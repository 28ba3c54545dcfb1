"""What the registry and access routes answer, declared for OpenAPI. Strict (no field undeclared): a field a
registry function starts returning without a schema here fails loudly in the tests, instead of being
filtered out of the answer in silence. Times are ISO 8601 strings, as the registry returns them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

VersionStatus = Literal["candidate", "validated", "staging", "production", "archived", "rejected"]
RequestStatus = Literal["pending", "approved", "rejected", "cancelled", "superseded"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ModelSummary(Strict):
    name: str
    model_type: str
    required_approvals: int
    updated_at: str
    latest_version: int | None
    production_version: int | None
    staging_version: int | None


class ModelOverview(ModelSummary):
    """A model as the dashboard lists it: its versions and how production does."""

    description: str | None
    training_ap: float | None = Field(description="The production version's test AP at training")
    live_ap: float | None = Field(description="The production version's AP on its newest labelled window")
    live_window_end: str | None
    live_flagged: bool | None = Field(description="That window fell below the model's margin under training AP")
    drift_verdict: Literal["ok", "warn", "alert"] | None = Field(description="The newest drift run's verdict")
    drift_at: str | None
    retrain_decision: Literal["stage", "reject", "hold"] | None
    retrain_at: str | None
    retrain_challenger: int | None


class ModelOverviewList(Strict):
    models: list[ModelOverview]


class PendingRequest(Strict):
    """A pending promotion request with what an approver decides on, and the caller's standing."""

    request_id: int
    model: str
    model_type: str
    version: int
    created_by: str
    requested_by: str
    reason: str | None
    created_at: str
    required_approvals: int
    challenger_ap: float | None = Field(description="This version's test AP")
    production_version: int | None
    champion_ap: float | None = Field(description="The production version's test AP")
    decisions: list[dict[str, Any]]
    drift_verdict: Literal["ok", "warn", "alert"] | None
    policy: dict[str, Any] | None = Field(description="The retraining run that made this version, if one did: its "
                                          "decision, champion against challenger on one window, reasons, blockers")
    may_decide: bool
    may_decide_reason: str | None = Field(description="Why the caller may not decide (None: it may)")


class PendingThresholdChange(Strict):
    """A pending threshold change with what an approver decides on, and the caller's standing."""

    set_id: int
    model: str
    model_type: str
    version: int
    revision: int
    review: float
    block: float
    current_review: float | None = Field(description="The review threshold in force")
    current_block: float | None = Field(description="The block threshold in force")
    requested_by: str
    reason: str | None
    created_at: str
    required_approvals: int
    evidence: dict[str, Any] = Field(description="The what-if at the requested and the current thresholds when it "
                                     "was asked (window None: no labelled window, with a note)")
    decisions: list[dict[str, Any]]
    may_decide: bool
    may_decide_reason: str | None = Field(description="Why the caller may not decide (None: it may)")


class ApprovalQueue(Strict):
    requests: list[PendingRequest]
    threshold_changes: list[PendingThresholdChange]


class Me(Strict):
    """The caller: who it is, its roles, and every action with whether they allow it."""

    name: str
    kind: str
    roles: list[str]
    may: dict[str, bool]


class Model(Strict):
    """A model and its governance settings."""

    id: int
    name: str
    display_name: str | None
    description: str | None
    model_type: str
    owner: str | None
    entity_type: str
    label_name: str
    feature_set: str | None
    feature_set_version: int | None
    label_maturity_days: int
    decision_targets: dict[str, Any]
    required_approvals: int
    promotion_policy: dict[str, Any]
    settings: dict[str, Any]
    notify: list[str] = Field(default_factory=list, description="Receivers told of its governance events "
                              "(names from SIRA_NOTIFY_RECEIVERS_FILE)")
    created_by: str
    created_at: str
    updated_at: str


class VersionSummary(Strict):
    version: int
    status: VersionStatus
    created_by: str
    created_at: str
    artifact_sha256: str
    test_ap: str | None = Field(description="The test window's average precision, as stored")
    last_request: RequestStatus | None
    retrain_decision: Literal["stage", "reject", "hold"] | None = Field(
        description="The last retraining policy decision on this version as its challenger (null: none judged it)")


class ModelDetail(Model):
    versions: list[VersionSummary]


class PromotionRequestView(Strict):
    id: int
    status: RequestStatus
    requested_by: str
    created_at: str
    decided_at: str | None
    decisions: list[dict[str, Any]]


class Version(Strict):
    """A version: its artifact, schema, parameters, metrics, thresholds, and its promotion requests."""

    id: int
    model_id: int
    model_name: str
    version: int
    status: VersionStatus
    run_id: str | None
    artifact_uri: str
    artifact_sha256: str
    feature_set: str | None
    feature_set_version: int | None
    model_fs_version: int | None
    feature_schema: list[dict[str, Any]]
    params: dict[str, Any]
    metrics: dict[str, Any]
    thresholds: dict[str, Any] = Field(description="The active threshold set's review and block")
    threshold_set: int | None = Field(description="The active threshold set (GET .../versions/{v}/thresholds)")
    description: str | None
    required_approvals: int
    created_by: str
    created_at: str
    updated_at: str
    status_changed_at: str
    promotion_requests: list[PromotionRequestView]


class Comparison(Strict):
    model: str
    a: int
    b: int
    status: dict[str, VersionStatus]
    thresholds: dict[str, dict[str, Any]]
    metrics: list[dict[str, Any]] = Field(description="One row per window and metric: v<a>, v<b>, difference")


class RetrainVerdict(Strict):
    run: int = Field(description="The retraining run (sira_retrain_runs.id)")
    decision: Literal["reject", "hold"]
    reasons: list[str]
    deciding: list[str] = Field(description="Of the reasons, those of the rules that failed: why it was not staged")


class PolicySaid(Strict):
    promotes: bool = Field(description="Whether the policy promoted the version on its own")
    outcome: Literal["stage", "reject", "hold"] = Field(description="The policy's verdict on the evidence of the "
                                                        "last retraining run that judged this version")
    reasons: list[str]
    deciding: list[str] = Field(description="Of the reasons, those that kept it from promoting (none when it did)")


class PromotionRequested(Strict):
    model: str
    version: int
    request_id: int
    status: RequestStatus
    required_approvals: int
    retrain_verdict: RetrainVerdict | None = Field(
        description="Set when a retraining policy judged this version as its challenger and did not stage it")
    policy: PolicySaid | None = Field(
        None, description="A model that requires no approvals: what its promotion policy said (not promoted: the "
        "request waits for one approver)")


class Staged(Strict):
    model: str
    version: int
    status: Literal["staging"]
    replaced: int | None
    retrain_verdict: RetrainVerdict | None = Field(
        description="Set when a retraining policy judged this version as its challenger and did not stage it")


class Decided(Strict):
    model: str
    version: int
    request_id: int
    outcome: RequestStatus
    approvals: int
    required_approvals: int
    previous_production: int | None


class RolledBack(Strict):
    model: str
    production: int
    archived: int
    reason: str


class ProductionChange(Strict):
    at: str
    actor: str
    actor_kind: str
    from_: int | None = Field(alias="from")
    to: int | None
    via: str | None
    reason: str | None
    requested_by: str | None = Field(description="Who asked for it: a promotion's requester (the actor of a "
                                                 "policy's promotion is the policy); null for a rollback")


class History(Strict):
    model: str
    history: list[ProductionChange]
    production: int | None = Field(description="The production version now (null: none)")
    rollback_to: int | None = Field(description="The version a rollback would restore now (null: none to go back "
                                                "to); the same rule as POST /v1/models/{name}/rollback")
    rollback_blocked: dict[str, str] | None = Field(
        description="Why that rollback would be refused now ({code, message}; e.g. feature_set_retired: data "
                    "retention removed the states its feature set reads), null when nothing stands in its way")


class DriftReport(Strict):
    """A drift run (``GET /v1/models/{name}/drift``)."""

    job_id: str | None
    version: int
    verdict: Literal["ok", "warn", "alert"]
    window: dict[str, str]
    computed_at: str
    summary: dict[str, Any] = Field(description="source, severities, thresholds, window_rows; skipped and few_bins "
                                    "name the features not compared or whose bins cannot show how they moved")
    features: list[dict[str, Any]]


class PerformanceReport(Strict):
    """A live-performance run (``GET /v1/models/{name}/performance``): the newest that is no backtest, else the
    newest backtest."""

    job_id: str | None
    computed_at: str
    as_of: str | None = Field(description="The run's label cut-off (null: a run stored before runs said so)")
    range: dict[str, str] = Field(description="from, to: the range of events the run read")
    backtest: bool | None = Field(description="A run with --as-of: labels as they were known then, its young "
                                  "windows provisional (null: a run stored before runs said so)")
    flagged: bool
    rows: list[dict[str, Any]]


class MonitoringReport(Strict):
    model: str
    latest: DriftReport | PerformanceReport | None = Field(
        description="The newest stored report (performance: the newest that is no backtest), or null before the "
                    "first run")


class AuditEntry(Strict):
    id: int
    occurred_at: str
    actor: str
    actor_kind: str
    action: str
    target_type: str | None
    target_id: str | None
    source_address: str | None
    outcome: str
    details: dict[str, Any]


class AuditLog(Strict):
    entries: list[AuditEntry]
    next_before: int | None = Field(description="Older entries match but were cut off: pass this as `before` "
                                                "for the next page (null: none is left)")


class KeyCreated(Strict):
    name: str
    roles: list[str]
    key: str = Field(description="Shown once: only its hash is stored")


class KeyView(Strict):
    name: str
    roles: list[str]
    created_by: str
    created_at: str
    expires_at: str | None
    last_used_at: str | None
    revoked_at: str | None


class KeyList(Strict):
    keys: list[KeyView]


class ServedVersions(Strict):
    production: int | None
    shadow: int | None


class ServingReloaded(Strict):
    notified: bool = Field(description="Every replica was told to re-read the registry (at commit)")
    serving: dict[str, ServedVersions] | None = Field(
        description="What the answering replica serves after re-reading it, per model; null when it does not score")


class KeyRevoked(Strict):
    revoked: str


class Insights(Strict):
    """A version's global importance, evaluation and lineage, from its verified artifact."""

    model: str
    version: int
    importance: list[dict[str, Any]] = Field(description="Features by mean |SHAP| on validation rows, largest first")
    evaluation: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per window (validation, test), what training measured beyond the "
        "version's metrics: calibration (the reliability table: n, mean_score, observed_rate per bin), decisions "
        "and cost at the thresholds, segments ({segment: {value: n, positives, average_precision, roc_auc}})")
    lineage: dict[str, Any] = Field(description="Training run, dataset fingerprint, code and library versions, "
                                    "the artifact's checksum (artifact.verified: its manifest and every file it "
                                    "lists match the registered checksum on this read)")


class DriftHistory(Strict):
    """The model's drift runs of the last days, oldest first."""

    model: str
    days: int
    runs: list[dict[str, Any]] = Field(description="run, at, version, verdict, features: {feature: {psi, severity}}")


class PerformanceHistory(Strict):
    """The model's live-performance windows of the last days, oldest first (production and shadow)."""

    model: str
    days: int
    windows: list[dict[str, Any]] = Field(description="version, role, window_start, window_end, n, n_positive, "
                                          "average_precision, ece, precision_flagged, recall_flagged, provisional, "
                                          "flagged, backtest (the run had --as-of), as_of (its label cut-off); "
                                          "a window's current run is preferred to a backtest's")


class Traffic(Strict):
    """Production's answers per minute: decisions, degraded answers, latency percentiles."""

    model: str
    minutes: int
    per_minute: list[dict[str, Any]] = Field(description="Every minute from the one `minutes` ago up to the current "
                                             "one, oldest first: minute, answers, approve, review, block, degraded, "
                                             "p50_ms, p95_ms, p99_ms (a minute without answers: zeros, latency null)")


class ThresholdWhatIf(Strict):
    """What each candidate threshold would have done on a labelled window of a version's production answers."""

    model: str
    version: int
    window: dict[str, str]
    provisional: bool = Field(description="The window ends after the label maturity: its young payments' chargebacks "
                              "count, their legitimate neighbours are left out (precision and recall read high)")
    mature_until: str = Field(description="Events up to this time are mature (no label: legitimate)")
    labelled: int
    positives: int
    fraud_amount: float | None = Field(description="The window's fraud amount in its one currency; null when its "
                                       "fraud is in several (a sum across currencies means nothing)")
    fraud_amount_by_currency: dict[str, float] = Field(description="The window's fraud amount per currency")
    targets: dict[str, float]
    current: dict[str, float] = Field(description="The version's review and block thresholds")
    meets_targets: dict[str, float] = Field(description="The thresholds the model's decision targets choose here")
    thresholds: list[dict[str, Any]] = Field(description="threshold, flagged, flag_rate, precision, recall, "
                                             "fraud_amount_caught, fraud_amount_share (null when the fraud is in "
                                             "several currencies), fraud_amount_caught_by_currency, "
                                             "fraud_amount_share_by_currency, false_alarms, missed_fraud, "
                                             "false_alarm_cost, missed_fraud_cost, total_cost")


class ThresholdSet(Strict):
    id: int
    revision: int
    review: float
    block: float
    status: Literal["pending", "active", "superseded", "rejected", "cancelled"]
    required_approvals: int
    requested_by: str
    reason: str | None
    evidence: dict[str, Any] = Field(description="The what-if at these values when they were requested")
    created_at: str
    decided_at: str | None
    activated_at: str | None
    decisions: list[dict[str, Any]] = Field(description="approver, decision, comment, at")


class ThresholdSets(Strict):
    """A version's decision thresholds as a history: every prediction names the set that decided it."""

    model: str
    version: int
    active: int | None = Field(description="The id of the set serving decides with")
    sets: list[ThresholdSet]


class ThresholdChanged(Strict):
    model: str
    version: int
    set: int
    revision: int
    review: float
    block: float
    status: Literal["pending", "active"]
    required_approvals: int
    evidence: dict[str, Any]
    from_: dict[str, float] = Field(alias="from", description="The thresholds in force when it was requested")


class ThresholdDecided(Strict):
    model: str
    version: int
    set: int
    revision: int
    outcome: RequestStatus
    approvals: int
    required_approvals: int
    status: Literal["pending", "active", "rejected"]
