// The GreenChannel contract, loaded offline from the descriptor set the project ships
// (proto/greenchannel/v1/greenchannel.v1.binpb: every .proto of greenchannel.v1 plus
// buf/validate/validate.proto and the well-known types it imports).
//
// Two views of the same descriptors:
//  - @grpc/proto-loader builds the gRPC service definitions (BusService, BankService, ...);
//  - protobufjs builds the message types, because a signature covers the *exact bytes* of a
//    serialized message (Request, EnvelopeHeader, LifecycleEvent), which the client must encode
//    and decode itself.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";
import "protobufjs/ext/descriptor/index.js"; // adds Root.fromDescriptor

const here = path.dirname(fileURLToPath(import.meta.url));
export const DESCRIPTOR_SET =
  process.env.GC_DESCRIPTOR_SET ??
  path.resolve(here, "../../proto/greenchannel/v1/greenchannel.v1.binpb");

// Field names as in the .proto files (snake_case), enums as their names, int64 as strings.
export const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: false,
  oneofs: true,
};

const descriptorSet = fs.readFileSync(DESCRIPTOR_SET);
const packageDefinition = protoLoader.loadFileDescriptorSetFromBuffer(descriptorSet, LOADER_OPTIONS);
const loaded = grpc.loadPackageDefinition(packageDefinition);

/** The generated gRPC constructors and service definitions of package greenchannel.v1. */
export const v1 = loaded.greenchannel.v1;

const root = protobuf.Root.fromDescriptor(descriptorSet);

/** A message type of greenchannel.v1 (protobufjs), e.g. type("Request"). */
export function type(name) {
  return root.lookupType(`greenchannel.v1.${name}`);
}

/** Serialize a plain object (snake_case fields, enum names) as message `name`. */
export function encode(name, object) {
  const t = type(name);
  return Buffer.from(t.encode(t.fromObject(object)).finish());
}

/** Parse bytes as message `name` into a plain object, as proto-loader presents messages. */
export function decode(name, bytes) {
  const t = type(name);
  return t.toObject(t.decode(bytes), { ...LOADER_OPTIONS, bytes: Buffer });
}

/** A google.protobuf.Timestamp object for a Date. */
export function timestamp(date = new Date()) {
  const ms = date.getTime();
  return { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 };
}

export { grpc };
