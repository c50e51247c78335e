// A bank's own system in Node.js: BankService (proto/greenchannel/v1/bank.proto) over in-memory
// accounts. The bank's GreenChannel adapter (`greenchannel adapter --config adapter.toml`) verifies
// every order before it calls this service, and signs (and seals) what this service answers.
//
// What a BankService must do (docs/integration.md, "Implementing an agency service"):
//  - be idempotent by context.request_id: the adapter calls again with the same id after a crash
//    or a timeout, and the same answer must come back without acting twice;
//  - check the account, holder name and currency before acting, and answer MISMATCH (or
//    NOT_FOUND) rather than hold money on the wrong account; a refusal quotes no records;
//  - hold what is there, up to the amount asked; when less is there, answer PARTIALLY_EXECUTED and
//    list where the rest went (onward transfers), so the broker can chase it;
//  - let a freeze take over a stop-payment's hold (Freeze.converts_request_id) without a gap;
//  - answer data requests (holder, transactions) in clear: the adapter seals them to the police;
//  - refuse a malformed call (REJECTED/INVALID_REQUEST) without doing anything.
// `greenchannel conformance bank --target HOST:PORT --plaintext` checks all of it.
//
// Usage: node bank.js [--listen 127.0.0.1:0] [--fixture FILE | --accounts FILE]
//   FILE is either a JSON list of accounts ({account_number, holder_name, currency,
//   balance_minor_units}) or the conformance fixture (adapters/conformance/fixture.json), whose
//   bank.accounts are opened and bank.transfers booked, each `minutes_before` minutes ago.
// Prints {"listening": "host:port"} on stdout once serving, then one JSON line per order
// ({"order": method, "request_id", "outcome", "replayed"}). Stops cleanly on SIGTERM / SIGINT.
import crypto from "node:crypto";
import fs from "node:fs";
import { parseArgs } from "node:util";

import { grpc, timestamp, v1 } from "./contract.js";

const { values: options } = parseArgs({
  options: {
    listen: { type: "string", default: "127.0.0.1:0" },
    fixture: { type: "string" },
    accounts: { type: "string" },
  },
});

const DEFAULT_ACCOUNTS = [
  { account_number: "6222020200001234567", holder_name: "李某", currency: "CNY", balance_minor_units: 5_000_000 },
];
const HOUR_MS = 3600 * 1000;
const STOP_PAYMENT_HOLD_MS = 48 * HOUR_MS;
const FREEZE_HOLD_MS = 183 * 24 * HOUR_MS;
const ONWARD_LOOKBACK_MS = 72 * HOUR_MS; // how far back outgoing transfers count as where money went
const MAX_ONWARD = 1000; // the contract's cap on Result.onward_transfers

const EXECUTED = "REQUEST_STATE_EXECUTED";
const PARTIALLY_EXECUTED = "REQUEST_STATE_PARTIALLY_EXECUTED";
const REJECTED = "REQUEST_STATE_REJECTED";

// -- the bank's books -------------------------------------------------------------------------------

/** account number -> { holder_name, currency, balance (minor units, BigInt) } */
const accounts = new Map();
/** Booked transfers, oldest first: { transfer_id, from_account, from_bank, to_account, to_bank,
 *  to_holder, amount (BigInt), currency, at (Date) }; a bank field is "" for this bank. */
const transfers = [];
/** request id -> { id, kind, account_number, amount (BigInt), until (Date), state }: the holds placed. */
const holds = new Map();
/** request id -> the response answered: a request id is executed once, its answer replayed after. */
const answered = new Map();

function open({ account_number, holder_name, currency, balance_minor_units }) {
  accounts.set(account_number, { holder_name, currency, balance: BigInt(balance_minor_units) });
}

function book(t, at) {
  const amount = BigInt(t.amount);
  // Only this bank's side of a transfer moves a balance here; the other bank keeps its own books.
  if (!t.from_bank && accounts.has(t.from_account)) accounts.get(t.from_account).balance -= amount;
  if (!t.to_bank && accounts.has(t.to_account)) accounts.get(t.to_account).balance += amount;
  transfers.push({ ...t, amount, at });
}

function seed(file) {
  const data = file ? JSON.parse(fs.readFileSync(file, "utf8")) : DEFAULT_ACCOUNTS;
  if (Array.isArray(data)) {
    data.forEach(open);
    return;
  }
  // The conformance fixture (adapters/conformance/fixture.json): the accounts by role, then the
  // transfers, each booked `minutes_before` minutes before now.
  const { currency } = data.bank;
  for (const a of Object.values(data.bank.accounts)) {
    open({ account_number: a.number, holder_name: a.holder, currency, balance_minor_units: a.balance });
  }
  const now = Date.now();
  for (const t of data.bank.transfers) book({ ...t, currency }, new Date(now - t.minutes_before * 60_000));
}

function isActive(hold) {
  return hold?.state === "active" && hold.until > new Date();
}

function available(accountNumber) {
  let held = 0n;
  for (const hold of holds.values()) {
    if (hold.account_number === accountNumber && isActive(hold)) held += hold.amount;
  }
  return accounts.get(accountNumber).balance - held;
}

