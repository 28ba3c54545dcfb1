import { Alert, AppShell, Badge, Button, Group, Loader, NavLink, Stack, Text, Title } from "@mantine/core";
import { useCallback, useEffect, useRef, useState } from "react";
import { NavLink as RouterLink, Navigate, Route, Routes, useLocation } from "react-router";
import { api, ApiError, credential, describe, onCredentialRefused } from "./api";
import type { Me } from "./types";
import { ApprovalsView } from "./views/Approvals";
import { AuditView } from "./views/Audit";
import { CompareView } from "./views/Compare";
import { DriftView } from "./views/Drift";
import { PerformanceView } from "./views/Performance";
import { TrafficView } from "./views/Traffic";
import { MeContext } from "./me";
import { ModelView } from "./views/Model";
import { ModelsView } from "./views/Models";
import { VersionView } from "./views/Version";
import { SignIn } from "./views/SignIn";

// `needs`: the action a view reads with; without it the entry is disabled and says why (the API refuses anyway)
const VIEWS = [
  { path: "/", label: "Models", element: <ModelsView />, needs: "models.read" },
  { path: "/approvals", label: "Approvals", element: <ApprovalsView />, needs: "models.read" },
  { path: "/drift", label: "Drift", element: <DriftView />, needs: "models.read", param: true },
  { path: "/performance", label: "Performance", element: <PerformanceView />, needs: "models.read", param: true },
  { path: "/traffic", label: "Traffic", element: <TrafficView />, needs: "models.read", param: true },
  { path: "/audit", label: "Audit", element: <AuditView />, needs: "audit.read", why: "the audit log needs the admin role" },
];

export function App() {
  const [me, setMe] = useState<Me | null>(null);
  const [checking, setChecking] = useState(credential.get() !== null);
  const [failure, setFailure] = useState<string | null>(null);
  // why the credential was dropped (the server's words: revoked, expired), said on the sign-in page
  const [signedOut, setSignedOut] = useState<string | null>(null);
  const location = useLocation();
  const signedIn = useRef(false);
  signedIn.current = me !== null;

  // Only a refused credential (401) is forgotten (api() does it): an outage or a network error keeps it, and says so.
  const check = useCallback(() => {
    setChecking(true);
    setFailure(null);
    api<Me>("/v1/me")
      .then(setMe)
      .catch((e) => {
        if (e instanceof ApiError && e.status === 401) setSignedOut(e.message);
        else setFailure(e instanceof ApiError ? describe(e) : String(e));
      })
      .finally(() => setChecking(false));
  }, []);

  useEffect(() => {
    if (credential.get()) check();
  }, [check]);

  // any call refused with 401 mid-session (the key revoked or expired): back to sign-in, saying why
  useEffect(() => onCredentialRefused((message) => {
    if (!signedIn.current) return;  // the sign-in form's own attempt: it says so itself
    setSignedOut(message);
    setMe(null);
  }), []);

  useEffect(() => {
    if (!me) document.title = "Sign in · SIRA";
  }, [me]);

  if (checking) return <Loader m="xl" aria-label="Checking your credentials" />;
  if (failure) {
    return (
      <Stack m="xl" maw={560}>
        <Alert color="red" role="alert" title="SIRA could not check your credentials">{failure}</Alert>
        <Group>
          <Button onClick={check}>Try again</Button>
          <Button variant="subtle" onClick={() => { credential.clear(); setFailure(null); }}>Sign in with another credential</Button>
        </Group>
      </Stack>
    );
  }
  if (!me) return <SignIn onSignedIn={(who) => { setSignedOut(null); setMe(who); }} signedOut={signedOut} />;

  return (
    <MeContext.Provider value={me}>
    <AppShell header={{ height: 56 }} navbar={{ width: 200, breakpoint: "sm" }} padding="md">
      <AppShell.Header>
        <Group h="100%" px="md" justify="space-between">
          <Title order={1} size="h3">SIRA</Title>
          <Group gap="xs">
            <Text size="sm" data-field="signed-in-as">{me.name}</Text>
            {me.roles.map((r) => <Badge key={r} variant="outline" size="sm">{r}</Badge>)}
            <Button variant="subtle" size="xs" onClick={() => { credential.clear(); setSignedOut(null); setMe(null); }}>Sign out</Button>
          </Group>
        </Group>
      </AppShell.Header>
      <AppShell.Navbar p="xs" component="nav" aria-label="Views">
        {VIEWS.map((v) => me.may[v.needs] ? (
          <NavLink key={v.path} component={RouterLink} to={v.path} label={v.label} variant="filled"
                   active={v.path === "/" ? location.pathname === "/" || location.pathname.startsWith("/models")
                                          : location.pathname.startsWith(v.path)} />
        ) : (
          <Text key={v.path} size="sm" px="sm" py={8} c="gray.7" aria-disabled="true">
            {v.label}: {v.why ?? "your roles do not allow it"}
          </Text>
        ))}
      </AppShell.Navbar>
      <AppShell.Main>
        <Routes>
          {VIEWS.map((v) => <Route key={v.path} path={v.path} element={v.element} />)}
          {VIEWS.filter((v) => v.param).map((v) => <Route key={`${v.path}/:name`} path={`${v.path}/:name`} element={v.element} />)}
          <Route path="/models/:name" element={<ModelView />} />
          <Route path="/models/:name/versions/:version" element={<VersionView />} />
          <Route path="/models/:name/compare/:a/:b" element={<CompareView />} />
          <Route path="*" element={<Navigate to="/" replace />} />
        </Routes>
      </AppShell.Main>
    </AppShell>
    </MeContext.Provider>
  );
}
