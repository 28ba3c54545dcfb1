import { Alert, Box, Stack, Table, Text, Title } from "@mantine/core";
import { useParams } from "react-router";
import { when } from "../format";
import type { DriftRun, Verdict } from "../types";
import { useApi } from "../useApi";
import { Failure } from "./Failure";
import { useModelChoice } from "./ModelPicker";
import { VerdictBadge } from "./Verdict";
import { useTitle } from "../title";

const RANK: Record<Verdict, number> = { alert: 0, warn: 1, ok: 2 };
// light cell backgrounds, dark text: readable (WCAG AA) and telling at a glance
const CELL: Record<Verdict, string> = { ok: "var(--mantine-color-teal-0)", warn: "var(--mantine-color-yellow-2)", alert: "var(--mantine-color-red-2)" };

/** Features (rows, worst first by each one's newest measurement) by runs (columns, newest first: the runs that
 * matter are in view, older ones a scroll away), from runs oldest first as the API answers them: the heat map's grid. */
export function heatmap(runs: DriftRun[]): { features: string[]; runs: DriftRun[] } {
  const newest = [...runs].reverse();
  const names = new Set(runs.flatMap((r) => Object.keys(r.features)));
  const key = (f: string) => newest.find((r) => f in r.features)?.features[f];
  const features = [...names].sort((a, b) =>
    (RANK[key(a)?.severity ?? "ok"] - RANK[key(b)?.severity ?? "ok"]) || ((key(b)?.psi ?? -1) - (key(a)?.psi ?? -1)) || a.localeCompare(b));
  return { features, runs: newest };
}

// the feature column stays in view while the runs scroll under it
const STICKY = { position: "sticky", left: 0, zIndex: 1, background: "var(--mantine-color-body)" } as const;

export function DriftHeatmap({ runs }: { runs: DriftRun[] }) {
  const grid = heatmap(runs);
  return (
    // a scroll container of its own (60 runs were 4,800 px wide, the page with them), reachable by keyboard
    <Box style={{ overflowX: "auto" }} tabIndex={0} role="region" aria-label="Drift runs, newest first (scrolls sideways)"
         data-field="heatmap-scroll">
      <Table withTableBorder withColumnBorders aria-label="PSI by feature and drift run" style={{ width: "max-content" }}>
        <Table.Thead>
          <Table.Tr>
            <Table.Th style={STICKY}>feature</Table.Th>
            {grid.runs.map((r) => <Table.Th key={r.run}>{when(r.at).slice(5, 16)}<br />v{r.version} {r.verdict ? r.verdict.toUpperCase() : ""}</Table.Th>)}
          </Table.Tr>
        </Table.Thead>
        <Table.Tbody>
          {grid.features.map((f) => (
            <Table.Tr key={f}>
              <Table.Th scope="row" style={STICKY}>{f}</Table.Th>
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
    </Box>
  );
}

/** The newest run of the production version (runs oldest first): the banner's. A retrain checks its challenger's
 * drift too, a run of another version, which must neither raise the banner nor hide production's ALERT. */
export function productionRun(runs: DriftRun[], production: number | null | undefined): DriftRun | undefined {
  return production === null || production === undefined ? undefined : [...runs].reverse().find((r) => r.version === production);
}

export function DriftView() {
  const { name } = useParams();
  useTitle(name ? `Drift of ${name}` : "Drift");
  const { models, chosen, picker } = useModelChoice(name, "/drift");
  const history = useApi<{ runs: DriftRun[] }>(chosen ? `/v1/models/${encodeURIComponent(chosen)}/drift/history?days=90` : null);
  const runs = chosen ? history.data?.runs ?? [] : [];
  const production = models.find((m) => m.name === chosen)?.production_version;
  const production_latest = productionRun(runs, production);
  // the table follows production (a retrain's newer run checks its challenger); no production: the newest run
  const latest = production_latest ?? (production === null || production === undefined ? runs[runs.length - 1] : undefined);
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
      {/* said only of a read that answered: under a failed one, "no drift run" was a claim nobody checked */}
      {chosen && history.data && !history.error && runs.length === 0 && !history.loading && <Text c="gray.7">No drift run in the last 90 days (sira drift --model {chosen}).</Text>}
      {runs.length > 0 && (
        <>
          <Title order={3}>PSI by feature over the last 90 days, newest run first</Title>
          <DriftHeatmap runs={runs} />
        </>
      )}
      {runs.length > 0 && !latest && <Text c="gray.7">No drift run of the production version v{production} in the last 90 days.</Text>}
      {latest && (
        <>
          <Title order={3}>
            The latest run{latest.version === production ? " of production" : ""} ({when(latest.at)}, v{latest.version}), worst first
          </Title>
          {Object.keys(latest.features).length === 0 ? <Text c="gray.7">This run stored its verdict only, no feature.</Text> : (
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
          )}
        </>
      )}
    </Stack>
  );
}
