import { screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, describe, expect, it, vi } from "vitest";
import { renderUi, viewer } from "../test/render";
import type { Me, PendingThresholdChange } from "../types";
import { ThresholdChangeCard } from "./Approvals";
import { ThresholdRequest, ThresholdsPanel, WhatIfChart, whatIfLabel } from "./Thresholds";

const scientist: Me = { name: "sam", kind: "api_key", roles: ["data_scientist"], may: { "models.read": true, "promotion.request": true } };

const row = (threshold: number, flag_rate: number, precision: number, recall: number) =>
  ({ threshold, flagged: Math.round(flag_rate * 1000), flag_rate, precision, recall, false_alarms: 12, missed_fraud: 3 });

const change = (over: Partial<PendingThresholdChange>): PendingThresholdChange => ({
  set_id: 9, model: "fraud", model_type: "fraud_detection", version: 3, revision: 2, review: 0.4, block: 0.8,
  current_review: 0.5, current_block: 0.9, requested_by: "sam", reason: "catch more during the attack",
  created_at: "2026-12-01T10:00:00Z", required_approvals: 2, decisions: [], may_decide: true, may_decide_reason: null,
  evidence: {
    window: { from: "2026-11-01T00:00:00Z", to: "2026-11-29T00:00:00Z" }, labelled: 1000, positives: 40,
    requested: { review: row(0.4, 0.06, 0.5, 0.8), block: row(0.8, 0.02, 0.9, 0.45) },
    current: { review: row(0.5, 0.04, 0.6, 0.7), block: row(0.9, 0.01, 0.95, 0.3) },
  },
  ...over,
});

afterEach(() => vi.unstubAllGlobals());

describe("a threshold change waiting for approval", () => {
  it("shows the thresholds asked for against those in force, on the window it was asked on", () => {
    renderUi(<ThresholdChangeCard change={change({})} onDecide={vi.fn()} />);
    expect(screen.getByText(/Review 0.5 →/)).toHaveTextContent("Review 0.5 → 0.4, block 0.9 → 0.8");
    const evidence = screen.getByRole("table", { name: "Evidence for the thresholds of fraud v3" });
    expect(evidence).toHaveTextContent("review now (0.5)review asked (0.4)block now (0.9)block asked (0.8)");
    expect(evidence).toHaveTextContent("recall70.0%80.0%30.0%45.0%");
    expect(screen.getByText("0 / 2 approvals")).toBeInTheDocument();
  });

  it("shows thresholds chosen on validation scores to 4 significant digits", () => {
    renderUi(<ThresholdChangeCard change={change({ current_review: 0.04421874195424622, current_block: 0.9312345678912 })} onDecide={vi.fn()} />);
    expect(screen.getByText(/Review 0.04422 →/)).toHaveTextContent("Review 0.04422 → 0.4, block 0.9312 → 0.8");  // was 17 digits
    expect(screen.getByRole("table", { name: "Evidence for the thresholds of fraud v3" })).toHaveTextContent("review now (0.04422)");
  });

  it("says when there was no labelled window to judge by", () => {
    renderUi(<ThresholdChangeCard change={change({ evidence: { window: null, note: "no labelled answers" } })} onDecide={vi.fn()} />);
    expect(screen.getByText("No labelled window when it was asked: no labelled answers.")).toBeInTheDocument();
  });

  it("sends the decision and says what came of it; the requester sees the buttons disabled and why", async () => {
    const onDecide = vi.fn().mockResolvedValue({ model: "fraud", version: 3, outcome: "approved", approvals: 2,
                                                 required_approvals: 2, set: 9, revision: 2, status: "active" });
    const { unmount } = renderUi(<ThresholdChangeCard change={change({})} onDecide={onDecide} />);
    await userEvent.click(screen.getByRole("button", { name: "Approve" }));
    expect(onDecide).toHaveBeenCalledWith("approve", "");
    await waitFor(() => expect(screen.getByRole("status")).toHaveTextContent("fraud v3 now decides with revision 2"));
    unmount();
    renderUi(<ThresholdChangeCard change={change({ may_decide: false, may_decide_reason: "the requester cannot decide on it" })}
                                  onDecide={vi.fn()} />);
    expect(screen.getByRole("button", { name: "Reject" })).toBeDisabled();
    expect(screen.getByText(/You cannot decide on this request: the requester cannot decide on it/)).toBeInTheDocument();
  });
});

