import { Select, Text } from "@mantine/core";
import { useNavigate } from "react-router";
import type { ApiError } from "../api";
import type { ModelOverview } from "../types";
import { useApi } from "../useApi";
import { Failure } from "./Failure";

/** The model a per-model view shows: the route's, or the first model's. `picker` is the model select, or why
 * there is none: the API's error (a per-model view then shows nothing it did not measure), or no model yet. */
export function useModelChoice(name: string | undefined, base: string): {
  models: ModelOverview[]; chosen: string | null; picker: React.ReactNode; error: ApiError | null;
} {
  const navigate = useNavigate();
  const { data, error } = useApi<{ models: ModelOverview[] }>("/v1/models");
  const models = data?.models ?? [];
  const chosen = name ?? models[0]?.name ?? null;
  const picker = (
    <>
      <Select label="Model" data={models.map((m) => m.name)} value={chosen} allowDeselect={false} w={240}
              onChange={(value) => value && navigate(`${base}/${encodeURIComponent(value)}`)} />
      {error && <Failure error={error} what="the models" />}
      {data && models.length === 0 && !name && <Text c="gray.7">No model yet: training one creates it (sira train --model NAME).</Text>}
    </>
  );
  return { models, chosen, picker, error };
}
