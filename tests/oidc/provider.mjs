#!/usr/bin/env node
// A real OpenID provider for Meridian's tests: the certified `oidc-provider` package (installed
// by `npm ci` in tests/browser, see scripts/install-peers), with fixed test users and a minimal
// login + consent interaction (plain HTML forms), in memory, on loopback only.
//
// Usage:
//   node tests/oidc/provider.mjs --port P --client-id meridian --client-secret S \
//        --redirect-uri http://127.0.0.1:8080/auth/oidc/callback
//        [--redirect-uri URL ...] [--host 127.0.0.1] [--token-auth METHOD]
//        [--id-token-alg RS256|ES256] [--claims-in id_token|userinfo]
//
//   --port           TCP port; 0 picks a free one (the issuer printed on READY has the real one)
//   --client-id      the one registered client (default: meridian)
//   --client-secret  its secret; omit (with --token-auth none) for a public client
//   --redirect-uri   a registered redirect URI (repeatable; at least one is required)
//   --host           loopback address to listen on (default 127.0.0.1)
//   --token-auth     token endpoint client authentication: client_secret_basic (default with a
//                    secret), client_secret_post, or none (default without a secret). Discovery
//                    advertises only this method (and none), so a client that follows discovery
//                    must pick it.
//   --id-token-alg   ID token signing algorithm: RS256 (default) or ES256
//   --claims-in      where the scope claims (preferred_username, email, groups, meridian_site)
//                    go: id_token (default: in the ID token and userinfo) or userinfo (only from
//                    the userinfo endpoint, oidc-provider's spec-conforming default)
//
// Every flag has an environment fallback: OIDC_PORT, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET,
// OIDC_REDIRECT_URIS (comma-separated), OIDC_HOST, OIDC_TOKEN_AUTH, OIDC_ID_TOKEN_ALG,
// OIDC_CLAIMS_IN. The package is looked up in tests/browser/node_modules unless
// MERIDIAN_NODE_MODULES names another node_modules directory.
//
// Output contract: one line `READY <issuer>` on stdout once listening (e.g.
// `READY http://127.0.0.1:41234`); nothing else on stdout. Diagnostics go to stderr. Exit code 2
// on bad usage, 3 when oidc-provider is not installed. Stops on SIGTERM/SIGINT or when stdin
// closes (if stdin is a pipe), so a test harness that dies does not leave it behind.
//
// Test users (password: "<user>-password"):
//   alice  groups ["radiologists"]
//   bob    groups ["site-a-techs"], meridian_site "site-a"
//   carol  groups ["staff"] (mapped to no Meridian role)
// Scopes: openid; profile -> preferred_username, name; email -> email, email_verified;
// groups -> groups, meridian_site.
//
// Login page: form#login-form with input#username (name=login), input#password (name=password)
// and button#submit. Consent page: form#consent-form with button#consent ("Continue").
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const USERS = {
  alice: {
    preferred_username: 'alice',
    name: 'Alice Radiologist',
    email: 'alice@example.org',
    email_verified: true,
    groups: ['radiologists'],
  },
  bob: {
    preferred_username: 'bob',
    name: 'Bob Technologist',
    email: 'bob@example.org',
    email_verified: true,
    groups: ['site-a-techs'],
    meridian_site: 'site-a',
  },
  carol: {
    preferred_username: 'carol',
    name: 'Carol Clerk',
    email: 'carol@example.org',
    email_verified: false,
    groups: ['staff'],
  },
};
const passwordOf = (user) => `${user}-password`;

