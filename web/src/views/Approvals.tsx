import { Alert, Badge, Button, Card, Group, List, Stack, Table, Text, Textarea, Title, Tooltip } from "@mantine/core";
import { useState } from "react";
import { api, ApiError } from "../api";
import { ap, MODEL_TYPES, when } from "../format";
import type { Decided, PendingRequest } from "../types";
import { useApi } from "../useApi";
import { Failure } from "./Failure";
import { VerdictBadge } from "./Verdict";

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

export function ApprovalCard({ request, onDecide }: { request: PendingRequest; onDecide: Decide }) {
  const [comment, setComment] = useState("");
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<Decided | null>(null);
  const [failure, setFailure] = useState<ApiError | null>(null);
  const disabled = !request.may_decide || busy || result !== null;
  const approvals = request.decisions.filter((d) => d.decision === "approve").length;

  async function decide(decision: "approve" | "reject") {
    setBusy(true);
    setFailure(null);
    try {
      setResult(await onDecide(decision, comment));
    } catch (e) {
      setFailure(e instanceof ApiError ? e : new ApiError(0, "network", String(e)));
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
    return request.may_decide ? b : <Tooltip label={request.may_decide_reason}><span>{b}</span></Tooltip>;
  };

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
            {request.drift_verdict && <VerdictBadge verdict={request.drift_verdict} prefix="drift " />}
          </Group>
        </Group>
        <Text size="sm">
          Requested by <b>{request.requested_by}</b> on {when(request.created_at)}; version created by <b>{request.created_by}</b>.
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
        {request.decisions.length > 0 && (
          <List size="sm" aria-label="Decisions so far">
            {request.decisions.map((d) => (
              <List.Item key={d.approver + d.at}>
                {d.approver}: {d.decision} ({when(d.at)}){d.comment ? ` — ${d.comment}` : ""}
              </List.Item>
            ))}
          </List>
        )}
        {!request.may_decide && (
          <Text size="sm" c="gray.7" data-field="why-not">You cannot decide on this request: {request.may_decide_reason}</Text>
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
        {result && <Alert color="green" role="status">{outcomeText(result)}</Alert>}
        {failure && <Alert color="red" role="alert">{failure.message} ({failure.code})</Alert>}
      </Stack>
    </Card>
  );
}

export function ApprovalsView() {
  const { data, error, reload } = useApi<{ requests: PendingRequest[] }>("/v1/approvals", 30_000);
  if (error) return <Failure error={error} what="the approvals queue" />;
  const requests = data?.requests ?? [];
  return (
    <Stack>
      <Title order={2}>Approvals</Title>
      {data && requests.length === 0 && <Text c="gray.7">No promotion request is waiting.</Text>}
      {requests.map((r) => (
        <ApprovalCard
          key={r.request_id}
          request={r}
          onDecide={async (decision, comment) => {
            const done = await api<Decided>(`/v1/models/${encodeURIComponent(r.model)}/versions/${r.version}/${decision}`, {
              method: "POST",
              body: { comment: comment || null },
            });
            setTimeout(reload, 1500);
            return done;
          }}
        />
      ))}
    </Stack>
  );
}
