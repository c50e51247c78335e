"""The refusal audit's bounding rule: burst singles per key and window, the rest in one summary."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
from greenchannel.v1 import ledger_pb2

from broker.hub._refusals import CallFacts, RefusalAudit, RefusalAuditConfig
from broker.protocol import ManualClock

T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


class Ledger:
    """Collects what the audit writes (the real writer is tested against NATS in integration)."""

    def __init__(self) -> None:
        self.records: list[tuple[str | None, ledger_pb2.Refusal, datetime]] = []

    async def record_refusal(
        self, *, record_id: str, caller: str | None, refusal: ledger_pb2.Refusal, at: datetime
    ) -> None:
        self.records.append((caller, refusal, at))


def _refuse(audit: RefusalAudit, caller: str | None, reason: str = "TYPE_NOT_ALLOWED", n: int = 1) -> None:
    for _ in range(n):
        audit.refused(
            method="Submit",
            code=grpc.StatusCode.PERMISSION_DENIED,
            reason=reason,
            facts=CallFacts(caller=caller, message_type="FREEZE"),
        )


async def test_each_window_records_burst_singles_and_one_summary_of_the_rest() -> None:
    clock = ManualClock(T0)
    ledger = Ledger()
    config = RefusalAuditConfig(burst=3, window=timedelta(minutes=1), flush_interval=3600)
    async with RefusalAudit(ledger, clock, config) as audit:
        _refuse(audit, "bank-icbc", n=10)
        _refuse(audit, "bank-ccb", n=2)
        clock.advance(timedelta(seconds=61))
        audit.flush()  # the first windows ended
        _refuse(audit, "bank-icbc", n=4)  # a new window
    counts = [(caller, r.count, r.HasField("since")) for caller, r, _ in ledger.records]
    assert counts.count(("bank-icbc", 1, False)) == 6
    assert counts.count(("bank-ccb", 1, False)) == 2
    assert sorted(c for caller, c, summary in counts if summary) == [1, 7]
    assert sum(c for _, c, _ in counts) == 16
    assert audit.counted == 16


async def test_codes_that_are_not_refusals_are_not_recorded() -> None:
    ledger = Ledger()
    async with RefusalAudit(ledger, ManualClock(T0)) as audit:
        for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL):
            audit.refused(method="Get", code=code, reason="X", facts=CallFacts())
    assert ledger.records == []


async def test_keys_past_the_bound_share_one_overflow_summary() -> None:
    ledger = Ledger()
    config = RefusalAuditConfig(burst=1, max_keys=2, flush_interval=3600)
    async with RefusalAudit(ledger, ManualClock(T0), config) as audit:
        for n in range(5):
            _refuse(audit, None, reason=f"REASON_{n}")
    singles = [r.reason for _, r, _ in ledger.records if not r.HasField("since")]
    summaries = [(r.reason, r.count) for _, r, _ in ledger.records if r.HasField("since")]
    assert singles == ["REASON_0", "REASON_1"]
    assert summaries == [("*", 3)]


async def test_a_ledger_that_never_answers_does_not_hold_up_shutdown() -> None:
    class Stuck:
        async def record_refusal(self, **_: object) -> None:
            await asyncio.Event().wait()

    config = RefusalAuditConfig(shutdown_timeout=0.2, flush_interval=3600)
    audit = RefusalAudit(Stuck(), ManualClock(T0), config)
    async with audit:
        _refuse(audit, "bank-icbc", n=3)
    assert audit.lost >= 2
