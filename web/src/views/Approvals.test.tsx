import { act, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, describe, expect, it, vi } from "vitest";
import { renderUi } from "../test/render";
import type { PendingRequest } from "../types";
import { ApprovalCard, ApprovalsView } from "./Approvals";

const request = (over: Partial<PendingRequest>): PendingRequest => ({
  request_id: 7, model: "fraud", model_type: "fraud_detection", version: 3, created_by: "dana", requested_by: "pat",
  reason: "better recall", created_at: "2026-12-01T10:00:00Z", required_approvals: 2, challenger_ap: 0.61,
  production_version: 2, champion_ap: 0.55, decisions: [], drift_verdict: "warn", policy: null, may_decide: true,
  may_decide_reason: null, ...over,
});

describe("an approval card", () => {
  it("shows champion against challenger and the approvals so far", () => {
    renderUi(<ApprovalCard request={request({ decisions: [{ approver: "ann", decision: "approve", comment: "ok", at: "2026-12-01T11:00:00Z" }] })}
                           onDecide={vi.fn()} />);
    const evidence = screen.getByRole("table", { name: "Evidence for fraud v3" });
    expect(evidence).toHaveTextContent("Champion v2");
    expect(evidence).toHaveTextContent("0.550");
    expect(evidence).toHaveTextContent("0.610");
    expect(screen.getByText("1 / 2 approvals")).toBeInTheDocument();
    expect(screen.getByText(/ann: approve/)).toHaveTextContent("— ok");
  });

  it("sends the decision with the comment and says what came of it", async () => {
    const onDecide = vi.fn().mockResolvedValue({ model: "fraud", version: 3, outcome: "approved", approvals: 2, required_approvals: 2 });
    renderUi(<ApprovalCard request={request({})} onDecide={onDecide} />);
    await userEvent.type(screen.getByLabelText("Comment"), "checked the window");
    await userEvent.click(screen.getByRole("button", { name: "Approve" }));
    expect(onDecide).toHaveBeenCalledWith("approve", "checked the window");
    await waitFor(() => expect(screen.getByRole("status")).toHaveTextContent("fraud v3 is now in production"));
    expect(screen.getByRole("button", { name: "Approve" })).toBeDisabled();  // decided: once
  });

  it("disables both buttons for someone who may not decide, and says why", () => {
    renderUi(<ApprovalCard request={request({ may_decide: false, may_decide_reason: "the requester of a promotion cannot decide on it" })}
                           onDecide={vi.fn()} />);
    expect(screen.getByRole("button", { name: "Approve" })).toBeDisabled();
    expect(screen.getByRole("button", { name: "Reject" })).toBeDisabled();
    expect(screen.getByText(/You cannot decide on this request: the requester of a promotion cannot decide on it/)).toBeInTheDocument();
  });

  it("renders a planted script in the reason and comments as text", () => {
    const planted = "<script>window.pwned = true</script>";
    const { container } = renderUi(<ApprovalCard request={request({ reason: planted, decisions: [
      { approver: "ann", decision: "approve", comment: planted, at: "2026-12-01T11:00:00Z" }] })} onDecide={vi.fn()} />);
    expect(container.querySelector("script")).toBeNull();
    expect(screen.getByText(`Reason: ${planted}`)).toBeInTheDocument();
  });
});

