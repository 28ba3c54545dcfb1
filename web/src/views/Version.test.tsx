import { screen } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import { renderUi } from "../test/render";
import { MetricsTable, windows } from "./Version";

describe("a version's metrics", () => {
  it("reads validation before test and skips entries that are not windows", () => {
    expect(windows({ test: { n: 5 }, validation: { n: 9 }, train_rows: 100 as never })).toEqual(["validation", "test"]);
  });

  it("shows each metric per window", () => {
    renderUi(<MetricsTable metrics={{ validation: { n: 1200, average_precision: 0.61234 }, test: { n: 800, average_precision: 0.5 } }} />);
    const table = screen.getByRole("table", { name: "Metrics" });
    expect(table).toHaveTextContent("average precision0.6120.500");
    expect(table).toHaveTextContent("rows1,200800");
    expect(table).toHaveTextContent("ROC AUC——");
  });
});
