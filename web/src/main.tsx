import "@mantine/core/styles.css";
import "@mantine/charts/styles.css";
import { createTheme, MantineProvider } from "@mantine/core";
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { BrowserRouter } from "react-router";
import { App } from "./App";

// Darker shades than Mantine's defaults: every text meets WCAG AA contrast (axe-core checks it in the tests)
const theme = createTheme({ primaryShade: 9, autoContrast: true });

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <MantineProvider theme={theme}>
      <BrowserRouter basename="/ui">
        <App />
      </BrowserRouter>
    </MantineProvider>
  </StrictMode>,
);
