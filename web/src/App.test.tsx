import { MantineProvider } from "@mantine/core";
import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
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

describe("a credential refused mid-session", () => {
  afterEach(() => {
    vi.unstubAllGlobals();
    credential.clear();
  });

  it("signs out at the first 401 and says the server's reason on the sign-in page", async () => {
    credential.set("sira_key");
    let revoked = false;
    vi.stubGlobal("fetch", vi.fn(async (url: string) => {
      if (revoked) return new Response(JSON.stringify({ error: { code: "unauthenticated", message: "this API key was revoked" } }), { status: 401 });
      if (url === "/v1/me") return new Response(JSON.stringify({ name: "ann", kind: "api_key", roles: ["approver"], may: { "models.read": true } }), { status: 200 });
      return new Response(JSON.stringify({ models: [] }), { status: 200 });
    }));
    renderApp();
    expect(await screen.findByText("ann")).toBeInTheDocument();
    revoked = true;
    await userEvent.click(screen.getByRole("link", { name: "Approvals" }));
    expect(await screen.findByText(/SIRA refused your credential: this API key was revoked/)).toBeInTheDocument();
    expect(screen.getByLabelText(/API key or JWT/)).toBeInTheDocument();  // the sign-in form, not error boxes
    expect(credential.get()).toBeNull();
  });

  it("says why a key is refused at sign-in", async () => {
    vi.stubGlobal("fetch", answer(401, { error: { code: "unauthenticated", message: "this API key has expired" } }));
    renderApp();
    await userEvent.type(screen.getByLabelText(/API key or JWT/), "sira_old");
    await userEvent.click(screen.getByRole("button", { name: "Sign in" }));
    expect(await screen.findByRole("alert")).toHaveTextContent("This key or token is not valid: this API key has expired.");
  });
});
