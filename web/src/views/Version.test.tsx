import { screen, within } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import { answering, renderUi } from "../test/render";
import type { Insights, Version } from "../types";
import { MetricsTable, VersionView, windows } from "./Version";

afterEach(() => vi.unstubAllGlobals());

describe("a version's metrics", () => {
  it("reads validation before test and skips entries that are not windows", () => {
    expect(windows({ test: { n: 5 }, validation: { n: 9 }, train_rows: 100 as never })).toEqual(["validation", "test"]);
  });

  it("shows each metric per window", () => {
    renderUi(<MetricsTable metrics={{ validation: { n: 1200, average_precision: 0.61234 }, test: { n: 800, average_precision: 0.5 } }} />);
    const table = screen.getByRole("table", { name: "Metrics" });
    expect(table).toHaveTextContent("average precision0.6120.500");
    expect(table).toHaveTextContent("rows1,200800");
    expect(table).toHaveTextContent("ROC AUC——");
  });

  it("shows a metric of exactly 1 or 0 as a rate, not as a count", () => {
    renderUi(<MetricsTable metrics={{ test: { n: 1, positives: 0, roc_auc: 1, average_precision: 1, brier: 0 } }} />);
    const table = screen.getByRole("table", { name: "Metrics" });
    expect(table).toHaveTextContent("ROC AUC1.000");  // was "1", like a count
    expect(table).toHaveTextContent("average precision1.000");
    expect(table).toHaveTextContent("Brier score0.000");
    expect(table).toHaveTextContent("rows1");
    expect(table).toHaveTextContent("positives0");
  });
});

// what the registry and the artifact answer for a trained version (the registry keeps only the scalar metrics)
const version: Version = {
  model_name: "fraud", version: 2, status: "staging", run_id: "r-2", artifact_uri: "file:///a", artifact_sha256: "ab",
  feature_set: "payments", feature_set_version: 2, created_by: "dana", created_at: "2026-12-01T10:00:00Z",
  metrics: { validation: { n: 900, positives: 20, average_precision: 0.7 }, test: { n: 1000, positives: 25, average_precision: 0.6 } },
  thresholds: { review: 0.04421874195424622, block: 0.9312345678 },
};
const insights: Insights = {
  model: "fraud", version: 2, importance: [{ feature: "amount", mean_abs_shap: 0.4 }],
  evaluation: {
    test: {
      calibration: [{ n: 500, mean_score: 0.01, observed_rate: 0.008 }, { n: 500, mean_score: 0.2, observed_rate: 0.042 }],
      segments: { channel: { pos: { n: 600, positives: 12, average_precision: 0.55 }, ecom: { n: 400, positives: 13, average_precision: 0.66 } },
                  country: { SN: { n: 1000, positives: 25, average_precision: 0.6 } } },
    },
  },
  lineage: { training_run: null, dataset: null, seed: 0, code_version: null, lightgbm_version: null,
             artifact: { uri: "file:///a", sha256: "ab", verified: true }, created_by: "dana", created_at: "2026-12-01T10:00:00Z" },
};

describe("a version's page", () => {
  const base = "/v1/models/fraud/versions/2";
  const at = { path: "/models/:name/versions/:version", at: "/models/fraud/versions/2" };
  const stub = (extra: Record<string, unknown> = {}) => vi.stubGlobal("fetch", vi.fn(answering({
    [base]: version, [`${base}/insights`]: insights, [`${base}/card`]: "# fraud v2",
    [`${base}/thresholds`]: { model: "fraud", version: 2, active: null, sets: [] }, ...extra,
  })));

  it("draws the reliability diagram and the metrics by segment from the version's artifact", async () => {
    stub();
    renderUi(<VersionView />, undefined, at);
    expect(await screen.findByLabelText("Reliability diagram")).toBeInTheDocument();  // was "No calibration table."
    expect(screen.queryByText(/No calibration table/)).toBeNull();
    const segments = screen.getByRole("table", { name: "Metrics by segment" });
    const rows = within(segments).getAllByRole("row").slice(1).map((r) => r.textContent);
    expect(rows).toEqual(["channelpos600120.550", "channelecom400130.660", "countrySN1,000250.600"]);
  });

  it("says so when the artifact has no reliability table", async () => {
    stub({ [`${base}/insights`]: { ...insights, evaluation: {} } });
    renderUi(<VersionView />, undefined, at);
    expect(await screen.findByText(/No calibration table/)).toBeInTheDocument();
    expect(screen.getByText(/No segment had enough rows/)).toBeInTheDocument();
  });

  it("shows thresholds to 4 significant digits", async () => {
    stub();
    renderUi(<VersionView />, undefined, at);
    const table = await screen.findByRole("table", { name: "Thresholds" });
    expect(table).toHaveTextContent("approvescore below 0.04422");  // was 0.04421874195424622
    expect(table).toHaveTextContent("reviewfrom 0.04422 to below 0.9312");
  });
});
