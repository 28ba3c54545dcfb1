import { BarChart, ScatterChart } from "@mantine/charts";
import { Badge, Code, Group, SimpleGrid, Stack, Table, Text, Title } from "@mantine/core";
import { useEffect, useState } from "react";
import { useParams } from "react-router";
import { apiText } from "../api";
import { ap, metric, threshold, when } from "../format";
import type { Evaluation, Insights, Metrics, Version } from "../types";
import { useApi } from "../useApi";
import { Failure } from "./Failure";
import { ThresholdsPanel } from "./Thresholds";
import { useTitle } from "../title";

const ROWS: [keyof Metrics, string][] = [
  ["average_precision", "average precision"], ["roc_auc", "ROC AUC"], ["recall_at_1pct_fpr", "recall at 1% FPR"],
  ["brier", "Brier score"], ["expected_calibration_error", "expected calibration error"], ["n", "rows"],
  ["positives", "positives"],
];

/** The windows a version was measured on, in the order people read them. */
export function windows(metrics: Record<string, Metrics>): string[] {
  const order = ["validation", "test"];
  return Object.keys(metrics)
    .filter((k) => typeof metrics[k] === "object" && metrics[k] !== null && ("n" in metrics[k] || "average_precision" in metrics[k]))
    .sort((a, b) => (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99));
}

export function MetricsTable({ metrics }: { metrics: Record<string, Metrics> }) {
  const names = windows(metrics);
  return (
    <Table withTableBorder aria-label="Metrics">
      <Table.Thead>
        <Table.Tr><Table.Th />{names.map((w) => <Table.Th key={w}>{w}</Table.Th>)}</Table.Tr>
      </Table.Thead>
      <Table.Tbody>
        {ROWS.map(([key, label]) => (
          <Table.Tr key={key}>
            <Table.Td>{label}</Table.Td>
            {names.map((w) => {
              return <Table.Td key={w}>{metric(key, metrics[w][key])}</Table.Td>;
            })}
          </Table.Tr>
        ))}
      </Table.Tbody>
    </Table>
  );
}

