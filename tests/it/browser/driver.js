// Drives headless Chromium through one page for tests/it/browser.rs.
// Usage: node driver.js PAGE_URL
// Prints one JSON line: {"result": <what the page reported>, "responses": [{url, status}]}.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const TIMEOUT_MS = 45000;

async function main() {
  const pageUrl = process.argv[2];
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    timeout: TIMEOUT_MS,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const responses = [];
  context.on('response', (r) => responses.push({ url: r.url(), status: r.status() }));
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.on('console', (m) => process.stderr.write(`console: ${m.text()}\n`));
    await page.goto(pageUrl, { timeout: TIMEOUT_MS });
    await page.waitForFunction(() => window.__done === true, null, { timeout: TIMEOUT_MS });
    const result = await page.evaluate(() => window.__result);
    process.stdout.write(JSON.stringify({ result, responses }) + '\n');
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`driver failed: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
