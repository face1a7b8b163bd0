#!/usr/bin/env node
// Loopback OpenID provider for Herald tests.
//
//   node server.mjs --config clients.json [--port 0] [--host 127.0.0.1]
//                   [--keys keys.json] [--ttl 300] [--quiet] [--die-with-stdin]
//                   [--tls-cert cert.pem --tls-key key.pem] [--metadata-token-file f]
//
// * --tls-cert/--tls-key: serve https (the issuer is then https://...), as a
//   Kubernetes API server's service-account issuer does, with a private CA.
// * --metadata-token-file: discovery and the JWKS answer 401 unless the request
//   carries `Authorization: Bearer <the file's content>` (a Kubernetes API
//   server's /.well-known/openid-configuration and /openid/v1/jwks without
//   anonymous access); the file is read at each request.
// * issuer is http://<host>:<actual port> (port 0 = pick a free one; the real
//   port is known before the Provider is built, so the issuer is exact).
// * prints exactly one line `READY <issuer>` on stdout once listening; every
//   oidc-provider NOTICE/WARNING goes to stderr (or nowhere with --quiet).
// * client_credentials + resource indicators -> RS256 JWT access tokens whose
//   `aud` is the requested `resource`; per-client extra claims from the config.
// * key rotation without restart: SIGUSR2, or POST /__admin/rotate
//   (?retain=1 keeps the old key in the JWKS, after the new one; a JSON body
//   `{"jwk": {...private RSA JWK...}}` uses that key instead of a fresh one).
//   A new Provider instance replaces the old one behind the same server.
// * tokens minted by the test: POST /__admin/sign with a JSON body
//   `{"header": {...}, "claims": {...}}` returns the compact JWT of exactly
//   those claims, signed RS256 with the current signing key (header `alg`
//   RS256, `typ` JWT and `kid` the key's unless the body's header says
//   otherwise). With `"header": {"alg": "HS256"}` it is signed HMAC-SHA256
//   with the public key's PEM as the secret (the key-confusion attack); with
//   `"alg": "none"` it is unsigned.
// * GET /__admin/stats: `{"jwks": <requests for the JWKS so far>}`.
//
// Config file (JSON):
// {
//   "clients": [
//     { "client_id": "reader-a", "client_secret": "secret-a",
//       "claims": { "groups": ["team-a"], "team": "a" },   // extra token claims
//       "scope": "herald:read",                              // optional
//       "access_token_ttl": 300 }                            // optional, seconds
//   ],
//   "scopes": ["herald:read"],                              // optional
//   "resources": { "http://herald.test": { "scope": "herald:read", "ttl": 60 } },
//                 // optional; any absolute http(s) URI is accepted if absent
//   "default_resource": "http://herald.test"               // optional, used when no `resource` is sent
// }
// keys.json: a JWKS with *private* RSA keys ({"keys":[{kty,n,e,d,p,q,dp,dq,qi,kid?}]});
// the first key signs. Without --keys an RSA-2048 key is generated at start.

import { createServer as createHttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import {
  createHash, createHmac, createPrivateKey, createPublicKey, createSign, generateKeyPairSync,
} from 'node:crypto';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    config: { type: 'string' },
    port: { type: 'string', default: process.env.OIDC_PORT ?? '0' },
    host: { type: 'string', default: '127.0.0.1' },
    keys: { type: 'string' },
    ttl: { type: 'string', default: '300' },
    quiet: { type: 'boolean', default: false },
    'die-with-stdin': { type: 'boolean', default: false },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    'metadata-token-file': { type: 'string' },
  },
});
if (!args.config) {
  console.error('usage: node server.mjs --config clients.json [--port N] [--keys keys.json] [--quiet]');
  process.exit(2);
}