// -- answers ----------------------------------------------------------------------------------------

const money = (currency, units) => ({ currency, minor_units: units.toString() });
// Loaded from a descriptor set, a proto map (DataAnswer.holder, DataRecord.fields) is what it is on
// the wire: a list of {key, value} entries.
const mapEntries = (object) => Object.entries(object).map(([key, value]) => ({ key, value }));
const toDate = (ts) => new Date(Number(ts.seconds) * 1000 + Math.floor((ts.nanos ?? 0) / 1e6));

/** A refusal; `detail` is for people and never quotes the bank's records (name, number). */
function rejected(reason, detail) {
  return { result: { outcome: REJECTED, reason: `REASON_CODE_${reason}`, detail } };
}

// NFC and collapsed spaces: forms and OCR disagree about spaces and composition, never about letters.
const normalName = (name) => name.normalize("NFC").trim().split(/\s+/).join(" ");
const sameName = (recorded, given) => normalName(recorded) === normalName(given);

/** The account named by an order, or the refusal: checked before anything is done. */
function checkedAccount(ref, currency) {
  const account = accounts.get(ref.account_number);
  if (account === undefined) return { refusal: rejected("NOT_FOUND", "no such account") };
  // Name before anything else: a request with the wrong name learns nothing about the account.
  if (!sameName(account.holder_name, ref.holder_name ?? "")) {
    return { refusal: rejected("MISMATCH", "holder name does not match the account") };
  }
  if (currency !== undefined && currency !== account.currency) {
    return { refusal: rejected("MISMATCH", "currency does not match the account") };
  }
  return { account };
}

/** Where money missing from an account went: the latest outgoing transfers that cover `missing`. */
function onwardTransfers(accountNumber, missing, fraudTransferId) {
  let since = Date.now() - ONWARD_LOOKBACK_MS;
  const fraud = transfers.find((t) => t.transfer_id === fraudTransferId && t.to_account === accountNumber);
  // Money that left before the victim's payment arrived cannot be the victim's money.
  if (fraud) since = Math.max(since, fraud.at.getTime());
  const outgoing = transfers
    .filter((t) => t.from_account === accountNumber && !t.from_bank && t.at.getTime() >= since)
    .sort((a, b) => b.at - a.at); // latest first
  const listed = [];
  let covered = 0n;
  for (const t of outgoing) {
    if (covered >= missing || listed.length >= MAX_ONWARD) break;
    covered += t.amount;
    listed.push({
      to_account: t.to_account,
      to_bank: t.to_bank,
      to_holder_name: t.to_holder,
      amount: money(t.currency, t.amount),
      at: timestamp(t.at),
      transfer_id: t.transfer_id,
    });
  }
  return listed;
}

// -- the orders -------------------------------------------------------------------------------------

/** StopPayment and Freeze: hold what is there, up to the amount; list onward transfers for the rest. */
function place(context, order, kind) {
  const { account, refusal } = checkedAccount(order.account, order.amount.currency);
  if (refusal) return refusal;
  const number = order.account.account_number;
  const until = context.hold_until
    ? toDate(context.hold_until)
    : new Date(Date.now() + (kind === "freeze" ? FREEZE_HOLD_MS : STOP_PAYMENT_HOLD_MS));
  if (until <= new Date()) return rejected("INVALID_REQUEST", "hold_until lies in the past");
  const asked = BigInt(order.amount.minor_units ?? 0);
  if (asked <= 0n) return rejected("INVALID_REQUEST", "amount must be greater than zero");
  const converted = kind === "freeze" ? holds.get(order.converts_request_id ?? "") : undefined;
  if (converted?.kind === "stop_payment" && isActive(converted) && converted.account_number === number) {
    // The held money is free again only for this freeze, within this one synchronous call:
    // nothing can move in between, so the freeze keeps every unit the hold had.
    converted.state = "converted";
  }
  const free = available(number);
  const amount = free < asked ? (free > 0n ? free : 0n) : asked;
  const result = { outcome: EXECUTED };
  if (amount < asked) {
    result.outcome = amount > 0n ? PARTIALLY_EXECUTED : REJECTED;
    result.reason = "REASON_CODE_INSUFFICIENT_FUNDS";
    result.onward_transfers = onwardTransfers(number, asked - amount, order.fraud_transfer_id);
    result.detail = `less on the account than asked${result.onward_transfers.length ? "; onward transfers listed" : ""}`;
  }
  result[kind === "freeze" ? "amount_frozen" : "amount_held"] = money(account.currency, amount);
  if (amount > 0n) {
    const hold = { id: `H-${crypto.randomUUID()}`, kind, account_number: number, amount, until, state: "active" };
    holds.set(context.request_id, hold);
    result.hold_until = timestamp(until);
    result.agency_reference = hold.id;
  }
  return { result };
}

