import { BarChart } from "@mantine/charts";
import { Anchor, Stack, Table, Text, Title } from "@mantine/core";
import { Link, useParams } from "react-router";
import { metric } from "../format";
import type { Insights } from "../types";
import { useApi } from "../useApi";
import { Failure } from "./Failure";
import { useTitle } from "../title";

type Comparison = { model: string; a: number; b: number; status: Record<string, string>; metrics: Record<string, unknown>[] };

/** Each feature's mean |SHAP| in both versions and the change (b - a), the largest changes first. */
export function importanceDelta(a: Insights["importance"], b: Insights["importance"]) {
  const left = new Map(a.map((i) => [i.feature, i.mean_abs_shap]));
  const right = new Map(b.map((i) => [i.feature, i.mean_abs_shap]));
  return [...new Set([...left.keys(), ...right.keys()])]
    .map((feature) => ({ feature, a: left.get(feature) ?? null, b: right.get(feature) ?? null,
                         change: (right.get(feature) ?? 0) - (left.get(feature) ?? 0) }))
    .sort((x, y) => Math.abs(y.change) - Math.abs(x.change) || x.feature.localeCompare(y.feature));
}

export function CompareView() {
  const { name = "", a = "", b = "" } = useParams();
  useTitle(`${name} v${a} against v${b}`);
  const base = `/v1/models/${encodeURIComponent(name)}`;
  const same = a === b;  // one version against itself: nothing to compare (the API refuses it too)
  const comparison = useApi<Comparison>(same ? null : `${base}/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`);
  const left = useApi<Insights>(same ? null : `${base}/versions/${encodeURIComponent(a)}/insights`);
  const right = useApi<Insights>(same ? null : `${base}/versions/${encodeURIComponent(b)}/insights`);
  if (same) {
    return (
      <Stack>
        <Title order={2}>{name}: v{a} against v{b}</Title>
        <Text role="alert">A version is not compared with itself: choose two different versions on the{" "}
          <Anchor component={Link} to={`/models/${encodeURIComponent(name)}`}>model's page</Anchor>.</Text>
      </Stack>
    );
  }
  if (comparison.error) return <Failure error={comparison.error} what={`${name} v${a} against v${b}`} />;
  const rows = (comparison.data?.metrics ?? []).filter((r) => typeof r[`v${a}`] === "number" || typeof r[`v${b}`] === "number");
  const deltas = left.data && right.data ? importanceDelta(left.data.importance, right.data.importance) : [];
  return (
    <Stack>
      <Title order={2}>{name}: v{a} against v{b}</Title>
      {comparison.data && (
        <Table withTableBorder aria-label="Metrics compared">
          <Table.Thead>
            <Table.Tr>
              <Table.Th>window</Table.Th><Table.Th>metric</Table.Th>
              <Table.Th>v{a} ({comparison.data.status[`v${a}`]})</Table.Th><Table.Th>v{b} ({comparison.data.status[`v${b}`]})</Table.Th>
              <Table.Th>v{b} − v{a}</Table.Th>
            </Table.Tr>
          </Table.Thead>
          <Table.Tbody>
            {rows.map((r) => (
              <Table.Tr key={`${r.window}${r.metric}`}>
                <Table.Td>{String(r.window)}</Table.Td><Table.Td>{String(r.metric).replaceAll("_", " ")}</Table.Td>
                <Table.Td>{metric(String(r.metric), r[`v${a}`])}</Table.Td><Table.Td>{metric(String(r.metric), r[`v${b}`])}</Table.Td>
                <Table.Td>{typeof r.difference === "number" ? `${r.difference >= 0 ? "+" : ""}${metric(String(r.metric), r.difference)}` : "—"}</Table.Td>
              </Table.Tr>
            ))}
          </Table.Tbody>
        </Table>
      )}
      <Title order={3}>Feature importance: the largest changes</Title>
      {(left.error || right.error) && <Failure error={(left.error ?? right.error)!} what="the importance" />}
      {deltas.length === 0 && left.data && right.data && <Text c="gray.7">Neither version recorded its importance.</Text>}
      {deltas.length > 0 && (
        <>
          <BarChart h={Math.max(200, Math.min(deltas.length, 15) * 26)} role="figure" aria-label="Importance change" orientation="vertical"
                    data={deltas.slice(0, 15).map((d) => ({ feature: d.feature, [`v${b} − v${a}`]: Number(d.change.toFixed(4)) }))}
                    dataKey="feature" yAxisProps={{ width: 170 }} series={[{ name: `v${b} − v${a}`, color: "blue.9" }]} />
          <Table withTableBorder aria-label="Importance compared">
            <Table.Thead><Table.Tr><Table.Th>feature</Table.Th><Table.Th>v{a}</Table.Th><Table.Th>v{b}</Table.Th><Table.Th>change</Table.Th></Table.Tr></Table.Thead>
            <Table.Tbody>
              {deltas.map((d) => (
                <Table.Tr key={d.feature}>
                  <Table.Td>{d.feature}</Table.Td><Table.Td>{d.a === null ? "—" : d.a.toFixed(4)}</Table.Td>
                  <Table.Td>{d.b === null ? "—" : d.b.toFixed(4)}</Table.Td><Table.Td>{d.change >= 0 ? "+" : ""}{d.change.toFixed(4)}</Table.Td>
                </Table.Tr>
              ))}
            </Table.Tbody>
          </Table>
        </>
      )}
    </Stack>
  );
}
