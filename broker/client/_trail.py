"""A case's money trail as its owner reads it: fetched, steered, and its sealed accounts opened.

The broker keeps accounts on a trail only as digests and sealed to the police owning the case;
the owner's X25519 key opens them here, on the police's machine (:func:`open_accounts`).
"""

from __future__ import annotations

import grpc
from cryptography.hazmat.primitives.asymmetric import x25519
from greenchannel.v1 import common_pb2, results_pb2, trail_pb2

from broker.protocol import (
    BROKER_ID,
    TRAIL_ACCOUNT_CONTENT_TYPE,
    Clock,
    SealingError,
    SigningKey,
    open_sealed,
    trail_sealing_context,
)

from ._bus import BusClient

__all__ = ["fetch_trail", "open_account", "open_accounts", "switch_chasing"]


def open_account(
    payload: results_pb2.EncryptedPayload,
    private_key: x25519.X25519PrivateKey,
    *,
    case_ref: common_pb2.CaseRef,
    node_id: str,
) -> common_pb2.BankAccountRef:
    """Open a trail's sealed account with the case owner's X25519 key; raises SealingError."""
    clear = open_sealed(
        payload,
        private_key,
        request_id=trail_sealing_context(case_ref, node_id),
        sender=BROKER_ID,
        recipient=case_ref.issuing_agency,
    )
    if payload.content_type != TRAIL_ACCOUNT_CONTENT_TYPE:
        raise SealingError(f"sealed {payload.content_type!r}, not an account")
    return common_pb2.BankAccountRef.FromString(clear)


def open_accounts(
    trail: trail_pb2.Trail, key: x25519.X25519PrivateKey
) -> dict[str, common_pb2.BankAccountRef]:
    """Node id -> account, for every sealed account (nodes and leads) the key opens."""
    opened: dict[str, common_pb2.BankAccountRef] = {}
    sealed = [(n.node_id, n.account) for n in trail.nodes if n.HasField("account")]
    sealed += [(lead.node_id, lead.account) for lead in trail.leads if lead.HasField("account")]
    for node_id, payload in sealed:
        if node_id in opened:
            continue
        try:
            opened[node_id] = open_account(payload, key, case_ref=trail.case_ref, node_id=node_id)
        except SealingError:
            continue
    return opened


def _one_call(
    target: str,
    agency_id: str,
    signing_key: SigningKey,
    clock: Clock | None,
    credentials: grpc.ChannelCredentials | None,
    deadline: float,
) -> BusClient:
    """A client for one call on a channel of its own (closed when the ``async with`` ends)."""
    return BusClient(
        target,
        agency_id=agency_id,
        signing_key=signing_key,
        clock=clock,
        credentials=credentials,
        timeout=deadline,
    )


async def fetch_trail(
    target: str,
    *,
    agency_id: str,
    signing_key: SigningKey,
    case_number: str,
    issuing_agency: str = "",
    clock: Clock | None = None,
    deadline: float = 10.0,
    credentials: grpc.ChannelCredentials | None = None,
) -> trail_pb2.Trail:
    """One ``GetTrail`` as ``agency_id`` on a channel of its own; ``grpc.aio.AioRpcError`` when refused."""
    async with _one_call(target, agency_id, signing_key, clock, credentials, deadline) as bus:
        return await bus.trail(case_number, issuing_agency=issuing_agency)


async def switch_chasing(
    target: str,
    *,
    agency_id: str,
    signing_key: SigningKey,
    case_number: str,
    enabled: bool,
    bounds: trail_pb2.ChaseBounds | None = None,
    clock: Clock | None = None,
    deadline: float = 10.0,
    credentials: grpc.ChannelCredentials | None = None,
) -> trail_pb2.Trail:
    """One ``SetChasing`` as ``agency_id`` (the case owner); the trail after the change."""
    async with _one_call(target, agency_id, signing_key, clock, credentials, deadline) as bus:
        return await bus.set_chasing(case_number, enabled=enabled, bounds=bounds)
