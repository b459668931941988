// A page from another site tries, in headless Chromium, everything a page
// can do without the user's help to pg2sink's API: a simple no-cors POST
// (text/plain, no preflight), a JSON POST (preflighted), a form POST, and
// framing pg2sink's page (to trick a user into clicking its buttons).
// The hostile page is served here, on http://localhost:<free port>: another
// site than pg2sink's http://127.0.0.1:<port>.
// Usage: node cross_site.mjs <pg2sink base url> <schema/table path part>
// Prints one JSON line with what each attempt saw.
import http from "node:http";
import { createRequire } from "node:module";
const require = createRequire(process.env.PLAYWRIGHT_CORE_DIR + "/");
const { chromium } = require("playwright-core");

const [target, table] = process.argv.slice(2);
const stop = `${target}/api/tables/${table}/stop`;
const hostile = `<!doctype html><html><body>
<iframe name="sink" id="sink"></iframe>
<form id="form" method="POST" action="${stop}" enctype="text/plain" target="sink">
  <input name='{"a":"' value='"}'>
</form>
<iframe id="framed" src="${target}/"></iframe>
</body></html>`;
const server = http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
  res.end(hostile);
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const evil = `http://localhost:${server.address().port}/`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  await page.goto(evil, { waitUntil: "load" });
  const result = { evil };
  // 1. A simple request: no preflight, the response is opaque to the page.
  result.no_cors = await page.evaluate(async (url) => {
    try {
      const r = await fetch(url, { method: "POST", mode: "no-cors",
                                   headers: { "Content-Type": "text/plain" }, body: "{}" });
      return r.type;
    } catch (e) { return "rejected: " + e; }
  }, stop);
  // 2. A JSON request: the browser asks first (OPTIONS) and must be denied.
  result.json = await page.evaluate(async (url) => {
    try {
      const r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
      return "status " + r.status;
    } catch (e) { return "rejected: " + e; }
  }, stop);
  // 3. A form POST into a frame.
  const sink = page.frame({ name: "sink" });
  await Promise.all([
    sink.waitForNavigation({ waitUntil: "load", timeout: 30000 }).catch(() => {}),
    page.evaluate(() => document.getElementById("form").submit()),
  ]);
  result.form = "submitted";
  // 4. pg2sink's page in a frame: refused by the browser, so nothing of it
  // (its status line) exists in the frame.
  const framed = page.frames().find((f) => f.parentFrame() && f.name() !== "sink");
  result.framed = framed
    ? await framed.evaluate(() => document.getElementById("message") !== null).catch(() => false)
    : false;
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
  server.close();
}
