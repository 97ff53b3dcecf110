// The reading workflow in headless Debian chromium (playwright-core), run by
// tests/e2e/test_reading_browser.py with ILD_E2E_CONFIG (JSON) in the environment.
// Prints one line "ILD_E2E_RESULT {...}" with checks and metrics.
import { base, cfg, drive, log, login as signedIn } from './driver.mjs';

const result = { checks: {}, metrics: {}, error: null, console: [] };
const TIMEOUT = 90_000;

const login = (browser, username) => signedIn(browser, username, result, { viewport: { width: 1280, height: 860 } });

async function waitViewer(page) {
  await page.waitForFunction(() => window.ild && (window.ild.ready || window.ild.error), null, { timeout: TIMEOUT });
  const error = await page.evaluate(() => window.ild.error);
  if (error) throw new Error(`viewer failed: ${error}`);
  await page.waitForFunction(() => window.ild.viewer.metrics.firstImageMs !== null, null, { timeout: TIMEOUT });
}

async function contoursOf(page, assignmentId) {
  return page.evaluate(async (id) => {
    const r = await fetch(`/api/v1/reading/assignments/${id}/contours/`, { headers: { Accept: 'application/json' } });
    return r.ok ? (await r.json()).results : [];
  }, assignmentId);
}

async function drawCircle(page, fx, fy, fr) {
  const box = await page.locator('#viewport-main').boundingBox();
  const cx = box.x + box.width * fx;
  const cy = box.y + box.height * fy;
  const r = Math.min(box.width, box.height) * fr;
  await page.mouse.move(cx + r, cy);
  await page.mouse.down();
  const steps = 48;
  for (let a = 1; a <= steps; a++) {
    const t = (a / steps) * 2 * Math.PI;
    await page.mouse.move(cx + r * Math.cos(t), cy + r * Math.sin(t), { steps: 2 });
  }
  await page.mouse.up();
}

async function waitSaved(page) {
  await page.waitForFunction(
    () => window.ild.viewer.queue.pending() === 0 && document.querySelector('.ild-save')?.dataset.state === 'saved',
    null,
    { timeout: TIMEOUT },
  );
}

async function goToProtocolSlice(page, sop) {
  await page.click(`.ild-protocol button[data-sop="${sop}"]`);
  // The indicator is updated by the viewer's slice-change handler, after the slice's contours.
  await page.waitForFunction(
    (s) => document.getElementById('slice-indicator').dataset.index === String(window.ild.viewer.bySop.get(s)),
    sop,
    { timeout: TIMEOUT },
  );
}

