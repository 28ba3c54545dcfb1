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