describe("the approvals queue", () => {
  afterEach(() => {
    vi.useRealTimers();
    vi.unstubAllGlobals();
  });

  it("keeps the cards, and a comment being typed, when a refresh fails, and warns", async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    const answers = [new Response(JSON.stringify({ requests: [request({})], threshold_changes: [] }), { status: 200 }),
                     new Response(JSON.stringify({ error: { code: "database_unavailable", message: "PostgreSQL is unavailable" } }), { status: 503 })];
    vi.stubGlobal("fetch", vi.fn(async () => answers.shift() ?? new Response("{}", { status: 500 })));
    const user = userEvent.setup({ advanceTimers: vi.advanceTimersByTime });
    renderUi(<ApprovalsView />);
    await user.type(await screen.findByLabelText("Comment"), "checked the window");
    await act(async () => { await vi.advanceTimersByTimeAsync(30_000); });  // the refresh, which fails
    expect(await screen.findByRole("alert")).toHaveTextContent("PostgreSQL is unavailable (database_unavailable)");
    expect(screen.getByRole("alert")).toHaveTextContent(/last answer/);
    expect(screen.getByLabelText("Comment")).toHaveValue("checked the window");  // the card was unmounted: gone
    expect(screen.getByRole("article", { name: "Promotion request: fraud v3" })).toBeInTheDocument();
  });

  it("says so when the first read fails", async () => {
    vi.stubGlobal("fetch", vi.fn(async () => new Response(JSON.stringify({ error: { code: "forbidden", message: "no" } }), { status: 403 })));
    renderUi(<ApprovalsView />);
    expect(await screen.findByRole("alert")).toHaveTextContent("Your roles do not allow reading the approvals queue");
  });

  it("keeps saying what the final approval did once the request has left the queue", async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    let pending = [request({ required_approvals: 1 })];
    const fetch = vi.fn(async (_url: string, init?: RequestInit) => {
      if (init?.method === "POST") {
        pending = [];
        return new Response(JSON.stringify({ model: "fraud", version: 3, outcome: "approved", approvals: 1, required_approvals: 1 }), { status: 200 });
      }
      return new Response(JSON.stringify({ requests: pending, threshold_changes: [] }), { status: 200 });
    });
    vi.stubGlobal("fetch", fetch);
    const user = userEvent.setup({ advanceTimers: vi.advanceTimersByTime });
    renderUi(<ApprovalsView />);
    await user.click(await screen.findByRole("button", { name: "Approve" }));
    await act(async () => { await vi.advanceTimersByTimeAsync(1500); });  // the queue's reload
    await waitFor(() => expect(screen.queryByRole("article")).toBeNull());
    expect(screen.getByText("No promotion request is waiting.")).toBeInTheDocument();
    expect(screen.getByRole("status")).toHaveTextContent("Approved: fraud v3 is now in production.");  // vanished with the card
  });

  it("names the request and the threshold change each card shows, so a newer one is never decided unread", async () => {
    const fetch = vi.fn(async (_url: string, init?: RequestInit) => init?.method === "POST"
      ? new Response(JSON.stringify({ model: "fraud", version: 3, outcome: "pending", approvals: 1, required_approvals: 2 }), { status: 200 })
      : new Response(JSON.stringify({ requests: [request({})], threshold_changes: [{
          set_id: 12, model: "fraud", model_type: "fraud_detection", version: 3, revision: 3, review: 0.01, block: 0.02,
          current_review: 0.5, current_block: 0.9, requested_by: "sam", reason: "attack", created_at: "2026-12-01T10:00:00Z",
          required_approvals: 2, decisions: [], may_decide: true, may_decide_reason: null, evidence: { window: null } }] }), { status: 200 }));
    vi.stubGlobal("fetch", fetch);
    renderUi(<ApprovalsView />);
    expect(await screen.findByText(/Request 7, asked by/)).toBeInTheDocument();
    const [promotion, thresholds] = await screen.findAllByRole("button", { name: "Approve" });
    await userEvent.click(promotion);
    await userEvent.click(thresholds);
    const posts = fetch.mock.calls.filter(([, init]) => init?.method === "POST");
    expect(posts.map(([url, init]) => [url, JSON.parse(String(init?.body))])).toEqual([
      ["/v1/models/fraud/versions/3/approve", { comment: null, request_id: 7 }],
      ["/v1/models/fraud/versions/3/thresholds/approve", { comment: null, set_id: 12 }]]);
  });

  it("reloads the queue at once when someone else closed the request first", async () => {
    let pending = [request({})];
    const fetch = vi.fn(async (_url: string, init?: RequestInit) => {
      if (init?.method === "POST") {
        pending = [];  // ann approved it a moment ago
        return new Response(JSON.stringify({ error: { code: "request_closed", message: "the promotion request of fraud v3 is closed (approved)" } }),
                            { status: 409 });
      }
      return new Response(JSON.stringify({ requests: pending, threshold_changes: [] }), { status: 200 });
    });
    vi.stubGlobal("fetch", fetch);
    renderUi(<ApprovalsView />);
    await userEvent.click(await screen.findByRole("button", { name: "Reject" }));
    // the closed card with its buttons enabled stayed until the 30 s refresh
    await waitFor(() => expect(screen.queryByRole("article")).toBeNull());
    expect(screen.getByRole("status")).toHaveTextContent("The promotion of fraud v3: the promotion request of fraud v3 is closed (approved)");
    expect(fetch.mock.calls.filter(([, init]) => !init?.method || init.method === "GET")).toHaveLength(2);
  });
});
