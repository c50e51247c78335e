"""What must hold after every fault: nothing lost, nothing twice, every deadline fired, a sound ledger.

"Lost" and "final" are read from the broker (Bus API); "executed twice" from the reference bank's
own database (its execution journal and holds) and from the ledger; "the ledger verifies" from an
export as a regulator, proved offline exactly as ``greenchannel ledger verify`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import bus_pb2, common_pb2, ledger_pb2, lifecycle_pb2

from adapters import ExecutionRecord, ExecutionState, IdempotencyStore
from agencies.bank import BankConfig, BankCore
from broker.client import BusClient, export_ledger, read_ledger_file, registry_keys
from broker.protocol import NatsSettings, SystemClock, connect, load_agency_signing_key, verify_chain

from ._load import RETRYABLE, Submission
from ._world import REGULATOR, FaultWorld

__all__ = [
    "FINAL",
    "BankAudit",
    "Kill",
    "LedgerAudit",
    "Redelivery",
    "Tracker",
    "audit_banks",
    "audit_ledger",
    "redelivery_times",
]

S = common_pb2
FINAL = frozenset(
    {
        S.REQUEST_STATE_EXECUTED,
        S.REQUEST_STATE_PARTIALLY_EXECUTED,
        S.REQUEST_STATE_REJECTED,
        S.REQUEST_STATE_FAILED,
        S.REQUEST_STATE_CANCELLED,
        S.REQUEST_STATE_RELEASED,
        S.REQUEST_STATE_EXPIRED,
    }
)
"""An outcome was reached (a stop-payment's hold may live on, but the request is answered)."""
_OUTCOMES = frozenset(
    {
        S.REQUEST_STATE_EXECUTED,
        S.REQUEST_STATE_PARTIALLY_EXECUTED,
        S.REQUEST_STATE_REJECTED,
        S.REQUEST_STATE_FAILED,
    }
)
_POLL = 0.3
_AGENCY_SIDE = frozenset({"agencies", "adapter"})
"""Kill kinds after which a request moves again by its recipient signing its next event."""


def events_of(status: lifecycle_pb2.RequestStatus) -> list[lifecycle_pb2.LifecycleEvent]:
    return [lifecycle_pb2.LifecycleEvent.FromString(r.event.payload) for r in status.events]


def deliver_breached(status: lifecycle_pb2.RequestStatus) -> bool:
    return any(e.state == S.REQUEST_STATE_ESCALATED and e.phase == S.PHASE_DELIVER for e in events_of(status))


class Tracker:
    """Follows the police's requests: one Watch stream, plus a slow Get sweep over what is still open.

    The Watch is what an agency sees; it is resumed from its cursor whenever it breaks, and every
    record must come once, in cursor order (a repeat is counted). It is not trusted alone: every
    ``sweep_interval`` the oldest open requests are read with Get, a few at a time (each Get costs
    the broker a token check and a KV read; polling everything would load it more than the load
    does), so a Watch that misses a record shows up as a watch gap instead of a hung run.
    """

    def __init__(self, client: BusClient, *, sweep_interval: float = 0.5, sweep_size: int = 16) -> None:
        self._client = client
        self._sweep_interval = sweep_interval
        self._sweep_size = sweep_size
        self.watched: dict[str, S.RequestState.ValueType] = {}
        """Request id -> state after the last event the Watch showed."""
        self.shown_final: set[str] = set()
        """Requests the Watch has shown in a final state (a record may come late, see ``late``)."""
        self.late: list[str] = []
        """SUBMITTED records shown after later records of their request (request:cursor:after
        state). Not lost or repeated, but a watcher following ``state`` sees the request go back."""
        self.got: dict[str, lifecycle_pb2.RequestStatus] = {}
        """Request id -> status read by Get once it was final (or breached, for probes)."""
        self.breached: set[str] = set()
        """Requests whose deliver deadline breach (ESCALATED) the Watch showed."""
        self.seen: dict[str, list[int]] = {}
        self.cursor = 0
        self.resumes = 0
        self.repeated: list[str] = []
        """Records the Watch showed at or before a cursor it had already passed (request:cursor)."""
        self.update_times: list[float] = []
        """Monotonic time of every record the Watch showed: how soon it spoke again after a fault."""
        self.max_lag = 0.0
        """Longest time from the broker accepting an event to the Watch showing it (wall clocks of
        one machine): a Watch that stalls after a fault shows here."""
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._follow(), name="faults-watch")]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _follow(self) -> None:
        while True:
            try:
                # Unscoped: every request the police sent (each scenario has a NATS of its own).
                async for update in self._client.watch(after_cursor=self.cursor):
                    self.update_times.append(time.monotonic())
                    if update.cursor <= self.cursor:
                        self.repeated.append(f"{update.request_id}:{update.cursor}")
                        continue
                    self.cursor = update.cursor
                    event = lifecycle_pb2.LifecycleEvent.FromString(update.event.event.payload)
                    if event.state == S.REQUEST_STATE_SUBMITTED and update.request_id in self.watched:
                        # Written late, behind later records: its age says nothing about the Watch.
                        state = S.RequestState.Name(self.watched[update.request_id])
                        self.late.append(f"{update.request_id}:{update.cursor}:after {state}")
                    else:
                        accepted = update.event.recorded_at.ToDatetime(tzinfo=UTC).timestamp()
                        self.max_lag = max(self.max_lag, time.time() - accepted)
                    if update.state in FINAL:
                        self.shown_final.add(update.request_id)
                    self.watched[update.request_id] = update.state
                    self.seen.setdefault(update.request_id, []).append(update.cursor)
                    if event.state == S.REQUEST_STATE_ESCALATED and event.phase == S.PHASE_DELIVER:
                        self.breached.add(update.request_id)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise
            # The broker is down for longer than BusClient's own resumes cover: keep trying.
            self.resumes += 1
            await asyncio.sleep(_POLL)

    def first_update_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` (monotonic) to the first record the Watch showed after it."""
        later = [t for t in self.update_times if t >= moment]
        return min(later) - moment if later else None

    def watch_final(self, request_id: str) -> bool:
        return request_id in self.shown_final

    def final(self, request_id: str) -> bool:
        return self.watch_final(request_id) or request_id in self.got

    def watch_gaps(self, submissions: list[Submission]) -> list[str]:
        """Load requests final by Get that the Watch has not shown final."""
        return sorted(
            rid
            for s in submissions
            if s.acked and s.expect_execution
            for rid in s.request_ids
            if rid in self.got and not self.watch_final(rid)
        )

    async def wait_final(self, submissions: list[Submission], *, timeout: float) -> list[Submission]:  # noqa: ASYNC109
        """Wait until every acknowledged load submission is final; returns those that are not."""

        def open_() -> list[str]:
            return [
                rid
                for s in submissions
                if s.acked and s.expect_execution
                for rid in s.request_ids
                if not self.final(rid)
            ]

        remaining = await self._wait(open_, lambda status: status.state in FINAL, timeout)
        return [s for s in submissions if s.request_ids & remaining]

    async def wait_escalated(self, probes: list[Submission], *, timeout: float) -> list[Submission]:  # noqa: ASYNC109
        """Wait until every acknowledged probe has its deliver deadline breach; returns the others."""

        def open_() -> list[str]:
            return [
                rid
                for s in probes
                if s.acked
                for rid in s.request_ids
                if rid not in self.breached and not (rid in self.got and deliver_breached(self.got[rid]))
            ]

        remaining = await self._wait(open_, deliver_breached, timeout)
        return [s for s in probes if s.request_ids & remaining]

    async def _wait(
        self,
        open_: Callable[[], list[str]],
        done: Callable[[lifecycle_pb2.RequestStatus], bool],
        timeout: float,  # noqa: ASYNC109
    ) -> set[str]:
        self.start()
        deadline = time.monotonic() + timeout
        next_sweep = time.monotonic() + self._sweep_interval
        while (remaining := open_()) and time.monotonic() < deadline:
            if time.monotonic() >= next_sweep:
                await self._sweep(sorted(remaining)[: self._sweep_size], done)
                next_sweep = time.monotonic() + self._sweep_interval
            else:
                await asyncio.sleep(0.05)
        if remaining:
            await self._sweep(remaining, done)  # a last look at each before calling it lost
        return set(open_())

    async def _sweep(
        self, request_ids: list[str], done: Callable[[lifecycle_pb2.RequestStatus], bool]
    ) -> None:
        semaphore = asyncio.Semaphore(8)

        async def look(request_id: str) -> None:
            async with semaphore:
                try:
                    status = await self._client.get(request_id)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in RETRYABLE:
                        return
                    raise
            if done(status):
                self.got[request_id] = status

        await asyncio.gather(*(look(rid) for rid in request_ids))


async def sent_requests(client: BusClient) -> list[lifecycle_pb2.RequestStatus]:
    """Every request the broker holds that the client's agency sent (all pages)."""
    found: list[lifecycle_pb2.RequestStatus] = []
    token = ""
    while True:
        # The largest page a client may ask for: the broker keeps it under gRPC's 4 MiB default.
        page = await client.list(role=bus_pb2.ROLE_SENDER, page_size=1000, page_token=token)
        found.extend(page.requests)
        token = page.next_page_token
        if not token:
            return found


@dataclass(frozen=True, kw_only=True)
class Kill:
    """One SIGKILL: what was killed, when, and when it was back (wall clock, as events' timestamps)."""

    kind: str
    """broker, agencies, nats or node."""
    at: float
    """``time.time()`` right after the process was gone."""
    back: float | None = None
    """``time.time()`` once the restarted process was ready again (its ready line, or NATS answering)."""


@dataclass(frozen=True, kw_only=True)
class Redelivery:
    """One GREEN request in flight at a kill, and when it moved again."""

    since_kill: float
    """Seconds from the kill to the request's next event."""
    since_back: float | None
    """Seconds from the killed process being back to that event (0 if it came before): what the
    ack wait costs on top of restarting the process."""


def _seconds(stamp: Timestamp) -> float:
    return stamp.ToDatetime(tzinfo=UTC).timestamp()


def redelivery_times(
    statuses: list[lifecycle_pb2.RequestStatus], kills: list[Kill]
) -> dict[str, list[Redelivery]]:
    """Per kill kind: each GREEN request in flight at a kill (submitted before it, no outcome yet),
    and how long until its next event.

    After an agencies kill that is the first event the restarted adapter signed for the request
    (the event's own ``at``): for a message the killed adapter held, its redelivery after the inbox
    ack wait, plus the moment it takes to verify and answer it. After a broker, NATS or node kill it
    is the broker recording the request's next event (``recorded_at``), once the killed part is
    back and its consumers deliver again.
    """
    times: dict[str, list[Redelivery]] = {}
    for kill in kills:
        found = times.setdefault(kill.kind, [])
        for status in statuses:
            if status.priority != S.PRIORITY_GREEN:
                continue
            records = [
                (_seconds(r.recorded_at), lifecycle_pb2.LifecycleEvent.FromString(r.event.payload))
                for r in status.events
            ]
            submitted = any(recorded < kill.at for recorded, _ in records)
            if kill.kind in _AGENCY_SIDE:
                answered = any(e.state in _OUTCOMES and _seconds(e.at) < kill.at for _, e in records)
                after = [
                    _seconds(e.at)
                    for _, e in records
                    if e.actor == status.recipient and _seconds(e.at) >= kill.at
                ]
            else:
                answered = any(e.state in FINAL and recorded < kill.at for recorded, e in records)
                after = [recorded for recorded, _ in records if recorded >= kill.at]
            if submitted and not answered and after:
                moved = min(after)
                found.append(
                    Redelivery(
                        since_kill=moved - kill.at,
                        since_back=None if kill.back is None else max(0.0, moved - kill.back),
                    )
                )
    return times


def timeline_duplicates(status: lifecycle_pb2.RequestStatus) -> int:
    """Outcome events beyond the first in a request's timeline (an answer recorded twice)."""
    outcomes = [e for e in events_of(status) if e.state in _OUTCOMES]
    return max(0, len(outcomes) - 1)


@dataclass(kw_only=True)
class BankAudit:
    """The reference banks' own view of the load."""

    executed: int = 0
    """Load requests with exactly one journal row and one hold of the asked amount."""
    not_executed: list[str] = field(default_factory=list)
    """Request ids the broker calls EXECUTED with no journal row at the bank."""
    duplicated: list[str] = field(default_factory=list)
    """Request ids journalled or held more than once, or holds no load request accounts for."""
    resumed: int = 0
    """Requests whose bank call was started more than once: by one adapter instance again after
    it crashed mid-execution, or by a second instance after the first died."""
    taken_over: int = 0
    """Requests one instance started and never finished that another instance finished."""


def audit_banks(world: FaultWorld, submissions: list[Submission]) -> BankAudit:
    """Read each bank's database and each adapter's state. Run after the agencies process stopped."""
    audit = BankAudit()
    clock = SystemClock()
    for bank, account in world.accounts.items():
        mine = [s for s in submissions if s.bank == bank and s.acked and s.expect_execution]
        expected = {rid for s in mine for rid in s.request_ids}
        with BankCore(BankConfig(agency_id=bank, database=world.bank_database(bank)), clock=clock) as core:
            for request_id in sorted(expected):
                journal = core.execution_count(request_id)
                holds = core.holds_for(request_id)
                if journal == 0 and not holds:
                    audit.not_executed.append(request_id)
                elif journal > 1 or len(holds) > 1:
                    audit.duplicated.append(request_id)
                elif len(holds) == 1 and holds[0].amount == 100:
                    audit.executed += 1
                else:
                    audit.not_executed.append(request_id)
            # A hold for a request id the load never saw: a second request made from one submission.
            audit.duplicated.extend(
                hold.request_id for hold in core.holds_on(account) if hold.request_id not in expected
            )
        journals = _journals(world, bank, expected, clock)
        for request_id in expected:
            records = [journal[request_id] for journal in journals if request_id in journal]
            if sum(record.starts for record in records) > 1:
                audit.resumed += 1
            states = {record.state for record in records if record.starts > 0}
            if len(records) > 1 and states == {ExecutionState.STARTED, ExecutionState.TERMINAL}:
                audit.taken_over += 1
    return audit


def _journals(
    world: FaultWorld, bank: str, request_ids: set[str], clock: SystemClock
) -> list[dict[str, ExecutionRecord]]:
    """Each adapter instance's journal entries for ``request_ids``."""
    journals = []
    for state_dir in world.adapter_states(bank):
        path = state_dir / "idempotency.sqlite3"
        if not path.exists():
            continue
        with IdempotencyStore(path, clock=clock) as store:
            journals.append({rid: record for rid in request_ids if (record := store.get(rid)) is not None})
    return journals


@dataclass(kw_only=True)
class LedgerAudit:
    """An export as the regulator, verified offline."""

    ok: bool
    """The chain and every checkpoint verify."""
    records: int
    """Entries exported."""
    problems: list[str]
    """What did not verify."""
    missing: list[str]
    """Executed load requests with no EXECUTED entry in the ledger."""
    doubled: list[str]
    """Load requests with more than one REQUEST or EXECUTED entry."""


async def audit_ledger(
    world: FaultWorld,
    submissions: list[Submission],
    out: Path,
    *,
    timeout: float = 20.0,  # noqa: ASYNC109
) -> LedgerAudit:
    """Export as ``regulator-pboc`` until every executed request is in it (the ledger trails a
    little behind the events), then verify the chain and count entries per request."""
    key = load_agency_signing_key(world.keys_dir, REGULATOR)
    keys = registry_keys(world.directory, world.keys_dir)
    executed = {rid for s in submissions if s.acked and s.expect_execution for rid in s.request_ids}
    submitted = {rid for s in submissions if s.acked for rid in s.request_ids}
    deadline = time.monotonic() + timeout
    while True:
        await export_ledger(broker=world.broker_address, agency_id=REGULATOR, signing_key=key, out=out)
        ledger = read_ledger_file(out)
        requests: Counter[str] = Counter()
        outcomes: Counter[str] = Counter()
        for record in ledger.records:
            if record.entry is None:
                continue
            entry = ledger_pb2.LedgerEntry.FromString(record.entry)
            if entry.kind == ledger_pb2.LEDGER_ENTRY_KIND_REQUEST:
                requests[entry.request_id] += 1
            elif entry.kind == ledger_pb2.LEDGER_ENTRY_KIND_EVENT and entry.state == S.REQUEST_STATE_EXECUTED:
                outcomes[entry.request_id] += 1
        missing = sorted(
            f"{rid} (request entries {requests[rid]}, executed entries {outcomes[rid]})"
            for rid in executed
            if outcomes[rid] == 0 or requests[rid] == 0
        )
        if not missing or time.monotonic() >= deadline:
            break
        await asyncio.sleep(1.0)
    report = verify_chain(ledger.records, ledger.checkpoints, keys=keys)
    doubled = sorted(rid for rid in submitted if requests[rid] > 1 or outcomes[rid] > 1)
    problems = [str(p) for p in report.problems] + [f"line {n}: {why}" for n, why in ledger.unreadable]
    return LedgerAudit(
        ok=report.ok and not ledger.unreadable,
        records=report.records,
        problems=problems,
        missing=missing,
        doubled=doubled,
    )


async def diagnose(settings: NatsSettings) -> str:
    """Streams and durable consumers as the server sees them: where a stuck request waits."""
    lines: list[str] = []
    nc = await connect(settings)
    try:
        js = nc.jetstream(timeout=5.0)
        for stream in await js.streams_info():
            name = stream.config.name or "?"
            leader = stream.cluster.leader if stream.cluster else None
            peers = (
                ",".join(
                    f"{p.name}:{'cur' if p.current else 'lag'}{'/off' if p.offline else ''}"
                    for p in stream.cluster.replicas or []
                )
                if stream.cluster
                else ""
            )
            lines.append(f"stream {name}: msgs={stream.state.messages} leader={leader} peers=[{peers}]")
            if name.startswith("KV_"):
                continue
            for info in await js.consumers_info(name):
                if not info.config.durable_name:
                    continue
                c_leader = info.cluster.leader if info.cluster else None
                lines.append(
                    f"  consumer {info.name}: pending={info.num_pending} ack_pending={info.num_ack_pending} "
                    f"redelivered={info.num_redelivered} waiting={info.num_waiting} leader={c_leader}"
                )
    except Exception as exc:  # a diagnosis must never hide the failure it explains
        lines.append(f"(diagnosis failed: {type(exc).__name__}: {exc})")
    finally:
        await nc.close()
    return "\n".join(lines)
