// A real OpenID Connect provider on loopback for the single sign-on tests (panva's oidc-provider).
//
// Configured by environment:
//   IDP_PORT            port on 127.0.0.1 (0: any free port)
//   IDP_CLIENT_ID       the one client's id
//   IDP_CLIENT_SECRET   its secret (client_secret_basic / client_secret_post)
//   IDP_REDIRECT_URI    its redirect URI (Strata's /accounts/sso/callback/)
//   IDP_ACCOUNTS        JSON list of {"sub", "email", "email_verified", "groups", "password"}
//   IDP_JWKS            optional JSON {"keys": [private JWK]}: the signing keys, so that a test
//                       can also sign tokens the way this IdP does (expired, other audience...)
// Prints one line "READY <issuer>" on stdout when it listens.
//
// The login interaction is a plain form (email + password); consent is granted at once, as an
// enterprise IdP does for an application its administrators registered.
import http from 'node:http';
import { URLSearchParams } from 'node:url';

import Provider from 'oidc-provider';

const port = Number(process.env.IDP_PORT || 0);
const clientId = process.env.IDP_CLIENT_ID || 'strata';
const clientSecret = process.env.IDP_CLIENT_SECRET || 'strata-test-secret';
const redirectUri = process.env.IDP_REDIRECT_URI || 'http://127.0.0.1:8000/accounts/sso/callback/';
const accounts = JSON.parse(process.env.IDP_ACCOUNTS || '[]');
const jwks = process.env.IDP_JWKS ? JSON.parse(process.env.IDP_JWKS) : undefined;

const bySub = new Map(accounts.map((a) => [a.sub, a]));
const byEmail = new Map(accounts.map((a) => [a.email.toLowerCase(), a]));

function escapeHtml(value) {
  return String(value).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

function loginPage(uid, error) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>Hospital sign-in</title></head>
<body><h1>Hospital identity provider</h1>
${error ? `<p role="alert">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
<label>Username <input name="email" autocomplete="off"></label>
<label>Passphrase <input name="password" type="password"></label>
<button type="submit">Log in at the IdP</button>
</form></body></html>`;
}

function readForm(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.on('data', (chunk) => {
      body += chunk;
      if (body.length > 10000) reject(new Error('body too large'));
    });
    req.on('end', () => resolve(Object.fromEntries(new URLSearchParams(body))));
    req.on('error', reject);
  });
}

async function main() {
  const server = http.createServer();
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  const issuer = `http://127.0.0.1:${server.address().port}`;

  const provider = new Provider(issuer, {
    clients: [{
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    pkce: { required: () => true },
    claims: { openid: ['sub', 'acr', 'amr'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
    scopes: ['openid', 'email', 'profile', 'groups'],
    // Put the claims in the ID token itself, as Entra ID and Keycloak do for the groups claim.
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: false } },
    ttl: { AccessToken: 300, AuthorizationCode: 60, IdToken: 300, Interaction: 600, Session: 600, Grant: 600 },
    async findAccount(ctx, id) {
      const account = bySub.get(id);
      if (!account) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: account.email,
            email_verified: account.email_verified !== false,
            name: account.name || account.email,
            groups: account.groups || [],
          };
        },
      };
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    cookies: { keys: ['strata-test-idp-cookie-key'] },
    ...(jwks ? { jwks } : {}),
  });
  provider.proxy = false;

  const callback = provider.callback();
  server.on('request', async (req, res) => {
    const match = /^\/interaction\/([^/]+)(\/login)?$/.exec(req.url.split('?')[0]);
    if (!match) {
      callback(req, res);
      return;
    }
    try {
      const details = await provider.interactionDetails(req, res);
      if (details.prompt.name === 'consent') {
        const grant = new provider.Grant({
          accountId: details.session.accountId,
          clientId: details.params.client_id,
        });
        grant.addOIDCScope(String(details.params.scope));
        const grantId = await grant.save();
        await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
        return;
      }
      if (req.method === 'POST' && match[2]) {
        const form = await readForm(req);
        const account = byEmail.get(String(form.email || '').toLowerCase());
        if (!account || account.password !== form.password) {
          res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
          res.end(loginPage(details.uid, 'Unknown user or wrong passphrase.'));
          return;
        }
        // An account may say how the IdP authenticated it (amr, acr), as an IdP that did MFA does.
        const login = { accountId: account.sub };
        if (account.amr) login.amr = account.amr;
        if (account.acr) login.acr = account.acr;
        await provider.interactionFinished(req, res, { login }, { mergeWithLastSubmission: false });
        return;
      }
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(loginPage(details.uid, ''));
    } catch (err) {
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end(`interaction failed: ${err.message}`);
    }
  });

  process.stdout.write(`READY ${issuer}\n`);
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
