"""A message a caller signed for the broker (a cancellation, an appeal ruling), opened and verified."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message
from greenchannel.v1 import envelope_pb2

from broker.protocol import (
    BROKER_ID,
    Claims,
    Clock,
    KeyStore,
    decode_message,
    validate_message,
    verify_detached,
)

from ._auth import Caller
from ._grpc_status import to_hub_error

__all__ = ["signed_by_caller"]

M = TypeVar("M", bound=Message)


def signed_by_caller(
    message_type: type[M],
    signed: envelope_pb2.SignedMessage,
    *,
    jws_type: str,
    caller: Caller,
    keys: KeyStore,
    clock: Clock,
    field: str,
) -> tuple[M, Claims]:
    """Decode, verify (signed by the caller, for the broker, of ``jws_type``) and validate; any failure
    is the hub error for it, naming ``field`` (``cancellation``, ``ruling``)."""
    try:
        message = decode_message(message_type, signed.payload, prefix=f"{field}.")
        claims = verify_detached(
            signed.signature,
            signed.payload,
            keys=keys,
            audience=BROKER_ID,
            clock=clock,
            expected_issuer=caller.agency.id,
            expected_type=jws_type,
        )
        validate_message(message, prefix=f"{field}.")
    except Exception as exc:
        raise to_hub_error(exc, signature_field=f"{field}.signature") from exc
    return message, claims
