import "@testing-library/jest-dom/vitest";
import { cleanup } from "@testing-library/react";
import { afterEach } from "vitest";

afterEach(() => {
  cleanup();
  sessionStorage.clear();
});

// Mantine reads these browser APIs, which jsdom lacks
window.matchMedia = window.matchMedia || ((query: string) => ({
  matches: false, media: query, onchange: null, addListener: () => {}, removeListener: () => {},
  addEventListener: () => {}, removeEventListener: () => {}, dispatchEvent: () => false,
}) as MediaQueryList);
class NoResize { observe() {} unobserve() {} disconnect() {} }
window.ResizeObserver = window.ResizeObserver || (NoResize as unknown as typeof ResizeObserver);
