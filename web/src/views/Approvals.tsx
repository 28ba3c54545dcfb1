import { Alert, Badge, Button, Card, Group, List, Stack, Table, Text, Textarea, Title, Tooltip } from "@mantine/core";
import { useState } from "react";
import { api, ApiError, asApiError, describe } from "../api";
import { ap, MODEL_TYPES, threshold, when } from "../format";
import type { Decided, Decision, PendingRequest, PendingThresholdChange, ThresholdDecided, ThresholdRow } from "../types";
import { useApi } from "../useApi";
import { Failure } from "./Failure";
import { ProvisionalNote } from "./Thresholds";
import { VerdictBadge } from "./Verdict";
import { useTitle } from "../title";

export type Decide = (decision: "approve" | "reject", comment: string) => Promise<Decided>;

function outcomeText(d: Decided): string {
  if (d.outcome === "approved") return `Approved: ${d.model} v${d.version} is now in production.`;
  if (d.outcome === "rejected") return `Rejected: the request for ${d.model} v${d.version} is closed.`;
  return `Recorded: ${d.approvals} of ${d.required_approvals} approvals.`;
}

function Evidence({ request }: { request: PendingRequest }) {
  const evaluation = request.policy?.evaluation;
  const rows: [string, string, string][] = [
    ["test AP (at training)", request.production_version === null ? "—" : ap(request.champion_ap), ap(request.challenger_ap)],
  ];
  if (evaluation?.challenger) {
    const window = evaluation.window ? ` (${evaluation.window.from.slice(0, 10)}..${evaluation.window.to.slice(0, 10)})` : "";
    for (const key of ["average_precision", "roc_auc", "expected_calibration_error"]) {
      rows.push([`${key.replaceAll("_", " ")}, same window${window}`, ap(evaluation.champion?.[key]), ap(evaluation.challenger[key])]);
    }
  }
  return (
    <Table withTableBorder aria-label={`Evidence for ${request.model} v${request.version}`}>
      <Table.Thead>
        <Table.Tr>
          <Table.Th />
          <Table.Th>Champion {request.production_version === null ? "(none)" : `v${request.production_version}`}</Table.Th>
          <Table.Th>Challenger v{request.version}</Table.Th>
        </Table.Tr>
      </Table.Thead>
      <Table.Tbody>
        {rows.map(([label, champion, challenger]) => (
          <Table.Tr key={label}>
            <Table.Td>{label}</Table.Td>
            <Table.Td>{champion}</Table.Td>
            <Table.Td>{challenger}</Table.Td>
          </Table.Tr>
        ))}
      </Table.Tbody>
    </Table>
  );
}

/** What an approver does on any request: the decisions so far, why the caller may not decide (if so), a
 * comment, approve or reject once, and what came of it. */
export function DecisionPanel<T extends Decided>({ mayDecide, whyNot, decisions, onDecide, outcome }: {
  mayDecide: boolean;
  whyNot: string | null;
  decisions: Decision[];
  onDecide: (decision: "approve" | "reject", comment: string) => Promise<T>;
  outcome: (d: T) => string;
}) {
  const [comment, setComment] = useState("");
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<T | null>(null);
  const [failure, setFailure] = useState<ApiError | null>(null);
  const disabled = !mayDecide || busy || result !== null;

  async function decide(decision: "approve" | "reject") {
    setBusy(true);
    setFailure(null);
    try {
      setResult(await onDecide(decision, comment));
    } catch (e) {
      setFailure(asApiError(e));
    } finally {
      setBusy(false);
    }
  }

  const button = (decision: "approve" | "reject", label: string, color: string) => {
    const b = (
      <Button color={color} disabled={disabled} loading={busy} onClick={() => decide(decision)}>
        {label}
      </Button>
    );
    return mayDecide ? b : <Tooltip label={whyNot}><span>{b}</span></Tooltip>;
  };

  return (
    <Stack gap="sm">
      {decisions.length > 0 && (
        <List size="sm" aria-label="Decisions so far">
          {decisions.map((d) => (
            <List.Item key={d.approver + d.at}>
              {d.approver}: {d.decision} ({when(d.at)}){d.comment ? ` — ${d.comment}` : ""}
            </List.Item>
          ))}
        </List>
      )}
      {!mayDecide && (
        <Text size="sm" c="gray.7" data-field="why-not">You cannot decide on this request: {whyNot}</Text>
      )}
      <Textarea
        label="Comment"
        value={comment}
        onChange={(e) => setComment(e.currentTarget.value)}
        maxLength={2000}
        disabled={disabled}
        rows={3}
      />
      <Group>
        {button("approve", "Approve", "teal")}
        {button("reject", "Reject", "red")}
      </Group>
      {result && <Alert color="green" role="status">{outcome(result)}</Alert>}
      {failure && <Alert color="red" role="alert">{describe(failure)}</Alert>}
    </Stack>
  );
}