describe("asking for new thresholds", () => {
  it("is disabled, with the reason, for a role that may not ask and for a version that can no longer change", () => {
    const { unmount } = renderUi(<ThresholdRequest path="/v1/models/fraud/versions/3" status="production"
                                                   current={{ review: 0.5, block: 0.9 }} onDone={vi.fn()} />, viewer);
    expect(screen.getByRole("button", { name: "Ask for approval" })).toBeDisabled();
    expect(screen.getByText("Asking for new thresholds needs the data scientist role.")).toBeInTheDocument();
    unmount();
    renderUi(<ThresholdRequest path="/v1/models/fraud/versions/3" status="archived" current={{ review: 0.5, block: 0.9 }}
                               onDone={vi.fn()} />, scientist);
    expect(screen.getByRole("button", { name: "Ask for approval" })).toBeDisabled();
    expect(screen.getByText("This version is archived: its thresholds no longer change.")).toBeInTheDocument();
  });

  it("posts the values and the reason, and says the request waits for approvals", async () => {
    const fetch = vi.fn().mockResolvedValue(new Response(JSON.stringify({ revision: 2, status: "pending", required_approvals: 2 }),
                                                         { status: 201, headers: { "Content-Type": "application/json" } }));
    vi.stubGlobal("fetch", fetch);
    const onDone = vi.fn();
    renderUi(<ThresholdRequest path="/v1/models/fraud/versions/3" status="production" current={{ review: 0.5, block: 0.9 }}
                               onDone={onDone} />, scientist);
    const review = screen.getByLabelText("Review from");
    await userEvent.clear(review);
    await userEvent.type(review, "0.4");
    await userEvent.type(screen.getByLabelText(/Reason/), "the attack");
    await userEvent.click(screen.getByRole("button", { name: "Ask for approval" }));
    await waitFor(() => expect(screen.getByRole("status")).toHaveTextContent("Revision 2 asked for: it waits for 2 approval(s)"));
    const [url, init] = fetch.mock.calls[0];
    expect(url).toBe("/v1/models/fraud/versions/3/thresholds");
    expect(JSON.parse(init.body)).toEqual({ review: 0.4, block: 0.9, reason: "the attack" });
    expect(onDone).toHaveBeenCalled();
  });
});

describe("the threshold form keeps what was typed", () => {
  it("neither clamps nor rounds a value: it says what is wrong and sends nothing until it is right", async () => {
    const fetch = vi.fn().mockResolvedValue(new Response(JSON.stringify({ revision: 2, status: "pending", required_approvals: 1 }),
                                                         { status: 201, headers: { "Content-Type": "application/json" } }));
    vi.stubGlobal("fetch", fetch);
    renderUi(<ThresholdRequest path="/v1/models/fraud/versions/3" status="production" current={{ review: 0.5, block: 0.9 }}
                               onDone={vi.fn()} />, scientist);
    const review = screen.getByLabelText("Review from");
    const block = screen.getByLabelText("Block from");
    await userEvent.type(screen.getByLabelText(/Reason/), "the attack");
    await userEvent.clear(block);
    await userEvent.type(block, "1.5");
    await userEvent.tab();  // blur: Mantine clamped it to 1 here
    expect(block).toHaveValue("1.5");
    expect(screen.getByText("A threshold is from 0 to 1: 1.5 is outside")).toBeInTheDocument();
    expect(screen.getByRole("button", { name: "Ask for approval" })).toBeDisabled();
    await userEvent.clear(block);
    await userEvent.type(block, "0.3");
    await userEvent.tab();
    expect(screen.getByText("Block cannot be below review")).toBeInTheDocument();
    await userEvent.clear(review);
    await userEvent.type(review, "0.00005");
    await userEvent.tab();  // was rounded to 0 (4 decimals)
    expect(review).toHaveValue("0.00005");
    expect(screen.queryByText(/A threshold is|cannot be below/)).toBeNull();
    await userEvent.click(screen.getByRole("button", { name: "Ask for approval" }));
    await waitFor(() => expect(fetch).toHaveBeenCalled());
    expect(JSON.parse(fetch.mock.calls[0][1].body)).toEqual({ review: 0.00005, block: 0.3, reason: "the attack" });
  });

  it("tells a candidate's thresholds change once it is validated, not that they no longer change", () => {
    renderUi(<ThresholdRequest path="/v1/models/fraud/versions/3" status="candidate" current={{ review: 0.5, block: 0.9 }}
                               onDone={vi.fn()} />, scientist);
    expect(screen.getByText(/not validated yet/)).toBeInTheDocument();
    expect(screen.queryByText(/no longer change/)).toBeNull();
  });
});

