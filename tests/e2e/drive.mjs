// Drives Debian's Chromium (never a downloaded browser) with playwright-core for the pytest suite.
// Usage: node drive.mjs URL. Prints one JSON line per thing the page reports (window.report(...)),
// per console message, and {"kind": "loaded"} once the page has loaded. Exits when stdin closes.
import { chromium } from 'playwright-core';

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
const page = await browser.newPage();
await page.exposeFunction('report', (obj) => out(obj));
page.on('console', (msg) => out({ kind: 'console', text: msg.text() }));
page.on('pageerror', (err) => out({ kind: 'pageerror', text: String(err) }));
await page.goto(url);
out({ kind: 'loaded' });
let timer;
const limit = new Promise((resolve) => { timer = setTimeout(resolve, 120_000); });  // never outlive the test by much
await Promise.race([stdinClosed, limit]);
clearTimeout(timer);
await browser.close();