export function ApprovalCard({ request, onDecide }: { request: PendingRequest; onDecide: Decide }) {
  const approvals = request.decisions.filter((d) => d.decision === "approve").length;
  return (
    <Card withBorder padding="lg" component="article" aria-label={`Promotion request: ${request.model} v${request.version}`}>
      <Stack gap="sm">
        <Group justify="space-between">
          <Title order={3}>
            {request.model} v{request.version}
          </Title>
          <Group gap="xs">
            <Badge variant="light">{MODEL_TYPES[request.model_type] ?? request.model_type}</Badge>
            <Badge color={approvals > 0 ? "blue" : "dark"} variant="light">
              {approvals} / {request.required_approvals} approvals
            </Badge>
            {request.drift_verdict && <VerdictBadge verdict={request.drift_verdict} prefix={`v${request.version} drift `} />}
          </Group>
        </Group>
        <Text size="sm">
          Request {request.request_id}, asked by <b>{request.requested_by}</b> on {when(request.created_at)}; version created by <b>{request.created_by}</b>.
        </Text>
        {request.reason && <Text size="sm" data-field="reason">Reason: {request.reason}</Text>}
        <Evidence request={request} />
        {request.policy && (
          <Stack gap={4}>
            <Text size="sm">
              Promotion policy (retraining run {request.policy.run}): <b>{request.policy.decision}</b>
            </Text>
            <List size="sm">
              {(request.policy.reasons ?? []).map((r) => <List.Item key={r}>{r}</List.Item>)}
              {(request.policy.blockers ?? []).map((b) => <List.Item key={b}>blocker: {b}</List.Item>)}
            </List>
          </Stack>
        )}
        <DecisionPanel mayDecide={request.may_decide} whyNot={request.may_decide_reason} decisions={request.decisions}
                       onDecide={onDecide} outcome={outcomeText} />
      </Stack>
    </Card>
  );
}

const pct = (v: number | null | undefined): string => (typeof v === "number" ? `${(100 * v).toFixed(1)}%` : "—");

/** The what-if stored with a threshold change: the thresholds asked for against those in force, on the window
 * it was asked on. */
export function ThresholdEvidenceTable({ change }: { change: PendingThresholdChange }) {
  const e = change.evidence;
  if (!e.window || !e.requested || !e.current) {
    return <Text size="sm" c="gray.7">No labelled window when it was asked{e.note ? `: ${e.note}` : ""}.</Text>;
  }
  const columns: [string, ThresholdRow | undefined][] = [
    [`review now (${threshold(change.current_review)})`, e.current.review], [`review asked (${threshold(change.review)})`, e.requested.review],
    [`block now (${threshold(change.current_block)})`, e.current.block], [`block asked (${threshold(change.block)})`, e.requested.block],
  ];
  const rows: [string, (r: ThresholdRow) => string][] = [
    ["share flagged", (r) => pct(r.flag_rate)], ["precision", (r) => pct(r.precision)], ["recall", (r) => pct(r.recall)],
    ["false alarms", (r) => (r.false_alarms ?? "—").toLocaleString()], ["missed fraud", (r) => (r.missed_fraud ?? "—").toLocaleString()],
  ];
  return (
    <Stack gap={4}>
      <Text size="sm">
        On {e.labelled?.toLocaleString()} labelled answers ({e.positives?.toLocaleString()} fraud), {e.window.from.slice(0, 10)}..{e.window.to.slice(0, 10)}:
      </Text>
      {e.provisional && <ProvisionalNote />}
      <Table withTableBorder aria-label={`Evidence for the thresholds of ${change.model} v${change.version}`}>
        <Table.Thead>
          <Table.Tr><Table.Th />{columns.map(([label]) => <Table.Th key={label}>{label}</Table.Th>)}</Table.Tr>
        </Table.Thead>
        <Table.Tbody>
          {rows.map(([label, value]) => (
            <Table.Tr key={label}>
              <Table.Td>{label}</Table.Td>
              {columns.map(([c, r]) => <Table.Td key={c}>{r ? value(r) : "—"}</Table.Td>)}
            </Table.Tr>
          ))}
        </Table.Tbody>
      </Table>
    </Stack>
  );
}

function thresholdOutcome(d: ThresholdDecided): string {
  if (d.outcome === "approved") return `Approved: ${d.model} v${d.version} now decides with revision ${d.revision}.`;
  if (d.outcome === "rejected") return `Rejected: the threshold change of ${d.model} v${d.version} is closed.`;
  return `Recorded: ${d.approvals} of ${d.required_approvals} approvals.`;
}

