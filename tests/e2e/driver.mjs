// What the browser drivers share: the config the Python test passes in ILD_E2E_CONFIG, a
// timestamped log, headless Debian chromium (playwright-core), a signed-in page per user, and
// the one "ILD_E2E_RESULT {...}" line the test reads.
import { createRequire } from 'node:module';

const require = createRequire(new URL('../../frontend/package.json', import.meta.url));
const { chromium } = require('playwright-core');

export const cfg = JSON.parse(process.env.ILD_E2E_CONFIG);
export const base = cfg.baseUrl.replace(/\/$/, '');

const started = Date.now();

export function elapsedMs() {
  return Date.now() - started;
}

export function log(...args) {
  console.error(`[e2e +${(elapsedMs() / 1000).toFixed(1)}s]`, ...args);
}

// Sign in through the login form; resolves once the app has left the login page.
export async function signIn(page, username) {
  await page.goto(`${base}/accounts/login/`);
  await page.fill('input[name="username"]', username);
  await page.fill('input[name="password"]', cfg.password);
  await Promise.all([page.waitForURL((u) => !u.pathname.startsWith('/accounts/login')), page.click('button[type="submit"]')]);
}

// A fresh context for `username`, signed in. Page errors (and, with consoleErrors, console
// errors) are collected in result.console.
export async function login(browser, username, result, { viewport, consoleErrors = true, ...options }) {
  const context = await browser.newContext({ viewport, ...options });
  const page = await context.newPage();
  page.on('pageerror', (e) => result.console.push(`${username} pageerror: ${e.message}`));
  if (consoleErrors) {
    page.on('console', (m) => {
      if (m.type() === 'error') result.console.push(`${username} console: ${m.text().slice(0, 300)}`);
    });
  }
  await signIn(page, username);
  return { context, page };
}

// Run `body(browser)` in a fresh headless chromium and print the result line whatever happens;
// an exception becomes result.error. `finish(result)` runs just before the line is printed.
export async function drive(result, body, finish = () => {}) {
  let browser;
  try {
    browser = await chromium.launch({
      executablePath: cfg.chromium,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    await body(browser);
  } catch (error) {
    result.error = String(error && error.stack ? error.stack : error);
  } finally {
    if (browser) await browser.close();
    result.console = result.console.slice(0, 30);
    finish(result);
    console.log(`ILD_E2E_RESULT ${JSON.stringify(result)}`);
  }
}
