// A bank's own system in Node.js: BankService (proto/greenchannel/v1/bank.proto) over in-memory
// accounts. The bank's GreenChannel adapter (`greenchannel adapter --config adapter.toml`) verifies
// every order before it calls this service, and signs what this service answers.
//
// What a BankService must do (docs/integration.md):
//  - be idempotent by context.request_id: the adapter calls again with the same id after a crash
//    or a timeout, and the same answer must come back without acting twice;
//  - check the account, holder name and currency before acting, and answer MISMATCH rather than
//    hold money on the wrong account;
//  - hold what is there, up to the amount asked (PARTIALLY_EXECUTED when less).
//
// Usage: node bank.js [--listen 127.0.0.1:0] [--accounts accounts.json]
// Prints {"listening": "host:port"} on stdout once serving, then one JSON line per order
// ({"order": method, "request_id", "outcome", "replayed"}). Stops cleanly on SIGTERM / SIGINT.
import crypto from "node:crypto";
import fs from "node:fs";
import { parseArgs } from "node:util";

import { grpc, timestamp, v1 } from "./contract.js";

const { values: options } = parseArgs({
  options: { listen: { type: "string", default: "127.0.0.1:0" }, accounts: { type: "string" } },
});

const DEFAULT_ACCOUNTS = [
  { account_number: "6222020200001234567", holder_name: "李某", currency: "CNY", balance_minor_units: 5_000_000 },
];
const STOP_PAYMENT_HOLD_MS = 48 * 3600 * 1000;
const FREEZE_HOLD_MS = 183 * 24 * 3600 * 1000;

/** account number -> { holder_name, currency, balance (minor units, BigInt) } */
const accounts = new Map(
  (options.accounts ? JSON.parse(fs.readFileSync(options.accounts, "utf8")) : DEFAULT_ACCOUNTS).map((a) => [
    a.account_number,
    { holder_name: a.holder_name, currency: a.currency, balance: BigInt(a.balance_minor_units) },
  ]),
);
/** request id -> { account_number, amount (BigInt), until (Date), id } : the holds this bank placed. */
const holds = new Map();
/** request id -> the Result answered: a request id is executed once, its answer replayed after. */
const answered = new Map();

function report(method, requestId, result, replayed) {
  console.log(JSON.stringify({ order: method, request_id: requestId, outcome: result.outcome, replayed }));
}

const money = (currency, units) => ({ currency, minor_units: units.toString() });

function available(accountNumber) {
  let held = 0n;
  for (const hold of holds.values()) if (hold.account_number === accountNumber && !hold.released) held += hold.amount;
  return accounts.get(accountNumber).balance - held;
}

function rejected(reason, detail) {
  return { outcome: "REQUEST_STATE_REJECTED", reason, detail };
}

/** The account named by an order, or the Result refusing it: checked before anything is done. */
function checkedAccount(ref, currency) {
  const account = accounts.get(ref?.account_number ?? "");
  if (account === undefined) return { refusal: rejected("REASON_CODE_NOT_FOUND", "no such account") };
  if (account.holder_name !== ref.holder_name) {
    return { refusal: rejected("REASON_CODE_MISMATCH", "holder name does not match the account") };
  }
  if (currency !== undefined && currency !== account.currency) {
    return { refusal: rejected("REASON_CODE_MISMATCH", "currency does not match the account") };
  }
  return { account };
}

function until(context, defaultMs) {
  if (context?.hold_until) return new Date(Number(context.hold_until.seconds) * 1000);
  return new Date(Date.now() + defaultMs);
}

function place(context, order, kind) {
  const { account, refusal } = checkedAccount(order.account, order.amount?.currency);
  if (refusal) return refusal;
  const asked = BigInt(order.amount.minor_units);
  const free = available(order.account.account_number);
  const amount = free < asked ? (free > 0n ? free : 0n) : asked;
  if (amount === 0n) return rejected("REASON_CODE_INSUFFICIENT_FUNDS", "nothing left to hold");
  const hold = {
    id: `H-${crypto.randomUUID()}`,
    account_number: order.account.account_number,
    amount,
    until: until(context, kind === "freeze" ? FREEZE_HOLD_MS : STOP_PAYMENT_HOLD_MS),
    released: false,
  };
  holds.set(context.request_id, hold);
  const result = {
    outcome: amount === asked ? "REQUEST_STATE_EXECUTED" : "REQUEST_STATE_PARTIALLY_EXECUTED",
    reason: amount === asked ? "REASON_CODE_UNSPECIFIED" : "REASON_CODE_INSUFFICIENT_FUNDS",
    hold_until: timestamp(hold.until),
    agency_reference: hold.id,
  };
  result[kind === "freeze" ? "amount_frozen" : "amount_held"] = money(account.currency, amount);
  return result;
}

function targetHold(order) {
  const hold = holds.get(order.target_request_id);
  if (hold === undefined || hold.released) return { refusal: rejected("REASON_CODE_NO_ACTIVE_HOLD", "no active hold") };
  if (order.account && order.account.account_number && order.account.account_number !== hold.account_number) {
    return { refusal: rejected("REASON_CODE_MISMATCH", "the hold is on another account") };
  }
  return { hold };
}

function release(context, order) {
  const { hold, refusal } = targetHold(order);
  if (refusal) return refusal;
  hold.released = true;
  return { outcome: "REQUEST_STATE_EXECUTED", agency_reference: hold.id };
}

function extend(context, order) {
  const { hold, refusal } = targetHold(order);
  if (refusal) return refusal;
  if (!context?.hold_until) return rejected("REASON_CODE_INVALID_REQUEST", "no new end given (context.hold_until)");
  hold.until = until(context, 0);
  return { outcome: "REQUEST_STATE_EXECUTED", agency_reference: hold.id, hold_until: timestamp(hold.until) };
}

function queryData() {
  // This example keeps no transaction history; a real bank answers with `answer` (sealed to the
  // police by its adapter, never seen by the broker).
  return rejected("REASON_CODE_DECLINED", "this example bank answers no data requests");
}

/** One unary handler: idempotent by request id, every answer wrapped as { result }. */
function handler(method, act) {
  return (call, callback) => {
    const { context, order } = call.request;
    const requestId = context?.request_id;
    if (!requestId) {
      callback({ code: grpc.status.INVALID_ARGUMENT, details: "context.request_id is required" });
      return;
    }
    const earlier = answered.get(requestId);
    if (earlier !== undefined) {
      report(method, requestId, earlier, true);
      callback(null, { result: earlier });
      return;
    }
    const result = act(context, order ?? {});
    answered.set(requestId, result);
    report(method, requestId, result, false);
    callback(null, { result });
  };
}

const server = new grpc.Server();
server.addService(v1.BankService.service, {
  StopPayment: handler("StopPayment", (context, order) => place(context, order, "stop_payment")),
  Freeze: handler("Freeze", (context, order) => place(context, order, "freeze")),
  ReleaseHold: handler("ReleaseHold", release),
  ExtendHold: handler("ExtendHold", extend),
  QueryBankData: handler("QueryBankData", queryData),
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
