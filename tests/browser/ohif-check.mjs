#!/usr/bin/env node
// Headless-Chromium check that the unchanged OHIF viewer 3 works against a DICOMweb server
// that serves it (Meridian: `meridian serve --viewer-dir DIR`).
//
// Usage:
//   node ohif-check.mjs --base http://127.0.0.1:8042 --study 1.2.3.4 --expect "CQ500-CT-310" \
//        --out /tmp/shots [--label ct] [--timeout 60] [--chromium /usr/bin/chromium]
//
//   --base     origin serving OHIF at `/` (no trailing slash needed)
//   --study    StudyInstanceUID to open in the viewer
//   --expect   text that must appear in the study's row of the study list (patient name,
//              patient ID or accession number); repeatable, all must appear
//   --out      directory for screenshots and the DICOMweb request log (created if missing)
//   --label    prefix for the files written to --out (default: "study")
//   --timeout  seconds to wait for each of the study list and the drawn image (default 60)
//   --allow-serving-warnings  only warn (instead of failing) when the browser reports a wrong
//              MIME type or a Content-Security-Policy block while loading the viewer
//
// Steps: opens `${base}/` (the study list), waits for the row with --expect, screenshots it;
// then opens `${base}/viewer?StudyInstanceUIDs=<study>`, waits in real time until a viewport
// canvas has been drawn with an image that is not uniformly black, reads its pixels and
// screenshots the page and the viewport. Writes <label>-requests.json with every request the
// page made under /dicom-web (method, URL, Accept, status, content type) — useful to see what a
// server is missing. Exits 0 on success, 1 with a "FAIL:" message on failure, 2 on bad usage.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

function parseArgs(argv) {
  const a = { expect: [], label: 'study', timeout: 60, chromium: '/usr/bin/chromium' };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = argv[i + 1];
    const need = () => {
      if (v === undefined) usage(`missing value for ${k}`);
      i++;
      return v;
    };
    switch (k) {
      case '--base': a.base = need().replace(/\/+$/, ''); break;
      case '--study': a.study = need(); break;
      case '--expect': a.expect.push(need()); break;
      case '--out': a.out = need(); break;
      case '--label': a.label = need(); break;
      case '--timeout': a.timeout = Number(need()); break;
      case '--chromium': a.chromium = need(); break;
      case '--user': a.user = need(); break;
      case '--password': a.password = need(); break;
      case '--allow-serving-warnings': a.allowServingWarnings = true; break;
      case '-h': case '--help': usage(); break;
      default: usage(`unknown argument ${k}`);
    }
  }
  if (!a.base || !a.study || !a.out || a.expect.length === 0) usage('--base, --study, --expect and --out are required');
  if (!(a.timeout > 0)) usage('--timeout must be a positive number of seconds');
  return a;
}

function usage(msg) {
  if (msg) console.error(`ohif-check: ${msg}`);
  console.error('usage: node ohif-check.mjs --base URL --study UID --expect TEXT [--expect TEXT] --out DIR [--label NAME] [--timeout SECONDS] [--chromium PATH] [--allow-serving-warnings]');
  process.exit(2);
}

