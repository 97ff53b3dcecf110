// The clinician's longitudinal report in headless Debian chromium (playwright-core), run by
// tests/e2e/test_clinician_report_browser.py with ILD_E2E_CONFIG (JSON) in the environment.
// Prints one line "ILD_E2E_RESULT {...}" with what the pages showed and where the PDFs went.
import { base, cfg, drive, log, login } from './driver.mjs';

const result = { checks: {}, error: null, console: [] };
const TIMEOUT = 30_000;

// What a report page shows: the summary, the flags and the chart marks.
async function readReport(page) {
  return page.evaluate(() => ({
    title: document.querySelector('h1')?.textContent?.trim() ?? '',
    summary: document.querySelector('#summary')?.textContent?.trim() ?? '',
    worseFlags: [...document.querySelectorAll('.flag-worse')].map((e) => e.textContent.trim()),
    stableFlags: [...document.querySelectorAll('.flag-stable')].map((e) => e.textContent.trim()),
    charts: document.querySelectorAll('.plots svg').length,
    redMarkers: document.querySelectorAll('.plots polygon.worsening').length,
    chartWidth: document.querySelector('.plots svg')?.getBoundingClientRect().width ?? 0,
  }));
}

async function downloadPdf(page, path) {
  const [download] = await Promise.all([page.waitForEvent('download', { timeout: TIMEOUT }), page.click('#pdf-link')]);
  await download.saveAs(path);
  return download.suggestedFilename();
}

await drive(result, async (browser) => {
  log('login as the clinician');
  const { context, page } = await login(browser, cfg.username, result, {
    viewport: { width: 1280, height: 900 },
    acceptDownloads: true,
    consoleErrors: false,
  });
  page.setDefaultTimeout(TIMEOUT);

  log('worsening patient: from the patient page to the report');
  await page.goto(`${base}/patients/${encodeURIComponent(cfg.worsening)}/`);
  await Promise.all([page.waitForURL(/\/reports\/patients\//), page.click('#longitudinal-report')]);
  result.checks.worsening = await readReport(page);
  await page.screenshot({ path: cfg.screenshot, fullPage: true });
  result.checks.worsening_pdf_name = await downloadPdf(page, cfg.worseningPdf);

  await page.emulateMedia({ media: 'print' });
  result.checks.print = await page.evaluate(() => ({
    header: getComputedStyle(document.querySelector('header')).display,
    actions: getComputedStyle(document.querySelector('.actions')).display,
    background: getComputedStyle(document.body).backgroundColor,
  }));
  await page.emulateMedia({ media: 'screen' });

  log('stable patient');
  const response = await page.goto(`${base}/reports/patients/${encodeURIComponent(cfg.stable)}/`);
  result.checks.stable_status = response.status();
  result.checks.stable = await readReport(page);
  result.checks.stable_pdf_name = await downloadPdf(page, cfg.stablePdf);
  await context.close();
});
