export const ap = (value: number | null | undefined): string =>
  value === null || value === undefined ? "—" : value.toFixed(3);

export const when = (iso: string | null | undefined): string =>
  iso ? new Date(iso).toISOString().slice(0, 16).replace("T", " ") + " UTC" : "—";

export const MODEL_TYPES: Record<string, string> = {
  fraud_detection: "Fraud",
  churn: "Churn",
  anomaly: "Anomaly",
};
