#!/usr/bin/env node
// Headless-Chromium "Sign in with SSO" through Meridian and its OpenID provider
// (tests/oidc/provider.mjs in the tests; any provider whose login form has a user name field,
// a password field and a submit button).
//
// Usage:
//   node oidc-login.mjs --meridian http://127.0.0.1:8080 --user alice --password alice-password \
//        [--timeout 30] [--chromium /usr/bin/chromium] [--shots /tmp]
//
// Steps: opens `${meridian}/login`, clicks `#sso`, fills the provider's login form, confirms the
// consent page if one is shown, waits until the browser is back on Meridian's origin (after
// `/auth/oidc/callback`), then fetches `/api/me` from the page (with its session cookie).
//
// Output contract: on success, exactly one line on stdout: the JSON of `/api/me` (e.g.
// {"user":"alice","role":"radiologist","site":null}), exit 0. Progress goes to stderr. On
// failure: "oidc-login: FAIL: ..." on stderr, a screenshot in --shots (default /tmp), exit 1.
// Exit 2 on bad usage.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

function usage(msg) {
  if (msg) console.error(`oidc-login: ${msg}`);
  console.error('usage: node oidc-login.mjs --meridian URL --user NAME --password PASSWORD [--timeout SECONDS] [--chromium PATH] [--shots DIR]');
  process.exit(2);
}

function parseArgs(argv) {
  const a = { timeout: 30, chromium: '/usr/bin/chromium', shots: os.tmpdir() };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const need = () => {
      if (argv[i + 1] === undefined) usage(`missing value for ${k}`);
      i++;
      return argv[i];
    };
    switch (k) {
      case '--meridian': a.meridian = need().replace(/\/+$/, ''); break;
      case '--user': a.user = need(); break;
      case '--password': a.password = need(); break;
      case '--timeout': a.timeout = Number(need()); break;
      case '--chromium': a.chromium = need(); break;
      case '--shots': a.shots = need(); break;
      case '-h': case '--help': usage(); break;
      default: usage(`unknown argument ${k}`);
    }
  }
  if (!a.meridian || !a.user || a.password === undefined) usage('--meridian, --user and --password are required');
  if (!(a.timeout > 0)) usage('--timeout must be a positive number of seconds');
  try { new URL(a.meridian); } catch { usage(`--meridian ${a.meridian} is not a URL`); }
  return a;
}

class Failure extends Error {}
const fail = (msg) => { throw new Failure(msg); };
const log = (msg) => console.error(`oidc-login: ${msg}`);
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

// The provider's form fields: tests/oidc/provider.mjs's ids first, then common names.
const USER_FIELD = '#username, input[name="login"], input[name="username"], input[type="email"]';
const PASSWORD_FIELD = '#password, input[name="password"], input[type="password"]';
const SUBMIT = '#submit, #login-form button[type="submit"], form button[type="submit"], input[type="submit"]';
const CONSENT = '#consent, #consent-form button[type="submit"]';
const PROVIDER_ERROR = '#error';

async function visible(page, selector) {
  return page.locator(selector).first().isVisible().catch(() => false);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const origin = new URL(args.meridian).origin;
  fs.mkdirSync(args.shots, { recursive: true });
  const shot = path.join(args.shots, `oidc-login-${args.user.replace(/[^A-Za-z0-9_-]/g, '_')}-${Date.now()}.png`);
  const browser = await chromium.launch({ executablePath: args.chromium, headless: true, args: CHROMIUM_ARGS });
  let page;
  try {
    const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
    page = await context.newPage();
    page.setDefaultTimeout(args.timeout * 1000);
    page.setDefaultNavigationTimeout(args.timeout * 1000);

    // 1. Meridian's login page and its SSO button.
    const loginUrl = `${args.meridian}/login`;
    log(`opening ${loginUrl}`);
    const resp = await page.goto(loginUrl, { waitUntil: 'domcontentloaded' });
    if (!resp || !resp.ok()) fail(`GET ${loginUrl} answered ${resp ? resp.status() : 'nothing'}`);
    const sso = page.locator('#sso');
    if (!(await sso.isVisible().catch(() => false))) {
      await sso.waitFor({ state: 'visible', timeout: 5000 }).catch(() => fail(`${loginUrl} has no visible #sso element`));
    }
    log('clicking #sso');
    await Promise.all([
      page.waitForURL((u) => u.origin !== origin, { waitUntil: 'domcontentloaded' })
        .catch(() => fail(`clicking #sso did not lead to the provider (still at ${page.url()})`)),
      sso.click(),
    ]);

    // 2. The provider: login form, maybe consent, until we are back on Meridian.
    const deadline = Date.now() + args.timeout * 1000;
    let submitted = false;
    for (;;) {
      const url = new URL(page.url());
      if (url.origin === origin) {
        if (!url.pathname.startsWith('/auth/oidc/')) break;
        // The callback is being answered (it redirects on to `/`).
      } else if (await visible(page, PASSWORD_FIELD)) {
        if (submitted) {
          const err = (await page.locator(PROVIDER_ERROR).first().innerText().catch(() => '')).trim();
          fail(`the provider refused the login of ${args.user}${err ? `: ${err}` : ''}`);
        }
        log(`provider login form at ${url.origin}${url.pathname}: signing in as ${args.user}`);
        await page.locator(USER_FIELD).first().fill(args.user);
        await page.locator(PASSWORD_FIELD).first().fill(args.password);
        submitted = true;
        await Promise.all([
          page.waitForNavigation({ waitUntil: 'domcontentloaded' }).catch(() => {}),
          page.locator(SUBMIT).first().click(),
        ]);
        continue;
      } else if (await visible(page, CONSENT)) {
        log('provider consent page: continuing');
        await Promise.all([
          page.waitForNavigation({ waitUntil: 'domcontentloaded' }).catch(() => {}),
          page.locator(CONSENT).first().click(),
        ]);
        continue;
      } else if (await visible(page, PROVIDER_ERROR)) {
        const err = (await page.locator(PROVIDER_ERROR).first().innerText().catch(() => '')).trim();
        fail(`the provider shows an error at ${url.href}: ${err.slice(0, 500)}`);
      }
      if (Date.now() > deadline) fail(`not back on ${origin} after ${args.timeout}s (at ${page.url()})`);
      await sleep(200);
    }
    await page.waitForLoadState('domcontentloaded').catch(() => {});
    log(`back on Meridian at ${page.url()}`);

    // 3. Who does Meridian think we are?
    const me = await page.evaluate(async () => {
      const r = await fetch('/api/me', { credentials: 'same-origin', headers: { Accept: 'application/json' } });
      return { status: r.status, type: r.headers.get('content-type'), body: await r.text() };
    });
    if (me.status !== 200) fail(`GET /api/me answered ${me.status}: ${me.body.slice(0, 300)}`);
    let json;
    try {
      json = JSON.parse(me.body);
    } catch {
      fail(`GET /api/me is not JSON (${me.type}): ${me.body.slice(0, 300)}`);
    }
    process.stdout.write(`${JSON.stringify(json)}\n`);
  } catch (e) {
    if (page) await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    const msg = e instanceof Failure ? e.message : (e?.stack ?? String(e));
    console.error(`oidc-login: FAIL: ${msg}${page ? ` (at ${page.url()}; screenshot ${shot})` : ''}`);
    process.exitCode = 1;
  } finally {
    await browser.close().catch(() => {});
  }
}

main();
