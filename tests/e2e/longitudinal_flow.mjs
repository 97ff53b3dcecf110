// The longitudinal viewer in headless Debian chromium (playwright-core), run by
// tests/e2e/test_longitudinal_viewer_browser.py with ILD_E2E_CONFIG (JSON) in the environment.
// Prints one line "ILD_E2E_RESULT {...}" with checks and metrics.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { base, cfg, drive, elapsedMs, log, login as signedIn } from './driver.mjs';

const viewerUrl = `${base}/reports/registrations/${cfg.job_id}/viewer/`;
const result = { checks: {}, metrics: {}, error: null, console: [] };
const TIMEOUT = 60_000;

const login = (browser, username) => signedIn(browser, username, result, { viewport: { width: 1400, height: 820 } });

const hook = (page, fn, arg) => page.evaluate(fn, arg);

async function waitReady(page) {
  await page.waitForFunction(() => window.ildLongitudinal && (window.ildLongitudinal.ready || window.ildLongitudinal.error), null, {
    timeout: TIMEOUT,
  });
  const error = await hook(page, () => window.ildLongitudinal.error);
  if (error) throw new Error(`viewer failed: ${error}`);
}

// Wait until the overlay of the displayed baseline slice is drawn (or, when hidden, cleared)
// and both viewports show their linked slices, then two more frames for the compositor.
async function settle(page) {
  await page.waitForFunction(
    () => {
      const v = window.ildLongitudinal.viewer;
      const root = document.getElementById('longitudinal-root');
      const sop = v.baseStack[v.baselineIndex()]?.sopInstanceUid;
      const drawn = v.showOverlay ? root.dataset.overlayDrawn === 'true' && root.dataset.overlaySop === sop : root.dataset.overlayDrawn === 'false';
      return drawn && v.lastOverlay?.baselineSop === sop;
    },
    null,
    { timeout: TIMEOUT },
  );
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r(null)))));
}

// Pixels of a viewport as the user sees them (a screenshot of its box: the CT canvas and the
// overlay canvas composited by the browser), counted in the page: "blue" is clearly bluer than
// red and not less than green, which grey CT, white and the yellow labels never are.
async function bluePixels(page, selector) {
  const box = await page.locator(selector).boundingBox();
  const png = await page.screenshot({ clip: box });
  return page.evaluate(async (b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext('2d');
    ctx.drawImage(bitmap, 0, 0);
    const { data } = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
    let blue = 0;
    for (let i = 0; i < data.length; i += 4) {
      const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
      if (b - r >= 40 && b >= g) blue++;
    }
    return blue;
  }, png.toString('base64'));
}

// Where the overlay lands: screenshots of the baseline with the overlay hidden and shown; the
// pixels it changes are the overlay. For shifts of the overlay by (dx, dy) screen pixels, the
// fraction of its pixels over dark (lung) image pixels; an overlay drawn in place scores best
// unshifted (a misplaced one scores best at the shift that undoes its error).
async function overlayOnLung(page) {
  const box = await page.locator('#viewport-baseline').boundingBox();
  await hook(page, () => window.ildLongitudinal.viewer.setOverlayVisible(false));
  await settle(page);
  const off = (await page.screenshot({ clip: box })).toString('base64');
  await hook(page, () => window.ildLongitudinal.viewer.setOverlayVisible(true));
  await settle(page);
  const on = (await page.screenshot({ clip: box })).toString('base64');
  return page.evaluate(
    async ([a, b]) => {
      const decode = async (b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
        const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
        const ctx = canvas.getContext('2d');
        ctx.drawImage(bitmap, 0, 0);
        return ctx.getImageData(0, 0, bitmap.width, bitmap.height);
      };
      const [off, on] = [await decode(a), await decode(b)];
      const { width, height } = off;
      const overlay = [];
      const dark = new Uint8Array(width * height);
      for (let p = 0; p < width * height; p++) {
        const i = 4 * p;
        dark[p] = off.data[i] < 110 ? 1 : 0;
        const change = Math.abs(on.data[i] - off.data[i]) + Math.abs(on.data[i + 1] - off.data[i + 1]) + Math.abs(on.data[i + 2] - off.data[i + 2]);
        if (change >= 30) overlay.push(p);
      }
      const score = (dx, dy) => {
        let hits = 0;
        for (const p of overlay) {
          const x = (p % width) + dx;
          const y = Math.floor(p / width) + dy;
          if (x >= 0 && x < width && y >= 0 && y < height && dark[y * width + x]) hits++;
        }
        return overlay.length ? hits / overlay.length : 0;
      };
      let best = { dx: 0, dy: 0, on_lung: -1 };
      for (let dy = -36; dy <= 36; dy += 6) {
        for (let dx = -36; dx <= 36; dx += 6) {
          const value = score(dx, dy);
          if (value > best.on_lung) best = { dx, dy, on_lung: value };
        }
      }
      return { overlay_pixels: overlay.length, on_lung: score(0, 0), best_shift: best };
    },
    [off, on],
  );
}

