import { LineChart } from "@mantine/charts";
import { Badge, Stack, Table, Text, Title } from "@mantine/core";
import { useParams } from "react-router";
import { ap, when } from "../format";
import type { PerformanceWindow } from "../types";
import { useApi } from "../useApi";
import { Failure } from "./Failure";
import { useModelChoice } from "./ModelPicker";

const COLORS = ["blue.9", "orange.9", "grape.9", "teal.9", "red.9", "cyan.9"];

const PROVISIONAL = " (provisional)";

/** One chart row per window end, one series per role and version ("production v3", "shadow v4"); a provisional
 * window (labels not mature yet: its AP will change) goes on a series of its own ("production v3 (provisional)"),
 * drawn dashed, so it is never on one line with the mature windows. */
export function performanceSeries(windows: PerformanceWindow[]): { rows: Record<string, string | number | null>[]; series: string[] } {
  const key = (w: PerformanceWindow) => `${w.role} v${w.version}${w.provisional ? PROVISIONAL : ""}`;
  const series = [...new Set(windows.map(key))];
  const byEnd = new Map<string, Record<string, string | number | null>>();
  for (const w of windows) {
    const row = byEnd.get(w.window_end) ?? { window: w.window_end.slice(0, 10) };
    row[key(w)] = w.average_precision;
    byEnd.set(w.window_end, row);
  }
  return { rows: [...byEnd.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([, r]) => r), series };
}

/** How each series is drawn: a role and version's colour, its provisional windows dashed in the same colour. */
export function chartSeries(series: string[]): { name: string; color: string; strokeDasharray?: string }[] {
  const bases = [...new Set(series.map((name) => name.replace(PROVISIONAL, "")))];
  return series.map((name) => ({
    name, color: COLORS[bases.indexOf(name.replace(PROVISIONAL, "")) % COLORS.length],
    ...(name.endsWith(PROVISIONAL) ? { strokeDasharray: "6 4" } : {}),
  }));
}

/** A provisional series' points are hollow (a lone provisional window has no line to be dashed). */
export function provisionalDots(series: { name: string; color?: string }): { dot?: Record<string, string | number> } {
  if (!series.name.endsWith(PROVISIONAL)) return {};
  const color = `var(--mantine-color-${(series.color ?? COLORS[0]).replace(".", "-")})`;
  return { dot: { r: 4, fill: "var(--mantine-color-white)", stroke: color, strokeWidth: 2, strokeDasharray: "0" } };
}

export function PerformanceView() {
  const { name } = useParams();
  const { chosen, picker } = useModelChoice(name, "/performance");
  const history = useApi<{ windows: PerformanceWindow[] }>(chosen ? `/v1/models/${encodeURIComponent(chosen)}/performance/history?days=90` : null);
  const windows = history.data?.windows ?? [];
  const { rows, series } = performanceSeries(windows);
  return (
    <Stack>
      <Title order={2}>Live performance</Title>
      {picker}
      {history.error && <Failure error={history.error} what="the performance history" />}
      {chosen && windows.length === 0 && !history.loading && <Text c="gray.7">No labelled window in the last 90 days (sira performance --model {chosen}).</Text>}
      {windows.length > 0 && (
        <>
          <Title order={3}>Average precision by window, production against shadow</Title>
          <LineChart h={280} data={rows} dataKey="window" aria-label="Average precision by window" connectNulls withLegend
                     series={chartSeries(series)} lineProps={provisionalDots} />
          <Text size="sm" c="gray.7">Dashed, hollow points: provisional windows (labels not mature yet: their AP will change).</Text>
          <Table withTableBorder aria-label="Performance windows">
            <Table.Thead>
              <Table.Tr>
                <Table.Th>window</Table.Th><Table.Th>role</Table.Th><Table.Th>labelled</Table.Th><Table.Th>AP</Table.Th>
                <Table.Th>precision / recall of the flagged</Table.Th><Table.Th>calibration error</Table.Th><Table.Th />
              </Table.Tr>
            </Table.Thead>
            <Table.Tbody>
              {[...windows].reverse().map((w) => (
                <Table.Tr key={`${w.role}${w.version}${w.window_start}${w.window_end}`}>
                  <Table.Td>{when(w.window_start).slice(0, 10)} .. {when(w.window_end).slice(0, 10)}</Table.Td>
                  <Table.Td>{w.role} v{w.version}</Table.Td>
                  <Table.Td>{w.n.toLocaleString()} ({w.n_positive} positive)</Table.Td>
                  <Table.Td>{ap(w.average_precision)}</Table.Td>
                  <Table.Td>{ap(w.precision_flagged)} / {ap(w.recall_flagged)}</Table.Td>
                  <Table.Td>{ap(w.ece)}</Table.Td>
                  <Table.Td>
                    {w.provisional && <Badge color="yellow" title="labels not mature yet: AP will change">provisional</Badge>}
                    {w.backtest && <Badge color="gray" title={`a backtest: labels as known on ${w.as_of ? when(w.as_of) : "an earlier date"}`}>backtest</Badge>}
                    {w.flagged && <Badge color="red">below margin</Badge>}
                  </Table.Td>
                </Table.Tr>
              ))}
            </Table.Tbody>
          </Table>
        </>
      )}
    </Stack>
  );
}