class CheckFailure extends Error {}
const fail = (msg) => { throw new CheckFailure(msg); };
const log = (msg) => console.log(`ohif-check: ${msg}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// Runs in the page: statistics of the largest drawn viewport canvas.
function canvasStatsInPage() {
  const canvases = [...document.querySelectorAll('canvas.cornerstone-canvas, .viewport-element canvas, [data-viewport-uid] canvas')];
  let best = null;
  for (const c of canvases) {
    const r = c.getBoundingClientRect();
    if (c.width < 32 || c.height < 32 || r.width < 32 || r.height < 32) continue;
    if (!best || c.width * c.height > best.width * best.height) best = c;
  }
  if (!best) return { found: false, count: canvases.length };
  let data;
  try {
    const ctx = best.getContext('2d', { willReadFrequently: true });
    if (!ctx) return { found: true, readable: false, reason: 'no 2d context' };
    data = ctx.getImageData(0, 0, best.width, best.height).data;
  } catch (e) {
    return { found: true, readable: false, reason: String(e) };
  }
  const n = best.width * best.height;
  let nonBlack = 0, sum = 0, sum2 = 0, max = 0;
  const hist = new Uint32Array(256);
  for (let i = 0; i < data.length; i += 4) {
    const y = Math.round(0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2]);
    hist[y]++;
    sum += y; sum2 += y * y;
    if (y > max) max = y;
    if (y > 16) nonBlack++;
  }
  const mean = sum / n;
  let distinct = 0;
  for (const h of hist) if (h) distinct++;
  const rect = best.getBoundingClientRect();
  return {
    found: true, readable: true, width: best.width, height: best.height,
    rect: { x: rect.x, y: rect.y, width: rect.width, height: rect.height },
    nonBlackFraction: nonBlack / n, mean, std: Math.sqrt(Math.max(0, sum2 / n - mean * mean)),
    max, distinct,
  };
}

// Runs in the page: the same statistics for a PNG (the viewport element's screenshot),
// decoded by the browser so that node needs no image library.
async function pngStatsInPage(b64) {
  const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
  const bmp = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
  const c = new OffscreenCanvas(bmp.width, bmp.height);
  const ctx = c.getContext('2d');
  ctx.drawImage(bmp, 0, 0);
  const data = ctx.getImageData(0, 0, bmp.width, bmp.height).data;
  const n = bmp.width * bmp.height;
  let nonBlack = 0, sum = 0, sum2 = 0;
  const hist = new Uint32Array(256);
  for (let i = 0; i < data.length; i += 4) {
    const y = Math.round(0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2]);
    hist[y]++; sum += y; sum2 += y * y;
    if (y > 16) nonBlack++;
  }
  const mean = sum / n;
  let distinct = 0;
  for (const h of hist) if (h) distinct++;
  return { width: bmp.width, height: bmp.height, nonBlackFraction: nonBlack / n, mean, std: Math.sqrt(Math.max(0, sum2 / n - mean * mean)), distinct };
}

// An image (not a blank or uniformly black canvas): some non-black pixels and real variation.
const looksLikeImage = (s) => s && s.nonBlackFraction >= 0.01 && s.std >= 4 && s.distinct >= 16;
const fmt = (s) => s ? `${s.width}x${s.height} nonBlack=${(100 * s.nonBlackFraction).toFixed(1)}% mean=${s.mean.toFixed(1)} std=${s.std.toFixed(1)} distinct=${s.distinct}` : 'none';

async function main() {
  const args = parseArgs(process.argv.slice(2));
  fs.mkdirSync(args.out, { recursive: true });
  if (!fs.existsSync(args.chromium)) fail(`Chromium not found at ${args.chromium} (apt-get install -y chromium)`);

  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ohif-check-profile-'));
  const shot = (name) => path.join(args.out, `${args.label}-${name}.png`);
  const requests = [];
  const consoleErrors = [];
  const consoleWarnings = [];
  const pageErrors = [];
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: args.chromium,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1400, height: 900 },
      deviceScaleFactor: 1,
    });
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(args.timeout * 1000);
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(m.text().slice(0, 500));
      else if (m.type() === 'warning') consoleWarnings.push(m.text().slice(0, 500));
    });
    page.on('pageerror', (e) => pageErrors.push(String(e).slice(0, 500)));
    page.on('requestfinished', async (req) => {
      if (!new URL(req.url()).pathname.startsWith('/dicom-web')) return;
      const resp = await req.response().catch(() => null);
      requests.push({ method: req.method(), url: req.url(), accept: req.headers()['accept'] ?? null,
        status: resp ? resp.status() : null, contentType: resp ? (resp.headers()['content-type'] ?? null) : null });
    });
    page.on('requestfailed', (req) => {
      if (!new URL(req.url()).pathname.startsWith('/dicom-web')) return;
      requests.push({ method: req.method(), url: req.url(), accept: req.headers()['accept'] ?? null,
        status: null, error: req.failure()?.errorText ?? 'failed' });
    });
    const failedDicomweb = () => requests.filter((r) => r.status === null || r.status >= 400);
    const diag = () => {
      const bad = failedDicomweb().slice(0, 10).map((r) => `  ${r.method} ${r.url} [Accept: ${r.accept}] -> ${r.status ?? r.error}`);
      return [
        bad.length ? `failed DICOMweb requests:\n${bad.join('\n')}` : 'no failed DICOMweb requests',
        pageErrors.length ? `page errors:\n  ${pageErrors.slice(0, 5).join('\n  ')}` : '',
        consoleErrors.length ? `console errors:\n  ${consoleErrors.slice(0, 8).join('\n  ')}` : '',
      ].filter(Boolean).join('\n');
    };

    // 0. Sign in through Meridian's login page, as a user would.
    if (args.user) {
      const loginUrl = `${args.base}/login`;
      log(`signing in as ${args.user} at ${loginUrl}`);
      await page.goto(loginUrl, { waitUntil: 'domcontentloaded' });
      await page.fill('#username', args.user);
      await page.fill('#password', args.password || '');
      await Promise.all([
        page.waitForURL((u) => !u.pathname.startsWith('/login'), { timeout: args.timeout * 1000 }),
        page.click('#submit'),
      ]).catch(async () => fail(`sign-in failed: ${await page.textContent('#error').catch(() => '?')}`));
    }

    // 1. The study list.
    const listUrl = `${args.base}/`;
    log(`opening study list ${listUrl}`);
    const resp = await page.goto(listUrl, { waitUntil: 'domcontentloaded' });
    if (!resp || !resp.ok()) fail(`GET ${listUrl} answered ${resp ? resp.status() : 'nothing'}`);
    const listDeadline = Date.now() + args.timeout * 1000;
    let missing = args.expect;
    for (;;) {
      const text = await page.evaluate(() => document.body ? document.body.innerText : '');
      missing = args.expect.filter((t) => !text.includes(t) && !text.includes(t.replace(/\^/g, ', ')));
      if (missing.length === 0) break;
      if (/Unable to query for studies|Data Source Connection Error/i.test(text)) {
        await page.screenshot({ path: shot('studylist') });
        fail(`study list shows an error instead of studies ("${text.match(/Unable to query[^\n]*|Data Source Connection Error[^\n]*/i)[0]}")\n${diag()}`);
      }
      if (Date.now() > listDeadline) {
        await page.screenshot({ path: shot('studylist') });
        fail(`study list at ${listUrl} did not show ${JSON.stringify(missing)} within ${args.timeout}s (screenshot ${shot('studylist')})\n${diag()}`);
      }
      await sleep(250);
    }
    await sleep(500); // let the row finish rendering
    await page.screenshot({ path: shot('studylist') });
    log(`study list shows ${JSON.stringify(args.expect)}; screenshot ${shot('studylist')}`);

    // 2. The viewer.
    const viewerUrl = `${args.base}/viewer?StudyInstanceUIDs=${encodeURIComponent(args.study)}`;
    log(`opening viewer ${viewerUrl}`);
    const vresp = await page.goto(viewerUrl, { waitUntil: 'domcontentloaded' });
    if (!vresp || !vresp.ok()) fail(`GET ${viewerUrl} answered ${vresp ? vresp.status() : 'nothing'} (the server must fall back to index.html for /viewer)`);
    const deadline = Date.now() + args.timeout * 1000;
    let stats = null;
    let stableHits = 0;
    for (;;) {
      stats = await page.evaluate(canvasStatsInPage).catch((e) => ({ found: false, error: String(e) }));
      if (stats.found && stats.readable && looksLikeImage(stats)) {
        // Require two consecutive good reads, so that we do not catch a half-drawn frame.
        if (++stableHits >= 2) break;
      } else {
        stableHits = 0;
      }
      const text = await page.evaluate(() => document.body ? document.body.innerText : '').catch(() => '');
      if (/requested studies are not available|We can't find the page/i.test(text)) {
        await page.screenshot({ path: shot('viewer') });
        fail(`viewer says: "${text.match(/One or more of the requested studies are not available[^\n]*|We can't find the page[^\n]*/i)[0]}"\n${diag()}`);
      }
      if (Date.now() > deadline) {
        await page.screenshot({ path: shot('viewer') });
        const what = !stats.found ? `no viewport canvas appeared (${stats.count ?? 0} canvases)`
          : !stats.readable ? `viewport canvas not readable: ${stats.reason}`
          : `viewport canvas stayed blank/uniform: ${fmt(stats)}`;
        fail(`viewer ${viewerUrl}: ${what} after ${args.timeout}s (screenshot ${shot('viewer')})\n${diag()}`);
      }
      await sleep(500);
    }
    log(`viewport canvas drawn: ${fmt(stats)}`);
    // OHIF shows a first-visit onboarding tour (shepherd.js) over the viewport: dismiss it so
    // the screenshots show the image.
    const skip = page.locator('.shepherd-element button', { hasText: /skip all/i });
    for (let i = 0; i < 6 && !(await skip.isVisible().catch(() => false)); i++) await sleep(250);
    if (await skip.isVisible().catch(() => false)) await skip.click().catch(() => {});
    await sleep(1000); // let overlays/thumbnails settle for the screenshot
    await page.screenshot({ path: shot('viewer') });

    // Cross-check what is on screen (not only in the canvas buffer): screenshot of the
    // viewport area, decoded and measured by the browser.
    const r = stats.rect;
    const clip = { x: Math.max(0, r.x), y: Math.max(0, r.y), width: Math.max(1, r.width), height: Math.max(1, r.height) };
    const vpPng = await page.screenshot({ path: shot('viewport'), clip });
    const shotStats = await page.evaluate(pngStatsInPage, vpPng.toString('base64'));
    log(`viewport screenshot: ${fmt(shotStats)}`);
    if (!looksLikeImage(shotStats)) fail(`viewport screenshot ${shot('viewport')} is blank/uniform: ${fmt(shotStats)}\n${diag()}`);

    const bad = failedDicomweb();
    if (bad.length) log(`warning: ${bad.length} DICOMweb request(s) failed:\n${diag()}`);
    // Serving problems that OHIF survives but that degrade it (wrong MIME types, CSP blocks).
    const serving = [...consoleErrors, ...consoleWarnings, ...pageErrors].filter((m) => /MIME type|Content Security Policy|Refused to|wasm streaming compile failed/i.test(m));
    if (serving.length) {
      const msg = `serving problems reported by the browser (wrong MIME type or CSP):\n  ${[...new Set(serving)].slice(0, 8).join('\n  ')}`;
      if (!args.allowServingWarnings) fail(`${msg}\n(see docs/viewer.md; --allow-serving-warnings downgrades this to a warning)`);
      log(`warning: ${msg}`);
    }
    log(`PASS: study list and image for ${args.study}; screenshots in ${args.out}`);
    return 0;
  } finally {
    fs.writeFileSync(path.join(args.out, `${args.label}-requests.json`), JSON.stringify(requests, null, 2));
    if (context) await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

main().then((code) => process.exit(code), (e) => {
  if (e instanceof CheckFailure) console.error(`ohif-check: FAIL: ${e.message}`);
  else console.error(`ohif-check: FAIL: unexpected error: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
