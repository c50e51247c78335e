"""The checks carriers and platforms share: they block, warn and answer data about a subject.

A carrier's subject is a phone line, a platform's an account; each kind describes its calls in a
:class:`BlockingService` and gets the same checks, judged the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import Message
from greenchannel.v1 import common_pb2, requests_pb2, results_pb2

from ._generic import Check, Sample, deadline_check, malformed_check, replay_check, snake_case
from ._probe import CheckFailed, Probe, expect, expect_no_data, expect_outcome, new_request_id

__all__ = ["BlockingService", "blocking_checks", "warning_outcome"]

EXECUTED = common_pb2.REQUEST_STATE_EXECUTED
_WARNING_OUTCOMES = frozenset(
    {
        results_pb2.WARNING_OUTCOME_DISSUADED,
        results_pb2.WARNING_OUTCOME_CONTINUING,
        results_pb2.WARNING_OUTCOME_UNREACHABLE,
    }
)
REJECTED = common_pb2.REQUEST_STATE_REJECTED


@dataclass(frozen=True, kw_only=True)
class BlockingService:
    """How one kind's block, warn and data calls are made on the fixture's records."""

    kind: str
    """``carrier`` or ``platform``."""
    block_method: str
    """e.g. ``BlockNumber``."""
    warn_method: str
    """e.g. ``WarnSubscriber``."""
    data_method: str
    """e.g. ``QuerySubscriberData``."""
    block: Callable[[Probe, str, str | None, bool], Message]
    """``(probe, role, request_id, unblock) -> request`` on the record of ``role``."""
    warn: Callable[[Probe, str, str | None], Message]
    """``(probe, role, request_id) -> request``."""
    data: Callable[[Probe, str, str | None], Message]
    """``(probe, role, request_id) -> request`` for the kind's identity data category."""
    block_unknown: Callable[[Probe], Message]
    """A block of the fixture's unknown subject."""
    data_unknown: Callable[[Probe], Message]
    """A data request about the fixture's unknown subject."""
    subject: str
    """What is blocked, for people: ``number`` or ``account``."""
    lift_method: str
    """The broker's lifting order after an appeal, e.g. ``LiftBlock``."""
    lift_request: type[Message]
    """The lifting order's request message, e.g. ``LiftBlockRequest``."""

    def lift(self, probe: Probe, target_request_id: str) -> Message:
        """A lifting order of the block ``target_request_id`` made (names only that request)."""
        make: Callable[..., Message] = self.lift_request
        return make(
            context=probe.context(instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_APPEAL),
            order=requests_pb2.Release(
                target_request_id=target_request_id, purpose=requests_pb2.RELEASE_PURPOSE_APPEAL_LIFTED
            ),
        )

    async def unblock(self, probe: Probe, role: str) -> None:
        """Lift the block so the next run finds the record as seeded; failures stay silent."""
        with contextlib.suppress(CheckFailed):
            await probe.call(self.block_method, self.block(probe, role, None, True))

    def sample(self, role: str) -> Sample:
        return Sample(method=self.block_method, build=lambda probe, rid: self.block(probe, role, rid, False))


def warning_outcome(result: results_pb2.Result, *, what: str) -> str:
    """How a warning (or an in-person dissuasion) ended, which an EXECUTED answer must say."""
    outcome = result.warning
    expect(
        outcome in _WARNING_OUTCOMES,
        f"{what}: EXECUTED without result.warning, how reaching the person ended (DISSUADED,"
        " CONTINUING or UNREACHABLE): the broker escalates a failed warning by it",
    )
    return results_pb2.WarningOutcome.Name(outcome).removeprefix("WARNING_OUTCOME_")


