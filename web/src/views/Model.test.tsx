import { screen } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import { renderUi } from "../test/render";
import type { ProductionChange } from "../types";
import { HistoryTimeline, rollbackTarget } from "./Model";

const change = (from: number | null, to: number, via = "approval", reason: string | null = null): ProductionChange => ({
  at: `2026-11-0${to}T10:00:00Z`, actor: "ann", actor_kind: "api_key", from, to, via, reason,
});

describe("production history", () => {
  it("rolls back to the version production was before the current one", () => {
    const history = [change(null, 1), change(1, 2), change(2, 3), change(3, 2, "rollback", "v3 blocks good customers")];
    // the registry's rule: where production came from when it last became the current version
    expect(rollbackTarget(history, 2)).toBe(3);  // a rollback after a rollback undoes it
    expect(rollbackTarget(history.slice(0, 3), 3)).toBe(2);
    expect(rollbackTarget([change(null, 1)], 1)).toBeNull();  // nothing before the first
    expect(rollbackTarget(history, null)).toBeNull();
  });

  it("lists the changes newest first with who, how and why", () => {
    renderUi(<HistoryTimeline history={[change(null, 1), change(1, 2, "rollback", "<b>bad</b> week")]} />);
    const items = screen.getAllByText(/→ v/);
    expect(items[0]).toHaveTextContent("v1 → v2 (rollback)");
    expect(items[1]).toHaveTextContent("— → v1 (approval)");
    expect(screen.getByText("<b>bad</b> week")).toBeInTheDocument();
  });
});
