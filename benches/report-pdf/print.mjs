// Prints a dashboard page to PDF with headless Chromium (Debian's, through playwright-core from
// tests/browser), the way browser-based BI tools make their PDF reports: launch the browser, open
// the page, wait until every panel is drawn, print. Environment: URL (the page), OUT (the PDF),
// RUNS. Prints one line per run: launch_ms open_and_draw_ms print_ms bytes.
import { createRequire } from "node:module";
import { writeFileSync } from "node:fs";

const require = createRequire(new URL("../../tests/browser/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const url = process.env.URL;
const out = process.env.OUT;
const runs = Number(process.env.RUNS || 5);
for (let i = 0; i < runs; i++) {
  const t0 = performance.now();
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const t1 = performance.now();
    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    await page.goto(url);
    await page.waitForFunction(
      () => document.querySelectorAll(".panel").length > 0 && document.querySelectorAll(".panel .chart[aria-busy]").length === 0,
      null,
      { timeout: 120000 },
    );
    const t2 = performance.now();
    const pdf = await page.pdf({ format: "Letter", printBackground: true });
    const t3 = performance.now();
    writeFileSync(out, pdf);
    console.log(`${(t1 - t0).toFixed(0)} ${(t2 - t1).toFixed(0)} ${(t3 - t2).toFixed(0)} ${pdf.length}`);
  } finally {
    await browser.close();
  }
}
