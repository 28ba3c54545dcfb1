import { MantineProvider } from "@mantine/core";
import { render, screen } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import { MemoryRouter } from "react-router";
import { credential } from "./api";
import { App } from "./App";

const answer = (status: number, body: unknown) =>
  vi.fn(async () => new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } }));

const renderApp = () => render(<MantineProvider><MemoryRouter><App /></MemoryRouter></MantineProvider>);

describe("signing in again after a reload", () => {
  afterEach(() => {
    vi.unstubAllGlobals();
    credential.clear();
  });

  it("keeps the credential when SIRA is unavailable, and says so", async () => {
    credential.set("sira_key");
    vi.stubGlobal("fetch", answer(503, { error: { code: "database_unavailable", message: "PostgreSQL is unavailable" } }));
    renderApp();
    expect(await screen.findByRole("alert")).toHaveTextContent("PostgreSQL is unavailable (database_unavailable)");
    expect(credential.get()).toBe("sira_key");  // it was wiped: a blip signed the user out
    expect(screen.getByRole("button", { name: "Try again" })).toBeInTheDocument();
  });

  it("forgets a credential SIRA refuses", async () => {
    credential.set("sira_revoked");
    vi.stubGlobal("fetch", answer(401, { error: { code: "unauthorized", message: "unknown or revoked key" } }));
    renderApp();
    await vi.waitFor(() => expect(credential.get()).toBeNull());
  });
});