// Scroll a viewport with the mouse wheel until it shows `target` (the wheel's direction is
// learnt from the first notch).
async function wheelTo(page, selector, getter, target) {
  const box = await page.locator(selector).boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  let sign = 1;
  let current = await hook(page, getter);
  let notches = 0;
  while (current !== target && notches < 200) {
    const want = target > current ? 1 : -1;
    await page.mouse.wheel(0, 120 * want * sign);
    notches++;
    await page.waitForTimeout(30);
    const next = await hook(page, getter);
    if (notches === 1 && Math.sign(next - current) === -want) sign = -sign;
    current = next;
  }
  return { reached: current === target, notches };
}

await drive(
  result,
  async (browser) => {
    // ---- Clinician: open the viewer --------------------------------------------------------------
    const c = await login(browser, 'clinician');
    const t0 = Date.now();
    const response = await c.page.goto(viewerUrl);
    result.checks.clinician_page_status = response.status();
    await waitReady(c.page);
    await settle(c.page);
    result.metrics.ready_with_overlay_ms = Date.now() - t0;
    result.checks.job_id_on_page = await c.page.getAttribute('#longitudinal-root', 'data-job-id');
    result.checks.header_text = await c.page.textContent('.ild-summary');
    const stacks = await hook(c.page, () => {
      const v = window.ildLongitudinal.viewer;
      return { base: v.baseStack.map((s) => s.sopInstanceUid), follow: v.followStack.map((s) => s.sopInstanceUid) };
    });
    // The job's correspondence in the viewer's stack order (the test's own reading of it).
    const followupSopOf = new Map(cfg.baseline_sops.map((sop, k) => [sop, cfg.followup_sop_for_baseline_slice[k]]));
    const expected = stacks.base.map((sop) => stacks.follow.indexOf(followupSopOf.get(sop)));
    log('stacks', stacks.base.length, stacks.follow.length);

    // ---- Overlay on the baseline's largest lung slice: blue inside, follow-up untinted ----------
    const lungIndex = stacks.base.indexOf(cfg.largest_lung_sop);
    await hook(c.page, (i) => window.ildLongitudinal.viewer.goToBaseline(i), lungIndex);
    await c.page.waitForFunction((j) => window.ildLongitudinal.viewer.followupIndex() === j, expected[lungIndex], { timeout: TIMEOUT });
    await settle(c.page);
    result.checks.baseline_blue_pixels = await bluePixels(c.page, '#viewport-baseline');
    result.checks.followup_blue_pixels = await bluePixels(c.page, '#viewport-followup');
    log('blue', result.checks.baseline_blue_pixels, result.checks.followup_blue_pixels);

    // Narrower colour range: more of the lung saturates to blue; opacity 0: none at all.
    await c.page.fill('#overlay-range', '0.05');
    await c.page.dispatchEvent('#overlay-range', 'change');
    await c.page.waitForFunction(() => window.ildLongitudinal.viewer.lastOverlay?.range === 0.05, null, { timeout: TIMEOUT });
    await settle(c.page);
    result.checks.blue_range_005 = await bluePixels(c.page, '#viewport-baseline');
    result.checks.colour_bar_ticks = await c.page.textContent('#colour-bar-ticks');
    await c.page.fill('#overlay-range', '0.25');
    await c.page.dispatchEvent('#overlay-range', 'change');
    await c.page.waitForFunction(() => window.ildLongitudinal.viewer.lastOverlay?.range === 0.25, null, { timeout: TIMEOUT });
    await c.page.fill('#overlay-opacity', '0');
    await c.page.dispatchEvent('#overlay-opacity', 'input');
    await settle(c.page);
    result.checks.blue_opacity_0 = await bluePixels(c.page, '#viewport-baseline');
    await c.page.fill('#overlay-opacity', '1');
    await c.page.dispatchEvent('#overlay-opacity', 'input');
    await settle(c.page);

    // ---- Linked scrolling: wheel the baseline to a slice whose match is another index ----------
    const candidates = expected
      .map((j, i) => ({ i, j }))
      .filter(({ i, j }) => j >= 0 && j !== i)
      .sort((a, b) => Math.abs(a.i - lungIndex) - Math.abs(b.i - lungIndex));
    if (candidates.length === 0) throw new Error('the registration matches every baseline slice with the same index');
    const target = candidates.find(({ i }) => i !== lungIndex) ?? candidates[0];
    const w0 = Date.now();
    const wheel = await wheelTo(c.page, '#viewport-baseline', () => window.ildLongitudinal.viewer.baselineIndex(), target.i);
    result.metrics.wheel_notches = wheel.notches;
    if (!wheel.reached) throw new Error(`the wheel did not bring the baseline to slice ${target.i}`);
    await c.page
      .waitForFunction((j) => window.ildLongitudinal.viewer.followupIndex() === j, target.j, { timeout: 15_000 })
      .catch(() => {});
    await settle(c.page);
    result.metrics.linked_scroll_ms = Date.now() - w0;
    const linked = await hook(c.page, () => {
      const v = window.ildLongitudinal.viewer;
      return { baseline_index: v.baselineIndex(), followup_index: v.followupIndex(), header_followup_sop: v.lastOverlay?.followupSop ?? null };
    });
    result.checks.linked = { ...linked, expected_followup_index: target.j, expected_followup_sop: stacks.follow[target.j] };
    log('linked', result.checks.linked);

    // A quick flick of the wheel (no waiting between notches): the pair ends consistent.
    const before = await hook(c.page, () => window.ildLongitudinal.viewer.baselineIndex());
    const flickSign = before > stacks.base.length / 2 ? -1 : 1;
    for (let n = 0; n < 8; n++) await c.page.mouse.wheel(0, 120 * flickSign);
    const consistent = await c.page
      .waitForFunction(
        (start) => {
          const v = window.ildLongitudinal.viewer;
          return v.baselineIndex() !== start && v.followupIndex() === v.linkedFollowupIndex(v.baselineIndex());
        },
        before,
        { timeout: 15_000 },
      )
      .then(() => true, () => false);
    await c.page.waitForTimeout(300); // late loads must not pull either side away afterwards
    const flick = await hook(c.page, () => {
      const v = window.ildLongitudinal.viewer;
      return { baseline_index: v.baselineIndex(), followup_index: v.followupIndex(), linked: v.linkedFollowupIndex(v.baselineIndex()) };
    });
    result.checks.flick = { ...flick, moved: Math.abs(flick.baseline_index - before), consistent };
    log('flick', result.checks.flick);

    // ---- ... and back: wheel the follow-up to another matched slice; the baseline follows ------
    const other = expected.findIndex((j, i) => j >= 0 && Math.abs(j - target.j) >= 3 && Math.abs(i - target.i) <= 12);
    const otherJ = other >= 0 ? expected[other] : target.j;
    await wheelTo(c.page, '#viewport-followup', () => window.ildLongitudinal.viewer.followupIndex(), otherJ);
    await c.page
      .waitForFunction((j) => window.ildLongitudinal.viewer.linkedFollowupIndex(window.ildLongitudinal.viewer.baselineIndex()) === j, otherJ, {
        timeout: 15_000,
      })
      .catch(() => {});
    const back = await hook(c.page, () => {
      const v = window.ildLongitudinal.viewer;
      return { baseline_index: v.baselineIndex(), followup_index: v.followupIndex() };
    });
    result.checks.linked_back = {
      ...back,
      followup_sop: stacks.follow[back.followup_index],
      followup_sop_of_baseline: followupSopOf.get(stacks.base[back.baseline_index]),
    };
    log('linked back', result.checks.linked_back);

    // ---- Toggle: O hides the overlay, the button shows it again --------------------------------
    await hook(c.page, (i) => window.ildLongitudinal.viewer.goToBaseline(i), lungIndex);
    await settle(c.page);
    result.checks.alignment = await overlayOnLung(c.page);
    // Zoomed and panned, the overlay stays on the image.
    await hook(c.page, () => {
      const vp = window.ildLongitudinal.viewer.baseViewport;
      vp.setZoom(1.7);
      vp.setPan([60, -40]);
      vp.render();
    });
    await settle(c.page);
    result.checks.alignment_zoomed = await overlayOnLung(c.page);
    log('alignment', result.checks.alignment, result.checks.alignment_zoomed);
    fs.mkdirSync(path.join(os.tmpdir(), 'ild-e2e'), { recursive: true });
    await c.page.screenshot({ path: path.join(os.tmpdir(), 'ild-e2e', 'longitudinal-viewer-zoomed.png') });
    await hook(c.page, () => window.ildLongitudinal.viewer.resetView());
    await settle(c.page);
    await c.page.mouse.move(5, 5);
    await c.page.keyboard.press('o');
    await c.page.waitForFunction(() => document.getElementById('longitudinal-root').dataset.overlay === 'off', null, { timeout: TIMEOUT });
    await settle(c.page);
    result.checks.blue_after_toggle_off = await bluePixels(c.page, '#viewport-baseline');
    await c.page.click('[data-action="overlay"]');
    await settle(c.page);
    result.checks.blue_after_toggle_on = await bluePixels(c.page, '#viewport-baseline');
    await c.page.mouse.move(5, 5);
    await c.page.screenshot({ path: cfg.screenshot });
    result.metrics.overlay_requests = await hook(c.page, () => window.ildLongitudinal.viewer.overlayRequests);
    await c.context.close();

    // ---- A reader blinded to the pair: no page, no overlay --------------------------------------
    const r = await login(browser, 'reader-blind');
    const blinded = await r.page.goto(viewerUrl);
    result.checks.blinded_page_status = blinded.status();
    result.checks.blinded_overlay_status = await r.page.evaluate(
      async ({ job, sop }) => (await fetch(`/api/v1/jobs/${job}/overlay/?sop=${encodeURIComponent(sop)}`)).status,
      { job: cfg.job_id, sop: cfg.largest_lung_sop },
    );
    await r.context.close();
    },
    (done) => {
      done.metrics.total_ms = elapsedMs();
  },
);
