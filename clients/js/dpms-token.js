// dpms-token.js - mint dpms's single-use tokens (SPEC section 12) in the browser, from a session.
//
// One ES module, no build step, no dependencies: WebCrypto (HMAC-SHA256) and
// crypto.getRandomValues, which browsers offer in secure contexts (https, or http on
// localhost/127.0.0.1).
//
//   import { mintToken } from "./dpms-token.js";
//   // `session` is what POST /rest/admin/tenants/<U>/sessions answered, handed to the page by
//   // your server: {"kid": "...", "key": "<base64url>", "exp": <unix seconds>, "sub": "<U>"}
//   // (add `sub`, the tenant's uuid, when you hand it over).
//   const token = await mintToken(session, { method: "GET", path: `/rest/services/${U}/orders/` });
//   await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
//
// Every call makes a new token (a fresh random `jti`): a token is good for one request, for
// `ttl` seconds (default and most 60), and only for `method`/`path` when they are given.

const encoder = new TextEncoder();
const keys = new WeakMap(); // session -> CryptoKey, imported once

function b64url(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function fromB64url(text) {
  const s = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

async function keyOf(session) {
  let key = keys.get(session);
  if (!key) {
    key = await crypto.subtle.importKey(
      "raw", fromB64url(session.key), { name: "HMAC", hash: "SHA-256" }, false, ["sign"],
    );
    keys.set(session, key);
  }
  return key;
}

/**
 * A new single-use token (a compact HS256 JWT) for `session`.
 * @param {{kid: string, key: string, exp: number, sub: string}} session
 * @param {{method?: string, path?: string, ttl?: number, sub?: string}} [options]
 * @returns {Promise<string>}
 */
export async function mintToken(session, options = {}) {
  const sub = options.sub ?? session.sub;
  if (typeof sub !== "string" || !sub) throw new TypeError("mintToken: no `sub` (the tenant's uuid)");
  const now = Math.floor(Date.now() / 1000);
  if (session.exp !== undefined && now >= session.exp) throw new Error("mintToken: the session has expired");
  const ttl = Math.min(options.ttl ?? 60, 60);
  if (!(ttl >= 1)) throw new RangeError("mintToken: ttl must be 1 to 60 seconds");
  const claims = { sub, iat: now, exp: now + ttl, jti: b64url(crypto.getRandomValues(new Uint8Array(16))) };
  if (options.method) claims.htm = options.method.toUpperCase();
  if (options.path) claims.htu = options.path;
  const header = { alg: "HS256", typ: "JWT", kid: session.kid };
  const signing = `${b64url(encoder.encode(JSON.stringify(header)))}.${b64url(encoder.encode(JSON.stringify(claims)))}`;
  const mac = await crypto.subtle.sign("HMAC", await keyOf(session), encoder.encode(signing));
  return `${signing}.${b64url(new Uint8Array(mac))}`;
}
