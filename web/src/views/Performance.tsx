import { LineChart } from "@mantine/charts";
import { Badge, Stack, Table, Text, Title } from "@mantine/core";
import { useParams } from "react-router";
import { ap, when } from "../format";
import type { PerformanceWindow } from "../types";
import { useApi } from "../useApi";
import { Failure } from "./Failure";
import { useModelChoice } from "./ModelPicker";
import { useTitle } from "../title";

const COLORS = ["blue.9", "orange.9", "grape.9", "teal.9", "red.9", "cyan.9"];

const PROVISIONAL = " (provisional)";

type Point = Record<string, number | null>;
const DAY = 86_400_000;

/** One series per role and version ("production v3", "shadow v4"), each its own points on a time axis (`at`: the
 * window's end, ms): windows are as far apart as the time between them. A provisional window (labels not mature
 * yet: its AP will change) goes on a series of its own ("production v3 (provisional)"), drawn dashed, never on
 * one line with the mature windows. Where a series skipped time (a window starts after the previous one ended)
 * a null point breaks its line: the chart shows the gap, it does not draw a line across it. */
export function performanceSeries(windows: PerformanceWindow[]): { series: { name: string; points: Point[] }[]; domain: [number, number] } {
  const key = (w: PerformanceWindow) => `${w.role} v${w.version}${w.provisional ? PROVISIONAL : ""}`;
  const byKey = new Map<string, PerformanceWindow[]>();
  for (const w of [...windows].sort((a, b) => a.window_end.localeCompare(b.window_end))) {
    byKey.set(key(w), (byKey.get(key(w)) ?? []).concat(w));
  }
  const series = [...byKey.entries()].map(([name, ws]) => ({
    name,
    points: ws.flatMap((w, i): Point[] => {
      const point = { at: Date.parse(w.window_end), [name]: w.average_precision };
      const previous = ws[i - 1];
      if (!previous || Date.parse(w.window_start) <= Date.parse(previous.window_end)) return [point];
      return [{ at: (Date.parse(previous.window_end) + Date.parse(w.window_start)) / 2, [name]: null }, point];
    }),
  }));
  const ends = windows.map((w) => Date.parse(w.window_end));
  const [first, last] = [Math.min(...ends), Math.max(...ends)];
  return { series, domain: first === last ? [first - DAY, last + DAY] : [first, last] };
}

// a window's end as a day (the tooltip asks with no label while it is hidden)
const day = (at: number): string => (Number.isFinite(at) ? new Date(at).toISOString().slice(0, 10) : "");

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
  useTitle(name ? `Live performance of ${name}` : "Live performance");
  const { chosen, picker } = useModelChoice(name, "/performance");
  const history = useApi<{ windows: PerformanceWindow[] }>(chosen ? `/v1/models/${encodeURIComponent(chosen)}/performance/history?days=90` : null);
  const windows = history.data?.windows ?? [];
  const { series, domain } = performanceSeries(windows);
  const points = new Map(series.map((s) => [s.name, s.points]));
  return (
    <Stack>
      <Title order={2}>Live performance</Title>
      {picker}
      {history.error && <Failure error={history.error} what="the performance history" />}
      {/* said only of a read that answered (under a failed one it was a claim nobody checked) */}
      {chosen && history.data && !history.error && windows.length === 0 && !history.loading && <Text c="gray.7">No labelled window in the last 90 days (sira performance --model {chosen}).</Text>}
      {windows.length > 0 && (
        <>
          <Title order={3}>Average precision by window end, production against shadow</Title>
          <LineChart h={280} data={[]} dataKey="at" role="figure" aria-label="Average precision by window" connectNulls={false} withLegend
                     curveType="linear" series={chartSeries(series.map((s) => s.name))}
                     xAxisProps={{ type: "number", scale: "time", domain, tickFormatter: day, allowDuplicatedCategory: false, padding: { left: 16, right: 16 } }}
                     tooltipProps={{ labelFormatter: (at) => `window ending ${day(Number(at))}` }}
                     lineProps={(s) => ({ data: points.get(s.name), ...provisionalDots(s) })} />
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
