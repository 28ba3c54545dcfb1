import { LineChart } from "@mantine/charts";
import { Alert, Badge, Button, Group, NumberInput, Stack, Table, Text, Textarea, Title } from "@mantine/core";
import { useState } from "react";
import { api, ApiError, asApiError, describe } from "../api";
import { threshold, when } from "../format";
import { useMe } from "../me";
import type { ModelDetail, ThresholdSets, WhatIf } from "../types";
import { useApi } from "../useApi";
import { Failure } from "./Failure";

const STATUS_COLOUR: Record<string, string> = { active: "teal.9", pending: "blue.9", rejected: "red.9" };  // dark: readable on white

/** A window past the label maturity: its young payments' chargebacks count, their legitimate neighbours do not. */
export function ProvisionalNote() {
  return (
    <Alert color="yellow" title="Provisional window">
      It reaches into the label maturity: recent chargebacks count while their legitimate neighbours are not known yet,
      so precision and recall read higher than they will.
    </Alert>
  );
}

/** The what-if button's words: the window GET /v1/models/{name}/thresholds reads by default, the 28 days up to the
 * version's newest labelled answer whose label has matured (younger answers' labels are not all in), not the last
 * 28 days (nor, since 2026-12-07, the 28 days ending the maturity ago, which missed answers older than that). */
export function whatIfLabel(maturityDays: number | null | undefined): string {
  if (maturityDays === null || maturityDays === undefined) return "Show the what-if on 28 days of matured labels";
  if (maturityDays <= 0) return "Show the what-if on the 28 days up to the newest labelled answer";
  return `Show the what-if on the 28 days up to the newest answer whose label matured (${maturityDays} day${maturityDays === 1 ? "" : "s"})`;
}

/** What other thresholds would have done on the labelled window: precision, recall and the share flagged by
 * threshold, with the thresholds in force marked (GET /v1/models/{name}/thresholds?version=v). */
export function WhatIfChart({ whatIf }: { whatIf: WhatIf }) {
  const rows = [...whatIf.thresholds]
    .sort((a, b) => a.threshold - b.threshold)
    .map((r) => ({ threshold: r.threshold, precision: r.precision, recall: r.recall, "share flagged": r.flag_rate }));
  return (
    <Stack gap={4}>
      <Text size="sm">
        On {whatIf.labelled.toLocaleString()} labelled answers ({whatIf.positives.toLocaleString()} fraud) of v{whatIf.version},{" "}
        {whatIf.window.from.slice(0, 10)}..{whatIf.window.to.slice(0, 10)}.
      </Text>
      {whatIf.provisional && <ProvisionalNote />}
      <LineChart
        h={260}
        role="figure"
        aria-label="What-if by threshold"
        data={rows}
        dataKey="threshold"
        xAxisProps={{ type: "number", domain: [0, 1] }}
        yAxisProps={{ domain: [0, 1] }}
        series={[
          { name: "precision", color: "blue.9" }, { name: "recall", color: "orange.9" }, { name: "share flagged", color: "teal.9" },
        ]}
        referenceLines={Object.entries(whatIf.current).map(([name, value]) => ({ x: value, label: `${name} ${threshold(value)}`, color: "gray.7" }))}
        connectNulls
        withLegend
        withDots={false}
      />
    </Stack>
  );
}

/** Why a threshold as typed is not one (a number from 0 to 1), or null; empty: nothing to say yet. */
export function thresholdError(value: number | string): string | null {
  if (value === "") return null;
  const n = Number(value);
  if (!Number.isFinite(n)) return "A threshold is a number from 0 to 1";
  return n < 0 || n > 1 ? `A threshold is from 0 to 1: ${value} is outside` : null;
}

/** A request for new thresholds (POST .../versions/{v}/thresholds): pending the model's approvals, with the
 * what-if at the new values stored as the approvers' evidence. */
const CHANGEABLE = ["validated", "staging", "production"];  // sira.registry.thresholds.CHANGEABLE

