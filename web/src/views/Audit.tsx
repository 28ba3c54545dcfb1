import { Button, Group, Stack, Table, Text, TextInput, Title } from "@mantine/core";
import { useState } from "react";
import { api, ApiError, asApiError } from "../api";
import { when } from "../format";
import { useMe } from "../me";
import type { AuditEntry, AuditPage } from "../types";
import { useApi } from "../useApi";
import { Failure } from "./Failure";
import { useTitle } from "../title";

export const PAGE = 200;
const REFRESH_MS = 30_000;

/** A page of the audit log with only the filters given; `before`: the entries older than that id (the next page). */
export function auditPath(filters: { actor: string; action: string; target: string }, before?: number | null): string {
  const query = new URLSearchParams({ limit: String(PAGE) });
  for (const [key, value] of Object.entries(filters)) if (value.trim()) query.set(key, value.trim());
  if (before) query.set("before", String(before));
  return `/v1/audit?${query}`;
}

export function AuditView() {
  const me = useMe();
  useTitle("Audit log");
  const [draft, setDraft] = useState({ actor: "", action: "", target: "" });
  const [filters, setFilters] = useState(draft);
  const path = me.may["audit.read"] ? auditPath(filters) : null;
  // the older pages loaded for the first page at `path` (other filters: none of them apply)
  const [older, setOlder] = useState<{ path: string | null; entries: AuditEntry[]; next: number | null }>({ path: null, entries: [], next: null });
  // the newest page refreshes every 30 s while it is all that is shown; once older pages are loaded the list
  // holds still (a refresh would leave a gap between the new first page and them) until Filter starts over
  const paging = older.path === path && older.entries.length > 0;
  const log = useApi<AuditPage>(path, paging ? undefined : REFRESH_MS);
  const [busy, setBusy] = useState(false);
  const [failure, setFailure] = useState<ApiError | null>(null);
  if (!me.may["audit.read"]) return <Text>The audit log needs the admin role.</Text>;
  const mine = older.path === path && log.data !== null;
  const entries = [...(log.data?.entries ?? []), ...(mine ? older.entries : [])];
  const next = mine && older.entries.length > 0 ? older.next : log.data?.next_before ?? null;

  async function loadOlder() {
    setBusy(true);
    setFailure(null);
    try {
      const page = await api<AuditPage>(auditPath(filters, next));
      setOlder({ path, entries: [...(mine ? older.entries : []), ...page.entries], next: page.next_before });
    } catch (e) {
      setFailure(asApiError(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <Stack>
      <Title order={2}>Audit log</Title>
      {/* Filter reads again, the same filters too: what happened since is shown */}
      <form onSubmit={(e) => { e.preventDefault(); setFilters(draft); setOlder({ path: null, entries: [], next: null }); setFailure(null); log.reload(); }}>
        <Group align="flex-end">
          <TextInput label="Actor" value={draft.actor} onChange={(e) => setDraft({ ...draft, actor: e.currentTarget.value })} />
          <TextInput label="Action (prefix)" value={draft.action} onChange={(e) => setDraft({ ...draft, action: e.currentTarget.value })} />
          <TextInput label="Target" value={draft.target} onChange={(e) => setDraft({ ...draft, target: e.currentTarget.value })} />
          <Button type="submit">Filter</Button>
        </Group>
      </form>
      {log.error && <Failure error={log.error} what="the audit log" />}
      <Table striped aria-label="Audit log">
        <Table.Thead>
          <Table.Tr>
            <Table.Th>when</Table.Th><Table.Th>actor</Table.Th><Table.Th>action</Table.Th><Table.Th>target</Table.Th>
            <Table.Th>outcome</Table.Th><Table.Th>details</Table.Th>
          </Table.Tr>
        </Table.Thead>
        <Table.Tbody>
          {entries.map((e) => (
            <Table.Tr key={e.id}>
              <Table.Td>{when(e.occurred_at)}</Table.Td>
              <Table.Td>{e.actor} ({e.actor_kind})</Table.Td>
              <Table.Td>{e.action}</Table.Td>
              <Table.Td>{e.target_type ? `${e.target_type} ${e.target_id ?? ""}` : "—"}</Table.Td>
              <Table.Td>{e.outcome}</Table.Td>
              <Table.Td><Text size="xs" ff="monospace">{JSON.stringify(e.details)}</Text></Table.Td>
            </Table.Tr>
          ))}
        </Table.Tbody>
      </Table>
      {log.data && (next !== null
        ? (
          <Group>
            <Text size="sm" data-field="audit-cut">
              The newest {entries.length.toLocaleString()} matching entries are shown; older ones match too.
            </Text>
            <Button variant="light" loading={busy} onClick={loadOlder}>Load older entries</Button>
          </Group>
        )
        : <Text size="sm" c="gray.7" data-field="audit-cut">All {entries.length.toLocaleString()} matching entries are shown.</Text>)}
      {failure && <Failure error={failure} what="older audit entries" />}
    </Stack>
  );
}
