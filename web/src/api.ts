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

/** No answer at all (the server down, the network gone): said in words, not as "TypeError: Failed to fetch". */
export const NO_ANSWER = "SIRA did not answer (the server or the network is down)";

/** An error as a person reads it: SIRA's message and its stable code (a network failure has no code worth saying). */
export function describe(error: ApiError): string {
  return error.code === "network" ? error.message : `${error.message} (${error.code})`;
}

/** Anything a call threw, as an ApiError (a fetch that got no answer: code "network"). */
export function asApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  return e instanceof TypeError ? new ApiError(0, "network", NO_ANSWER) : new ApiError(0, "unreadable", String(e));
}

// A credential refused mid-session (revoked, expired: any 401) is forgotten at once and the app told, with the
// server's reason, so that it returns to sign-in instead of showing error boxes under a name no longer valid.
type Refused = (message: string) => void;
const refusedListeners = new Set<Refused>();

export function onCredentialRefused(listener: Refused): () => void {
  refusedListeners.add(listener);
  return () => { refusedListeners.delete(listener); };
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
  let response: Response;
  try {
    response = await fetch(path, {
      method: init.method ?? "GET",
      headers,
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
      credentials: "omit",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "network", NO_ANSWER);
  }
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
    if (response.status === 401 && key !== null && credential.get() === key) {  // the key sent, refused: forget it
      credential.clear();
      refusedListeners.forEach((listener) => listener(message));
    }
    throw new ApiError(response.status, code, message);
  }
  return response;
}
