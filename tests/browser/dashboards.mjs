// The dashboards in a real browser (Debian's Chromium through playwright-core), run by
// tests/dashboards.rs against a served Sokana project. It signs in as a manager through the form,
// opens every dashboard, changes a filter, drills down, opens the rows behind a bar, waits for a
// live refresh (printing COMMIT for the Rust side to commit new data), opens an embed link in a
// frame of another site, and runs axe-core on every page. It prints one line, RESULT {json}, that
// the Rust test asserts on; screenshots go to ARTIFACTS.
//
// Environment: BASE (http://127.0.0.1:PORT), USERNAME, PASSWORD, DASHBOARDS (ids, comma
// separated), EMBED_URL, EMBEDDER (the framing site's origin), ARTIFACTS (a directory).
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`the environment variable ${name} is missing`);
  return value;
};
const base = env("BASE");
const artifacts = env("ARTIFACTS");
const embedder = env("EMBEDDER");
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

const result = { consoleErrors: [], offsite: [], pages: {}, axe: {} };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  page.on("console", (message) => {
    if (message.type() === "error") result.consoleErrors.push(`${page.url()}: ${message.text()}`);
  });
  page.on("pageerror", (error) => result.consoleErrors.push(`${page.url()}: ${error.message}`));
  page.on("request", (request) => {
    const url = request.url();
    if (!url.startsWith(base) && !url.startsWith(embedder) && !url.startsWith("data:")) result.offsite.push(url);
  });

  const axe = async (name) => {
    // Through the DevTools protocol: page scripts may only come from the server (CSP).
    await page.evaluate(axeSource);
    const found = await page.evaluate(async () => {
      const run = await window.axe.run(document, { resultTypes: ["violations"] });
      return run.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help }));
    });
    result.axe[name] = found;
  };
  const drawn = async () => {
    await page.waitForFunction(() => document.querySelectorAll(".panel .chart[aria-busy]").length === 0, null, { timeout: 120000 });
    return page.evaluate(() => ({
      panels: document.querySelectorAll(".panel").length,
      charts: document.querySelectorAll(".panel .chart svg").length,
      errors: Array.from(document.querySelectorAll(".panel .error")).map((e) => e.textContent),
      marks: document.querySelectorAll(".panel .hit").length,
    }));
  };

  // Sign in through the form, from a page that needs it.
  await page.goto(`${base}/dashboards/executive`);
  result.loginUrl = page.url();
  await axe("login");
  await page.screenshot({ path: `${artifacts}/login.png` });
  await page.fill("#username", env("USERNAME"));
  await page.fill("#password", env("PASSWORD"));
  await Promise.all([page.waitForURL(`${base}/dashboards/executive`), page.click("#login button[type=submit]")]);
  await drawn();

  await page.goto(`${base}/dashboards`);
  await axe("list");
  await page.screenshot({ path: `${artifacts}/dashboards.png`, fullPage: true });

  for (const id of env("DASHBOARDS").split(",")) {
    await page.goto(`${base}/dashboards/${id}?period=all_time`);
    result.pages[id] = await drawn();
    await axe(id);
    await page.screenshot({ path: `${artifacts}/${id}.png`, fullPage: true });
  }

  // A filter change moves the KPI: a custom range, March 2026.
  await page.goto(`${base}/dashboards/executive`);
  await drawn();
  await page.selectOption("#f-period", "custom");
  await page.fill("#f-period-from", "2026-03-01");
  await page.fill("#f-period-to", "2026-03-31");
  await page.dispatchEvent("#f-period-to", "change");
  await page.waitForURL(/period=2026-03-01..2026-04-01/);
  await drawn();
  result.filteredUrl = page.url();
  result.collectedInMarch = await page.getAttribute('[data-panel="collected"] .hit', "data-value");

  // Tooltips: focus a bar with the keyboard.
  await page.focus('[data-panel="revenue_by_month"] .hit');
  result.tooltip = await page.evaluate(() => {
    const tip = document.querySelector("#tooltip");
    return tip.hidden ? null : tip.textContent;
  });

  // Rows behind a bar: a month of payments, in a dialog.
  await page.click('[data-panel="revenue_by_month"] .hit');
  await page.waitForSelector("#rows-body table");
  result.rowsTitle = await page.textContent("#rows-title");
  result.rowsShown = await page.locator("#rows-body tbody tr").count();
  await page.screenshot({ path: `${artifacts}/rows.png` });
  await page.click("#rows-close");

  // Drill-down: a bar of a referral source filters the dashboard by it.
  await page.goto(`${base}/dashboards/client_pipeline?period=all_time`);
  await drawn();
  const source = await page.getAttribute('[data-panel="sources_that_convert"] .hit', "data-x");
  await page.click('[data-panel="sources_that_convert"] .hit');
  await page.waitForURL(/referral_source=/);
  await drawn();
  result.drill = { source, url: page.url() };
  await page.screenshot({ path: `${artifacts}/drill-down.png`, fullPage: true });

  // Live refresh: new data is committed; the panels that read it redraw without a reload.
  await page.goto(`${base}/dashboards/executive?period=all_time`);
  await drawn();
  const before = await page.getAttribute('[data-panel="collected"] .hit', "data-value");
  await page.evaluate(() => (window.notReloaded = true));
  console.log("COMMIT");
  await page.waitForSelector(".panel.updated", { timeout: 120000 });
  await drawn();
  result.live = {
    before,
    after: await page.getAttribute('[data-panel="collected"] .hit', "data-value"),
    updated: await page.evaluate(() => Array.from(document.querySelectorAll(".panel.updated")).map((p) => p.dataset.panel)),
    reloaded: !(await page.evaluate(() => window.notReloaded === true)),
  };
  await page.screenshot({ path: `${artifacts}/live-refresh.png` });

  // An embed link in a frame of another site.
  // The other site: a page with the link in a frame, served on the loopback port EMBEDDER names
  // (a real server: Chromium does not let a page it cannot place on the network frame a local one).
  const crm = createServer((_, response) => {
    response.writeHead(200, { "content-type": "text/html" });
    response.end(`<!doctype html><html lang="en"><title>CRM</title><h1>The CRM</h1><iframe title="Executive overview" src="${env("EMBED_URL")}" width="1300" height="900"></iframe></html>`);
  });
  await new Promise((resolve) => crm.listen(Number(new URL(embedder).port), "127.0.0.1", resolve));
  await page.goto(`${embedder}/`);
  const frame = page.frameLocator("iframe");
  await frame.locator(".panel .chart svg").first().waitFor({ timeout: 120000 });
  const embedded = page.frames().find((f) => f.url().includes("/embed/"));
  await embedded.waitForFunction(() => document.querySelectorAll(".panel .chart[aria-busy]").length === 0, null, { timeout: 120000 });
  result.embed = {
    charts: await frame.locator(".panel .chart svg").count(),
    panels: await frame.locator(".panel").count(),
    filters: await frame.locator("#filters").count(),
  };
  await page.screenshot({ path: `${artifacts}/embedded.png`, fullPage: true });
  crm.close();
} finally {
  await browser.close();
}
console.log("RESULT " + JSON.stringify(result));
