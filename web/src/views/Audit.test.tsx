import { act, screen, waitFor } from "@testing-library/react";
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

afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

const firstAction = () => screen.getAllByRole("row")[1].textContent?.match(/model\.create-\d+/)?.[0];

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

  it("reads again when Filter is pressed again with the same filters", async () => {
    const pages = [{ entries: [entry(1)], next_before: null }, { entries: [entry(2), entry(1)], next_before: null }];
    const fetch = vi.fn(async () => new Response(JSON.stringify(pages.length > 1 ? pages.shift() : pages[0]), { status: 200 }));
    vi.stubGlobal("fetch", fetch);
    renderUi(<AuditView />, admin);
    await screen.findByText("All 1 matching entries are shown.");
    await userEvent.click(screen.getByRole("button", { name: "Filter" }));  // nothing changed in the form
    await waitFor(() => expect(firstAction()).toBe("model.create-2"));  // the entry written since: was never read
    expect(fetch).toHaveBeenCalledTimes(2);
  });

  it("refreshes the newest entries every 30 s, and holds still while older pages are shown", async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    let newest = 9;
    const fetch = vi.fn(async (url: string) => {
      const before = new URL(url, "http://sira").searchParams.get("before");
      const page = before ? { entries: [entry(3)], next_before: null } : { entries: [entry(newest), entry(8)], next_before: 8 };
      return new Response(JSON.stringify(page), { status: 200 });
    });
    vi.stubGlobal("fetch", fetch);
    const user = userEvent.setup({ advanceTimers: vi.advanceTimersByTime });
    renderUi(<AuditView />, admin);
    await screen.findByText(/The newest 2 matching entries are shown/);
    newest = 10;
    await act(async () => { await vi.advanceTimersByTimeAsync(30_000); });
    await waitFor(() => expect(firstAction()).toBe("model.create-10"));  // was never refreshed
    await user.click(screen.getByRole("button", { name: "Load older entries" }));
    await screen.findByText("All 3 matching entries are shown.");
    const calls = fetch.mock.calls.length;
    newest = 11;
    await act(async () => { await vi.advanceTimersByTimeAsync(60_000); });
    expect(fetch).toHaveBeenCalledTimes(calls);  // a refresh would leave a gap before the older page
    expect(firstAction()).toBe("model.create-10");
    await user.click(screen.getByRole("button", { name: "Filter" }));  // starts over from the newest
    await waitFor(() => expect(firstAction()).toBe("model.create-11"));
    expect(screen.getByText(/The newest 2 matching entries are shown/)).toBeInTheDocument();
  });
});
