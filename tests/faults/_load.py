"""A steady stream of stop-payments from the police, each retried through every fault.

Every submission is signed once, with its own idempotency key, and re-sent with exactly those
bytes until the broker acknowledges it: a retry after a broker crash must map to the request the
first attempt created, never to a second one. Every request id the broker ever answered with is
kept, so a key answered with two ids is a duplicate however the rest looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field

import grpc
from greenchannel.v1 import common_pb2, envelope_pb2, requests_pb2

from broker.client import BusClient

__all__ = ["RETRYABLE", "Load", "Submission", "stop_payment"]

RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
)
"""Codes that mean "try again": the broker or its NATS is down or restarting."""

_RETRY_PAUSE = 0.25


def stop_payment(
    *,
    account: str,
    holder: str,
    minor_units: int,
    case_number: str,
    priority: common_pb2.Priority.ValueType = common_pb2.PRIORITY_GREEN,
) -> requests_pb2.Request:
    return requests_pb2.Request(
        case_ref=common_pb2.CaseRef(
            case_number=case_number,
            issuing_agency="police-310115",
            legal_instrument_id="沪公(浦)急止字[2026]0777号",
            legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
        ),
        priority=priority,
        stop_payment=requests_pb2.StopPayment(
            account=common_pb2.BankAccountRef(account_number=account, holder_name=holder),
            amount=common_pb2.Money(currency="CNY", minor_units=minor_units),
        ),
    )


@dataclass(kw_only=True)
class Submission:
    """One logical request: one idempotency key, one set of signed bytes, any number of attempts."""

    key: str
    """Its idempotency key."""
    bank: str
    """The bank it goes to."""
    account: str
    """The account it stops payments on."""
    minor_units: int
    """The amount."""
    expect_execution: bool
    """True for the load (its bank runs); False for the deadline probes (nobody answers them)."""
    signed: envelope_pb2.SignedMessage
    """The bytes sent on every attempt."""
    request_ids: set[str] = field(default_factory=set)
    """Every request id the broker answered with; exactly one when all is well."""
    attempts: int = 0
    """Submit calls made (BusClient's own retries inside one call not counted)."""
    acked: bool = False
    """The broker answered with a request id at least once."""
    error: str | None = None
    """A non-transient refusal (code and detail), or a give-up; None when acknowledged."""

    @property
    def request_id(self) -> str:
        if len(self.request_ids) != 1:
            raise AssertionError(f"key {self.key}: request ids {sorted(self.request_ids)}")
        return next(iter(self.request_ids))


class Load:
    """Submits at ``rate`` per second while running; :meth:`submit` adds one on demand.

    Every ``per_case`` submissions open a new case. A case keeps its money trail in one KV entry
    that each of its holds updates at its outcome, so a large
    ``per_case`` keeps that entry hot (it once ran out of compare-and-set attempts: ABORTED).
    """

    def __init__(
        self,
        client: BusClient,
        *,
        case_prefix: str,
        accounts: dict[str, str],
        holder: str,
        rate: float,
        per_case: int = 20,
        give_up_after: float = 120.0,
    ) -> None:
        self._client = client
        self._case_prefix = case_prefix
        self._per_case = per_case
        self._accounts = accounts
        self._holder = holder
        self._rate = rate
        self._give_up_after = give_up_after
        self.submissions: list[Submission] = []
        self._pending: set[asyncio.Task[None]] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._next_bank = 0

    def start(self) -> None:
        """Start the steady stream (alternating over the banks)."""
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name="faults-load")

    async def stop(self) -> None:
        """Stop the stream, then wait until every submission is acknowledged or refused for good."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self.drain()

    async def abort(self) -> None:
        """Stop the stream and every submission still retrying (a scenario that failed). Idempotent."""
        if self._ticker is not None:
            self._ticker.cancel()
        pending = [*self._pending, *([self._ticker] if self._ticker is not None else [])]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._ticker = None

    async def drain(self) -> None:
        """Wait for every submission started so far to be acknowledged (or given up)."""
        while self._pending:
            await asyncio.gather(*list(self._pending))

    async def wait_acked(self, submissions: list[Submission], *, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until each of ``submissions`` is acknowledged or refused for good (or ``timeout``)."""
        tasks = [self._tasks[s.key] for s in submissions if s.key in self._tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def submit(
        self,
        bank: str,
        account: str,
        *,
        expect_execution: bool = True,
        priority: common_pb2.Priority.ValueType = common_pb2.PRIORITY_GREEN,
        holder: str | None = None,
    ) -> Submission:
        """Sign one stop-payment and start sending it (in the background) until acknowledged."""
        key = f"faults-{uuid.uuid4().hex}"
        request = stop_payment(
            account=account,
            holder=holder or self._holder,
            minor_units=100,
            case_number=f"{self._case_prefix}-{len(self.submissions) // self._per_case + 1}",
            priority=priority,
        )
        submission = Submission(
            key=key,
            bank=bank,
            account=account,
            minor_units=100,
            expect_execution=expect_execution,
            signed=self._client.sign(request, idempotency_key=key),
        )
        self.submissions.append(submission)
        task = asyncio.create_task(self._send(submission), name=f"faults-submit-{key}")
        self._pending.add(task)
        self._tasks[key] = task
        task.add_done_callback(self._pending.discard)
        return submission

    def burst(self, bank: str, count: int) -> list[Submission]:
        """``count`` submissions to ``bank`` at once: work in flight for a kill to interrupt."""
        return [self.submit(bank, self._accounts[bank]) for _ in range(count)]

    @property
    def acked(self) -> list[Submission]:
        return [s for s in self.submissions if s.acked]

    async def _tick(self) -> None:
        banks = sorted(self._accounts)
        interval = 1.0 / self._rate
        next_at = time.monotonic()
        while True:
            bank = banks[self._next_bank % len(banks)]
            self._next_bank += 1
            self.submit(bank, self._accounts[bank])
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _send(self, submission: Submission) -> None:
        give_up_at = time.monotonic() + self._give_up_after
        while True:
            submission.attempts += 1
            try:
                reply = await self._client.submit_signed(submission.signed)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in RETRYABLE and time.monotonic() < give_up_at:
                    await asyncio.sleep(_RETRY_PAUSE)
                    continue
                submission.error = f"{exc.code().name}: {exc.details()}"
                return
            submission.request_ids.add(reply.status.id)
            submission.acked = True
            return
