import { MantineProvider } from "@mantine/core";
import { render } from "@testing-library/react";
import { vi } from "vitest";
import type { ReactElement } from "react";
import { MemoryRouter, Route, Routes } from "react-router";
import { MeContext } from "../me";
import type { Me } from "../types";

export const viewer: Me = { name: "vic", kind: "api_key", roles: ["viewer"], may: { "models.read": true, rollback: false } };

/** `ui` as the app renders it; with `route` ({path: "/models/:name", at: "/models/fraud"}), at that address. */
export const renderUi = (ui: ReactElement, me: Me = viewer, route?: { path: string; at: string }) =>
  render(
    <MantineProvider>
      <MeContext.Provider value={me}>
        <MemoryRouter initialEntries={route ? [route.at] : undefined}>
          {route ? <Routes><Route path={route.path} element={ui} /></Routes> : ui}
        </MemoryRouter>
      </MeContext.Provider>
    </MantineProvider>,
  );

/** A stubbed fetch answering each path (without its query) from `answers`: a body (200), or [status, body]. */
export const answering = (answers: Record<string, unknown>) =>
  async (url: string): Promise<Response> => {
    const path = new URL(url, "http://sira").pathname;
    if (!(path in answers)) return new Response(JSON.stringify({ error: { code: "not_found", message: `no ${path}` } }), { status: 404 });
    const answer = answers[path];
    const [status, body] = Array.isArray(answer) && typeof answer[0] === "number" ? answer : [200, answer];
    return new Response(typeof body === "string" ? body : JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
  };

/** Gives every element a layout size (jsdom does none), so that charts draw their SVG: restore with
 * `vi.restoreAllMocks()`. */
export const sized = (width = 800, height = 240) => {
  vi.spyOn(HTMLElement.prototype, "clientWidth", "get").mockReturnValue(width);
  vi.spyOn(HTMLElement.prototype, "clientHeight", "get").mockReturnValue(height);
};
