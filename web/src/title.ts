import { useEffect } from "react";

/** The tab's title names the view (and the model or version shown): a person with several SIRA tabs, or a
 * screen reader announcing the page, knows which is which. */
export function useTitle(title: string): void {
  useEffect(() => {
    document.title = `${title} · SIRA`;
  }, [title]);
}
