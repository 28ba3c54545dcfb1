import { screen, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import { answering, renderUi, sized } from "../test/render";
import type { Minute, ModelOverview } from "../types";
import { TrafficView } from "./Traffic";

const outage = [503, { error: { code: "database_unavailable", message: "PostgreSQL is unavailable" } }];
const fraud = { name: "fraud", production_version: 1 } as ModelOverview;
const at = { path: "/traffic", at: "/traffic" };

afterEach(() => {
  vi.unstubAllGlobals();
  vi.restoreAllMocks();
});

describe("the traffic view", () => {
  it("says the models could not be read, and shows no totals it did not measure", async () => {
    vi.stubGlobal("fetch", vi.fn(answering({ "/v1/models": outage })));
    renderUi(<TrafficView />, undefined, at);
    expect(await screen.findByRole("alert")).toHaveTextContent("Could not load the models");  // was silent
    expect(screen.getByRole("alert")).toHaveTextContent("PostgreSQL is unavailable (database_unavailable)");
    expect(screen.queryByText(/Last hour/)).toBeNull();  // was "Last hour: 0 answers"
  });

  it("shows no zeros when the traffic could not be read", async () => {
    vi.stubGlobal("fetch", vi.fn(answering({ "/v1/models": { models: [fraud] }, "/v1/models/fraud/traffic": outage })));
    renderUi(<TrafficView />, undefined, at);
    expect(await screen.findByRole("alert")).toHaveTextContent("Could not load the live traffic");
    expect(screen.queryByText(/Last hour/)).toBeNull();
    expect(screen.queryByText(/No answer recorded/)).toBeNull();
  });

  it("says there is no model yet rather than waiting for ever", async () => {
    vi.stubGlobal("fetch", vi.fn(answering({ "/v1/models": { models: [] } })));
    renderUi(<TrafficView />, undefined, at);
    expect(await screen.findByText(/No model yet/)).toBeInTheDocument();
  });

  it("draws no latency for a minute without answers: the lines break there", async () => {
    sized();
    const minute = (at: string, answers: number, p50: number | null): Minute => ({
      minute: `2026-12-01T10:${at}:00+00:00`, answers, approve: answers, review: 0, block: 0, degraded: 0,
      p50_ms: p50, p95_ms: p50 === null ? null : p50 + 1, p99_ms: p50 === null ? null : p50 + 2 });
    // the API's minutes up to now: silent ones are there, with no latency
    const perMinute = [minute("00", 4, 3), minute("01", 0, null), minute("02", 0, null), minute("03", 5, 4), minute("04", 6, 5)];
    vi.stubGlobal("fetch", vi.fn(answering({ "/v1/models": { models: [fraud] },
                                             "/v1/models/fraud/traffic": { model: "fraud", minutes: 4, per_minute: perMinute } })));
    const { container } = renderUi(<TrafficView />, undefined, at);
    expect(await screen.findByText(/Last hour/)).toHaveTextContent("Last hour: 15 answers");
    await waitFor(() => expect(container.querySelectorAll("[aria-label='Latency percentiles'] path.recharts-curve")).toHaveLength(3));
    for (const line of container.querySelectorAll("[aria-label='Latency percentiles'] path.recharts-curve")) {
      // two stretches (10:00, and 10:03 to 10:04): drawn through the silent minutes, it was one
      expect(line.getAttribute("d")?.match(/M/g)).toHaveLength(2);
    }
    const ticks = [...container.querySelectorAll("[aria-label='Decisions per minute'] .recharts-xAxis-tick-labels .recharts-cartesian-axis-tick-value")];
    expect(ticks.map((t) => t.textContent)).toEqual(["10:00", "10:01", "10:02", "10:03", "10:04"]);  // the silent minutes keep their place
  });
});
