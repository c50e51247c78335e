// GreenChannel's two token formats, with jose (docs/integration.md states them; the Python side is
// broker/protocol/_tokens.py and broker/protocol/_signing.py).
//
// 1. Bearer JWT for every Bus API call: EdDSA, header {alg, kid}; claims iss = sub = agency id,
//    aud = "greenchannel-broker", iat, exp (at most 5 minutes later), jti (each token is used once),
//    and, on a call carrying a signed request (Submit, Extend, Release), optionally req = the
//    digest of that request's payload bytes (bodyDigest): the broker then skips its replay cache.
// 2. Detached JWS over the exact bytes of a serialized message: EdDSA, b64 = false,
//    crit = ["b64"], typ = "gc+jws", and the claims in the protected header: kid, iss, aud, jti,
//    iat, exp, gct (message type) and dig ("sha-256:" + base64url(SHA-256(body))).
//    Serialized as <protected>..<signature> (empty payload part).
import crypto from "node:crypto";
import fs from "node:fs";

import * as jose from "jose";

export const BROKER_ID = "greenchannel-broker";

/** "sha-256:" + base64url(SHA-256(bytes)): the `dig` claim, and how events bind to a request. */
export function bodyDigest(bytes) {
  return "sha-256:" + crypto.createHash("sha256").update(bytes).digest("base64url");
}

/** An agency's Ed25519 private key from its PKCS#8 PEM file, with its kid (RFC 7638 thumbprint). */
export async function loadSigningKey(pemFile) {
  const key = await jose.importPKCS8(fs.readFileSync(pemFile, "utf8"), "EdDSA", { extractable: true });
  const { kty, crv, x } = await jose.exportJWK(key);
  const kid = await jose.calculateJwkThumbprint({ kty, crv, x }, "sha256");
  return { key, kid };
}

/** A public Ed25519 key from its raw 32 bytes (registry `public_key`) or base64url `x`. */
export async function publicKey(raw) {
  const x = typeof raw === "string" ? raw : Buffer.from(raw).toString("base64url");
  return jose.importJWK({ kty: "OKP", crv: "Ed25519", x }, "EdDSA");
}

const now = () => Math.floor(Date.now() / 1000);

/** A single-use bearer token for the broker's Bus API, bound to `requestPayload` (bytes) if given. */
export async function bearerToken(signing, agencyId, { ttlSeconds = 120, requestPayload } = {}) {
  const iat = now();
  const claims = { iss: agencyId, sub: agencyId, aud: BROKER_ID, iat, exp: iat + ttlSeconds, jti: crypto.randomUUID() };
  if (requestPayload !== undefined) claims.req = bodyDigest(requestPayload);
  return new jose.SignJWT(claims)
    .setProtectedHeader({ alg: "EdDSA", kid: signing.kid })
    .sign(signing.key);
}

/** gRPC metadata carrying a fresh bearer token (bound to `requestPayload`, the signed request's bytes, if given). */
export async function bearerMetadata(grpc, signing, agencyId, requestPayload) {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${await bearerToken(signing, agencyId, { requestPayload })}`);
  return metadata;
}

/** Sign `body` (bytes) as a detached JWS with GreenChannel's claims in the protected header. */
export async function signDetached(body, signing, { iss, aud, jti, gct, ttlSeconds = 600 }) {
  const iat = now();
  const header = {
    alg: "EdDSA",
    b64: false,
    crit: ["b64"],
    kid: signing.kid,
    typ: "gc+jws",
    iss,
    aud,
    jti,
    iat,
    exp: iat + ttlSeconds,
    gct,
    dig: bodyDigest(body),
  };
  const jws = await new jose.FlattenedSign(body).setProtectedHeader(header).sign(signing.key);
  return `${jws.protected}..${jws.signature}`;
}

/**
 * Verify a detached JWS over `body` with `key`; returns its protected header (the claims).
 * Checks what a GreenChannel verifier pins: alg, b64, crit, typ, the digest, and the expected
 * issuer, audience and message type when given.
 */
export async function verifyDetached(token, body, key, expected = {}) {
  const [protectedHeader, payload, signature] = token.split(".");
  if (payload !== "" || signature === undefined) throw new Error("not a detached compact JWS");
  const result = await jose.flattenedVerify({ protected: protectedHeader, payload: body, signature }, key, {
    algorithms: ["EdDSA"],
    crit: { b64: true },
  });
  const header = result.protectedHeader;
  if (header.b64 !== false || header.typ !== "gc+jws") throw new Error("not a GreenChannel signature");
  if (header.dig !== bodyDigest(body)) throw new Error("digest does not match the body");
  for (const [claim, value] of Object.entries(expected)) {
    if (header[claim] !== value) throw new Error(`${claim} is ${header[claim]}, expected ${value}`);
  }
  return header;
}
