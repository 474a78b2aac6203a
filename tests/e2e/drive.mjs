// Drives Debian's Chromium (never a downloaded browser) with playwright-core for the pytest suite.
// Usage: node drive.mjs URL. Prints one JSON line per thing the page reports (window.report(...)),
// per console message, and {"kind": "loaded"} once the page has loaded. Exits when stdin closes.
// Each stdin line may be a command, {"id": N, ...} with one of: "waitFor": a JS expression to wait
// until true (timeout ms in "timeout"), "click": a selector, "screenshot": a PNG path; it answers
// {"kind": "done", "id": N} or {"kind": "failed", "id": N, "error": "..."}.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';

const url = process.argv[2];
const stdinClosed = new Promise((resolve) => {
  process.stdin.on('end', resolve);
  process.stdin.on('close', resolve);
  process.stdin.resume();
});
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width: 1600, height: 900 } });
await page.exposeFunction('report', (obj) => out(obj));
page.on('console', (msg) => out({ kind: 'console', text: msg.text() }));
page.on('pageerror', (err) => out({ kind: 'pageerror', text: String(err) }));
await page.goto(url);
out({ kind: 'loaded' });
// page.waitForFunction evaluates its string with eval(), which a page's CSP may forbid (the inspector's
// does); page.evaluate goes through the DevTools protocol, which CSP does not apply to.
async function waitFor(expression, timeout) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await page.evaluate(expression);
    if (last === true) return;
    if (Date.now() > deadline) throw new Error(`still ${JSON.stringify(last)} after ${timeout} ms: ${expression}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}
createInterface({ input: process.stdin }).on('line', async (line) => {
  let cmd;
  try { cmd = JSON.parse(line); } catch { return; }
  try {
    if (cmd.waitFor) await waitFor(cmd.waitFor, cmd.timeout || 10_000);
    if (cmd.click) await page.click(cmd.click, { timeout: cmd.timeout || 10_000 });
    if (cmd.screenshot) await page.screenshot({ path: cmd.screenshot, fullPage: true });
    out({ kind: 'done', id: cmd.id });
  } catch (err) {
    out({ kind: 'failed', id: cmd.id, error: String(err).slice(0, 2000) });
  }
});
let timer;
const limit = new Promise((resolve) => { timer = setTimeout(resolve, 120_000); });  // never outlive the test by much
await Promise.race([stdinClosed, limit]);
clearTimeout(timer);
await browser.close();
