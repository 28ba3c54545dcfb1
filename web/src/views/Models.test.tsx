import { act, screen } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import { answering, renderUi } from "../test/render";
import type { ModelOverview } from "../types";
import { DriftBanner, driftAlerts, filterModels, ModelsTable, ModelsView } from "./Models";

const model = (over: Partial<ModelOverview>): ModelOverview => ({
  name: "fraud", model_type: "fraud_detection", description: null, required_approvals: 2, updated_at: "2026-12-01T00:00:00Z",
  latest_version: 3, production_version: 2, staging_version: 3, training_ap: 0.5, live_ap: 0.42,
  live_window_end: "2026-12-01T00:00:00Z", live_flagged: false, drift_verdict: "ok", drift_at: "2026-12-01T00:00:00Z",
  retrain_decision: "stage", retrain_at: "2026-12-01T00:00:00Z", retrain_challenger: 3, ...over,
});

describe("models view", () => {
  it("raises a drift banner for production models in ALERT only", () => {
    const models = [model({ name: "a", drift_verdict: "alert" }), model({ name: "b", drift_verdict: "warn" }),
                    model({ name: "c", drift_verdict: "alert", production_version: null })];
    expect(driftAlerts(models).map((m) => m.name)).toEqual(["a"]);
    renderUi(<DriftBanner models={models} />);
    expect(screen.getByRole("alert")).toHaveTextContent("a v2: the drift run of 2026-12-01 00:00 UTC says ALERT");
  });

  it("shows no banner when nothing in production drifts", () => {
    const { container } = renderUi(<DriftBanner models={[model({ drift_verdict: "warn" })]} />);
    expect(container.querySelector("[role=alert]")).toBeNull();
  });

  it("filters by model type", () => {
    const models = [model({ name: "f" }), model({ name: "c", model_type: "churn" })];
    expect(filterModels(models, "churn").map((m) => m.name)).toEqual(["c"]);
    expect(filterModels(models, "all")).toHaveLength(2);
  });

  it("shows live AP against training AP, and the margin flag", () => {
    renderUi(<ModelsTable models={[model({ live_ap: 0.3, training_ap: 0.5, live_flagged: true })]} />);
    expect(screen.getByText("(-0.200)")).toBeInTheDocument();
    expect(screen.getByText("below margin")).toBeInTheDocument();
    expect(screen.getByText("stage (v3, 2026-12-01 00:00 UTC)")).toBeInTheDocument();
  });

  it("renders what users wrote as text, never as markup", () => {
    const { container } = renderUi(<ModelsTable models={[model({ description: '<img src=x onerror="alert(1)"><script>alert(2)</script>' })]} />);
    expect(container.querySelector("img, script")).toBeNull();
    expect(screen.getByText('<img src=x onerror="alert(1)"><script>alert(2)</script>')).toBeInTheDocument();
  });

  it("says there is no model yet under All, and names the type when a filter leaves none", () => {
    const { unmount } = renderUi(<ModelsTable models={[]} type="all" />);
    expect(screen.getByText(/No model yet/)).toBeInTheDocument();  // was "No models of this type." under All
    unmount();
    renderUi(<ModelsTable models={[]} type="churn" />);
    expect(screen.getByText("No churn model.")).toBeInTheDocument();
  });

  it("keeps the table and the drift ALERT under a warning when a refresh fails, in words for no answer", async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    let up = true;
    vi.stubGlobal("fetch", vi.fn(async () => {
      if (!up) throw new TypeError("Failed to fetch");
      return new Response(JSON.stringify({ models: [model({ drift_verdict: "alert" })] }), { status: 200 });
    }));
    renderUi(<ModelsView />);
    expect(await screen.findByRole("table", { name: "Models" })).toBeInTheDocument();
    up = false;
    await act(async () => { await vi.advanceTimersByTimeAsync(30_000); });  // the refresh, which gets no answer
    expect(await screen.findByText("Could not refresh the models")).toBeInTheDocument();
    expect(screen.getByText(/SIRA did not answer/)).toBeInTheDocument();
    expect(screen.queryByText(/TypeError|Failed to fetch/)).toBeNull();
    expect(screen.getByRole("table", { name: "Models" })).toBeInTheDocument();  // was dropped with the banner
    expect(screen.getByText(/Drift ALERT on a production model/)).toBeInTheDocument();
    vi.useRealTimers();
  });

  it("says the models could not be read, never that there are none", async () => {
    vi.stubGlobal("fetch", vi.fn(answering({ "/v1/models": [503, { error: { code: "database_unavailable", message: "PostgreSQL is unavailable" } }] })));
    renderUi(<ModelsView />);
    expect(await screen.findByRole("alert")).toHaveTextContent("Could not load the models");
    expect(screen.queryByText(/No model/)).toBeNull();
  });
});

afterEach(() => vi.unstubAllGlobals());