export function ThresholdChangeCard({ change, onDecide }: {
  change: PendingThresholdChange;
  onDecide: (decision: "approve" | "reject", comment: string) => Promise<ThresholdDecided>;
}) {
  const approvals = change.decisions.filter((d) => d.decision === "approve").length;
  return (
    <Card withBorder padding="lg" component="article" aria-label={`Threshold change: ${change.model} v${change.version}`}>
      <Stack gap="sm">
        <Group justify="space-between">
          <Title order={3}>{change.model} v{change.version}: thresholds, revision {change.revision}</Title>
          <Badge color={approvals > 0 ? "blue" : "dark"} variant="light">
            {approvals} / {change.required_approvals} approvals
          </Badge>
        </Group>
        <Text size="sm">
          Review {threshold(change.current_review)} → <b>{threshold(change.review)}</b>, block {threshold(change.current_block)} → <b>{threshold(change.block)}</b>;
          asked by <b>{change.requested_by}</b> on {when(change.created_at)}.
        </Text>
        {change.reason && <Text size="sm" data-field="reason">Reason: {change.reason}</Text>}
        <ThresholdEvidenceTable change={change} />
        <DecisionPanel mayDecide={change.may_decide} whyNot={change.may_decide_reason} decisions={change.decisions}
                       onDecide={onDecide} outcome={thresholdOutcome} />
      </Stack>
    </Card>
  );
}

type Notice = { id: number; color: "green" | "yellow"; text: string };

/** A closing answer's words, or a request closed under the caller (by someone else, or by a version that moved):
 * the queue reloads without its card, so what came of it is said above the queue until dismissed. */
const CLOSED = new Set(["request_closed", "no_pending_request"]);

export function ApprovalsView() {
  useTitle("Approvals");
  const { data, error, reload } = useApi<{ requests: PendingRequest[]; threshold_changes: PendingThresholdChange[] }>(
    "/v1/approvals", 30_000);
  const [notices, setNotices] = useState<Notice[]>([]);
  // a failed refresh keeps the last answer on screen (its cards, a comment being typed) under a warning
  if (error && !data) return <Failure error={error} what="the approvals queue" />;
  const requests = data?.requests ?? [];
  const changes = data?.threshold_changes ?? [];
  const notify = (color: Notice["color"], text: string) => setNotices((n) => [{ id: Date.now() + Math.random(), color, text }, ...n]);
  const decide = async <T extends Decided,>(path: string, asked: { request_id: number } | { set_id: number }, what: string,
                                            outcome: (d: T) => string, decision: "approve" | "reject", comment: string): Promise<T> => {
    try {
      // the request this card shows, by its id: a new request for the version is never decided unread (409)
      const done = await api<T>(`${path}/${decision}`, { method: "POST", body: { comment: comment || null, ...asked } });
      if (done.outcome !== "pending") notify("green", outcome(done));  // its card leaves the queue on the reload
      setTimeout(reload, 1500);
      return done;
    } catch (e) {
      if (e instanceof ApiError && CLOSED.has(e.code)) {  // the card is stale: the queue without it, at once
        notify("yellow", `${what}: ${e.message}`);
        reload();
      }
      throw e;
    }
  };
  const versionPath = (model: string, version: number) => `/v1/models/${encodeURIComponent(model)}/versions/${version}`;
  return (
    <Stack>
      <Title order={2}>Approvals</Title>
      {notices.map((n) => (
        <Alert key={n.id} color={n.color} role="status" withCloseButton closeButtonLabel="Dismiss"
               onClose={() => setNotices((all) => all.filter((m) => m.id !== n.id))}>
          {n.text}
        </Alert>
      ))}
      {error && (
        <Alert color="yellow" role="alert" title="Could not refresh the approvals queue">
          {describe(error)}. Showing the last answer: a request may have been decided since; it
          refreshes again within 30 s.
        </Alert>
      )}
      <Title order={3}>Promotions</Title>
      {data && requests.length === 0 && <Text c="gray.7">No promotion request is waiting.</Text>}
      {requests.map((r) => (
        <ApprovalCard key={r.request_id} request={r}
                      onDecide={(decision, comment) => decide<Decided>(versionPath(r.model, r.version),
                        { request_id: r.request_id }, `The promotion of ${r.model} v${r.version}`, outcomeText, decision, comment)} />
      ))}
      <Title order={3}>Threshold changes</Title>
      {data && changes.length === 0 && <Text c="gray.7">No threshold change is waiting.</Text>}
      {changes.map((c) => (
        <ThresholdChangeCard key={c.set_id} change={c}
                             onDecide={(decision, comment) => decide<ThresholdDecided>(
                               `${versionPath(c.model, c.version)}/thresholds`, { set_id: c.set_id },
                               `The threshold change of ${c.model} v${c.version}`, thresholdOutcome, decision, comment)} />
      ))}
    </Stack>
  );
}
