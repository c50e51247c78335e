// A police client in Node.js: submits a GREEN stop-payment over the Bus API, watches it to its
// end, and verifies the two signatures that make the answer provable:
//  - the broker's notarization (RequestStatus.notarized_header + notary_signature): the broker
//    accepted exactly the bytes this client signed, at a trusted time, for the recipient named;
//  - the bank's signature over its terminal LifecycleEvent, which carries the bank's Result and
//    the digest of the request it executed.
//
// Usage:
//   node police.js --broker 127.0.0.1:50051 --agency police-310115 --key police.pem \
//     --account 6222020200001234567 --holder 李某 --amount-minor 1000000 \
//     [--case SH-PD-2026-0042]
// The broker's public keys come from the broker itself (RegistryService.ListBrokerKeys).
// Prints one JSON object on stdout; exits 0 when the request was EXECUTED and both signatures
// verified, 1 otherwise.
import crypto from "node:crypto";
import { parseArgs } from "node:util";

import { decode, encode, grpc, timestamp, v1 } from "./contract.js";
import { BROKER_ID, bearerMetadata, bodyDigest, loadSigningKey, publicKey, signDetached, verifyDetached } from "./crypto.js";

const { values: options } = parseArgs({
  options: {
    broker: { type: "string", default: process.env.GREENCHANNEL_BROKER ?? "127.0.0.1:50051" },
    agency: { type: "string", default: "police-310115" },
    key: { type: "string" },
    account: { type: "string", default: "6222020200001234567" },
    holder: { type: "string", default: "李某" },
    "amount-minor": { type: "string", default: "1000000" },
    currency: { type: "string", default: "CNY" },
    case: { type: "string", default: "SH-PD-2026-0042" },
    "timeout-seconds": { type: "string", default: "60" },
  },
});
// Any failure (a signature that does not verify included) is one JSON line and exit status 1.
process.on("uncaughtException", (error) => {
  console.log(JSON.stringify({ error: error.message }));
  process.exit(1);
});
if (!options.key) {
  console.error("police: --key <the agency's Ed25519 PKCS#8 PEM file> is required");
  process.exit(2);
}

const TERMINAL = new Set([
  "REQUEST_STATE_EXECUTED",
  "REQUEST_STATE_PARTIALLY_EXECUTED",
  "REQUEST_STATE_REJECTED",
  "REQUEST_STATE_FAILED",
  "REQUEST_STATE_CANCELLED",
]);

const signing = await loadSigningKey(options.key);
const credentials = grpc.credentials.createInsecure();
const bus = new v1.BusService(options.broker, credentials);
const registry = new v1.RegistryService(options.broker, credentials);
// A fresh token per call; one carrying a signed request is bound to its payload (claim `req`).
const metadata = (requestPayload) => bearerMetadata(grpc, signing, options.agency, requestPayload);

const unary = (client, method, request, requestPayload) =>
  metadata(requestPayload).then(
    (md) =>
      new Promise((resolve, reject) =>
        client[method](request, md, { deadline: Date.now() + 10_000 }, (error, reply) =>
          error ? reject(error) : resolve(reply),
        ),
      ),
  );

// -- the public keys that verify -------------------------------------------------------------
const seconds = (ts) => (ts ? Number(ts.seconds ?? 0) : undefined);

/** A registry key with the window it could sign in (a revoked key signs nothing from then on). */
async function entry(key) {
  return {
    key: await publicKey(key.public_key),
    notBefore: seconds(key.not_before),
    notAfter: seconds(key.not_after),
    revokedAt: seconds(key.revoked_at),
  };
}

/** Signing keys by kid. */
async function signingKeys(keys) {
  const found = new Map();
  for (const key of keys ?? []) {
    if (key.use === "KEY_USE_SIG") found.set(key.kid, await entry(key));
  }
  return found;
}

// The broker lists its own keys (RegistryService.ListBrokerKeys, authenticated like every call),
// current and past: a notarization made with a since-rotated key still verifies. An operator
// that publishes its key set out of band can pin it here instead.
async function brokerKeys() {
  const { keys } = await unary(registry, "ListBrokerKeys", {});
  const found = await signingKeys(keys);
  if (found.size === 0) throw new Error("the broker lists no signing key");
  return found;
}

/** The agency's signing keys as the broker's registry lists them, by kid. */
async function agencyKeys(agencyId) {
  const { agency } = await unary(registry, "GetAgency", { id: agencyId });
  return signingKeys(agency.keys);
}

