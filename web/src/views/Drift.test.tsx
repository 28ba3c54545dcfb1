import { screen, within } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import { answering, renderUi } from "../test/render";
import type { DriftRun, ModelOverview } from "../types";
import { DriftHeatmap, DriftView } from "./Drift";

const run = (day: number, version: number, features: DriftRun["features"], verdict: DriftRun["verdict"] = "ok"): DriftRun => ({
  run: `job-${day}`, at: `2026-11-${String(day).padStart(2, "0")}T00:00:00Z`, version, verdict, features });
const at = { path: "/drift", at: "/drift" };

afterEach(() => vi.unstubAllGlobals());

describe("the drift view", () => {
  it("puts the newest run first, in a scroll container of its own with the feature column held in place", () => {
    // 60 runs: the table was 4,800 px wide, oldest first, the newest off-screen
    const runs = Array.from({ length: 60 }, (_, i) => ({ ...run(1, 1, { amount: { psi: i / 100, severity: "ok" as const } }),
                                                         run: `job-${i}`, at: new Date(Date.UTC(2026, 8, 1 + i)).toISOString() }));
    renderUi(<DriftHeatmap runs={runs} />);
    const table = screen.getByRole("table", { name: "PSI by feature and drift run" });
    const headers = within(table).getAllByRole("columnheader");
    expect(headers[1]).toHaveTextContent("10-30");  // the newest run, next to the feature names
    expect(headers[60]).toHaveTextContent("09-01");
    expect(within(table).getAllByRole("row")[1]).toHaveTextContent(/^amount0\.5900\.580/);
    const scroller = screen.getByRole("region", { name: /Drift runs/ });
    expect(scroller).toContainElement(table);
    expect(scroller).toHaveStyle({ overflowX: "auto" });
    expect(scroller).toHaveAttribute("tabindex", "0");  // scrolled by keyboard too
    expect(within(table).getByRole("rowheader", { name: "amount" })).toHaveStyle({ position: "sticky", left: "0px" });
    expect(headers[0]).toHaveStyle({ position: "sticky" });
  });

  it("shows production's latest run in the table, not a newer run of a staging challenger", async () => {
    const production = run(1, 1, { amount: { psi: 0.31, severity: "alert" } }, "alert");
    const challenger = run(2, 2, { channel: { psi: 0.02, severity: "ok" } }, "ok");
    vi.stubGlobal("fetch", vi.fn(answering({
      "/v1/models": { models: [{ name: "fraud", production_version: 1, staging_version: 2 } as ModelOverview] },
      "/v1/models/fraud/drift/history": { model: "fraud", days: 90, runs: [production, challenger] } })));
    renderUi(<DriftView />, undefined, at);
    const latest = await screen.findByRole("table", { name: "Latest drift run" });
    expect(within(latest).getAllByRole("row").slice(1).map((r) => r.textContent)).toEqual(["amount0.310ALERT"]);  // was channel, v2's
    expect(screen.getByText(/The latest run of production \(2026-11-01 00:00 UTC, v1\)/)).toBeInTheDocument();
  });

  it("never says there is no drift run when the runs could not be read", async () => {
    vi.stubGlobal("fetch", vi.fn(answering({
      "/v1/models": { models: [{ name: "fraud", production_version: 1, staging_version: null } as ModelOverview] },
      "/v1/models/fraud/drift/history": [503, { error: { code: "database_unavailable", message: "PostgreSQL is unavailable" } }] })));
    renderUi(<DriftView />, undefined, at);
    expect(await screen.findByText(/Could not load the drift history/)).toBeInTheDocument();
    expect(screen.queryByText(/No drift run/)).toBeNull();  // was shown under the error
  });

  it("says the models could not be read", async () => {
    vi.stubGlobal("fetch", vi.fn(answering({ "/v1/models": [401, { error: { code: "unauthenticated", message: "the API key was revoked" } }] })));
    renderUi(<DriftView />, undefined, at);
    expect(await screen.findByRole("alert")).toHaveTextContent("the API key was revoked (unauthenticated)");
  });
});
