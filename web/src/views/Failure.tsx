import { Alert } from "@mantine/core";
import { type ApiError, describe } from "../api";

/** A failed read, said plainly: a missing role is the API's 403 message (the UI never widens what it allows). */
export function Failure({ error, what }: { error: ApiError; what: string }) {
  const title = error.status === 403 ? `Your roles do not allow reading ${what}` : `Could not load ${what}`;
  return (
    <Alert color={error.status === 403 ? "yellow" : "red"} title={title} role="alert">
      {describe(error)}
    </Alert>
  );
}