function usage(msg) {
  if (msg) process.stderr.write(`provider.mjs: ${msg}\n`);
  process.stderr.write(
    'usage: node tests/oidc/provider.mjs --port P --client-id ID [--client-secret S] --redirect-uri URL '
      + '[--redirect-uri URL] [--host 127.0.0.1] [--token-auth client_secret_basic|client_secret_post|none] '
      + '[--id-token-alg RS256|ES256] [--claims-in id_token|userinfo]\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const env = process.env;
  const a = {
    port: env.OIDC_PORT,
    host: env.OIDC_HOST || '127.0.0.1',
    clientId: env.OIDC_CLIENT_ID || 'meridian',
    clientSecret: env.OIDC_CLIENT_SECRET,
    redirectUris: env.OIDC_REDIRECT_URIS ? env.OIDC_REDIRECT_URIS.split(',').filter(Boolean) : [],
    tokenAuth: env.OIDC_TOKEN_AUTH,
    idTokenAlg: env.OIDC_ID_TOKEN_ALG || 'RS256',
    claimsIn: env.OIDC_CLAIMS_IN || 'id_token',
  };
  let cliRedirects = false;
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const need = () => {
      if (argv[i + 1] === undefined) usage(`missing value for ${k}`);
      i++;
      return argv[i];
    };
    switch (k) {
      case '--port': a.port = need(); break;
      case '--host': a.host = need(); break;
      case '--client-id': a.clientId = need(); break;
      case '--client-secret': a.clientSecret = need(); break;
      case '--redirect-uri':
        if (!cliRedirects) { a.redirectUris = []; cliRedirects = true; }
        a.redirectUris.push(need());
        break;
      case '--token-auth': a.tokenAuth = need(); break;
      case '--id-token-alg': a.idTokenAlg = need(); break;
      case '--claims-in': a.claimsIn = need(); break;
      case '-h': case '--help': usage(); break;
      default: usage(`unknown argument ${k}`);
    }
  }
  if (a.port === undefined || !/^\d+$/.test(String(a.port)) || Number(a.port) > 65535) usage('--port must be a number (0 for any free port)');
  a.port = Number(a.port);
  if (!['127.0.0.1', 'localhost', '::1'].includes(a.host)) usage('--host must be a loopback address');
  if (a.redirectUris.length === 0) usage('at least one --redirect-uri is required');
  if (!a.clientId) usage('--client-id must not be empty');
  a.tokenAuth ||= a.clientSecret ? 'client_secret_basic' : 'none';
  if (!['client_secret_basic', 'client_secret_post', 'none'].includes(a.tokenAuth)) usage(`unsupported --token-auth ${a.tokenAuth}`);
  if (a.tokenAuth !== 'none' && !a.clientSecret) usage(`--token-auth ${a.tokenAuth} needs --client-secret`);
  if (a.tokenAuth === 'none') a.clientSecret = undefined;
  if (!['RS256', 'ES256'].includes(a.idTokenAlg)) usage(`unsupported --id-token-alg ${a.idTokenAlg}`);
  if (!['id_token', 'userinfo'].includes(a.claimsIn)) usage(`unsupported --claims-in ${a.claimsIn}`);
  return a;
}

async function loadProvider() {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const nodeModules = process.env.MERIDIAN_NODE_MODULES || path.resolve(here, '../browser/node_modules');
  const pkgDir = path.join(nodeModules, 'oidc-provider');
  let pkg;
  try {
    pkg = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8'));
  } catch {
    process.stderr.write(`provider.mjs: npm package oidc-provider is not installed in ${nodeModules} (run scripts/install-peers, or npm ci in tests/browser)\n`);
    process.exit(3);
  }
  const entry = typeof pkg.exports === 'string' ? pkg.exports : (pkg.exports?.['.']?.import ?? pkg.exports?.['.'] ?? pkg.main ?? 'index.js');
  const mod = await import(pathToFileURL(path.join(pkgDir, entry)).href);
  return { Provider: mod.default ?? mod.Provider, version: pkg.version };
}

function signingKey(alg) {
  const kid = `test-${alg.toLowerCase()}-${crypto.randomBytes(4).toString('hex')}`;
  const { privateKey } = alg === 'ES256'
    ? crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', alg };
}

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