// oidc-provider writes NOTICEs with console.info (stdout) and WARNINGs with
// console.warn. Keep stdout clean for the READY line: route both to stderr.
// Must happen before oidc-provider is imported (it warns at import time on
// Node < 22 "Unsupported runtime").
const toStderr = (...a) => { if (!args.quiet) process.stderr.write(`${a.join(' ')}\n`); };
console.info = toStderr;
console.warn = toStderr;
const { default: Provider, errors } = await import('oidc-provider');

const config = JSON.parse(readFileSync(args.config, 'utf8'));
const clientsById = new Map((config.clients ?? []).map((c) => [c.client_id, c]));
const defaultTtl = Number(args.ttl);
const scopes = new Set(config.scopes ?? ['herald:read']);
for (const c of clientsById.values()) for (const s of (c.scope ?? '').split(' ').filter(Boolean)) scopes.add(s);

// ---- keys -----------------------------------------------------------------
function thumbprint(jwk) { // RFC 7638
  const canon = JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n });
  return createHash('sha256').update(canon).digest('base64url');
}
function normalizeKey(jwk) {
  createPrivateKey({ key: jwk, format: 'jwk' }); // throws if not a private key
  return { ...jwk, kid: jwk.kid ?? thumbprint(jwk), use: 'sig', alg: 'RS256' };
}
function freshKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return normalizeKey(privateKey.export({ format: 'jwk' }));
}
let signingKeys = args.keys
  ? JSON.parse(readFileSync(args.keys, 'utf8')).keys.map(normalizeKey)
  : [freshKey()];

// ---- shared storage (survives Provider swaps) ------------------------------
const store = new Map();
class MapAdapter { // minimal adapter; also silences the "in-memory adapter" warning
  constructor(name) { this.name = name; }
  key(id) { return `${this.name}:${id}`; }
  async upsert(id, payload, expiresIn) {
    store.set(this.key(id), { payload, exp: expiresIn ? Date.now() + expiresIn * 1000 : Infinity });
  }
  async find(id) {
    const e = store.get(this.key(id));
    if (!e) return undefined;
    if (e.exp < Date.now()) { store.delete(this.key(id)); return undefined; }
    return e.payload;
  }
  async findByUserCode() { return undefined; }
  async findByUid() { return undefined; }
  async consume(id) { const e = store.get(this.key(id)); if (e) e.payload.consumed = Math.floor(Date.now() / 1000); }
  async destroy(id) { store.delete(this.key(id)); }
  async revokeByGrantId() {}
}

// ---- provider ---------------------------------------------------------------
function buildProvider(issuer) {
  const resources = config.resources ?? {};
  const provider = new Provider(issuer, {
    adapter: MapAdapter,
    jwks: { keys: signingKeys },
    clients: [...clientsById.values()].map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
      ...(c.scope ? { scope: c.scope } : {}),
    })),
    scopes: [...scopes],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // no `resource` param -> config.default_resource if set, else an opaque
        // (non-JWT) token is issued: tests should always send `resource`.
        defaultResource: (ctx, client, oneOf) => (oneOf ? undefined : config.default_resource),
        useGrantedResource: () => true,
        getResourceServerInfo(ctx, resourceIndicator, client) {
          const rs = resources[resourceIndicator];
          if (!rs) {
            const u = URL.parse(resourceIndicator);
            if (!u || !/^https?:$/.test(u.protocol) || u.hash) throw new errors.InvalidTarget();
          }
          const c = clientsById.get(client.clientId) ?? {};
          return {
            audience: rs?.audience ?? resourceIndicator,
            scope: rs?.scope ?? [...scopes].join(' '),
            accessTokenTTL: c.access_token_ttl ?? rs?.ttl ?? defaultTtl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    extraTokenClaims(ctx, token) {
      return clientsById.get(token.clientId)?.claims;
    },
    ttl: {
      ClientCredentials(ctx, token, client) {
        return token.resourceServer?.accessTokenTTL ?? clientsById.get(client.clientId)?.access_token_ttl ?? defaultTtl;
      },
    },
    // No interactive flows are used; keep the "you SHOULD change" notices quiet.
    clientBasedCORS: () => true,
  });
  provider.on('server_error', (ctx, err) => toStderr('server_error', err));
  return provider;
}