def blocking_checks(service: BlockingService) -> tuple[Check, ...]:
    """Block and lift, warn, data, NOT_FOUND, replay, malformed requests, deadlines."""
    s = service

    async def block(probe: Probe) -> str:
        try:
            answer = await probe.call(s.block_method, s.block(probe, "block", None, False))
            expect_outcome(answer.result, EXECUTED, what=s.block_method)
            blocked = list(answer.result.block.blocked)
            expect(len(blocked) > 0, f"{s.block_method}: result.block.blocked names nothing blocked")
            lifted = await probe.call(s.block_method, s.block(probe, "block", None, True))
            expect_outcome(lifted.result, EXECUTED, what=f"{s.block_method} with unblock")
        finally:
            await s.unblock(probe, "block")
        return f"blocked {', '.join(blocked)}, then lifted"

    async def lift(probe: Probe) -> str:
        request_id = new_request_id()
        try:
            answer = await probe.call(s.block_method, s.block(probe, "block", request_id, False))
            expect_outcome(answer.result, EXECUTED, what=s.block_method)
            lifted = await probe.call(s.lift_method, s.lift(probe, request_id))
            expect_outcome(lifted.result, EXECUTED, what=s.lift_method)
            expect(
                len(lifted.result.block.blocked) > 0, f"{s.lift_method}: result.block.blocked names nothing"
            )
        finally:
            await s.unblock(probe, "block")
        return f"the block made by a request lifted by {s.lift_method} naming only that request"

    async def warn(probe: Probe) -> str:
        answer = await probe.call(s.warn_method, s.warn(probe, "warn", None))
        expect_outcome(answer.result, EXECUTED, what=s.warn_method)
        outcome = warning_outcome(answer.result, what=s.warn_method)
        if answer.result.warning != results_pb2.WARNING_OUTCOME_UNREACHABLE:
            expect(answer.result.block.warned, f"{s.warn_method}: result.block.warned is not set")
        return f"EXECUTED, {outcome}"

    async def data(probe: Probe) -> str:
        answer = await probe.call(s.data_method, s.data(probe, "data", None))
        expect_outcome(answer.result, EXECUTED, what=s.data_method)
        expect(len(answer.answer.holder) > 0, f"{s.data_method}: the answer has no identity data")
        return "identity data answered in clear"

    async def not_found(probe: Probe) -> str:
        answer = await probe.call(s.block_method, s.block_unknown(probe))
        what = f"{s.block_method} of an unknown {s.subject}"
        expect_outcome(answer.result, REJECTED, results_pb2.REASON_CODE_NOT_FOUND, what=what)
        data = await probe.call(s.data_method, s.data_unknown(probe))
        what = f"{s.data_method} of an unknown {s.subject}"
        expect_outcome(data.result, REJECTED, results_pb2.REASON_CODE_NOT_FOUND, what=what)
        expect_no_data(data, what=what)
        return "REJECTED/NOT_FOUND"

    async def unblock_idempotent(probe: Probe) -> None:
        await s.unblock(probe, "idempotent")

    async def unblock_deadline(probe: Probe, _request_id: str) -> None:
        await s.unblock(probe, "deadline")

    async def unblock_errors(probe: Probe) -> None:
        await s.unblock(probe, "errors")

    errors = (
        s.sample("errors"),
        Sample(method=s.warn_method, build=lambda probe, rid: s.warn(probe, "errors", rid)),
        Sample(method=s.data_method, build=lambda probe, rid: s.data(probe, "errors", rid)),
    )
    k = s.kind
    return (
        Check(
            name=f"{k}.{snake_case(s.block_method)}",
            proves=f"a {s.subject} is blocked and unblocked",
            run=block,
        ),
        Check(
            name=f"{k}.{snake_case(s.warn_method)}",
            proves="a person is warned, and the answer says how it ended (result.warning)",
            run=warn,
        ),
        Check(name=f"{k}.{snake_case(s.data_method)}", proves="identity data is answered in clear", run=data),
        Check(name=f"{k}.not_found", proves=f"an unknown {s.subject} is REJECTED/NOT_FOUND", run=not_found),
        replay_check(k, s.sample("idempotent"), cleanup=unblock_idempotent),
        malformed_check(k, errors, after=unblock_errors),
        deadline_check(k, s.sample("deadline"), cleanup=unblock_deadline),
        Check(
            name=f"{k}.{snake_case(s.lift_method)}",
            proves=f"the {s.subject} a request blocked is unblocked by a lifting order naming that request",
            run=lift,
        ),
    )
