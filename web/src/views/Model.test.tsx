import { screen } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import { renderUi } from "../test/render";
import type { Me } from "../types";
import type { ProductionChange } from "../types";
import { HistoryTimeline, Rollback } from "./Model";

const change = (from: number | null, to: number, via = "approval", reason: string | null = null): ProductionChange => ({
  at: `2026-11-0${to}T10:00:00Z`, actor: "ann", actor_kind: "api_key", from, to, via, reason,
});

describe("production history", () => {
  it("lists the changes newest first with who, how and why", () => {
    renderUi(<HistoryTimeline history={[change(null, 1), change(1, 2, "rollback", "<b>bad</b> week")]} />);
    const items = screen.getAllByText(/→ v/);
    expect(items[0]).toHaveTextContent("v1 → v2 (rollback)");
    expect(items[1]).toHaveTextContent("— → v1 (approval)");
    expect(screen.getByText("<b>bad</b> week")).toBeInTheDocument();
  });
});

describe("rollback", () => {
  const operator: Me = { name: "oli", kind: "api_key", roles: ["operator"], may: { "models.read": true, rollback: true } };

  it("is offered when nothing stands in its way", () => {
    renderUi(<Rollback model="fraud" production={2} target={1} onDone={() => {}} onMoved={() => {}} />, operator);
    expect(screen.getByRole("button", { name: "Roll back to v1" })).toBeEnabled();
  });

  it("says why the registry would refuse it, instead of offering it", () => {
    const blocked = { code: "feature_set_retired", message: "fraud v1 reads feature set payments@1, whose stored states data retention removed" };
    renderUi(<Rollback model="fraud" production={2} target={1} blocked={blocked} onDone={() => {}} onMoved={() => {}} />, operator);
    expect(screen.getByRole("button", { name: "Roll back to v1" })).toBeDisabled();
    expect(screen.getByRole("note")).toHaveTextContent("would be refused now (feature_set_retired): fraud v1 reads feature set payments@1");
  });
});
