import { screen } from "@testing-library/react";
import { describe, expect, it, vi } from "vitest";
import { answering, renderUi } from "../test/render";
import type { DriftRun, Minute, PerformanceWindow } from "../types";
import { auditPath } from "./Audit";
import { CompareView, importanceDelta } from "./Compare";
import { DriftHeatmap, heatmap, productionRun } from "./Drift";
import { chartSeries, PerformanceView, performanceSeries, provisionalDots } from "./Performance";
import { totals } from "./Traffic";

const run = (at: string, features: DriftRun["features"], verdict: DriftRun["verdict"] = "ok"): DriftRun => ({ run: at, at, version: 1, verdict, features });

describe("monitoring views", () => {
  it("takes the drift banner's run from the production version, not a retrain's challenger", () => {
    const prod = { ...run("2026-12-01T00:00:00Z", {}, "alert"), version: 1 };
    const challenger = { ...run("2026-12-02T00:00:00Z", {}, "ok"), version: 2 };
    expect(productionRun([prod, challenger], 1)).toBe(prod);  // a newer challenger run hid production's ALERT
    expect(productionRun([prod, { ...challenger, verdict: "alert" }], 3)).toBeUndefined();  // nor blames production
    expect(productionRun([prod], null)).toBeUndefined();
  });

  it("puts the latest run's worst features first in the heat map", () => {
    const runs = [
      run("2026-11-01T00:00:00Z", { amount: { psi: 0.3, severity: "alert" }, channel: { psi: 0.01, severity: "ok" } }),
      run("2026-11-08T00:00:00Z", { amount: { psi: 0.05, severity: "ok" }, channel: { psi: 0.15, severity: "warn" },
                                    country: { psi: 0.02, severity: "ok" } }, "warn"),
    ];
    expect(heatmap(runs).features).toEqual(["channel", "amount", "country"]);
    renderUi(<DriftHeatmap runs={runs} />);
    const rows = screen.getAllByRole("row");
    expect(rows[1]).toHaveTextContent("channel0.1500.010");  // the newest run first
    expect(rows[3]).toHaveTextContent("country0.020—");  // not measured in the first run
  });

  it("draws one series per role and version, each window at its end's time", () => {
    const w = (role: "production" | "shadow", version: number, end: string, ap: number): PerformanceWindow => ({
      version, role, window_start: "2026-11-01T00:00:00Z", window_end: end, n: 100, n_positive: 5, average_precision: ap,
      ece: null, precision_flagged: null, recall_flagged: null, provisional: false, flagged: false, backtest: false, as_of: null });
    const { series, domain } = performanceSeries([w("production", 1, "2026-11-08T00:00:00Z", 0.5), w("shadow", 2, "2026-11-08T00:00:00Z", 0.6),
                                                  w("production", 1, "2026-11-15T00:00:00Z", 0.4)]);
    const [nov8, nov15] = [Date.parse("2026-11-08T00:00:00Z"), Date.parse("2026-11-15T00:00:00Z")];
    expect(series).toEqual([
      { name: "production v1", points: [{ at: nov8, "production v1": 0.5 }, { at: nov15, "production v1": 0.4 }] },
      { name: "shadow v2", points: [{ at: nov8, "shadow v2": 0.6 }] }]);
    expect(domain).toEqual([nov8, nov15]);
  });

  it("puts provisional windows on a dashed series of their own, never on one line with the mature ones", () => {
    const w = (end: string, ap: number, provisional: boolean): PerformanceWindow => ({
      version: 1, role: "production", window_start: "2026-11-01T00:00:00Z", window_end: end, n: 100, n_positive: 5,
      average_precision: ap, ece: null, precision_flagged: null, recall_flagged: null, provisional, flagged: false, backtest: false,
      as_of: null });
    const { series } = performanceSeries([w("2026-11-08T00:00:00Z", 0.4, false), w("2026-11-15T00:00:00Z", 0.9, true)]);
    expect(series.map((s) => s.name)).toEqual(["production v1", "production v1 (provisional)"]);
    expect(series.map((s) => s.points)).toEqual([[{ at: Date.parse("2026-11-08T00:00:00Z"), "production v1": 0.4 }],
                                                 [{ at: Date.parse("2026-11-15T00:00:00Z"), "production v1 (provisional)": 0.9 }]]);
    const [mature, provisional] = chartSeries(series.map((s) => s.name));
    expect(mature.strokeDasharray).toBeUndefined();
    expect(provisional.strokeDasharray).toBeTruthy();
    expect(provisional.color).toBe(mature.color);  // the same role and version: the same colour
    expect(provisionalDots(mature)).toEqual({});
    expect(provisionalDots(provisional).dot).toMatchObject({ fill: "var(--mantine-color-white)", stroke: "var(--mantine-color-blue-9)" });
  });

  it("marks a backtest's window (labels as known on an earlier date) as a backtest", async () => {
    const window: PerformanceWindow = {
      version: 1, role: "production", window_start: "2026-10-01T00:00:00Z", window_end: "2026-10-08T00:00:00Z", n: 100,
      n_positive: 5, average_precision: 0.5, ece: null, precision_flagged: null, recall_flagged: null, provisional: true,
      flagged: false, backtest: true, as_of: "2026-10-20T00:00:00Z" };
    vi.stubGlobal("fetch", vi.fn(async (url: string) => new Response(JSON.stringify(url.includes("/performance/history")
      ? { model: "fraud", days: 90, windows: [window] } : { models: [{ name: "fraud" }] }),
      { status: 200, headers: { "Content-Type": "application/json" } })));
    renderUi(<PerformanceView />);
    expect(await screen.findByText("backtest")).toBeInTheDocument();
    expect(screen.getByText("backtest").closest("[title]")?.getAttribute("title")).toContain("labels as known on");
  });

  it("sums the last hour's answers", () => {
    const m = (answers: number, block: number, degraded: number): Minute => ({ minute: "2026-12-01T10:00:00Z", answers, approve: answers - block,
      review: 0, block, degraded, p50_ms: 1, p95_ms: 2, p99_ms: 3 });
    expect(totals([m(10, 1, 0), m(5, 2, 3)])).toEqual({ answers: 15, degraded: 3, blocked: 3 });
  });

  it("asks the audit log only for the filters given, encoded", () => {
    expect(auditPath({ actor: " ann ", action: "", target: "fraud:v2" })).toBe("/v1/audit?limit=200&actor=ann&target=fraud%3Av2");
    expect(auditPath({ actor: "ann", action: "", target: "" }, 4711)).toBe("/v1/audit?limit=200&actor=ann&before=4711");
  });
});


