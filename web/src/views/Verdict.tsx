import { Badge } from "@mantine/core";
import type { Verdict } from "../types";

// Filled, in shades whose text meets WCAG AA contrast (axe-core checks it in the browser tests)
const COLOR: Record<Verdict, string> = { ok: "teal", warn: "yellow", alert: "red" };

export function VerdictBadge({ verdict, prefix = "" }: { verdict: Verdict; prefix?: string }) {
  return <Badge color={COLOR[verdict]}>{prefix}{verdict.toUpperCase()}</Badge>;
}
