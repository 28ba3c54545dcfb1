import { Select } from "@mantine/core";
import { useNavigate } from "react-router";
import type { ModelOverview } from "../types";
import { useApi } from "../useApi";

/** The model a per-model view shows: the route's, or the first model's. */
export function useModelChoice(name: string | undefined, base: string): { models: ModelOverview[]; chosen: string | null; picker: React.ReactNode } {
  const navigate = useNavigate();
  const { data } = useApi<{ models: ModelOverview[] }>("/v1/models");
  const models = data?.models ?? [];
  const chosen = name ?? models[0]?.name ?? null;
  const picker = (
    <Select label="Model" data={models.map((m) => m.name)} value={chosen} allowDeselect={false} w={240}
            onChange={(value) => value && navigate(`${base}/${encodeURIComponent(value)}`)} />
  );
  return { models, chosen, picker };
}
