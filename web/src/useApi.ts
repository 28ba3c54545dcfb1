import { useCallback, useEffect, useState } from "react";
import { api, ApiError, asApiError } from "./api";

export type Loaded<T> = { data: T | null; error: ApiError | null; loading: boolean; reload: () => void };

type Answer<T> = { path: string | null; data: T | null; error: ApiError | null };

/** A GET of SIRA's API (none while `path` is null), reloaded on demand (and every `refreshMs` when given).
 * What it answers belongs to its path: a new path starts with no data and no error (another model's answer is
 * never shown under this one's name); a failed reload of the same path keeps the last data beside the error. */
export function useApi<T>(path: string | null, refreshMs?: number): Loaded<T> {
  const [answer, setAnswer] = useState<Answer<T>>({ path, data: null, error: null });
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick((t) => t + 1), []);

  useEffect(() => {
    if (path === null) return;
    let live = true;
    setLoading(true);
    api<T>(path)
      .then((body) => live && setAnswer({ path, data: body, error: null }))
      .catch((e: unknown) => live && setAnswer((last) => ({
        path, data: last.path === path ? last.data : null,
        error: asApiError(e),
      })))
      .finally(() => live && setLoading(false));
    return () => {
      live = false;
    };
  }, [path, tick]);

  useEffect(() => {
    if (!refreshMs || path === null) return;
    const timer = setInterval(reload, refreshMs);
    return () => clearInterval(timer);
  }, [refreshMs, reload, path]);

  const current = answer.path === path;
  // no path, nothing asked: not loading (a view waiting on it would wait for ever)
  return { data: current ? answer.data : null, error: current ? answer.error : null,
           loading: path !== null && (loading || !current), reload };
}