describe("the what-if", () => {
  it("says what window it read and draws the thresholds in force", () => {
    const { container } = renderUi(<WhatIfChart whatIf={{
      model: "fraud", version: 3, window: { from: "2026-11-01T00:00:00Z", to: "2026-11-29T00:00:00Z" }, labelled: 1000,
      provisional: false, mature_until: "2026-12-01T00:00:00Z",
      positives: 40, current: { review: 0.5, block: 0.9 }, meets_targets: {},
      thresholds: [row(0.9, 0.01, 0.95, 0.3), row(0.5, 0.04, 0.6, 0.7), row(0.1, 0.5, 0.08, 1)],
    }} />);
    expect(screen.getByText(/On 1,000 labelled answers \(40 fraud\) of v3, 2026-11-01..2026-11-29/)).toBeInTheDocument();
    expect(container.querySelector("[aria-label='What-if by threshold']")).not.toBeNull();
    expect(screen.queryByText("Provisional window")).toBeNull();
  });

  it("warns when the window reaches into the label maturity (recent chargebacks counted, their neighbours not)", () => {
    renderUi(<WhatIfChart whatIf={{
      model: "fraud", version: 3, window: { from: "2026-11-01T00:00:00Z", to: "2026-11-29T00:00:00Z" }, labelled: 1000,
      provisional: true, mature_until: "2026-11-05T00:00:00Z", positives: 40, current: { review: 0.5, block: 0.9 },
      meets_targets: {}, thresholds: [row(0.9, 0.01, 0.95, 0.3), row(0.5, 0.04, 0.6, 0.7)],
    }} />);
    expect(screen.getByText("Provisional window")).toBeInTheDocument();
  });
});

describe("the what-if button", () => {
  it("names the window the what-if reads: 28 days up to the newest matured labelled answer, not the last 28 days", async () => {
    vi.stubGlobal("fetch", vi.fn(async (url: string) => new Response(JSON.stringify(url.endsWith("/thresholds")
      ? { model: "fraud", version: 3, active: null, sets: [] }
      : { name: "fraud", model_type: "fraud_detection", description: null, required_approvals: 2, label_maturity_days: 30, versions: [] }),
      { status: 200, headers: { "Content-Type": "application/json" } })));
    renderUi(<ThresholdsPanel model="fraud" version={3} status="production" current={{ review: 0.5, block: 0.9 }} />);
    expect(await screen.findByRole("button", { name: "Show the what-if on the 28 days up to the newest answer whose label matured (30 days)" }))
      .toBeInTheDocument();
    expect(screen.queryByText(/last 28 days/)).toBeNull();
  });

  it("says so for any maturity, and before the model is read", () => {
    expect(whatIfLabel(1)).toBe("Show the what-if on the 28 days up to the newest answer whose label matured (1 day)");
    expect(whatIfLabel(0)).toBe("Show the what-if on the 28 days up to the newest labelled answer");
    expect(whatIfLabel(undefined)).toBe("Show the what-if on 28 days of matured labels");
  });
});
