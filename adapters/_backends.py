"""The agency's own system as the adapter calls it: one gRPC service per agency kind.

Each kind maps the request types it handles to one call of its service (``BankService`` for
banks, and so on). A call declares what is special about it: a sealed part of the order the
adapter opens with the agency's own key and passes in clear (an appeal's statement); whether
EXECUTED means the agency *filed* the request for a decision that comes later through the Bus
API (an appeal, a fraud report awaiting feedback: the adapter then records ACKNOWLEDGED, not an
outcome); and which result field an EXECUTED answer must carry (a warning's outcome). Everything
else a kind is sent is refused by the runtime before anything is called. gRPC errors are
translated here, once: transient ones become :class:`AgencyUnavailableError` (retried), the rest
:class:`AgencyCallError`. Status details are never copied into errors or logs: the agency system
may describe a customer there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message
from greenchannel.v1 import (
    agency_pb2,
    bank_pb2,
    bank_pb2_grpc,
    carrier_pb2,
    carrier_pb2_grpc,
    common_pb2,
    platform_pb2,
    platform_pb2_grpc,
    police_pb2,
    police_pb2_grpc,
    requests_pb2,
    results_pb2,
)

from broker.protocol import (
    AgencyKind,
    InvalidMessageError,
    OpenedEnvelope,
    SealingError,
    appeal_sealing_context,
    open_sealed,
    parse_and_validate,
    type_name,
)

from ._errors import AdapterConfigError, AgencyCallError, AgencyUnavailableError, UnsupportedRequestError
from ._opening import KeyRing

__all__ = [
    "TRANSIENT_CODES",
    "AgencyBackend",
    "BackendOutcome",
    "GrpcAgencyBackend",
    "backend_for",
    "open_agency_channel",
]

TRANSIENT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
"""gRPC codes after which the same call is tried again (agency services are idempotent by request id)."""


@dataclass(frozen=True, kw_only=True)
class BackendOutcome:
    """What the agency system answered."""

    result: results_pb2.Result
    """Its result, as it said it, onward transfers in full; the adapter redacts them and fills
    ``encrypted_payload``, ``sealed_details`` and ``broker_details``."""
    answer: results_pb2.DataAnswer | None = None
    """Personal data in clear (data answers, assistance reports); sealed before it leaves the adapter."""
    filed: bool = False
    """The call files the request for a decision made later (an appeal, a fraud report awaiting
    the police's feedback): its EXECUTED means filed, and the adapter records ACKNOWLEDGED instead
    of an outcome."""
    requires: str | None = None
    """The ``Result`` field an EXECUTED answer must set (a warning's ``warning`` outcome); an
    EXECUTED answer without it breaks the contract and the adapter fails the request."""


class AgencyBackend(Protocol):
    """The agency's system, as the runtime calls it."""

    def supports(self, request_type: common_pb2.RequestType.ValueType) -> bool:
        """Whether this agency handles ``request_type`` at all; if not, nothing is called."""
        ...

    async def execute(
        self,
        opened: OpenedEnvelope,
        context: agency_pb2.OrderContext,
        *,
        timeout: float,  # noqa: ASYNC109 -- the gRPC call's deadline, sent to the agency system
    ) -> BackendOutcome:
        """Carry out the verified order; idempotent by ``context.request_id``.

        Raises :class:`AgencyUnavailableError` on transient failures, :class:`AgencyCallError`
        on other call failures and :class:`UnsupportedRequestError` for a type it does not handle.
        """
        ...


OpenPart = Callable[[OpenedEnvelope, KeyRing | None], tuple[str, Message]]
"""Opens a sealed part of an order with the agency's keys: ``(request message field, clear part)``."""


@dataclass(frozen=True)
class _Call:
    """One request type's service call: ``method(RequestMessage(context=..., <order_field>=body))``."""

    method: str
    # A message class, typed as the call it is: protobuf's stubs give Message.__init__ no fields.
    request: Callable[..., Message]
    order_field: str = "order"
    answer_field: str | None = None
    opens: OpenPart | None = None
    """A sealed part of the order, opened by the adapter and passed beside it in clear."""
    files: bool = False
    """EXECUTED means filed for a later decision: ACKNOWLEDGED, not an outcome (BackendOutcome.filed)."""
    requires: str | None = None
    """The ``Result`` field EXECUTED must set (BackendOutcome.requires)."""


def _appeal_statement(opened: OpenedEnvelope, keys: KeyRing | None) -> tuple[str, Message]:
    """The holder's statement, sealed by the restricting agency to this police agency's key."""
    appeal = opened.request.appeal
    if keys is None:
        raise AgencyCallError("no decryption key to open the appeal statement", code="INVALID_ARGUMENT")
    try:
        clear = open_sealed(
            appeal.statement,
            keys,
            request_id=appeal_sealing_context(appeal.restriction_request_id, mark_id=appeal.mark_id),
            sender=opened.header.sender,
            recipient=opened.header.recipient,
        )
        statement = parse_and_validate(requests_pb2.AppealStatement, clear, prefix="statement.")
    except (SealingError, InvalidMessageError) as exc:
        # Names what failed, never content: the statement is the holder's personal data.
        raise AgencyCallError(
            f"the appeal statement does not open ({type(exc).__name__})", code="INVALID_ARGUMENT"
        ) from exc
    return "statement", statement


def _calls(table: dict[str, _Call]) -> Mapping[str, _Call]:
    return MappingProxyType(table)


# Keys are the Request.body oneof names (the request type tokens of the inbox subjects).
_BANK = _calls(
    {
        "stop_payment": _Call("StopPayment", bank_pb2.StopPaymentRequest),
        "freeze": _Call("Freeze", bank_pb2.FreezeRequest),
        "release": _Call("ReleaseHold", bank_pb2.ReleaseHoldRequest),
        "extend": _Call("ExtendHold", bank_pb2.ExtendHoldRequest),
        "return_funds": _Call("ReturnFunds", bank_pb2.ReturnFundsRequest),
        "data_request": _Call("QueryBankData", bank_pb2.QueryBankDataRequest, answer_field="answer"),
    }
)
# A carrier's and a platform's "release" is the broker's lifting order after an appeal was lifted.
_CARRIER = _calls(
    {
        "number_block": _Call("BlockNumber", carrier_pb2.BlockNumberRequest),
        "release": _Call("LiftBlock", carrier_pb2.LiftBlockRequest),
        "warning": _Call("WarnSubscriber", carrier_pb2.WarnSubscriberRequest, requires="warning"),
        "data_request": _Call(
            "QuerySubscriberData", carrier_pb2.QuerySubscriberDataRequest, answer_field="answer"
        ),
    }
)
_PLATFORM = _calls(
    {
        "account_block": _Call("BlockAccount", platform_pb2.BlockAccountRequest),
        "release": _Call("LiftRestriction", platform_pb2.LiftRestrictionRequest),
        "warning": _Call("WarnUser", platform_pb2.WarnUserRequest, requires="warning"),
        "data_request": _Call(
            "QueryPlatformData", platform_pb2.QueryPlatformDataRequest, answer_field="answer"
        ),
    }
)
_POLICE = _calls(
    {
        "assistance": _Call("HandleAssistance", police_pb2.HandleAssistanceRequest, answer_field="report"),
        # Received, not answered: the police's feedback comes later through BusService.GiveFeedback.
        "fraud_report": _Call(
            "ReceiveFraudReport", police_pb2.ReceiveFraudReportRequest, order_field="report", files=True
        ),
        "appeal": _Call("FileAppeal", police_pb2.FileAppealRequest, opens=_appeal_statement, files=True),
        "follow_up": _Call("FollowUpVictim", police_pb2.FollowUpVictimRequest),
        "dissuasion": _Call("DissuadeInPerson", police_pb2.DissuadeInPersonRequest, requires="warning"),
        "linkage_notice": _Call(
            "ReceiveLinkageNotice", police_pb2.ReceiveLinkageNoticeRequest, order_field="notice"
        ),
    }
)

_SERVICES: Mapping[AgencyKind, tuple[Any, Mapping[str, _Call]]] = MappingProxyType(
    {
        AgencyKind.BANK: (bank_pb2_grpc.BankServiceStub, _BANK),
        AgencyKind.CARRIER: (carrier_pb2_grpc.CarrierServiceStub, _CARRIER),
        AgencyKind.PLATFORM: (platform_pb2_grpc.PlatformServiceStub, _PLATFORM),
        AgencyKind.POLICE: (police_pb2_grpc.PoliceServiceStub, _POLICE),
    }
)


def _token(request_type: common_pb2.RequestType.ValueType) -> str:
    return type_name(request_type).lower()


class GrpcAgencyBackend:
    """An agency service reached over a gRPC channel, one call per supported request type."""

    def __init__(
        self, kind: AgencyKind, stub: Any, calls: Mapping[str, _Call], *, keys: KeyRing | None = None
    ) -> None:
        self._kind = kind
        self._stub = stub
        self._calls = calls
        self._keys = keys

    @property
    def kind(self) -> AgencyKind:
        return self._kind

    def supports(self, request_type: common_pb2.RequestType.ValueType) -> bool:
        return request_type != common_pb2.REQUEST_TYPE_UNSPECIFIED and _token(request_type) in self._calls

    async def execute(
        self,
        opened: OpenedEnvelope,
        context: agency_pb2.OrderContext,
        *,
        timeout: float,  # noqa: ASYNC109 -- the gRPC call's deadline
    ) -> BackendOutcome:
        body = opened.request.WhichOneof("body")
        call = self._calls.get(body) if body is not None else None
        if body is None or call is None:
            raise UnsupportedRequestError(
                f"{self._kind} agencies do not handle {body or 'an empty'} requests"
            )
        fields: dict[str, Any] = {call.order_field: getattr(opened.request, body)}
        if call.opens is not None:
            name, part = call.opens(opened, self._keys)
            fields[name] = part
        request = call.request(context=context, **fields)
        try:
            response = await getattr(self._stub, call.method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, call.method) from exc
        answer = None
        if call.answer_field is not None and response.HasField(call.answer_field):
            answer = getattr(response, call.answer_field)
        filed = call.files and response.result.outcome == common_pb2.REQUEST_STATE_EXECUTED
        return BackendOutcome(result=response.result, answer=answer, filed=filed, requires=call.requires)


def _translate(exc: grpc.aio.AioRpcError, method: str) -> AgencyCallError:
    code = exc.code()
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    message = f"{method} failed with {name}"
    if code in TRANSIENT_CODES:
        return AgencyUnavailableError(message, code=name)
    return AgencyCallError(message, code=name)


def backend_for(kind: AgencyKind, channel: grpc.aio.Channel, *, keys: KeyRing | None = None) -> AgencyBackend:
    """The backend for an agency of ``kind`` whose system answers on ``channel``; ``keys`` (the
    agency's X25519 keys) open the sealed parts of orders some calls take in clear."""
    try:
        stub_type, calls = _SERVICES[kind]
    except KeyError:
        raise AdapterConfigError(
            f"agencies of kind {kind!r} receive no orders; there is no service"
        ) from None
    return GrpcAgencyBackend(kind, stub_type(channel), calls, keys=keys)


def open_agency_channel(
    target: str,
    *,
    reconnect_backoff_max: float,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str | None = None,
) -> grpc.aio.Channel:
    """A channel to the agency system: TLS with ``credentials``, else insecure (a system on this host).

    gRPC's reconnect backoff is capped so that, once the agency system is back, the adapter's
    own retries reach it within ``reconnect_backoff_max`` seconds instead of up to two minutes.
    ``server_name`` overrides the name expected in the server's certificate.
    """
    cap_ms = max(1, int(reconnect_backoff_max * 1000))
    options: list[tuple[str, str | int]] = [
        ("grpc.initial_reconnect_backoff_ms", min(1000, cap_ms)),
        ("grpc.max_reconnect_backoff_ms", cap_ms),
    ]
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    if server_name is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, credentials, options=options)
