// Drives the OHIF Viewer in headless Debian chromium: the study list must show the study, and
// the viewer must draw the CT on a canvas (checked from the canvas pixels, not assumed).
// Usage: node drive.mjs <origin> <StudyInstanceUID> <outdir>
// Prints one JSON line; exit 0 only when the study was listed and the image rendered.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const [origin, studyUid, outDir] = process.argv.slice(2);
const result = { listed: false, rendered: false, brightPixels: 0, overlay: '', errors: [], offOrigin: [] };
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ild-ohif-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on('pageerror', (e) => result.errors.push(`pageerror: ${e.message}`.slice(0, 300)));
  page.on('response', (r) => { if (r.status() >= 400) result.errors.push(`${r.status()} ${r.url()}`.slice(0, 300)); });
  page.on('request', (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith('data:') && !r.url().startsWith('blob:')) result.offOrigin.push(r.url()); });

  await page.goto(`${origin}/`, { waitUntil: 'domcontentloaded' });
  try {
    await page.waitForFunction((uid) => document.body.innerText.includes('PHANTOM') || document.body.innerText.includes(uid) || document.querySelectorAll('[data-cy^="studyRow"], tr').length > 1, studyUid, { timeout: 60000 });
    result.listed = true;
  } catch (e) { result.errors.push(`study list: ${e.message}`.slice(0, 300)); }
  await page.screenshot({ path: path.join(outDir, 'study-list.png') });

  await page.goto(`${origin}/viewer?StudyInstanceUIDs=${studyUid}`, { waitUntil: 'domcontentloaded' });
  const deadline = Date.now() + 90000;
  while (Date.now() < deadline) {
    result.brightPixels = await page.evaluate(() => {
      let best = 0;
      for (const canvas of document.querySelectorAll('canvas')) {
        if (canvas.width < 200 || canvas.height < 200) continue;
        const copy = document.createElement('canvas');
        copy.width = canvas.width; copy.height = canvas.height;
        const ctx = copy.getContext('2d');
        ctx.drawImage(canvas, 0, 0);
        const data = ctx.getImageData(0, 0, copy.width, copy.height).data;
        let bright = 0;
        for (let i = 0; i < data.length; i += 4) if (data[i] + data[i + 1] + data[i + 2] > 120) bright++;
        best = Math.max(best, bright);
      }
      return best;
    });
    if (result.brightPixels > 1000) { result.rendered = true; break; }
    await page.waitForTimeout(500);
  }
  result.overlay = (await page.evaluate(() => document.body.innerText)).match(/I:\s*\d+\s*\(\d+\/\d+\)/)?.[0] || '';
  await page.screenshot({ path: path.join(outDir, 'viewer.png') });
} finally {
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
process.exit(result.listed && result.rendered ? 0 : 1);
