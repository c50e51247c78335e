"""Checks every kind of agency service must pass: malformed requests, deadlines, replays.

They are built per kind from the kind's own calls (method, request message, a valid order on
the record reserved for the check), so the same rules are judged the same way for all four.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import Message
from greenchannel.v1 import common_pb2, results_pb2

from ._probe import (
    EXPIRED_DEADLINE,
    CheckFailed,
    Probe,
    expect,
    expect_outcome,
    expect_same_answer,
    new_request_id,
    outcome_name,
    reason_name,
)

__all__ = ["Check", "Sample", "deadline_check", "malformed_check", "replay_check", "snake_case"]

CheckBody = Callable[[Probe], Awaitable[str]]
"""A check: raises CheckFailed when the service is off the contract, else says what it saw."""


@dataclass(frozen=True, kw_only=True)
class Check:
    """One row of the conformance table."""

    name: str
    """Stable id, e.g. ``bank.mismatch.stop_payment``."""
    proves: str
    """What passing it shows, in words."""
    run: CheckBody
    """The check itself."""


@dataclass(frozen=True, kw_only=True)
class Sample:
    """A valid call of one method: how to build it and what the field holding the order is called."""

    method: str
    """Service method, e.g. ``StopPayment``."""
    build: Callable[[Probe, str], Message]
    """``(probe, request_id) -> request`` with a valid context and order."""
    order_field: str = "order"
    """The request field holding the order (``report`` for ReceiveFraudReport)."""


def _refused_cleanly(answer: object) -> bool:
    if isinstance(answer, grpc.StatusCode):
        return bool(answer == grpc.StatusCode.INVALID_ARGUMENT)
    result: results_pb2.Result = getattr(answer, "result")  # noqa: B009
    return (
        result.outcome == common_pb2.REQUEST_STATE_REJECTED
        and result.reason == results_pb2.REASON_CODE_INVALID_REQUEST
    )


def _describe(answer: object) -> str:
    if isinstance(answer, grpc.StatusCode):
        return f"gRPC {answer.name}"
    result: results_pb2.Result = getattr(answer, "result")  # noqa: B009
    return f"{outcome_name(result)}/{reason_name(result)}"


def malformed_check(
    kind: str, samples: tuple[Sample, ...], after: Callable[[Probe], Awaitable[None]] | None = None
) -> Check:
    """No context, no request id, no order: INVALID_ARGUMENT or REJECTED/INVALID_REQUEST, nothing done."""

    async def run(probe: Probe) -> str:
        calls = 0
        for sample in samples:
            good = sample.build(probe, new_request_id())
            variants: dict[str, Message] = {}
            no_context = type(good)()
            no_context.CopyFrom(good)
            no_context.ClearField("context")
            variants["without context"] = no_context
            no_id = type(good)()
            no_id.CopyFrom(good)
            getattr(no_id, "context").request_id = ""  # noqa: B009
            variants["without context.request_id"] = no_id
            no_order = type(good)()
            no_order.CopyFrom(good)
            no_order.ClearField(sample.order_field)
            variants[f"without {sample.order_field}"] = no_order
            for label, request in variants.items():
                answer = await probe.status_of(sample.method, request)
                calls += 1
                expect(
                    _refused_cleanly(answer),
                    f"{sample.method} {label}: expected INVALID_ARGUMENT or REJECTED/INVALID_REQUEST, "
                    f"got {_describe(answer)}",
                )
        if after is not None:
            await after(probe)
        return f"{calls} malformed calls refused cleanly"

    return Check(
        name=f"{kind}.errors.malformed_request",
        proves="a request without context, request id or order is refused cleanly and not acted on",
        run=run,
    )


def deadline_check(
    kind: str,
    sample: Sample,
    *,
    outcome: common_pb2.RequestState.ValueType = common_pb2.REQUEST_STATE_EXECUTED,
    after: Callable[[Probe, Message], Awaitable[None]] | None = None,
    cleanup: Callable[[Probe, str], Awaitable[None]] | None = None,
) -> Check:
    """An expired deadline fails DEADLINE_EXCEEDED; the same id later executes in full, once.

    ``after`` looks for a double effect given the retry's answer; ``cleanup`` undoes the order.
    """

    async def run(probe: Probe) -> str:
        request_id = new_request_id()
        try:
            return await _expire_then_retry(probe, request_id)
        finally:
            if cleanup is not None:
                await _quietly(cleanup(probe, request_id))

    async def _expire_then_retry(probe: Probe, request_id: str) -> str:
        expired = await probe.status_of(
            sample.method, sample.build(probe, request_id), timeout=EXPIRED_DEADLINE
        )
        expect(
            expired == grpc.StatusCode.DEADLINE_EXCEEDED,
            f"{sample.method} with an expired deadline: expected DEADLINE_EXCEEDED, got {_describe(expired)}",
        )
        started = time.monotonic()
        answer = await probe.call(sample.method, sample.build(probe, request_id))
        took = time.monotonic() - started
        expect_outcome(answer.result, outcome, what=f"{sample.method} retried within the deadline")
        if after is not None:
            await after(probe, answer)
        return (
            f"expired call refused; retry answered in {took * 1000:.0f} ms "
            f"(deadline {probe.call_timeout:g} s)"
        )

    return Check(
        name=f"{kind}.deadline",
        proves="a call whose deadline passed fails DEADLINE_EXCEEDED and leaves nothing half done; "
        "the retry answers within the adapter's deadline",
        run=run,
    )


def replay_check(
    kind: str,
    sample: Sample,
    *,
    outcome: common_pb2.RequestState.ValueType | None = common_pb2.REQUEST_STATE_EXECUTED,
    cleanup: Callable[[Probe], Awaitable[None]] | None = None,
) -> Check:
    """The same request id twice: the second answer is the first (``outcome`` None: any outcome)."""

    async def run(probe: Probe) -> str:
        request_id = new_request_id()
        try:
            first = await probe.call(sample.method, sample.build(probe, request_id))
            if outcome is not None:
                expect_outcome(first.result, outcome, what=f"{sample.method} (first delivery)")
            second = await probe.call(sample.method, sample.build(probe, request_id))
            expect_same_answer(first, second, what=f"{sample.method} delivered twice")
        finally:
            if cleanup is not None:
                await _quietly(cleanup(probe))
        return f"{sample.method} repeated with the same request id: same answer"

    return Check(
        name=f"{kind}.idempotency.{snake_case(sample.method)}",
        proves="a request id delivered twice is executed once: the repeat gets the first answer",
        run=run,
    )


async def _quietly(step: Awaitable[None]) -> None:
    # Clean-up must not hide the check's own verdict: a failing clean-up shows in its own check.
    with contextlib.suppress(CheckFailed):
        await step


def snake_case(method: str) -> str:
    """``StopPayment`` -> ``stop_payment``, for check names."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in method).lstrip("_")
