import { Button, Group, Stack, Table, Text, TextInput, Title } from "@mantine/core";
import { useState } from "react";
import { when } from "../format";
import { useMe } from "../me";
import type { AuditEntry } from "../types";
import { useApi } from "../useApi";
import { Failure } from "./Failure";

export function auditPath(filters: { actor: string; action: string; target: string }): string {
  const query = new URLSearchParams({ limit: "200" });
  for (const [key, value] of Object.entries(filters)) if (value.trim()) query.set(key, value.trim());
  return `/v1/audit?${query}`;
}

export function AuditView() {
  const me = useMe();
  const [draft, setDraft] = useState({ actor: "", action: "", target: "" });
  const [filters, setFilters] = useState(draft);
  const log = useApi<{ entries: AuditEntry[] }>(me.may["audit.read"] ? auditPath(filters) : null);
  if (!me.may["audit.read"]) return <Text>The audit log needs the admin role.</Text>;
  return (
    <Stack>
      <Title order={2}>Audit log</Title>
      <form onSubmit={(e) => { e.preventDefault(); setFilters(draft); }}>
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
          {(log.data?.entries ?? []).map((e) => (
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
    </Stack>
  );
}
