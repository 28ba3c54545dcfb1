import { Alert, Anchor, Badge, Button, Group, Modal, Select, Stack, Table, Text, Textarea, Timeline, Title, Tooltip } from "@mantine/core";
import { useState } from "react";
import { Link, useNavigate, useParams } from "react-router";
import { api, ApiError, asApiError, describe } from "../api";
import { MODEL_TYPES, when } from "../format";
import { useMe } from "../me";
import type { ModelDetail, ProductionChange } from "../types";
import { useTitle } from "../title";
import { useApi } from "../useApi";
import { Failure } from "./Failure";

export function HistoryTimeline({ history }: { history: ProductionChange[] }) {
  if (history.length === 0) return <Text c="gray.7">No version has been in production yet.</Text>;
  return (
    <Timeline bulletSize={14} lineWidth={2} aria-label="Production history">
      {[...history].reverse().map((h) => (
        <Timeline.Item key={h.at + h.to} title={`${h.from === null ? "—" : `v${h.from}`} → v${h.to} (${h.via ?? "change"})`}>
          <Text size="sm">{when(h.at)} by {h.actor}{h.actor_kind === "policy" ? " (policy)" : ""}{h.requested_by && h.requested_by !== h.actor ? `, asked by ${h.requested_by}` : ""}</Text>
          {h.reason && <Text size="sm" c="gray.7">{h.reason}</Text>}
        </Timeline.Item>
      ))}
    </Timeline>
  );
}

/** Production moved since the page was read (409 production_moved: another rollback or a promotion came first):
 * this page reloads the model and its history, and the dialog offers nothing stale. */
/** `blocked`: why the registry would refuse this rollback now (the history's `rollback_blocked`, e.g.
 * feature_set_retired): the button stays disabled and says so, rather than offering a rollback that fails. */
export function Rollback({ model, production, target, blocked = null, onDone, onMoved }: {
  model: string; production: number; target: number; blocked?: { code: string; message: string } | null;
  onDone: () => void; onMoved: (message: string) => void;
}) {
  const me = useMe();
  const [open, setOpen] = useState(false);
  const [reason, setReason] = useState("");
  const [busy, setBusy] = useState(false);
  const [failure, setFailure] = useState<ApiError | null>(null);
  const allowed = me.may["rollback"];

  async function confirm() {
    setBusy(true);
    setFailure(null);
    try {
      await api(`/v1/models/${encodeURIComponent(model)}/rollback`, {
        method: "POST", body: { reason, expected_version: production },
      });
      setOpen(false);
      onDone();
    } catch (e) {
      const error = asApiError(e);
      if (error.code === "production_moved") {  // the same rollback offered again would be refused again
        setOpen(false);
        onMoved(error.message);
        onDone();
      } else setFailure(error);
    } finally {
      setBusy(false);
    }
  }

  const button = <Button color="red" variant="outline" disabled={!allowed || blocked !== null} onClick={() => setOpen(true)}>Roll back to v{target}</Button>;
  return (
    <>
      {allowed ? button : <Tooltip label="Rollback needs the operator role"><span>{button}</span></Tooltip>}
      {!allowed && <Text size="sm" c="gray.7">Rollback needs the operator role.</Text>}
      {allowed && blocked && <Text size="sm" c="red.8" role="note">Rollback to v{target} would be refused now ({blocked.code}): {blocked.message}</Text>}
      <Modal opened={open} onClose={() => setOpen(false)} title={`Roll ${model} back to v${target}?`}
             closeButtonProps={{ "aria-label": "Close" }}>
        <Stack>
          <Text size="sm">
            This makes <b>v{target}</b> production again and archives <b>v{production}</b>, in one step. Serving follows within seconds.
          </Text>
          <Textarea label="Reason (required, kept in the audit log)" value={reason} required maxLength={2000} data-autofocus
                    onChange={(e) => setReason(e.currentTarget.value)} rows={3} />
          {failure && <Alert color="red" role="alert">{describe(failure)}</Alert>}
          <Group justify="flex-end">
            <Button variant="default" onClick={() => setOpen(false)}>Cancel</Button>
            <Button color="red" loading={busy} disabled={!reason.trim()} onClick={confirm}>Roll back to v{target}</Button>
          </Group>
        </Stack>
      </Modal>
    </>
  );
}