await drive(result, async (browser) => {
  // ---- Reader A: next case, first protocol slice, time to first image, scroll rate --------
  const a = await login(browser, 'reader-a');
  await a.page.goto(`${base}/reading/`);
  await Promise.all([a.page.waitForURL(/\/reading\/assignments\//), a.page.click('#next-case')]);
  await waitViewer(a.page);
  const opened = await a.page.evaluate(() => ({
    firstImageMs: window.ild.viewer.metrics.firstImageMs,
    seriesLoadedMs: window.ild.viewer.metrics.seriesLoadedMs,
    protocolIndex: Number(document.getElementById('slice-indicator').dataset.protocol),
    sop: window.ild.viewer.currentSlice().sopInstanceUid,
    cachedAtFirstImage: window.ild.viewer.cachedSlices(),
  }));
  result.checks.opened_protocol_slice = opened.protocolIndex;
  result.metrics.time_to_first_image_ms = Math.round(opened.firstImageMs);
  result.metrics.cached_at_first_image = opened.cachedAtFirstImage;
  log('opened', opened);
  const tCold = Date.now();

  // Scroll right away (prefetch still running): slices shown per second, each awaited.
  const cold = await a.page.evaluate(() => window.ild.viewer.scrollBenchmark(400));
  result.metrics.scroll_cold_slices_per_s = Number(cold.slicesPerSecond.toFixed(1));
  log('cold scroll', cold, Date.now() - tCold);
  const t0 = Date.now();
  await a.page.waitForFunction(() => window.ild.viewer.cachedSlices() >= window.ild.viewer.stack.length, null, { timeout: TIMEOUT });
  result.metrics.prefetch_complete_after_cold_scroll_ms = Date.now() - t0;
  const warm = await a.page.evaluate(() => window.ild.viewer.scrollBenchmark(60));
  result.metrics.scroll_warm_slices_per_s = Number(warm.slicesPerSecond.toFixed(1));
  result.metrics.scroll_cold_wait_image_ms_per_slice = Number((cold.loadMs / cold.slices).toFixed(1));
  result.metrics.scroll_cold_wait_frame_ms_per_slice = Number((cold.frameMs / cold.slices).toFixed(1));
  result.metrics.scroll_warm_wait_image_ms_per_slice = Number((warm.loadMs / warm.slices).toFixed(1));
  result.metrics.scroll_warm_wait_frame_ms_per_slice = Number((warm.frameMs / warm.slices).toFixed(1));
  result.metrics.idle_frames_per_s = Number((await a.page.evaluate(() => window.ild.viewer.idleFrameRate(1000))).toFixed(1));
  log('warm scroll', warm);
  // Mouse-wheel scrolling as a reader does it: 40 wheel notches down over the viewport.
  await a.page.evaluate(() => window.ild.viewer.goTo(0));
  const box = await a.page.locator('#viewport-main').boundingBox();
  await a.page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  const startIndex = await a.page.evaluate(() => window.ild.viewer.vp.getCurrentImageIdIndex());
  const w0 = Date.now();
  for (let i = 0; i < 40; i++) await a.page.mouse.wheel(0, 120);
  await a.page.waitForFunction((s) => Math.abs(window.ild.viewer.vp.getCurrentImageIdIndex() - s) >= 40, startIndex, { timeout: 30_000 }).catch(() => {});
  const wheelMoved = Math.abs((await a.page.evaluate(() => window.ild.viewer.vp.getCurrentImageIdIndex())) - startIndex);
  result.metrics.wheel_slices_per_s = Number((wheelMoved / ((Date.now() - w0) / 1000)).toFixed(1));
  log('metrics', result.metrics);

  // Draw an ILD contour with the mouse on a mid-lung protocol slice; it saves by itself.
  await goToProtocolSlice(a.page, cfg.protocol_draw_sop);
  await a.page.click('[data-action="mode:freehand"]');
  await a.page.click('[data-action="structure:ild"]');
  await drawCircle(a.page, 0.33, 0.45, 0.07);
  await a.page.waitForFunction(() => window.ild.viewer.queue.pending() > 0 || window.ild.viewer.queue.keys().length > 0, null, { timeout: TIMEOUT });
  await waitSaved(a.page);
  const savedA = await contoursOf(a.page, cfg.assignment_a);
  result.checks.saved_contour_versions = savedA.filter((c) => c.structure === 'ild').length;
  const contourId = savedA.find((c) => c.structure === 'ild')?.id;
  await a.page.mouse.move(5, 5);
  await a.page.screenshot({ path: cfg.screenshot });
  log('drawn and saved', savedA.length);

  // Reload: the contour comes back from the server.
  await a.page.reload();
  await waitViewer(a.page);
  await goToProtocolSlice(a.page, cfg.protocol_draw_sop);
  result.checks.found_after_reload = await a.page.evaluate(() => window.ild.viewer.annotationCount('ild'));

  // Submit: locked, and the worklist opens (no case left).
  a.page.once('dialog', (d) => d.accept());
  await Promise.all([a.page.waitForURL((u) => u.pathname === '/reading/', { timeout: TIMEOUT }), a.page.click('[data-action="submit"]')]);
  result.checks.submitted_worklist_url = new URL(a.page.url()).pathname;
  await a.context.close();

  log('reader A submitted');
  // ---- Reader B: cannot obtain A's contour; own viewer shows none; two tabs conflict ------
  const b = await login(browser, 'reader-b');
  result.checks.reader_b_statuses = await b.page.evaluate(
    async ({ contourId, assignmentA }) => {
      const urls = [
        `/api/v1/reading/contours/${contourId}/`,
        `/api/v1/reading/assignments/${assignmentA}/contours/`,
        `/api/v1/reading/assignments/${assignmentA}/contours/history/?structure=ild`,
      ];
      const statuses = [];
      for (const u of urls) statuses.push((await fetch(u)).status);
      return statuses;
    },
    { contourId, assignmentA: cfg.assignment_a },
  );
  result.checks.reader_b_export_contours = await b.page.evaluate(
    async (studyId) => (await (await fetch(`/api/v1/reading/studies/${studyId}/export/`)).json()).contours.length,
    cfg.study_id,
  );
  await b.page.goto(`${base}/reading/next/`);
  await waitViewer(b.page);
  await goToProtocolSlice(b.page, cfg.protocol_draw_sop);
  result.checks.reader_b_sees_contours = await b.page.evaluate(() => window.ild.viewer.annotationCount('ild'));

  log('reader B blinded checks', result.checks.reader_b_statuses);
  // Second tab on the same slice: tab 1 saves v1, tab 2 (still on v0) gets a conflict → merge.
  const tab2 = await b.context.newPage();
  await tab2.goto(`${base}/reading/assignments/${cfg.assignment_b}/`);
  await waitViewer(tab2);
  await goToProtocolSlice(tab2, cfg.protocol_draw_sop);
  await b.page.bringToFront();
  await drawCircle(b.page, 0.3, 0.4, 0.05);
  await waitSaved(b.page);
  await tab2.bringToFront();
  await drawCircle(tab2, 0.6, 0.5, 0.05);
  await tab2.waitForSelector('#conflict-dialog[open]', { timeout: TIMEOUT });
  result.checks.conflict_dialog_shown = true;
  await tab2.click('#conflict-dialog button[data-choice="merged"]');
  await waitSaved(tab2);
  const savedB = await contoursOf(tab2, cfg.assignment_b);
  result.checks.conflict_resolved_version = savedB.find((c) => c.structure === 'ild')?.version ?? null;
  result.checks.conflict_merged_rings = savedB.find((c) => c.structure === 'ild')?.geometry.polygons.length ?? 0;
  log('conflict resolved');

  // Brush on the next protocol slice, lung structure: painted pixels become saved rings.
  await tab2.keyboard.press('n');
  await tab2.waitForFunction(() => Number(document.getElementById('slice-indicator').dataset.protocol) === 10, null, { timeout: TIMEOUT });
  await tab2.click('[data-action="structure:lung"]');
  await tab2.click('[data-action="mode:brush"]');
  const vbox = await tab2.locator('#viewport-main').boundingBox();
  await tab2.mouse.move(vbox.x + vbox.width * 0.3, vbox.y + vbox.height * 0.5);
  await tab2.mouse.down();
  for (let i = 1; i <= 6; i++) await tab2.mouse.move(vbox.x + vbox.width * (0.3 + i * 0.01), vbox.y + vbox.height * 0.5);
  await tab2.mouse.up();
  await tab2.waitForFunction(
    () => window.ild.viewer.queue.keys().some((k) => k.structure === 'lung' && window.ild.viewer.queue.rings(k).length > 0),
    null,
    { timeout: 30_000 },
  );
  await waitSaved(tab2);
  result.checks.brush_saved_lung_versions = (await contoursOf(tab2, cfg.assignment_b)).filter((c) => c.structure === 'lung').length;
  log('brush saved');
  await b.context.close();

  // ---- Comparison: the same scroll with Cornerstone's CPU rendering (reader A, read-only) --
  const a2 = await login(browser, 'reader-a');
  await a2.page.goto(`${base}/reading/assignments/${cfg.assignment_a}/?render=cpu`);
  await waitViewer(a2.page);
  result.metrics.cpu_render_time_to_first_image_ms = Math.round(await a2.page.evaluate(() => window.ild.viewer.metrics.firstImageMs));
  const cpu = await a2.page.evaluate(() => window.ild.viewer.scrollBenchmark(100));
  result.metrics.cpu_render_scroll_slices_per_s = Number(cpu.slicesPerSecond.toFixed(1));
  result.metrics.cpu_render_wait_frame_ms_per_slice = Number((cpu.frameMs / cpu.slices).toFixed(1));
  log('cpu rendering', cpu);
  await a2.context.close();

  // ---- Coordinator: progress ------------------------------------------------------------
  const c = await login(browser, 'coordinator');
  await c.page.goto(`${base}/reading/studies/${cfg.study_id}/`);
  result.checks.coordinator_progress_submitted = (await c.page.textContent('tr[data-reader="reader-a"] .submitted'))?.trim();
  await c.context.close();
});
