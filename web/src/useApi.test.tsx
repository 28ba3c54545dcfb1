import { renderHook, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import { useApi } from "./useApi";

const json = (status: number, body: unknown) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });

afterEach(() => vi.unstubAllGlobals());

describe("useApi", () => {
  it("never shows the previous path's data or error under a new path", async () => {
    let answerB: (r: Response) => void = () => {};
    vi.stubGlobal("fetch", vi.fn((url: string) => {
      if (url.includes("/a/")) return Promise.resolve(json(200, { verdict: "alert" }));
      if (url.includes("/c/")) return Promise.resolve(json(404, { error: { code: "not_found", message: "no model c" } }));
      return new Promise<Response>((resolve) => { answerB = resolve; });  // b: still on its way
    }));
    const { result, rerender } = renderHook(({ path }) => useApi<{ verdict: string }>(path), { initialProps: { path: "/v1/models/a/drift" } });
    await waitFor(() => expect(result.current.data).toEqual({ verdict: "alert" }));
    rerender({ path: "/v1/models/b/drift" });
    expect(result.current.data).toBeNull();  // was a's ALERT, shown under b's name until b answered
    expect(result.current.loading).toBe(true);
    answerB(json(200, { verdict: "ok" }));
    await waitFor(() => expect(result.current.data).toEqual({ verdict: "ok" }));
    rerender({ path: "/v1/models/c/drift" });
    await waitFor(() => expect(result.current.error?.code).toBe("not_found"));
    expect(result.current.data).toBeNull();
    rerender({ path: "/v1/models/b/drift" });
    expect(result.current.error).toBeNull();  // c's error is not b's
  });

  it("is not loading when there is nothing to ask", () => {
    vi.stubGlobal("fetch", vi.fn());
    const { result } = renderHook(() => useApi<unknown>(null));
    expect(result.current.loading).toBe(false);  // a view waiting on it waited for ever
    expect(fetch).not.toHaveBeenCalled();
  });
});