/** The reliability diagram of a window: each bin's mean score against its observed rate, and the diagonal. */
export function Reliability({ evaluation }: { evaluation: Evaluation | undefined }) {
  const bins = evaluation?.calibration ?? [];
  if (bins.length === 0) return <Text c="gray.7">No calibration table (the version's artifact has none for this window).</Text>;
  const top = Math.max(...bins.map((b) => Math.max(b.mean_score, b.observed_rate)), 0.01);
  return (
    <ScatterChart
      h={260}
      role="figure"
      aria-label="Reliability diagram"
      data={[
        { color: "blue.9", name: "bins (mean score, observed rate)", data: bins.map((b) => ({ mean_score: b.mean_score, observed_rate: b.observed_rate })) },
        { color: "gray.6", name: "perfect calibration", data: [{ mean_score: 0, observed_rate: 0 }, { mean_score: top, observed_rate: top }] },
      ]}
      dataKey={{ x: "mean_score", y: "observed_rate" }}
      xAxisLabel="mean score" yAxisLabel="observed fraud rate" withLegend
    />
  );
}

export function Importance({ importance }: { importance: Insights["importance"] }) {
  const top = importance.slice(0, 15);
  if (top.length === 0) return <Text c="gray.7">No importance recorded.</Text>;
  return (
    <BarChart
      h={Math.max(200, top.length * 26)}
      role="figure"
      aria-label="Feature importance"
      data={top.map((i) => ({ feature: i.feature, "mean |SHAP|": Number(i.mean_abs_shap.toFixed(4)) }))}
      dataKey="feature" orientation="vertical" yAxisProps={{ width: 170 }}
      series={[{ name: "mean |SHAP|", color: "blue.9" }]}
    />
  );
}

/** The window's metrics by segment (channel, country: each value with at least 200 rows), as training measured them. */
export function Segments({ evaluation }: { evaluation: Evaluation | undefined }) {
  const segments = Object.entries(evaluation?.segments ?? {});
  if (segments.length === 0) return <Text c="gray.7">No segment had enough rows to be measured on its own.</Text>;
  return (
    <Table withTableBorder aria-label="Metrics by segment">
      <Table.Thead>
        <Table.Tr><Table.Th>segment</Table.Th><Table.Th>value</Table.Th><Table.Th>rows</Table.Th><Table.Th>positives</Table.Th><Table.Th>AP</Table.Th></Table.Tr>
      </Table.Thead>
      <Table.Tbody>
        {segments.flatMap(([name, values]) => Object.entries(values).map(([value, m]) => (
          <Table.Tr key={name + value}>
            <Table.Td>{name}</Table.Td><Table.Td>{value}</Table.Td><Table.Td>{m.n.toLocaleString()}</Table.Td>
            <Table.Td>{m.positives.toLocaleString()}</Table.Td><Table.Td>{ap(m.average_precision)}</Table.Td>
          </Table.Tr>
        )))}
      </Table.Tbody>
    </Table>
  );
}

/** The model card, as the registry renders it (Markdown), shown as text. */
function Card({ path }: { path: string }) {
  const [text, setText] = useState<string | null>(null);
  useEffect(() => {
    apiText(`${path}/card?format=md`).then(setText).catch((e) => setText(`The card could not be read: ${e.message ?? e}`));
  }, [path]);
  return text === null ? null : <Code block mah={480} style={{ overflow: "auto", whiteSpace: "pre-wrap" }} aria-label="Model card" tabIndex={0}>{text}</Code>;
}

export function VersionView() {
  const { name = "", version = "" } = useParams();
  useTitle(`${name} v${version}`);
  const path = `/v1/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}`;
  const v = useApi<Version>(path);
  const insights = useApi<Insights>(`${path}/insights`);
  if (v.error) return <Failure error={v.error} what={`${name} v${version}`} />;
  if (!v.data) return null;
  const d = v.data;
  // the reliability table and the segments come with the importance, from the version's verified artifact
  const window = "test" in d.metrics ? "test" : windows(d.metrics)[0];
  const evaluation = insights.data?.evaluation?.[window];
  const lineage = insights.data?.lineage;
  return (
    <Stack>
      <Group>
        <Title order={2}>{d.model_name} v{d.version}</Title>
        <Badge>{d.status}</Badge>
      </Group>
      <Text size="sm">Created {when(d.created_at)} by {d.created_by}; feature set {d.feature_set ?? "—"} v{d.feature_set_version ?? "—"}.</Text>
      <SimpleGrid cols={{ base: 1, lg: 2 }}>
        <Stack>
          <Title order={3}>Metrics</Title>
          <MetricsTable metrics={d.metrics} />
          <Title order={3}>Thresholds and decision bands</Title>
          <Table withTableBorder aria-label="Thresholds">
            <Table.Tbody>
              <Table.Tr><Table.Td>approve</Table.Td><Table.Td>score below {threshold(d.thresholds.review)}</Table.Td></Table.Tr>
              <Table.Tr><Table.Td>review</Table.Td><Table.Td>from {threshold(d.thresholds.review)} to below {threshold(d.thresholds.block)}</Table.Td></Table.Tr>
              <Table.Tr><Table.Td>block</Table.Td><Table.Td>from {threshold(d.thresholds.block)}</Table.Td></Table.Tr>
            </Table.Tbody>
          </Table>
        </Stack>
        <Stack>
          <Title order={3}>Calibration ({window ?? "test"} window)</Title>
          {insights.error ? <Text c="gray.7">The version's artifact could not be read (see below).</Text>
            : insights.data && <Reliability evaluation={evaluation} />}
        </Stack>
      </SimpleGrid>
      <ThresholdsPanel model={d.model_name} version={d.version} status={d.status} current={d.thresholds} />
      <Title order={3}>Feature importance (mean |SHAP| on validation rows)</Title>
      {insights.error ? <Failure error={insights.error} what="the version's artifact (importance, reliability table, segments, lineage)" /> : <Importance importance={insights.data?.importance ?? []} />}
      <Title order={3}>Metrics by segment ({window ?? "test"} window)</Title>
      {insights.data && <Segments evaluation={evaluation} />}
      <Title order={3}>Model card</Title>
      <Card path={path} />
      <Title order={3}>Lineage</Title>
      {lineage && (
        <Table withTableBorder aria-label="Lineage">
          <Table.Tbody>
            <Table.Tr><Table.Td>training run</Table.Td><Table.Td>{lineage.training_run ? `${lineage.training_run.run_id} (${lineage.training_run.kind}, by ${lineage.training_run.started_by}, ${lineage.training_run.status})` : "—"}</Table.Td></Table.Tr>
            <Table.Tr><Table.Td>dataset fingerprint</Table.Td><Table.Td><Code block>{JSON.stringify(lineage.dataset, null, 1)}</Code></Table.Td></Table.Tr>
            <Table.Tr><Table.Td>code / LightGBM</Table.Td><Table.Td>{lineage.code_version ?? "—"} / {lineage.lightgbm_version ?? "—"} (seed {lineage.seed ?? "—"})</Table.Td></Table.Tr>
            <Table.Tr><Table.Td>artifact</Table.Td><Table.Td><Code>{lineage.artifact.sha256}</Code> {lineage.artifact.verified && <Badge color="teal" size="sm">checksum verified</Badge>}</Table.Td></Table.Tr>
          </Table.Tbody>
        </Table>
      )}
    </Stack>
  );
}
