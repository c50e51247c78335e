"""The duty officer's actions, each the same signed Bus API call the CLI makes.

Extend, release and convert-to-freeze name the held account, which the broker never keeps in the
clear: the console opens it from the case's money trail with the agency's own X25519 key (as
``greenchannel trail`` does), so the officer never retypes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from cryptography.hazmat.primitives.asymmetric import x25519
from google.protobuf.duration_pb2 import Duration
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2

from broker.client import BusClient, open_account
from broker.protocol import SealingError

from ._errors import ConsoleError

__all__ = ["HoldTarget", "cancel", "convert_to_freeze", "extend", "hold_target", "release"]

_I = common_pb2


@dataclass(frozen=True, kw_only=True)
class HoldTarget:
    """A hold as the actions need it: its status, its account, what is held on it."""

    status: lifecycle_pb2.RequestStatus
    """The stop-payment or freeze."""
    account: common_pb2.BankAccountRef
    """The held account, opened from the trail."""
    held: common_pb2.Money
    """What this request holds now."""


async def hold_target(bus: BusClient, request_id: str, key: x25519.X25519PrivateKey | None) -> HoldTarget:
    """The hold ``request_id`` with its account, from its case's trail; ConsoleError when unknown."""
    if key is None:
        raise ConsoleError("this console has no encryption key: it cannot name the held account")
    status = await bus.get(request_id)
    trail = await bus.trail(status.case_ref.case_number)
    for node in trail.nodes:
        held = next((r.held for r in node.requests if r.request_id == request_id), None)
        if held is None or not node.HasField("account"):
            continue
        try:  # only this node's account: opening the whole trail costs one X25519 per account
            account = open_account(node.account, key, case_ref=trail.case_ref, node_id=node.node_id)
        except SealingError:
            break
        return HoldTarget(status=status, account=account, held=held)
    raise ConsoleError("the case's money trail does not name this hold's account")


def _request(
    target: lifecycle_pb2.RequestStatus, instrument: _I.LegalInstrumentType.ValueType, instrument_id: str
) -> requests_pb2.Request:
    return requests_pb2.Request(
        case_ref=common_pb2.CaseRef(
            case_number=target.case_ref.case_number,
            issuing_agency=target.case_ref.issuing_agency,
            legal_instrument_id=instrument_id or target.case_ref.case_number,
            legal_instrument_type=instrument,
        ),
        priority=target.priority,
        recipient=target.recipient,
    )


async def extend(
    bus: BusClient, target: HoldTarget, *, hours: int, instrument_id: str = ""
) -> lifecycle_pb2.RequestStatus:
    """``submit extend``: ask for ``hours`` more on the hold (the SLA policy caps it)."""
    kind = (
        _I.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE
        if target.status.type == _I.REQUEST_TYPE_FREEZE
        else _I.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE
    )
    request = _request(target.status, kind, instrument_id)
    extension = Duration()
    extension.FromTimedelta(timedelta(hours=hours))
    request.extend.CopyFrom(
        requests_pb2.Extend(target_request_id=target.status.id, account=target.account, extension=extension)
    )
    return await bus.extend(request)


async def release(
    bus: BusClient, target: HoldTarget, *, amount_minor: int | None, reason: str, instrument_id: str = ""
) -> lifecycle_pb2.RequestStatus:
    """``submit release``: lift the hold, or ``amount_minor`` of it."""
    request = _request(target.status, _I.LEGAL_INSTRUMENT_TYPE_RELEASE_NOTICE, instrument_id)
    body = requests_pb2.Release(target_request_id=target.status.id, account=target.account, reason=reason)
    if amount_minor is not None:
        body.amount.CopyFrom(
            common_pb2.Money(currency=target.held.currency or "CNY", minor_units=amount_minor)
        )
    request.release.CopyFrom(body)
    return await bus.release(request)


async def convert_to_freeze(
    bus: BusClient, target: HoldTarget, *, instrument_id: str = ""
) -> lifecycle_pb2.RequestStatus:
    """``submit freeze --converts``: freeze what the stop-payment holds, before the hold lapses."""
    if target.status.type != _I.REQUEST_TYPE_STOP_PAYMENT:
        raise ConsoleError("only a stop-payment's hold converts to a freeze")
    if not target.held.minor_units:
        raise ConsoleError("nothing is held to freeze")
    request = _request(target.status, _I.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE, instrument_id)
    request.freeze.CopyFrom(
        requests_pb2.Freeze(account=target.account, amount=target.held, converts_request_id=target.status.id)
    )
    accepted = await bus.submit(request)
    return accepted.status


async def cancel(bus: BusClient, request_id: str, *, reason: str) -> lifecycle_pb2.RequestStatus:
    """``cancel``: withdraw a request not yet answered."""
    return await bus.cancel(request_id, reason)
