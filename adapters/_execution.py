"""Executing one verified order: idempotency by request id, the agency call with retries, the answer.

In this order::

    "started" recorded, durable                       (a type the kind does not handle: REJECTED)
    call the agency system (retried while transient; the loop heartbeats meanwhile);
      ACKNOWLEDGED only if it has not answered within the grace (_acknowledge)
    sign the terminal event; record it; publish it (after ACKNOWLEDGED's PubAck); ack the inbox message

The terminal event is the outcome, except for a request the agency *filed* for a decision made
later through the Bus API (an appeal, ``BackendOutcome.filed``): then it is ACKNOWLEDGED, under the
same event id as any ACKNOWLEDGED sent before it, so the bus records the filing once.

No DELIVERED: the broker takes ACKNOWLEDGED or the outcome straight from SUBMITTED, and either one
also meets the deliver deadline. A redelivery finds the terminal event recorded and publishes the
same bytes again; one that finds only "started" (a crash or shutdown mid-call) calls again with
the same request id, which every agency service absorbs. Two copies of one request id (a
redelivery, a duplicate) never run at the same time: the second waits for the first and then
replays its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from greenchannel.v1 import agency_pb2, common_pb2, results_pb2
from nats.aio.msg import Msg

from broker.protocol import Clock, ConsumerLoop, OpenedEnvelope, reason_name, request_type_name, state_name

from ._acknowledge import DeferredAcknowledge, acknowledge_delay
from ._answers import Answer, AnswerBuilder, failure
from ._backends import AgencyBackend
from ._config import AdapterConfig
from ._context import order_context
from ._errors import (
    AgencyCallError,
    AgencyUnavailableError,
    IdempotencyConflictError,
    UnsupportedRequestError,
)
from ._idempotency import ExecutionRecord, ExecutionState, GroupCommitJournal
from ._inbox import Settle
from ._metrics import AdapterMetrics
from ._opening import Opened
from ._publisher import EventPublisher
from ._retry import Backoff

__all__ = ["Executor", "Interrupted"]

_log = structlog.get_logger(__name__)

# gRPC codes that say the order itself was wrong, not the agency system.
_INVALID_REQUEST_CODES = frozenset({"INVALID_ARGUMENT", "OUT_OF_RANGE"})


class Interrupted(Exception):
    """Shutdown began while a message waited; it goes back to the stream unanswered."""


class Executor:
    """Executes (or replays) verified orders against the agency system, once per request id."""

    def __init__(
        self,
        config: AdapterConfig,
        *,
        journal: GroupCommitJournal,
        backend: AgencyBackend,
        publisher: EventPublisher,
        answers: AnswerBuilder,
        loop: ConsumerLoop,
        settle: Callable[[Msg, Settle], Awaitable[None]],
        clock: Clock,
        metrics: AdapterMetrics | None = None,
    ) -> None:
        self._metrics = metrics or AdapterMetrics()
        self._config = config
        self._clock = clock
        self._journal = journal
        self._backend = backend
        self._publisher = publisher
        self._answers = answers
        self._loop = loop
        self._settle = settle
        self._requests: dict[str, asyncio.Future[None]] = {}  # request ids in flight -> done

    async def execute(self, msg: Msg, order: Opened) -> None:
        async with self._exclusive(order.request_id):
            await self._execute_alone(msg, order.opened, order.request_id, order.digest)

    @contextlib.asynccontextmanager
    async def _exclusive(self, request_id: str) -> AsyncIterator[None]:
        """One message per request id at a time: a second copy waits for the first to finish."""
        waited = False
        while (busy := self._requests.get(request_id)) is not None:
            if not waited:
                _log.info("adapter.duplicate_waits_for_first")
                waited = True
            await asyncio.wait({busy})
        if waited and self._loop.stopping:
            raise Interrupted
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = done
        try:
            yield
        finally:
            del self._requests[request_id]
            done.set_result(None)

    async def _execute_alone(self, msg: Msg, opened: OpenedEnvelope, request_id: str, digest: str) -> None:
        """Execute (or replay) ``request_id``; no other message of that id runs meanwhile."""
        journal = self._journal
        try:
            # On the loop, no thread hop: a point read of the last commit, and with this request id
            # held exclusively here, nothing of it can be in the middle of a write.
            record = journal.peek(request_id)
            if record is not None and record.request_digest != digest:
                raise IdempotencyConflictError(f"request {request_id} was recorded with another body")
            if record is not None and record.state is ExecutionState.TERMINAL:
                await self._replay(msg, record)
                return
            if not self._backend.supports(opened.header.type):
                answer = failure(
                    results_pb2.REASON_CODE_NOT_AUTHORIZED,
                    f"{self._config.agency_id} does not handle "
                    f"{request_type_name(opened.header.type)} requests",
                    error="UnsupportedRequestError",
                    outcome=common_pb2.REQUEST_STATE_REJECTED,
                )
                await self._finish(msg, opened, digest, answer)
                return
            delay = acknowledge_delay(
                opened.header, now=self._clock.now(), grace=self._config.acknowledge_after
            )
            if delay > 0:
                started = await journal.mark_started(request_id, digest)
            else:
                # Acknowledged at once: "started" is committed while ACKNOWLEDGED travels, and the
                # agency system is called only once both are durable. A publish that fails leaves
                # "started" behind with no call made; the next delivery counts one start too many.
                started, _ = await asyncio.gather(
                    journal.mark_started(request_id, digest),
                    self._publisher.states(opened, digest, common_pb2.REQUEST_STATE_ACKNOWLEDGED),
                )
            if started.state is ExecutionState.TERMINAL:
                await self._replay(msg, started)
                return
            if started.starts > 1:
                _log.info("adapter.resuming", starts=started.starts)
            # At its agency system: from now on this GREEN message no longer holds STANDARD back.
            self._loop.release_lanes(msg)
            if delay > 0:
                answer = await self._call_acknowledging_after(opened, digest, delay)
            else:
                answer = await self._call_agency(opened)
        except IdempotencyConflictError:
            # The same id with another body: answering either way would misattribute a result.
            _log.error("adapter.request_id_conflict")
            self._metrics.refused(self._config.agency_id, "CONFLICTING_REQUEST")
            await self._publisher.deadletter(
                msg, request_id, "CONFLICTING_REQUEST", "IdempotencyConflictError"
            )
            await self._settle(msg, "term")
            return
        await self._finish(msg, opened, digest, answer)

    async def _call_acknowledging_after(self, opened: OpenedEnvelope, digest: str, delay: float) -> Answer:
        """Call the agency system; ACKNOWLEDGED goes out only if it has not answered within ``delay``.

        Returns once the ACKNOWLEDGED that was begun has its PubAck, so the outcome follows it.
        """
        acknowledge = DeferredAcknowledge(
            lambda: self._publisher.states(opened, digest, common_pb2.REQUEST_STATE_ACKNOWLEDGED),
            delay,
            retry=self._config.nak_delay,
        )
        try:
            answer = await self._call_agency(opened)
        except BaseException:
            acknowledge.abandon()
            raise
        await acknowledge.settle()
        return answer

    async def _replay(self, msg: Msg, record: ExecutionRecord) -> None:
        await self._publisher.terminal(record)
        self._metrics.replayed(self._config.agency_id)
        _log.info("adapter.replayed_terminal_event", event_id=record.event_id)
        await self._settle(msg, "ack")

    async def _call_agency(self, opened: OpenedEnvelope) -> Answer:
        """Call the agency system until it answers, a non-transient error, or the retry budget ends."""
        config = self._config
        context = order_context(opened)
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await self._call_with_retries(opened, context, started)
        # Whatever the answer (result, refusal, budget spent); not when shutdown interrupted it.
        self._metrics.called(config.agency_id, request_type_name(opened.header.type), loop.time() - started)
        return answer

    async def _call_with_retries(
        self, opened: OpenedEnvelope, context: agency_pb2.OrderContext, started: float
    ) -> Answer:
        config = self._config
        loop = asyncio.get_running_loop()
        backoff = Backoff(config.retry_initial, config.retry_max)
        attempt = 0
        while True:
            attempt += 1
            try:
                outcome = await self._backend.execute(opened, context, timeout=config.call_timeout)
            except AgencyUnavailableError as exc:
                elapsed = loop.time() - started
                if elapsed >= config.retry_budget:
                    _log.warning("adapter.agency_unavailable", attempts=attempt, code=exc.code)
                    return failure(
                        results_pb2.REASON_CODE_AGENCY_UNAVAILABLE,
                        f"agency system unavailable: {attempt} attempts in {elapsed:.1f} s, last {exc.code}",
                        error=type(exc).__name__,
                    )
                self._metrics.retried(config.agency_id, str(exc.code))
                delay = min(backoff.next(), config.retry_budget - elapsed)
                _log.info("adapter.agency_retry", attempt=attempt, code=exc.code, delay=round(delay, 3))
                await self._loop.wait_stopping(delay)
                if self._loop.stopping:
                    raise Interrupted from exc
                continue
            except AgencyCallError as exc:
                _log.warning("adapter.agency_call_failed", attempt=attempt, code=exc.code)
                reason = (
                    results_pb2.REASON_CODE_INVALID_REQUEST
                    if exc.code in _INVALID_REQUEST_CODES
                    else results_pb2.REASON_CODE_INTERNAL
                )
                detail = f"agency system refused the call: {exc.code}"
                return failure(reason, detail, error=type(exc).__name__)
            except UnsupportedRequestError as exc:
                return failure(
                    results_pb2.REASON_CODE_NOT_AUTHORIZED,
                    str(exc),
                    error=type(exc).__name__,
                    outcome=common_pb2.REQUEST_STATE_REJECTED,
                )
            return self._answers.answer_from(opened, outcome)

    async def _finish(self, msg: Msg, opened: OpenedEnvelope, digest: str, answer: Answer) -> None:
        """Sign, record, publish the terminal event; dead-letter adapter-made failures; ack."""
        request_id = opened.header.id
        result = answer.result
        if answer.filed:
            # Filed, not decided: the decision is the police's, through the Bus API.
            event = self._publisher.build(request_id, common_pb2.REQUEST_STATE_ACKNOWLEDGED, digest)
        else:
            event = self._publisher.build(request_id, result.outcome, digest, result=result)
        signed = self._publisher.sign(event)
        # Recorded (durably) before it is published: from here on a redelivery replays it, never
        # re-executes.
        record = await self._journal.record_terminal(
            request_id, digest, event_id=event.event_id, signed_event=signed
        )
        if record.terminal_event == signed:
            # Signed a moment ago: publish as is (no re-verification, unlike a replay).
            publish = self._publisher.event(request_id, signed, event.event_id)
        else:
            publish = self._publisher.terminal(record)  # another answer was recorded first: it stands
        if answer.deadletter is not None:
            # Independent streams: the operator's record travels beside the answer.
            await asyncio.gather(
                publish, self._publisher.deadletter(msg, request_id, answer.deadletter, answer.error)
            )
        else:
            await publish
        self._metrics.answered(
            self._config.agency_id, request_type_name(opened.header.type), state_name(event.state)
        )
        _log.info(
            "adapter.answered",
            state=state_name(event.state),
            reason=reason_name(result.reason),
            sealed=result.HasField("encrypted_payload"),
            onward_transfers=len(result.onward_transfers),
            details_sealed=result.HasField("sealed_details"),
        )
        await self._settle(msg, "ack")
