// The OpenID Connect provider TestSSO logs in with: panva's certified
// oidc-provider (pinned in package.json), its development login and consent
// pages, two static accounts and one client, jumpgate.
//
//	PORT=5556 CLIENT_SECRET=... REDIRECT_URIS=https://127.0.0.1:3080/v1/sso/callback,... node server.mjs
//
// The issuer is http://127.0.0.1:PORT: plain HTTP on loopback (the provider
// marks its cookies secure only on HTTPS). When it listens it prints
// "oidc-provider listening on ISSUER" on stdout.
//
// The development login page accepts any login and ignores the password;
// the middleware below checks both against the accounts first, so a wrong
// password is refused as a real provider would refuse it.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import * as querystring from 'node:querystring';

import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const secret = process.env.CLIENT_SECRET;
const redirectURIs = (process.env.REDIRECT_URIS || '').split(',').filter(Boolean);
if (!port || !secret || redirectURIs.length === 0) {
  console.error('usage: PORT=N CLIENT_SECRET=S REDIRECT_URIS=URI[,URI...] node server.mjs');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

const accounts = {
  alice: {
    password: 'alice-sso-password',
    claims: { email: 'alice@example.com', email_verified: true, preferred_username: 'alice', name: 'Alice', groups: ['sre', 'dev'] },
  },
  bob: {
    password: 'bob-sso-password',
    claims: { email: 'bob@example.com', email_verified: true, preferred_username: 'bob', name: 'Bob', groups: ['contractors'] },
  },
};

// A signing key of its own rather than the provider's published
// development key.
const jwk = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'jumpgate',
    client_secret: secret,
    redirect_uris: redirectURIs,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  // Put the scopes' claims into the ID token too (as Dex does), not only
  // into the userinfo answer.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  jwks: { keys: [{ ...jwk, kid: 'e2e', use: 'sig', alg: 'RS256' }] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    const a = accounts[id];
    if (!a) {
      return undefined;
    }
    return { accountId: id, async claims() { return { sub: id, ...a.claims }; } };
  },
});

async function readAll(req) {
  const chunks = [];
  for await (const c of req) {
    chunks.push(c);
  }
  return Buffer.concat(chunks).toString();
}

// Check the login form's password before the development login page takes
// any login. The body, once read, goes on as req.body (the provider reads
// it from there).
provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && /^\/interaction\/[^/]+$/.test(ctx.path) && ctx.is('application/x-www-form-urlencoded')) {
    const raw = await readAll(ctx.req);
    const body = querystring.parse(raw);
    if (body.prompt === 'login') {
      const a = accounts[body.login];
      if (!a || body.password !== a.password) {
        ctx.status = 401;
        ctx.type = 'html';
        ctx.body = '<!DOCTYPE html><title>Sign-in</title><p>Wrong login or password.</p>';
        return;
      }
    }
    ctx.req.body = raw;
  }
  await next();
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
