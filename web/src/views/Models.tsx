import { Alert, Anchor, Badge, Group, SegmentedControl, Stack, Table, Text, Title } from "@mantine/core";
import { useState } from "react";
import { Link } from "react-router";
import { describe } from "../api";
import { ap, MODEL_TYPES, when } from "../format";
import type { ModelOverview } from "../types";
import { useApi } from "../useApi";
import { Failure } from "./Failure";
import { VerdictBadge } from "./Verdict";
import { useTitle } from "../title";

/** Production models whose newest drift run says ALERT: the banner's lines. */
export function driftAlerts(models: ModelOverview[]): ModelOverview[] {
  return models.filter((m) => m.production_version !== null && m.drift_verdict === "alert");
}

export function filterModels(models: ModelOverview[], type: string): ModelOverview[] {
  return type === "all" ? models : models.filter((m) => m.model_type === type);
}

export function DriftBanner({ models }: { models: ModelOverview[] }) {
  const alerts = driftAlerts(models);
  if (alerts.length === 0) return null;
  return (
    <Alert color="red" title="Drift ALERT on a production model" role="alert">
      {alerts.map((m) => (
        <Text key={m.name} size="sm">
          {m.name} v{m.production_version}: the drift run of {when(m.drift_at)} says ALERT (see its drift view)
        </Text>
      ))}
    </Alert>
  );
}

function LiveAp({ model }: { model: ModelOverview }) {
  if (model.live_ap === null) return <Text size="sm" c="gray.7">no labelled window</Text>;
  const delta = model.training_ap === null ? null : model.live_ap - model.training_ap;
  return (
    <Group gap={6} wrap="nowrap">
      <Text size="sm">{ap(model.live_ap)}</Text>
      {delta !== null && (
        <Text size="xs" c={delta < 0 ? "red.8" : "green.8"}>
          ({delta >= 0 ? "+" : ""}{delta.toFixed(3)})
        </Text>
      )}
      {model.live_flagged && <Badge color="red" size="sm">below margin</Badge>}
    </Group>
  );
}

export function ModelsTable({ models, type = "all" }: { models: ModelOverview[]; type?: string }) {
  if (models.length === 0) {
    return <Text c="gray.7">{type === "all" ? "No model yet: training one creates it (sira train --model NAME)."
                                            : `No ${MODEL_TYPES[type]?.toLowerCase() ?? type} model.`}</Text>;
  }
  return (
    <Table striped highlightOnHover aria-label="Models">
      <Table.Thead>
        <Table.Tr>
          <Table.Th>Model</Table.Th>
          <Table.Th>Type</Table.Th>
          <Table.Th>Production</Table.Th>
          <Table.Th>Staging</Table.Th>
          <Table.Th>Training AP</Table.Th>
          <Table.Th>Live AP</Table.Th>
          <Table.Th>Drift</Table.Th>
          <Table.Th>Last retraining</Table.Th>
        </Table.Tr>
      </Table.Thead>
      <Table.Tbody>
        {models.map((m) => (
          <Table.Tr key={m.name} data-model={m.name}>
            <Table.Td>
              <Anchor component={Link} to={`/models/${encodeURIComponent(m.name)}`} fw={600} size="sm">{m.name}</Anchor>
              {m.description && <Text size="xs" c="gray.7">{m.description}</Text>}
            </Table.Td>
            <Table.Td>{MODEL_TYPES[m.model_type] ?? m.model_type}</Table.Td>
            <Table.Td data-field="production">{m.production_version === null ? "—" : `v${m.production_version}`}</Table.Td>
            <Table.Td>{m.staging_version === null ? "—" : `v${m.staging_version}`}</Table.Td>
            <Table.Td>{ap(m.training_ap)}</Table.Td>
            <Table.Td><LiveAp model={m} /></Table.Td>
            <Table.Td miw={90}>
              {m.drift_verdict === null ? (
                <Text size="sm" c="gray.7">no run</Text>
              ) : (
                <VerdictBadge verdict={m.drift_verdict} />
              )}
            </Table.Td>
            <Table.Td>
              {m.retrain_decision === null ? "—" : `${m.retrain_decision} (v${m.retrain_challenger}, ${when(m.retrain_at)})`}
            </Table.Td>
          </Table.Tr>
        ))}
      </Table.Tbody>
    </Table>
  );
}

export function ModelsView() {
  useTitle("Models");
  const [type, setType] = useState("all");
  const { data, error } = useApi<{ models: ModelOverview[] }>("/v1/models", 30_000);
  // a failed refresh keeps the last answer (the table, a drift ALERT banner) under a warning, as Approvals does:
  // one slow answer hid an ALERT until the next refresh
  if (error && !data) return <Failure error={error} what="the models" />;
  const models = data?.models ?? [];
  return (
    <Stack>
      <Title order={2}>Models</Title>
      {error && (
        <Alert color="yellow" role="alert" title="Could not refresh the models">
          {describe(error)}. Showing the last answer, which may be out of date; it refreshes again within 30 s.
        </Alert>
      )}
      <DriftBanner models={models} />
      <SegmentedControl
        aria-label="Model type"
        value={type}
        onChange={setType}
        data={[{ value: "all", label: "All" }, ...Object.entries(MODEL_TYPES).map(([value, label]) => ({ value, label }))]}
        w="fit-content"
      />
      {data && <ModelsTable models={filterModels(models, type)} type={type} />}
    </Stack>
  );
}
