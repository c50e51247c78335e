"""What every check uses: the call as the adapter makes it, and the expectations on its answer.

A check raises :class:`CheckFailed` with one line a person can act on; anything else it raises
is reported as a failure of the check too (the runner names the exception type).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import Message
from greenchannel.v1 import agency_pb2, common_pb2, results_pb2

from broker.protocol import InvalidMessageError, state_name, to_timestamp, validate_message
from broker.protocol import reason_name as reason_code_name

from ._fixture import ConformanceFixture

__all__ = [
    "EXPIRED_DEADLINE",
    "CheckFailed",
    "Probe",
    "expect",
    "expect_no_data",
    "expect_outcome",
    "expect_same_answer",
    "new_request_id",
    "outcome_name",
    "reason_name",
    "timestamp",
]

EXPIRED_DEADLINE = -1.0
"""A deadline one second in the past (grpc reads 0 and tiny timeouts as a deadline still ahead)."""


Instrument: TypeAlias = common_pb2.LegalInstrumentType.ValueType
"""The kind of legal instrument an order rests on."""


class CheckFailed(Exception):
    """A check found the service off the contract; the message says how, in one line."""


def new_request_id() -> str:
    """A fresh request id in the canonical UUID spelling the adapter sends."""
    return str(uuid.uuid4())


timestamp = to_timestamp


def outcome_name(result: results_pb2.Result) -> str:
    return state_name(result.outcome)


def reason_name(result: results_pb2.Result) -> str:
    return reason_code_name(result.reason)


def expect(condition: bool, reason: str) -> None:
    if not condition:
        raise CheckFailed(reason)


def expect_outcome(
    result: results_pb2.Result,
    outcome: common_pb2.RequestState.ValueType,
    reason: results_pb2.ReasonCode.ValueType | None = None,
    *,
    what: str,
) -> None:
    """``result`` has ``outcome`` (and ``reason`` when given), or the check fails naming both."""
    want = state_name(outcome)
    if reason is not None:
        want += "/" + reason_code_name(reason)
    got = f"{outcome_name(result)}/{reason_name(result)}"
    ok = result.outcome == outcome and (reason is None or result.reason == reason)
    expect(ok, f"{what}: expected {want}, got {got} ({result.detail or 'no detail'})")


def expect_no_data(response: Any, *, what: str) -> None:
    """A refused data request (or assistance report) must carry no personal data at all."""
    answer = getattr(response, "answer", None)
    if answer is None:
        answer = getattr(response, "report", None)
    expect(
        answer is None or (len(answer.holder) == 0 and len(answer.records) == 0),
        f"{what}: refused, yet data came back",
    )


def expect_same_answer(first: Message, second: Message, *, what: str) -> None:
    """A repeat of a request id must give the first answer back, not a new execution."""
    if first == second:
        return
    a, b = getattr(first, "result"), getattr(second, "result")  # noqa: B009
    differs = [
        f.name for f in results_pb2.Result.DESCRIPTOR.fields if getattr(a, f.name) != getattr(b, f.name)
    ]
    if not differs:
        differs = ["data answer"]
    raise CheckFailed(
        f"{what}: the repeat got a different answer ({', '.join(differs)} differ): executed twice?"
    )


@dataclass(frozen=True, kw_only=True)
class Probe:
    """One agency service as the adapter calls it, plus the fixture it was seeded with."""

    stub: Any
    """The generated stub of the service under test."""
    fixture: ConformanceFixture
    """What the service holds."""
    call_timeout: float
    """The gRPC deadline of each call, as the adapter sets it (``call_timeout``)."""

    def context(
        self,
        *,
        request_id: str | None = None,
        instrument: Instrument = common_pb2.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
        hold_until: datetime | None = None,
    ) -> agency_pb2.OrderContext:
        """The context the adapter builds from a notarized request: ids, case, times, hold end."""
        now = datetime.now(UTC)
        fx = self.fixture
        ctx = agency_pb2.OrderContext(
            request_id=request_id or new_request_id(),
            sender=fx.sender,
            case_ref=common_pb2.CaseRef(
                case_number=fx.case_number,
                issuing_agency=fx.sender,
                legal_instrument_id=fx.legal_instrument_id,
                legal_instrument_type=instrument,
            ),
            priority=common_pb2.PRIORITY_GREEN,
            received_at=timestamp(now),
            execute_by=timestamp(now + timedelta(minutes=10)),
        )
        if hold_until is not None:
            ctx.hold_until.CopyFrom(timestamp(hold_until))
        return ctx

    async def call(
        self,
        method: str,
        request: Message,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- the gRPC deadline, sent to the service
    ) -> Any:
        """Call ``method`` within the adapter's deadline; the answer must keep the field rules.

        A gRPC error fails the check, naming the status code (never its details: an agency
        system may describe a customer there).
        """
        try:
            response = await getattr(self.stub, method)(
                request, timeout=self.call_timeout if timeout is None else timeout
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise CheckFailed(
                    f"{method}: no answer within {self.call_timeout:g} s (the adapter's deadline)"
                ) from exc
            raise CheckFailed(f"{method}: failed with {code.name}") from exc
        check_field_rules(method, response)
        return response

    async def status_of(
        self,
        method: str,
        request: Message,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- the gRPC deadline, sent to the service
    ) -> Any:
        """Call ``method`` expecting it may fail: the answer, or the gRPC status code it failed with."""
        try:
            response = await getattr(self.stub, method)(
                request, timeout=self.call_timeout if timeout is None else timeout
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        check_field_rules(method, response)
        return response


def check_field_rules(method: str, response: Message) -> None:
    """Every answer must keep the contract's field rules (protovalidate), and carry a result."""
    try:
        validate_message(response)
    except InvalidMessageError as exc:
        listed = "; ".join(f"{v.field}: {v.description}" for v in exc.violations)
        raise CheckFailed(f"{method}: the answer breaks the contract's field rules: {listed}") from exc
    expect(response.HasField("result"), f"{method}: the answer carries no result")


Order = Callable[..., Message]
"""A request message class, typed as the call it is (protobuf's stubs give __init__ no fields)."""
