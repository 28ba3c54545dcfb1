import { screen, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import { answering, renderUi, sized } from "../test/render";
import type { PerformanceWindow } from "../types";
import { performanceSeries, PerformanceView } from "./Performance";

const window = (start: string, end: string, ap: number): PerformanceWindow => ({
  version: 1, role: "production", window_start: `${start}T00:00:00Z`, window_end: `${end}T00:00:00Z`, n: 100, n_positive: 5,
  average_precision: ap, ece: null, precision_flagged: null, recall_flagged: null, provisional: false, flagged: false,
  backtest: false, as_of: null });
// weekly windows, then three weeks without a run
const windows = [window("2026-11-01", "2026-11-08", 0.5), window("2026-11-08", "2026-11-15", 0.4), window("2026-11-29", "2026-12-06", 0.6)];
const at = { path: "/performance", at: "/performance" };

afterEach(() => {
  vi.unstubAllGlobals();
  vi.restoreAllMocks();
});

describe("the performance view", () => {
  it("breaks a series' line where it skipped time", () => {
    const { series } = performanceSeries(windows);
    expect(series[0].points.map((p) => p["production v1"])).toEqual([0.5, 0.4, null, 0.6]);
    expect(series[0].points[2].at).toBe((Date.parse("2026-11-15T00:00:00Z") + Date.parse("2026-11-29T00:00:00Z")) / 2);
  });

  it("spaces the windows as time passed, and draws no line across a gap", async () => {
    sized();
    vi.stubGlobal("fetch", vi.fn(answering({ "/v1/models": { models: [{ name: "fraud" }] },
                                             "/v1/models/fraud/performance/history": { model: "fraud", days: 90, windows } })));
    const { container } = renderUi(<PerformanceView />, undefined, at);
    await screen.findByRole("table", { name: "Performance windows" });
    const chart = "[aria-label='Average precision by window']";
    await waitFor(() => expect(container.querySelectorAll(`${chart} .recharts-line-dots circle`)).toHaveLength(3));
    const x = [...container.querySelectorAll(`${chart} .recharts-line-dots circle`)].map((c) => Number(c.getAttribute("cx")));
    // a week, then three: evenly spaced, the gap was squeezed out
    expect((x[2] - x[1]) / (x[1] - x[0])).toBeCloseTo(3, 5);
    expect(container.querySelector(`${chart} path.recharts-curve`)?.getAttribute("d")?.match(/M/g)).toHaveLength(2);
  });

  it("says the models could not be read", async () => {
    vi.stubGlobal("fetch", vi.fn(answering({ "/v1/models": [503, { error: { code: "database_unavailable", message: "PostgreSQL is unavailable" } }] })));
    renderUi(<PerformanceView />, undefined, at);
    expect(await screen.findByRole("alert")).toHaveTextContent("Could not load the models");
  });
});

describe("a failed read of the performance history", () => {
  it("is said, without claiming there is no labelled window", async () => {
    vi.stubGlobal("fetch", vi.fn(answering({
      "/v1/models": { models: [{ name: "fraud", production_version: 1 }] },
      "/v1/models/fraud/performance/history": [503, { error: { code: "database_unavailable", message: "PostgreSQL is unavailable" } }] })));
    renderUi(<PerformanceView />, undefined, at);
    expect(await screen.findByText(/Could not load the performance history/)).toBeInTheDocument();
    expect(screen.queryByText(/No labelled window/)).toBeNull();
  });
});
