// SIRA's HTTP API as the UI calls it: the bearer credential from session storage (never a URL, a cookie or a
// log), never cookies either way (`credentials: "omit"`: a state-changing call cannot ride on ambient
// credentials), errors in SIRA's shape ({"error": {"code", "message"}}) as ApiError.

const KEY = "sira.credential";

export const credential = {
  get: (): string | null => sessionStorage.getItem(KEY),
  set: (value: string): void => sessionStorage.setItem(KEY, value),
  clear: (): void => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

export async function api<T>(path: string, init: { method?: string; body?: unknown } = {}): Promise<T> {
  return (await request(path, init, "application/json")).json() as Promise<T>;
}

/** A text answer (the model card's Markdown). */
export async function apiText(path: string): Promise<string> {
  return (await request(path, {}, "text/markdown, text/plain")).text();
}

async function request(path: string, init: { method?: string; body?: unknown }, accept: string): Promise<Response> {
  const headers: Record<string, string> = { Accept: accept };
  const key = credential.get();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (init.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: init.method ?? "GET",
    headers,
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
    credentials: "omit",
    cache: "no-store",
  });
  if (!response.ok) {
    let code = "http_error";
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      code = body?.error?.code ?? code;
      message = body?.error?.message ?? message;
    } catch {
      // not SIRA's error shape (a proxy's page): the status says enough
    }
    throw new ApiError(response.status, code, message);
  }
  return response;
}