function page(res, status, title, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body><h1>${esc(title)}</h1>
${body}
</body></html>
`);
}

function loginPage(res, uid, { error, login } = {}) {
  page(res, 200, 'Sign in to the test provider', `${error ? `<p id="error" class="error">${esc(error)}</p>` : ''}
<form id="login-form" method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
  <label>Username <input id="username" name="login" type="text" required value="${esc(login ?? '')}" autofocus></label>
  <label>Password <input id="password" name="password" type="password" required></label>
  <button id="submit" type="submit">Sign in</button>
</form>
<form method="post" action="/interaction/${esc(uid)}/abort"><button id="abort" type="submit">Cancel</button></form>`);
}

function consentPage(res, uid, clientId, details) {
  const scopes = (details.missingOIDCScope ?? []).filter((s) => s !== 'openid');
  const claims = (details.missingOIDCClaims ?? []);
  page(res, 200, 'Authorize', `<p>The application <b id="client">${esc(clientId)}</b> asks for:</p>
<ul id="scopes">${scopes.map((s) => `<li>${esc(s)}</li>`).join('')}${claims.map((c) => `<li>${esc(c)}</li>`).join('')}</ul>
<form id="consent-form" method="post" action="/interaction/${esc(uid)}/confirm">
  <button id="consent" type="submit">Continue</button>
</form>
<form method="post" action="/interaction/${esc(uid)}/abort"><button id="abort" type="submit">Cancel</button></form>`);
}

async function readForm(req, limit = 16 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw Object.assign(new Error('form too large'), { status: 413 });
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

const sameSecret = (a, b) => {
  const x = Buffer.from(String(a));
  const y = Buffer.from(String(b));
  return x.length === y.length && crypto.timingSafeEqual(x, y);
};

async function main() {
  // stdout carries only the READY line: oidc-provider's notices (console.info) go to stderr.
  console.info = (...a) => console.error(...a);
  console.log = (...a) => console.error(...a);
  const args = parseArgs(process.argv.slice(2));
  const { Provider, version } = await loadProvider();

  const server = http.createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(args.port, args.host, resolve);
  });
  const { port } = server.address();
  const hostInUrl = args.host.includes(':') ? `[${args.host}]` : args.host;
  const issuer = `http://${hostInUrl}:${port}`;

  const scopeClaims = ['preferred_username', 'name', 'email', 'email_verified', 'groups', 'meridian_site'];
  const client = {
    client_id: args.clientId,
    redirect_uris: args.redirectUris,
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: args.tokenAuth,
    id_token_signed_response_alg: args.idTokenAlg,
  };
  if (args.clientSecret) client.client_secret = args.clientSecret;

  const provider = new Provider(issuer, {
    clients: [client],
    jwks: { keys: [signingKey(args.idTokenAlg)] },
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    claims: {
      openid: ['sub'],
      profile: ['preferred_username', 'name'],
      email: ['email', 'email_verified'],
      groups: ['groups', 'meridian_site'],
    },
    // false: scope claims go into the ID token too (not only to userinfo).
    conformIdTokenClaims: args.claimsIn === 'userinfo',
    clientAuthMethods: [...new Set([args.tokenAuth, 'none'])],
    responseTypes: ['code'],
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      userinfo: { enabled: true },
    },
    enabledJWA: { idTokenSigningAlgValues: ['RS256', 'ES256'] },
    ttl: {
      AccessToken: 600,
      AuthorizationCode: 60,
      IdToken: 600,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
    },
    async findAccount(_ctx, sub) {
      const user = USERS[sub];
      if (!user) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { sub, ...user };
        },
      };
    },
    async renderError(ctx, out, _error) {
      ctx.type = 'html';
      ctx.body = `<!DOCTYPE html><html><head><title>oops</title></head><body><h1>oops! something went wrong</h1><pre id="error">${esc(JSON.stringify(out, null, 2))}</pre></body></html>`;
    },
  });
  // Never log tokens: only errors with their names.
  provider.on('server_error', (_ctx, err) => process.stderr.write(`provider.mjs: server_error ${err?.stack ?? err}\n`));
  for (const ev of ['authorization.error', 'grant.error', 'userinfo.error', 'discovery.error', 'jwks.error']) {
    provider.on(ev, (_ctx, err) => process.stderr.write(`provider.mjs: ${ev}: ${err?.name ?? ''} ${err?.message ?? err} ${err?.error_description ?? ''}\n`));
  }

  const oidc = provider.callback();
  const interaction = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm|abort))?$/;

  server.on('request', async (req, res) => {
    const url = new URL(req.url, issuer);
    const m = url.pathname.match(interaction);
    if (!m) return oidc(req, res);
    const [, uid, action] = m;
    try {
      const details = await provider.interactionDetails(req, res);
      if (details.uid !== uid) throw Object.assign(new Error('interaction mismatch'), { status: 400 });
      const { prompt, params, session, grantId } = details;
      if (req.method === 'GET' && !action) {
        if (prompt.name === 'login') return loginPage(res, uid, { login: params.login_hint });
        return consentPage(res, uid, params.client_id, prompt.details);
      }
      if (req.method !== 'POST' || !action) {
        res.statusCode = 405;
        return res.end();
      }
      const form = await readForm(req);
      if (action === 'abort') {
        return await provider.interactionFinished(req, res, {
          error: 'access_denied',
          error_description: 'End-User aborted interaction',
        }, { mergeWithLastSubmission: false });
      }
      if (action === 'login') {
        if (prompt.name !== 'login') throw Object.assign(new Error('not a login prompt'), { status: 400 });
        const login = form.get('login') ?? '';
        const password = form.get('password') ?? '';
        if (!Object.hasOwn(USERS, login) || !sameSecret(password, passwordOf(login))) {
          return loginPage(res, uid, { error: 'Invalid username or password.', login });
        }
        return await provider.interactionFinished(req, res, {
          login: { accountId: login },
        }, { mergeWithLastSubmission: false });
      }
      // confirm
      if (prompt.name !== 'consent') throw Object.assign(new Error('not a consent prompt'), { status: 400 });
      const grant = grantId
        ? await provider.Grant.find(grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      const d = prompt.details;
      if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
      if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
      if (d.missingResourceScopes) {
        for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) {
          grant.addResourceScope(indicator, scopes.join(' '));
        }
      }
      return await provider.interactionFinished(req, res, {
        consent: { grantId: await grant.save() },
      }, { mergeWithLastSubmission: true });
    } catch (err) {
      process.stderr.write(`provider.mjs: interaction ${req.method} ${url.pathname}: ${err?.name ?? ''} ${err?.message ?? err}\n`);
      if (!res.headersSent) {
        page(res, err?.status ?? err?.statusCode ?? 400, 'Interaction failed', `<pre id="error">${esc(err?.message ?? err)}</pre>`);
      } else {
        res.end();
      }
    }
  });

  const stop = () => {
    server.close();
    server.closeAllConnections?.();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  if (!process.stdin.isTTY) {
    try {
      const st = fs.fstatSync(0);
      if (st.isFIFO() || st.isSocket()) {
        process.stdin.on('end', stop);
        process.stdin.on('error', stop);
        process.stdin.resume();
      }
    } catch {
      // no stdin at all: rely on signals
    }
  }

  process.stderr.write(`provider.mjs: oidc-provider ${version} on ${issuer} (client ${args.clientId}, ${args.tokenAuth}, ${args.idTokenAlg}, claims in ${args.claimsIn}; scope claims: ${scopeClaims.join(' ')})\n`);
  process.stdout.write(`READY ${issuer}\n`);
}

main().catch((err) => {
  process.stderr.write(`provider.mjs: ${err?.stack ?? err}\n`);
  process.exit(1);
});
