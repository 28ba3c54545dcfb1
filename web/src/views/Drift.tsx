import { Alert, Stack, Table, Text, Title } from "@mantine/core";
import { useParams } from "react-router";
import { when } from "../format";
import type { DriftRun, Verdict } from "../types";
import { useApi } from "../useApi";
import { Failure } from "./Failure";
import { useModelChoice } from "./ModelPicker";
import { VerdictBadge } from "./Verdict";

const RANK: Record<Verdict, number> = { alert: 0, warn: 1, ok: 2 };
// light cell backgrounds, dark text: readable (WCAG AA) and telling at a glance
const CELL: Record<Verdict, string> = { ok: "var(--mantine-color-teal-0)", warn: "var(--mantine-color-yellow-2)", alert: "var(--mantine-color-red-2)" };

/** Features (rows, worst first by each one's newest measurement) by runs (columns, oldest first): the heat
 * map's grid. */
export function heatmap(runs: DriftRun[]): { features: string[]; runs: DriftRun[] } {
  const names = new Set(runs.flatMap((r) => Object.keys(r.features)));
  const key = (f: string) => [...runs].reverse().find((r) => f in r.features)?.features[f];
  const features = [...names].sort((a, b) =>
    (RANK[key(a)?.severity ?? "ok"] - RANK[key(b)?.severity ?? "ok"]) || ((key(b)?.psi ?? -1) - (key(a)?.psi ?? -1)) || a.localeCompare(b));
  return { features, runs };
}

export function DriftHeatmap({ runs }: { runs: DriftRun[] }) {
  const grid = heatmap(runs);
  return (
    <Table withTableBorder withColumnBorders aria-label="PSI by feature and drift run">
      <Table.Thead>
        <Table.Tr>
          <Table.Th>feature</Table.Th>
          {grid.runs.map((r) => <Table.Th key={r.run}>{when(r.at).slice(5, 16)}<br />v{r.version} {r.verdict ? r.verdict.toUpperCase() : ""}</Table.Th>)}
        </Table.Tr>
      </Table.Thead>
      <Table.Tbody>
        {grid.features.map((f) => (
          <Table.Tr key={f}>
            <Table.Td>{f}</Table.Td>
            {grid.runs.map((r) => {
              const cell = r.features[f];
              return (
                <Table.Td key={r.run} style={{ background: cell ? CELL[cell.severity] : undefined }}
                          title={cell ? `${cell.severity}` : "not measured"}>
                  {cell?.psi === null || cell?.psi === undefined ? "—" : cell.psi.toFixed(3)}
                </Table.Td>
              );
            })}
          </Table.Tr>
        ))}
      </Table.Tbody>
    </Table>
  );
}

/** The newest run of the production version (runs oldest first): the banner's. A retrain checks its challenger's
 * drift too, a run of another version, which must neither raise the banner nor hide production's ALERT. */
export function productionRun(runs: DriftRun[], production: number | null | undefined): DriftRun | undefined {
  return production === null || production === undefined ? undefined : [...runs].reverse().find((r) => r.version === production);
}

export function DriftView() {
  const { name } = useParams();
  const { models, chosen, picker } = useModelChoice(name, "/drift");
  const history = useApi<{ runs: DriftRun[] }>(chosen ? `/v1/models/${encodeURIComponent(chosen)}/drift/history?days=90` : null);
  const runs = chosen ? history.data?.runs ?? [] : [];
  const latest = runs[runs.length - 1];
  const production = models.find((m) => m.name === chosen)?.production_version;
  const production_latest = productionRun(runs, production);
  return (
    <Stack>
      <Title order={2}>Drift</Title>
      {picker}
      {history.error && <Failure error={history.error} what="the drift history" />}
      {production_latest?.verdict === "alert" && (
        <Alert color="red" role="alert" title="Drift ALERT on a production model">
          {chosen} v{production}: the drift run of {when(production_latest.at)} says ALERT.
        </Alert>
      )}
      {chosen && runs.length === 0 && !history.loading && <Text c="gray.7">No drift run in the last 90 days (sira drift --model {chosen}).</Text>}
      {latest && (
        <>
          <Title order={3}>PSI by feature over the last 90 days</Title>
          <DriftHeatmap runs={runs} />
          <Title order={3}>The latest run ({when(latest.at)}, v{latest.version}), worst first</Title>
          <Table withTableBorder aria-label="Latest drift run">
            <Table.Thead><Table.Tr><Table.Th>feature</Table.Th><Table.Th>PSI</Table.Th><Table.Th>severity</Table.Th></Table.Tr></Table.Thead>
            <Table.Tbody>
              {heatmap([latest]).features.map((f) => (
                <Table.Tr key={f}>
                  <Table.Td>{f}</Table.Td>
                  <Table.Td>{latest.features[f].psi?.toFixed(3) ?? "—"}</Table.Td>
                  <Table.Td><VerdictBadge verdict={latest.features[f].severity} /></Table.Td>
                </Table.Tr>
              ))}
            </Table.Tbody>
          </Table>
        </>
      )}
    </Stack>
  );
}
