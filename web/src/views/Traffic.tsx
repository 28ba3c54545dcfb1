import { BarChart, LineChart } from "@mantine/charts";
import { Group, Stack, Text, Title } from "@mantine/core";
import { useParams } from "react-router";
import type { Minute } from "../types";
import { useApi } from "../useApi";
import { Failure } from "./Failure";
import { useModelChoice } from "./ModelPicker";
import { useTitle } from "../title";

export function totals(minutes: Minute[]): { answers: number; degraded: number; blocked: number } {
  return minutes.reduce((t, m) => ({ answers: t.answers + m.answers, degraded: t.degraded + m.degraded, blocked: t.blocked + m.block }),
                        { answers: 0, degraded: 0, blocked: 0 });
}

/** The charts' rows: every minute of the window up to now, as the API answers them (a silent minute is a row of
 * zero answers with no latency), labelled HH:MM UTC. */
export function minuteRows(minutes: Minute[]): (Minute & { time: string })[] {
  return minutes.map((m) => ({ ...m, time: m.minute.slice(11, 16) }));
}

export function TrafficView() {
  const { name } = useParams();
  useTitle(name ? `Traffic of ${name}` : "Traffic");
  const { chosen, picker } = useModelChoice(name, "/traffic");
  // refreshed every 10 s, without reloading the page
  const traffic = useApi<{ per_minute: Minute[] }>(chosen ? `/v1/models/${encodeURIComponent(chosen)}/traffic?minutes=60` : null, 10_000);
  const rows = minuteRows(traffic.data?.per_minute ?? []);
  const t = totals(traffic.data?.per_minute ?? []);
  return (
    <Stack>
      <Title order={2}>Live traffic</Title>
      {picker}
      {traffic.error && <Failure error={traffic.error} what="the live traffic" />}
      {/* only what was measured: no answer counted is not zero answers (a failed read showed "0 answers") */}
      {traffic.data && (
        <Group aria-label="The last hour">
          <Text>Last hour: <b data-field="answers">{t.answers.toLocaleString()}</b> answers</Text>
          <Text><b>{t.blocked.toLocaleString()}</b> blocked</Text>
          <Text c={t.degraded ? "red.9" : undefined}><b data-field="degraded">{t.degraded.toLocaleString()}</b> degraded</Text>
        </Group>
      )}
      {traffic.data && t.answers === 0 && <Text c="gray.7">No answer recorded in the last hour.</Text>}
      {traffic.data && t.answers > 0 && (
        <>
          <Title order={3}>Decisions per minute (UTC)</Title>
          <BarChart h={240} data={rows} dataKey="time" type="stacked" role="figure" aria-label="Decisions per minute" withLegend
                    series={[{ name: "approve", color: "teal.9" }, { name: "review", color: "yellow.6" }, { name: "block", color: "red.9" }]} />
          <Title order={3}>Server-side latency (ms; no line where no answer was given)</Title>
          <LineChart h={240} data={rows} dataKey="time" role="figure" aria-label="Latency percentiles" withLegend connectNulls={false}
                     curveType="linear"
                     series={[{ name: "p50_ms", color: "blue.9" }, { name: "p95_ms", color: "orange.9" }, { name: "p99_ms", color: "red.9" }]} />
        </>
      )}
    </Stack>
  );
}
