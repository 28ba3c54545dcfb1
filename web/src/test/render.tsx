import { MantineProvider } from "@mantine/core";
import { render } from "@testing-library/react";
import type { ReactElement } from "react";
import { MemoryRouter } from "react-router";
import { MeContext } from "../me";
import type { Me } from "../types";

export const viewer: Me = { name: "vic", kind: "api_key", roles: ["viewer"], may: { "models.read": true, rollback: false } };

export const renderUi = (ui: ReactElement, me: Me = viewer) =>
  render(
    <MantineProvider>
      <MeContext.Provider value={me}>
        <MemoryRouter>{ui}</MemoryRouter>
      </MeContext.Provider>
    </MantineProvider>,
  );
