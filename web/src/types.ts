// The shapes of SIRA's HTTP API that the UI reads (sira/http/schemas.py declares them for OpenAPI).

export type Me = { name: string; kind: string; roles: string[]; may: Record<string, boolean> };

export type Verdict = "ok" | "warn" | "alert";

export type ModelOverview = {
  name: string;
  model_type: string;
  description: string | null;
  required_approvals: number;
  updated_at: string;
  latest_version: number | null;
  production_version: number | null;
  staging_version: number | null;
  training_ap: number | null;
  live_ap: number | null;
  live_window_end: string | null;
  live_flagged: boolean | null;
  drift_verdict: Verdict | null;
  drift_at: string | null;
  retrain_decision: "stage" | "reject" | "hold" | null;
  retrain_at: string | null;
  retrain_challenger: number | null;
};

export type Decision = { approver: string; decision: "approve" | "reject"; comment: string | null; at: string };

export type PendingRequest = {
  request_id: number;
  model: string;
  model_type: string;
  version: number;
  created_by: string;
  requested_by: string;
  reason: string | null;
  created_at: string;
  required_approvals: number;
  challenger_ap: number | null;
  production_version: number | null;
  champion_ap: number | null;
  decisions: Decision[];
  drift_verdict: Verdict | null;
  policy: {
    run: number;
    decision: string;
    reasons?: string[] | null;
    blockers?: string[] | null;
    evaluation?: {
      window?: { from: string; to: string };
      champion?: Record<string, number> | null;
      challenger?: Record<string, number>;
    } | null;
  } | null;
  may_decide: boolean;
  may_decide_reason: string | null;
};

export type Decided = {
  model: string;
  version: number;
  outcome: "pending" | "approved" | "rejected";
  approvals: number;
  required_approvals: number;
};

export type VersionSummary = {
  version: number;
  status: string;
  created_by: string;
  created_at: string;
  artifact_sha256: string;
  test_ap: string | null;
  last_request: string | null;
  retrain_decision: "stage" | "reject" | "hold" | null;
};

export type ModelDetail = {
  name: string;
  model_type: string;
  description: string | null;
  required_approvals: number;
  label_maturity_days: number;
  versions: VersionSummary[];
};

export type ProductionChange = {
  at: string;
  actor: string;
  actor_kind: string;
  from: number | null;
  to: number | null;
  via: string | null;
  reason: string | null;
  requested_by?: string | null; // a promotion's requester (the actor of a policy's promotion is the policy)
};

export type Metrics = {
  n?: number;
  positives?: number;
  average_precision?: number | null;
  roc_auc?: number | null;
  recall_at_1pct_fpr?: number | null;
  brier?: number | null;
  expected_calibration_error?: number | null;
};

/** What training measured on a window beyond the registry's metrics, read from the version's artifact. */
export type Evaluation = {
  calibration?: { n: number; mean_score: number; observed_rate: number }[];
  decisions?: Record<string, number | null>;
  cost?: Record<string, number | null>;
  segments?: Record<string, Record<string, { n: number; positives: number; average_precision: number | null; roc_auc?: number | null }>>;
};

export type Version = {
  model_name: string;
  version: number;
  status: string;
  run_id: string | null;
  artifact_uri: string;
  artifact_sha256: string;
  feature_set: string | null;
  feature_set_version: number | null;
  metrics: Record<string, Metrics>;
  thresholds: Record<string, number>;
  created_by: string;
  created_at: string;
};

export type Insights = {
  model: string;
  version: number;
  importance: { feature: string; mean_abs_shap: number }[];
  /** per window (validation, test): the reliability table, decisions, cost, metrics by segment */
  evaluation?: Record<string, Evaluation>;
  lineage: {
    training_run: { run_id: string; kind: string; status: string; started_by: string; finished_at: string | null } | null;
    dataset: Record<string, unknown> | null;
    seed: number | null;
    code_version: string | null;
    lightgbm_version: string | null;
    artifact: { uri: string; sha256: string; verified: boolean };
    created_by: string;
    created_at: string;
  };
};

export type DriftRun = {
  run: string;
  at: string;
  version: number;
  verdict: Verdict | null;
  features: Record<string, { psi: number | null; severity: Verdict }>;
};

export type PerformanceWindow = {
  version: number;
  role: "production" | "shadow";
  window_start: string;
  window_end: string;
  n: number;
  n_positive: number;
  average_precision: number | null;
  ece: number | null;
  precision_flagged: number | null;
  recall_flagged: number | null;
  provisional: boolean;
  flagged: boolean;
  /** the run had --as-of: labels as they were known then (a current run's window is preferred to it) */
  backtest: boolean;
  /** the run's label cut-off (null: a run stored before runs said so) */
  as_of: string | null;
};

export type Minute = {
  minute: string;
  answers: number;
  approve: number;
  review: number;
  block: number;
  degraded: number;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
};

export type AuditEntry = {
  id: number;
  occurred_at: string;
  actor: string;
  actor_kind: string;
  action: string;
  target_type: string | null;
  target_id: string | null;
  source_address: string | null;
  outcome: string;
  details: Record<string, unknown>;
};

/** A page of the audit log, newest first: `next_before` the cursor of the older entries cut off (null: none). */
export type AuditPage = { entries: AuditEntry[]; next_before: number | null };

/** What flagging every score at or above a threshold did on a labelled window (sira.monitoring.thresholds). */
export type ThresholdRow = {
  threshold: number;
  flagged: number;
  flag_rate: number;
  precision: number | null;
  recall: number | null;
  false_alarms?: number;
  missed_fraud?: number;
  total_cost?: number | null;
};

export type WhatIf = {
  model: string;
  version: number;
  window: { from: string; to: string };
  provisional: boolean;  // the window ends after the label maturity: precision and recall read high
  mature_until: string;
  labelled: number;
  positives: number;
  current: Record<string, number>;
  meets_targets: Record<string, number>;
  thresholds: ThresholdRow[];
};

/** The what-if stored with a threshold change when it was asked (window null: none labelled, with a note). */
export type ThresholdEvidence = {
  window: { from: string; to: string } | null;
  provisional?: boolean;
  note?: string;
  labelled?: number;
  positives?: number;
  requested?: { review: ThresholdRow; block: ThresholdRow };
  current?: Record<string, ThresholdRow>;
};

export type ThresholdSet = {
  id: number;
  revision: number;
  review: number;
  block: number;
  status: "pending" | "active" | "superseded" | "rejected" | "cancelled";
  required_approvals: number;
  requested_by: string;
  reason: string | null;
  evidence: ThresholdEvidence;
  created_at: string;
  decided_at: string | null;
  activated_at: string | null;
  decisions: Decision[];
};

export type ThresholdSets = { model: string; version: number; active: number | null; sets: ThresholdSet[] };

export type PendingThresholdChange = {
  set_id: number;
  model: string;
  model_type: string;
  version: number;
  revision: number;
  review: number;
  block: number;
  current_review: number | null;
  current_block: number | null;
  requested_by: string;
  reason: string | null;
  created_at: string;
  required_approvals: number;
  evidence: ThresholdEvidence;
  decisions: Decision[];
  may_decide: boolean;
  may_decide_reason: string | null;
};

export type ThresholdDecided = Decided & { set: number; revision: number; status: string };