describe("comparing two versions", () => {
  it("lists each feature's importance change, the largest first, features of one version included", () => {
    const a = [{ feature: "amount", mean_abs_shap: 0.5 }, { feature: "channel", mean_abs_shap: 0.2 }];
    const b = [{ feature: "amount", mean_abs_shap: 0.45 }, { feature: "velocity", mean_abs_shap: 0.3 }];
    expect(importanceDelta(a, b).map((d) => [d.feature, d.a, d.b, Number(d.change.toFixed(2))])).toEqual([
      ["velocity", null, 0.3, 0.3], ["channel", 0.2, null, -0.2], ["amount", 0.5, 0.45, -0.05]]);
  });
});

describe("the comparison's numbers", () => {
  it("shows a metric of exactly 1 as a rate and counts as whole numbers", async () => {
    vi.stubGlobal("fetch", vi.fn(answering({
      "/v1/models/fraud/compare": { model: "fraud", a: 1, b: 2, status: { v1: "archived", v2: "production" }, metrics: [
        { window: "test", metric: "roc_auc", v1: 0.98, v2: 1, difference: 0.02 },
        { window: "test", metric: "n", v1: 1200, v2: 1250, difference: 50 }] },
      "/v1/models/fraud/versions/1/insights": { importance: [] }, "/v1/models/fraud/versions/2/insights": { importance: [] } })));
    renderUi(<CompareView />, undefined, { path: "/models/:name/compare/:a/:b", at: "/models/fraud/compare/1/2" });
    const table = await screen.findByRole("table", { name: "Metrics compared" });
    expect(table).toHaveTextContent("testroc auc0.9801.000+0.020");  // was "1", like a count
    expect(table).toHaveTextContent("testn1,2001,250+50");
  });
});