/** The active hold a release or extension names, checked against the account it gives. */
function targetHold(order) {
  if (order.account?.account_number) {
    const { refusal } = checkedAccount(order.account);
    if (refusal) return { refusal };
  }
  const hold = holds.get(order.target_request_id);
  if (!isActive(hold)) return { refusal: rejected("NO_ACTIVE_HOLD", "no active hold or freeze from that request") };
  if (order.account?.account_number && order.account.account_number !== hold.account_number) {
    return { refusal: rejected("MISMATCH", "the hold is on another account") };
  }
  return { hold };
}

function release(context, order) {
  const { hold, refusal } = targetHold(order);
  if (refusal) return refusal;
  hold.state = "released";
  return { result: { outcome: EXECUTED, agency_reference: hold.id } };
}

function extend(context, order) {
  const { hold, refusal } = targetHold(order);
  if (refusal) return refusal;
  // The broker's SLA policy decides the new end and sends it as context.hold_until.
  if (!context.hold_until) return rejected("INVALID_REQUEST", "no new end given (context.hold_until)");
  const until = toDate(context.hold_until);
  if (until <= hold.until) return rejected("INVALID_REQUEST", "the new end must be later than the current end");
  hold.until = until;
  return { result: { outcome: EXECUTED, agency_reference: hold.id, hold_until: timestamp(until) } };
}

/** Data about an account, in clear (the adapter seals it to the requester); no data on a refusal. */
function queryData(context, order) {
  if (order.subject !== "account") return rejected("INVALID_REQUEST", "a bank answers about bank accounts");
  const category = order.category;
  if (category !== "DATA_CATEGORY_ACCOUNT_HOLDER" && category !== "DATA_CATEGORY_TRANSACTIONS") {
    return rejected("INVALID_REQUEST", "a bank answers ACCOUNT_HOLDER and TRANSACTIONS requests");
  }
  if (category === "DATA_CATEGORY_TRANSACTIONS" && !order.period) {
    return rejected("INVALID_REQUEST", "TRANSACTIONS needs a period");
  }
  const { account, refusal } = checkedAccount(order.account);
  if (refusal) return refusal;
  const number = order.account.account_number;
  if (category === "DATA_CATEGORY_ACCOUNT_HOLDER") {
    const holder = { name: account.holder_name, currency: account.currency, account_status: "open" };
    return { result: { outcome: EXECUTED }, answer: { holder: mapEntries(holder) } };
  }
  const [start, end] = [toDate(order.period.start), toDate(order.period.end)];
  const records = transfers
    .filter((t) => (t.from_account === number || t.to_account === number) && t.at >= start && t.at < end)
    .map((t) => {
      const out = t.from_account === number;
      return {
        fields: mapEntries({
          transfer_id: t.transfer_id,
          direction: out ? "out" : "in",
          counterparty_account: out ? t.to_account : t.from_account,
          counterparty_bank: out ? t.to_bank : t.from_bank,
          amount_minor_units: t.amount.toString(),
          currency: t.currency,
          at: t.at.toISOString(),
        }),
      };
    });
  return { result: { outcome: EXECUTED }, answer: { records } };
}

// -- serving ----------------------------------------------------------------------------------------

function report(method, requestId, response, replayed) {
  console.log(JSON.stringify({ order: method, request_id: requestId, outcome: response.result.outcome, replayed }));
}

/** One unary handler: idempotent by request id; an order without `required` fields is refused. */
function handler(method, required, act) {
  return (call, callback) => {
    const { context, order } = call.request;
    const requestId = context?.request_id;
    if (!requestId) {
      // Without a request id the call cannot be made idempotent: refuse it at the gRPC level.
      callback({ code: grpc.status.INVALID_ARGUMENT, details: "context.request_id is required" });
      return;
    }
    const earlier = answered.get(requestId);
    if (earlier !== undefined) {
      report(method, requestId, earlier, true);
      callback(null, earlier);
      return;
    }
    const missing = required.filter((field) => !order?.[field]);
    const response = missing.length
      ? rejected("INVALID_REQUEST", `the order lacks ${missing.join(", ")}`)
      : act(context, order);
    answered.set(requestId, response);
    report(method, requestId, response, false);
    callback(null, response);
  };
}

seed(options.fixture ?? options.accounts);

const server = new grpc.Server();
server.addService(v1.BankService.service, {
  StopPayment: handler("StopPayment", ["account", "amount"], (c, o) => place(c, o, "stop_payment")),
  Freeze: handler("Freeze", ["account", "amount"], (c, o) => place(c, o, "freeze")),
  ReleaseHold: handler("ReleaseHold", ["target_request_id"], release),
  ExtendHold: handler("ExtendHold", ["target_request_id"], extend),
  QueryBankData: handler("QueryBankData", ["category"], queryData),
});

server.bindAsync(options.listen, grpc.ServerCredentials.createInsecure(), (error, port) => {
  if (error) {
    console.error(`bank: cannot listen on ${options.listen}: ${error.message}`);
    process.exit(1);
  }
  const host = options.listen.slice(0, options.listen.lastIndexOf(":"));
  console.log(JSON.stringify({ listening: `${host}:${port}` }));
});

function stop() {
  server.tryShutdown(() => process.exit(0));
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
