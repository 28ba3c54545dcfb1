import { Alert, Button, Card, PasswordInput, Stack, Text, Title } from "@mantine/core";
import { useState } from "react";
import { api, ApiError, credential } from "../api";
import type { Me } from "../types";

/** An API key or a JWT, kept in this tab's session storage only (gone when the tab closes). */
export function SignIn({ onSignedIn }: { onSignedIn: (me: Me) => void }) {
  const [value, setValue] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(event: React.FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    credential.set(value.trim());
    try {
      onSignedIn(await api<Me>("/v1/me"));
    } catch (e) {
      credential.clear();
      setError(e instanceof ApiError && e.status === 401 ? "This key or token is not valid (or has expired)." : String(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <Card withBorder maw={480} mx="auto" mt="xl" padding="xl">
      <form onSubmit={submit}>
        <Stack>
          <Title order={2}>Sign in to SIRA</Title>
          <Text size="sm" c="gray.7">
            Paste an API key (sira keys create) or a JWT from your identity provider. It stays in this tab only.
          </Text>
          <PasswordInput label="API key or JWT" value={value} onChange={(e) => setValue(e.currentTarget.value)}
                         autoComplete="off" required />
          {error && <Alert color="red" role="alert">{error}</Alert>}
          <Button type="submit" loading={busy} disabled={!value.trim()}>Sign in</Button>
        </Stack>
      </form>
    </Card>
  );
}