function Compare({ model, versions }: { model: string; versions: number[] }) {
  const navigate = useNavigate();
  const [a, setA] = useState<string | null>(versions.length > 1 ? String(versions[versions.length - 2]) : null);
  const [b, setB] = useState<string | null>(versions.length > 0 ? String(versions[versions.length - 1]) : null);
  if (versions.length < 2) return null;
  const data = versions.map(String);
  return (
    <Group align="flex-end">
      <Select label="Compare" data={data} value={a} onChange={setA} w={120} allowDeselect={false} />
      <Select label="with" data={data} value={b} onChange={setB} w={120} allowDeselect={false} />
      <Button variant="default" disabled={!a || !b || a === b}
              onClick={() => navigate(`/models/${encodeURIComponent(model)}/compare/${a}/${b}`)}>Compare</Button>
    </Group>
  );
}

export function ModelView() {
  const { name = "" } = useParams();
  const path = `/v1/models/${encodeURIComponent(name)}`;
  const model = useApi<ModelDetail>(path);
  // rollback_to: the version a rollback restores, by the registry's own rule (the server says; not worked out here)
  const history = useApi<{ history: ProductionChange[]; production: number | null; rollback_to: number | null;
                           rollback_blocked?: { code: string; message: string } | null }>(`${path}/history`);
  const [moved, setMoved] = useState<string | null>(null);
  useTitle(`Model ${name}`);
  if (model.error) return <Failure error={model.error} what={`model ${name}`} />;
  if (!model.data) return null;
  const m = model.data;
  const production = m.versions.find((v) => v.status === "production")?.version ?? null;
  // the history's answer for the production version shown (null while loading or if production moved meanwhile)
  const target = history.data?.production === production ? history.data.rollback_to : null;
  return (
    <Stack>
      <Group>
        <Title order={2}>{m.name}</Title>
        <Badge variant="outline">{MODEL_TYPES[m.model_type] ?? m.model_type}</Badge>
      </Group>
      {m.description && <Text>{m.description}</Text>}
      <Text size="sm">{m.required_approvals} approval(s) needed for production.</Text>
      <Title order={3}>Versions</Title>
      <Table striped aria-label="Versions">
        <Table.Thead>
          <Table.Tr>
            <Table.Th>Version</Table.Th><Table.Th>Status</Table.Th><Table.Th>Test AP</Table.Th>
            <Table.Th>Created</Table.Th><Table.Th>Last promotion request</Table.Th>
          </Table.Tr>
        </Table.Thead>
        <Table.Tbody>
          {[...m.versions].reverse().map((v) => (
            <Table.Tr key={v.version}>
              <Table.Td><Anchor component={Link} to={`/models/${encodeURIComponent(m.name)}/versions/${v.version}`}>v{v.version}</Anchor></Table.Td>
              <Table.Td>{v.status}</Table.Td>
              <Table.Td>{v.test_ap === null ? "—" : Number(v.test_ap).toFixed(3)}</Table.Td>
              <Table.Td>{when(v.created_at)} by {v.created_by}</Table.Td>
              <Table.Td>{v.last_request ?? "—"}</Table.Td>
            </Table.Tr>
          ))}
        </Table.Tbody>
      </Table>
      <Compare model={m.name} versions={m.versions.map((v) => v.version)} />
      <Title order={3}>Production history</Title>
      {history.error ? <Failure error={history.error} what="the production history" /> : <HistoryTimeline history={history.data?.history ?? []} />}
      {moved && (
        <Alert color="yellow" role="alert" title="Not rolled back: production moved" withCloseButton closeButtonLabel="Dismiss"
               onClose={() => setMoved(null)}>
          {moved}. The versions and history above are read again: check them before rolling back.
        </Alert>
      )}
      {production !== null && target !== null && (
        <Rollback key={`${production}-${target}`} model={m.name} production={production} target={target}
                  blocked={history.data?.rollback_blocked ?? null} onDone={() => { model.reload(); history.reload(); }} onMoved={setMoved} />
      )}
    </Stack>
  );
}
