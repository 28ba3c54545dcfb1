import { screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, describe, expect, it, vi } from "vitest";
import { renderUi } from "../test/render";
import type { AuditEntry, AuditPage, Me } from "../types";
import { AuditView } from "./Audit";

const admin: Me = { name: "root", kind: "api_key", roles: ["admin"], may: { "models.read": true, "audit.read": true } };

const entry = (id: number): AuditEntry => ({
  id, occurred_at: "2026-12-01T10:00:00Z", actor: "root", actor_kind: "api_key", action: `model.create-${id}`,
  target_type: "model", target_id: `m${id}`, source_address: null, outcome: "success", details: {},
});

/** The API's pages by cursor: `before` absent (the newest), or an entry's id. */
const serve = (pages: Record<string, AuditPage>) =>
  vi.fn(async (url: string) => {
    const page = pages[new URL(url, "http://sira").searchParams.get("before") ?? "newest"];
    return new Response(JSON.stringify(page), { status: 200, headers: { "Content-Type": "application/json" } });
  });

afterEach(() => vi.unstubAllGlobals());

describe("the audit log", () => {
  it("says the list is cut, and loads the older entries after the last one shown", async () => {
    const fetch = serve({ newest: { entries: [entry(9), entry(8)], next_before: 8 }, 8: { entries: [entry(5)], next_before: null } });
    vi.stubGlobal("fetch", fetch);
    renderUi(<AuditView />, admin);
    expect(await screen.findByText(/The newest 2 matching entries are shown; older ones match too/)).toBeInTheDocument();
    await userEvent.click(screen.getByRole("button", { name: "Load older entries" }));
    await waitFor(() => expect(screen.getByText("All 3 matching entries are shown.")).toBeInTheDocument());
    expect(screen.getAllByRole("row").slice(1).map((r) => r.textContent?.match(/model\.create-\d+/)?.[0]))
      .toEqual(["model.create-9", "model.create-8", "model.create-5"]);
    expect(String(fetch.mock.calls[1][0])).toBe("/v1/audit?limit=200&before=8");
    expect(screen.queryByRole("button", { name: "Load older entries" })).toBeNull();
  });

  it("says when every matching entry is shown", async () => {
    vi.stubGlobal("fetch", serve({ newest: { entries: [entry(1)], next_before: null } }));
    renderUi(<AuditView />, admin);
    expect(await screen.findByText("All 1 matching entries are shown.")).toBeInTheDocument();
    expect(screen.queryByRole("button", { name: "Load older entries" })).toBeNull();
  });
});