/** Verify a detached signature with the key its header names, and that the key could sign then. */
async function verifyWith(token, body, keys, whose, expected) {
  const header = JSON.parse(Buffer.from(token.split(".")[0], "base64url").toString("utf8"));
  const found = keys.get(header.kid);
  if (found === undefined) throw new Error(`${whose} has no key ${header.kid}`);
  const claims = await verifyDetached(token, body, found.key, expected);
  const signedAt = claims.iat;
  if (
    (found.notBefore !== undefined && signedAt < found.notBefore) ||
    (found.notAfter !== undefined && signedAt >= found.notAfter) ||
    (found.revokedAt !== undefined && signedAt >= found.revokedAt)
  ) {
    throw new Error(`${whose}'s key ${header.kid} could not sign at ${signedAt}`);
  }
  return claims;
}

// -- submit ----------------------------------------------------------------------------------
const request = {
  case_ref: {
    case_number: options.case,
    issuing_agency: options.agency,
    legal_instrument_id: "沪公(浦)急止字[2026]0042号",
    legal_instrument_type: "LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE",
  },
  priority: "PRIORITY_GREEN",
  idempotency_key: crypto.randomUUID().replaceAll("-", ""),
  issued_at: timestamp(),
  stop_payment: {
    account: { account_number: options.account, holder_name: options.holder },
    amount: { currency: options.currency, minor_units: options["amount-minor"] },
  },
};
// The signature covers these exact bytes; nobody re-encodes them on the way.
const payload = encode("Request", request);
const signature = await signDetached(payload, signing, {
  iss: options.agency,
  aud: BROKER_ID, // no recipient named: the broker routes by account number
  jti: crypto.randomUUID(),
  gct: "STOP_PAYMENT",
});
const submitted = await unary(bus, "Submit", { request: { payload, signature } }, payload);
const requestId = submitted.status.id;

// -- watch it to its end -----------------------------------------------------------------------
const seen = [];
const terminal = await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error("no terminal state in time")), Number(options["timeout-seconds"]) * 1000);
  metadata().then((md) => {
    const call = bus.Watch({ request_id: requestId }, md);
    call.on("data", (update) => {
      seen.push(update.state);
      if (TERMINAL.has(update.state)) {
        clearTimeout(timer);
        call.cancel();
        resolve(update);
      }
    });
    call.on("error", (error) => {
      if (error.code !== grpc.status.CANCELLED) reject(error);
    });
  }, reject);
});
const { status } = await unary(bus, "Get", { id: requestId });

// -- the broker's notarization -------------------------------------------------------------------
const notarized = status.notarized_header;
const notary = await verifyWith(status.notary_signature, notarized, await brokerKeys(), BROKER_ID, {
  iss: BROKER_ID,
  aud: status.recipient,
  gct: "NOTARIZATION",
  jti: requestId,
});
const header = decode("EnvelopeHeader", notarized);
if (header.body_digest !== bodyDigest(payload)) throw new Error("the broker notarized another body");
if (header.body_signature_digest !== bodyDigest(Buffer.from(signature, "ascii"))) {
  throw new Error("the broker notarized another signature");
}

// -- the bank's signed answer ---------------------------------------------------------------------
const signedEvent = terminal.event.event;
const bankKeys = await agencyKeys(status.recipient);
const eventClaims = await verifyWith(signedEvent.signature, signedEvent.payload, bankKeys, status.recipient, {
  iss: status.recipient,
  aud: BROKER_ID,
  gct: "EVENT",
});
const event = decode("LifecycleEvent", signedEvent.payload);
if (event.actor !== status.recipient || eventClaims.jti !== event.event_id) throw new Error("event signed by another actor");
if (event.request_id !== requestId || event.request_digest !== bodyDigest(payload)) {
  throw new Error("the bank's answer is about another request");
}

const report = {
  request_id: requestId,
  recipient: status.recipient,
  state: terminal.state,
  states_seen: seen,
  notarization: { verified: true, kid: notary.kid, received_at: header.received_at },
  result_signature: { verified: true, signer: eventClaims.iss, kid: eventClaims.kid },
  result: {
    outcome: event.result?.outcome,
    reason: event.result?.reason,
    amount_held: event.result?.amount_held ?? null,
  },
};
console.log(JSON.stringify(report));
bus.close();
registry.close();
process.exit(terminal.state === "REQUEST_STATE_EXECUTED" ? 0 : 1);
