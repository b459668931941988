// Drives pg2sink's web page in headless Chromium: waits for a table's
// import to show, clicks Resync, and waits for a new import job to appear.
// Usage: node resync.mjs <page url> <schema.table> <screenshot path>
// Prints one JSON line: {"before": job id, "after": job id, "states": [...]}.
import { createRequire } from "node:module";
const require = createRequire(process.env.PLAYWRIGHT_CORE_DIR + "/");
const { chromium } = require("playwright-core");

const [url, table, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  await page.goto(url);
  const row = `tr[data-table="${table}"]`;
  await page.waitForSelector(`${row} td[data-import-state="completed"]`, { timeout: 60000 });
  const before = await page.getAttribute(`${row} td[data-job-id]`, "data-job-id");
  await page.click(`${row} button.resync`);
  await page.waitForFunction(
    ([sel, id]) => { const c = document.querySelector(sel); return c && c.dataset.jobId !== id; },
    [`${row} td[data-job-id]`, before], { timeout: 60000 });
  const after = await page.getAttribute(`${row} td[data-job-id]`, "data-job-id");
  const state = await page.getAttribute(`${row} td[data-job-id]`, "data-import-state");
  const message = await page.textContent("#message");
  const lag = await page.textContent("#lag");
  const rows = await page.$$eval("tr[data-table]", (trs) => trs.map((t) => t.dataset.table));
  await page.screenshot({ path: screenshot, fullPage: true });
  const external = requests.filter((r) => !r.startsWith(new URL(url).origin));
  console.log(JSON.stringify({ before, after, state, message, lag, rows, external }));
} finally {
  await browser.close();
}