// ---- http server ------------------------------------------------------------
let handler = null;
let issuer = null;

function rotate(jwk, retain) {
  const next = jwk ? normalizeKey(jwk) : freshKey();
  const previous = signingKeys.map((k) => k.kid);
  signingKeys = retain ? [next, ...signingKeys.filter((k) => k.kid !== next.kid)] : [next];
  handler = buildProvider(issuer).callback();
  toStderr(`rotated signing key: ${previous.join(',')} -> ${signingKeys.map((k) => k.kid).join(',')}`);
  return { kid: next.kid, kids: signingKeys.map((k) => k.kid), previous };
}

// A JWT of exactly `claims` (see the header comment).
function sign(header, claims) {
  const key = signingKeys[0];
  const full = { alg: 'RS256', typ: 'JWT', kid: key.kid, ...header };
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const input = `${b64(full)}.${b64(claims)}`;
  if (full.alg === 'none') return `${input}.`;
  if (full.alg === 'HS256') {
    const pem = createPublicKey({ key, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
    return `${input}.${createHmac('sha256', pem).update(input).digest('base64url')}`;
  }
  const signature = createSign('RSA-SHA256').update(input)
    .sign(createPrivateKey({ key, format: 'jwk' }));
  return `${input}.${signature.toString('base64url')}`;
}

let jwksRequests = 0;
const tls = args['tls-cert'] && args['tls-key'];
const onRequest = async (req, res) => {
  if (req.url.startsWith('/jwks')) jwksRequests += 1;
  if (args['metadata-token-file'] && (req.url.startsWith('/.well-known/') || req.url.startsWith('/jwks'))) {
    const wanted = `Bearer ${readFileSync(args['metadata-token-file'], 'utf8').trim()}`;
    if (req.headers.authorization !== wanted) {
      res.writeHead(401, { 'content-type': 'text/plain' }).end('Unauthorized');
      return;
    }
  }
  if (req.url.startsWith('/__admin/')) {
    const url = new URL(req.url, issuer);
    if (req.method === 'POST' && url.pathname === '/__admin/rotate') {
      let body = '';
      for await (const chunk of req) body += chunk;
      try {
        const jwk = body.trim() ? JSON.parse(body).jwk : undefined;
        const out = rotate(jwk, url.searchParams.get('retain') === '1');
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(out));
      } catch (e) {
        res.writeHead(400, { 'content-type': 'text/plain' }).end(String(e));
      }
      return;
    }
    if (req.method === 'POST' && url.pathname === '/__admin/sign') {
      let body = '';
      for await (const chunk of req) body += chunk;
      try {
        const { header, claims } = JSON.parse(body);
        res.writeHead(200, { 'content-type': 'text/plain' }).end(sign(header ?? {}, claims));
      } catch (e) {
        res.writeHead(400, { 'content-type': 'text/plain' }).end(String(e));
      }
      return;
    }
    if (req.method === 'GET' && url.pathname === '/__admin/stats') {
      res.writeHead(200, { 'content-type': 'application/json' })
        .end(JSON.stringify({ jwks: jwksRequests }));
      return;
    }
    res.writeHead(404).end();
    return;
  }
  handler(req, res);
};
const server = tls
  ? createHttpsServer({ cert: readFileSync(args['tls-cert']), key: readFileSync(args['tls-key']) }, onRequest)
  : createHttpServer(onRequest);

server.listen(Number(args.port), args.host, () => {
  const { port } = server.address();
  const host = args.host.includes(':') ? `[${args.host}]` : args.host;
  issuer = `${tls ? 'https' : 'http'}://${host}:${port}`;
  handler = buildProvider(issuer).callback();
  process.stdout.write(`READY ${issuer}\n`);
});

process.on('SIGUSR2', () => rotate(undefined, false));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
if (args['die-with-stdin']) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('close', () => process.exit(0));
  process.stdin.resume();
}
