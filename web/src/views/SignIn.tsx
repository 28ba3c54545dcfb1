import { Alert, Button, Card, PasswordInput, Stack, Text, Title } from "@mantine/core";
import { useState } from "react";
import { api, ApiError, credential, describe } from "../api";
import type { Me } from "../types";

/** An API key or a JWT, kept in this tab's session storage only (gone when the tab closes). `signedOut`: why the
 * last credential was dropped (the server's reason: revoked, expired), if it was. */
export function SignIn({ onSignedIn, signedOut = null }: { onSignedIn: (me: Me) => void; signedOut?: string | null }) {
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
      // the API's reason (invalid, revoked, expired), not a guess
      setError(!(e instanceof ApiError) ? String(e)
        : e.status === 401 ? `This key or token is not valid: ${e.message}.` : describe(e));
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
          {signedOut && !error && (
            <Alert color="yellow" role="alert" title="You were signed out" data-field="signed-out">
              SIRA refused your credential: {signedOut}. Sign in again with a valid key or token.
            </Alert>
          )}
          {error && <Alert color="red" role="alert">{error}</Alert>}
          <Button type="submit" loading={busy} disabled={!value.trim()}>Sign in</Button>
        </Stack>
      </form>
    </Card>
  );
}