export function ThresholdRequest({ path, status, current, onDone }: {
  path: string;
  status: string;
  current: Record<string, number>;
  onDone: () => void;
}) {
  const me = useMe();
  const why = me.may["promotion.request"] !== true ? "Asking for new thresholds needs the data scientist role."
    : status === "candidate" ? "This version is a candidate, not validated yet: its thresholds change once it is "
      + "validated (staging it or asking for its promotion validates it)."
    : !CHANGEABLE.includes(status) ? `This version is ${status}: its thresholds no longer change.` : null;
  const allowed = why === null;
  const [review, setReview] = useState<number | string>(current.review ?? "");
  const [block, setBlock] = useState<number | string>(current.block ?? "");
  const [reason, setReason] = useState("");
  const [busy, setBusy] = useState(false);
  const [done, setDone] = useState<string | null>(null);
  const [failure, setFailure] = useState<ApiError | null>(null);

  async function submit() {
    setBusy(true);
    setFailure(null);
    try {
      const asked = await api<{ revision: number; status: string; required_approvals: number }>(`${path}/thresholds`, {
        method: "POST", body: { review: Number(review), block: Number(block), reason },
      });
      setDone(asked.status === "active" ? `Revision ${asked.revision} is active.`
        : `Revision ${asked.revision} asked for: it waits for ${asked.required_approvals} approval(s) in Approvals.`);
      onDone();
    } catch (e) {
      setFailure(asApiError(e));
    } finally {
      setBusy(false);
    }
  }

  const disabled = !allowed || busy || done !== null;
  // what the API takes (0 <= review <= block <= 1), said as the value is typed; never clamped nor rounded (1.5 became
  // 1 on blur, 0.00005 became 0: a change the person never asked for)
  const reviewError = thresholdError(review);
  const blockError = thresholdError(block)
    ?? (reviewError === null && review !== "" && block !== "" && Number(block) < Number(review)
      ? "Block cannot be below review" : null);
  return (
    <Stack gap="xs" component="form" aria-label="Ask for new thresholds" onSubmit={(e) => { e.preventDefault(); submit(); }}>
      {why && <Text size="sm" c="gray.7" data-field="why-not">{why}</Text>}
      <Group grow>
        <NumberInput label="Review from" min={0} max={1} step={0.01} clampBehavior="none" value={review} onChange={setReview}
                     disabled={disabled} error={reviewError} />
        <NumberInput label="Block from" min={0} max={1} step={0.01} clampBehavior="none" value={block} onChange={setBlock}
                     disabled={disabled} error={blockError} />
      </Group>
      <Textarea label="Reason" value={reason} onChange={(e) => setReason(e.currentTarget.value)} maxLength={2000} rows={2}
                disabled={disabled} required />
      <Group>
        <Button type="submit" loading={busy}
                disabled={disabled || reason.trim() === "" || review === "" || block === "" || reviewError !== null || blockError !== null}>
          Ask for approval
        </Button>
      </Group>
      {done && <Alert color="green" role="status">{done}</Alert>}
      {failure && <Alert color="red" role="alert">{describe(failure)}</Alert>}
    </Stack>
  );
}

export function ThresholdHistory({ sets }: { sets: ThresholdSets }) {
  return (
    <Table withTableBorder aria-label="Threshold history">
      <Table.Thead>
        <Table.Tr>
          <Table.Th>revision</Table.Th><Table.Th>review</Table.Th><Table.Th>block</Table.Th><Table.Th>status</Table.Th>
          <Table.Th>asked by</Table.Th><Table.Th>reason</Table.Th><Table.Th>decided</Table.Th>
        </Table.Tr>
      </Table.Thead>
      <Table.Tbody>
        {sets.sets.map((s) => (
          <Table.Tr key={s.id}>
            <Table.Td>{s.revision}</Table.Td><Table.Td>{threshold(s.review)}</Table.Td><Table.Td>{threshold(s.block)}</Table.Td>
            <Table.Td><Badge color={STATUS_COLOUR[s.status] ?? "gray.8"} variant="filled">{s.status}</Badge></Table.Td>
            <Table.Td>{s.requested_by}</Table.Td><Table.Td>{s.reason ?? "—"}</Table.Td>
            <Table.Td>
              {s.decided_at ? when(s.decided_at) : "—"}
              {s.decisions.length > 0 && ` (${s.decisions.map((d) => `${d.approver}: ${d.decision}`).join(", ")})`}
            </Table.Td>
          </Table.Tr>
        ))}
      </Table.Tbody>
    </Table>
  );
}

/** A version's thresholds as a governed history, what other values would have done, and a request for new ones. */
export function ThresholdsPanel({ model, version, status, current }: {
  model: string;
  version: number;
  status: string;
  current: Record<string, number>;
}) {
  const path = `/v1/models/${encodeURIComponent(model)}/versions/${version}`;
  const sets = useApi<ThresholdSets>(`${path}/thresholds`);
  const modelInfo = useApi<ModelDetail>(`/v1/models/${encodeURIComponent(model)}`);  // its label maturity
  const [asked, setAsked] = useState(false);  // on demand: it reads and sorts the labelled window's answers
  const whatIf = useApi<WhatIf>(asked ? `/v1/models/${encodeURIComponent(model)}/thresholds?version=${version}` : null);
  return (
    <Stack>
      <Title order={3}>Threshold history</Title>
      {sets.error ? <Failure error={sets.error} what="the threshold history" /> : sets.data && <ThresholdHistory sets={sets.data} />}
      <Title order={3}>What other thresholds would have done</Title>
      {!asked && <Group><Button variant="light" color="blue.9" onClick={() => setAsked(true)}>{whatIfLabel(modelInfo.data?.label_maturity_days)}</Button></Group>}
      {asked && whatIf.error
        ? (whatIf.error.code === "empty_window"
          ? <Text c="gray.7">{whatIf.error.message}</Text>
          : <Failure error={whatIf.error} what="the what-if" />)
        : asked && whatIf.data && <WhatIfChart whatIf={whatIf.data} />}
      <Title order={3}>Ask for new thresholds</Title>
      <ThresholdRequest path={path} status={status} current={current} onDone={sets.reload} />
    </Stack>
  );
}
