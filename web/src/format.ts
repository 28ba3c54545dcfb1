export const ap = (value: number | null | undefined): string =>
  value === null || value === undefined ? "—" : value.toFixed(3);

/** The metrics that count rows: shown as whole numbers. Every other metric is a rate, a score or a ratio, shown
 * to 3 decimals whatever its value (an AP of exactly 1.0 is "1.000", not "1" like a count). */
const COUNTS = new Set(["n", "positives"]);

export const metric = (key: string, value: unknown): string =>
  typeof value !== "number" ? "—" : COUNTS.has(key) ? value.toLocaleString() : ap(value);

/** A score threshold, to 4 significant digits (a threshold chosen on validation scores is a float such as
 * 0.04421874195424622: "0.04422"); the exact value is the API's. */
export const threshold = (value: number | null | undefined): string =>
  value === null || value === undefined ? "—" : String(Number(value.toPrecision(4)));

export const when = (iso: string | null | undefined): string =>
  iso ? new Date(iso).toISOString().slice(0, 16).replace("T", " ") + " UTC" : "—";

export const MODEL_TYPES: Record<string, string> = {
  fraud_detection: "Fraud",
  churn: "Churn",
  anomaly: "Anomaly",
};
