import { screen } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import { renderUi } from "../test/render";
import type { ProductionChange } from "../types";
import { HistoryTimeline } from "./Model";

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
