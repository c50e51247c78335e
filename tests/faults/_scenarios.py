"""The fault scenarios: a steady load through the real stack while processes and NATS nodes die.

``single_node``: one nats-server with a file store; the banks run their systems in one process and
two adapter instances each (``greenchannel adapter --config``) on the same inbox consumers. The
broker is SIGKILLed and restarted, the banks' systems process is SIGKILLed while their adapters
hold orders, one adapter instance is SIGKILLed while it holds GREEN orders (its standby takes them
over, the killed one comes back only after), the nats-server is SIGKILLed and restarted.
``cluster``: three nats-servers with R3 streams and KV; one node is killed, restarted and caught
up, then another. After every fault each request acknowledged so far must reach a final state;
at the end the banks' own records, the ledger and the deadline probes are audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from greenchannel.v1 import common_pb2

from agencies import _seed as seed
from broker.embedded import EmbeddedNats, EmbeddedNatsConfig
from broker.protocol import INBOX_STREAM, WATCH_STREAM, NatsSettings, connect, inbox_consumer
from tests._cluster import EmbeddedCluster, EmbeddedClusterConfig

from ._checks import (
    FINAL,
    Kill,
    Redelivery,
    Tracker,
    audit_banks,
    audit_ledger,
    diagnose,
    redelivery_times,
    sent_requests,
    timeline_duplicates,
)
from ._load import Load, Submission
from ._procs import ManagedProcess
from ._settings import FaultSettings
from ._world import LOAD_HOLDER, FaultWorld, WorldConfig, fault_authorization

__all__ = ["ScenarioReport", "run_cluster", "run_single_node"]

S = common_pb2
PROBE_BANK = "bank-abc"
"""Its adapter never runs: requests to it can only ever see their deadlines fire."""
KILL_BANK = "bank-icbc"
"""The bank whose orders are in flight when its systems or one of its adapters is killed."""
ADAPTER_INSTANCES = 2
"""Adapter processes per bank in the single-node scenario: one active-active standby each."""


@dataclass(kw_only=True)
class ScenarioReport:
    """What one scenario did and found."""

    scenario: str
    settings: FaultSettings
    requests: int = 0
    """Load requests the broker acknowledged."""
    probes: int = 0
    """Deadline probes acknowledged."""
    kills: Counter[str] = field(default_factory=Counter)
    """SIGKILLs by target (broker, agencies, nats, node)."""
    lost: list[str] = field(default_factory=list)
    """Acknowledged requests with no final state, or EXECUTED without the bank having executed them."""
    duplicated: list[str] = field(default_factory=list)
    """Requests created, executed, held or recorded more than once."""
    refused: list[str] = field(default_factory=list)
    """Submissions never acknowledged (a non-transient error, or retries ran out)."""
    not_executed: list[str] = field(default_factory=list)
    """Final, but not EXECUTED (every load request should be)."""
    escalated: int = 0
    """Probes whose deliver deadline fired (ESCALATED)."""
    missed_deadlines: list[str] = field(default_factory=list)
    """Probes whose deliver deadline never fired."""
    ledger_ok: bool = False
    """The export verifies: every link of the chain and every checkpoint signature."""
    ledger_records: int = 0
    ledger_problems: list[str] = field(default_factory=list)
    ledger_missing: list[str] = field(default_factory=list)
    """Executed requests whose REQUEST or EXECUTED entry the (verified) ledger lacks."""
    resumed: int = 0
    """Requests whose bank call an adapter started more than once (after a kill, by the same
    instance or another one); the bank's own journal shows each executed once."""
    taken_over: int = 0
    """Requests one adapter instance started and never finished (it was killed) that another
    instance finished: the standby's takeover, idempotent through the bank's request id."""
    in_flight: dict[str, list[int]] = field(default_factory=dict)
    """Per kill kind (agencies, adapter): GREEN inbox messages held unacknowledged at each kill."""
    watch_gaps: list[str] = field(default_factory=list)
    """Requests final by Get whose final state the Watch never showed."""
    watch_repeats: list[str] = field(default_factory=list)
    """Records the Watch showed twice or out of cursor order (request:cursor)."""
    watch_resumes: int = 0
    """Times the Watch had to be opened again (the broker was down)."""
    diagnosis: str = ""
    """Streams and consumers as the server saw them when something was left open."""
    after_fault: list[str] = field(default_factory=list)
    """Per fault: how long until everything acknowledged before it was final."""
    redelivery: dict[str, list[Redelivery]] = field(default_factory=dict)
    """Per kill kind: seconds from each kill to the next event of each GREEN request in flight at
    it (see :func:`~tests.faults._checks.redelivery_times`). Reported, not judged: a machine's load
    moves it; what is judged is that nothing is lost or done twice."""
    notes: list[str] = field(default_factory=list)
    """Timings and observations worth a line in the summary."""
    seconds: float = 0.0

    def line(self) -> str:
        kills = sum(self.kills.values())
        detail = ",".join(f"{k}:{v}" for k, v in sorted(self.kills.items()))
        return (
            f"faults: scenario={self.scenario} level={self.settings.level} seed={self.settings.seed} "
            f"requests={self.requests} kills={kills} ({detail}) lost={len(self.lost)} "
            f"duplicated={len(self.duplicated)} watch_repeats={len(self.watch_repeats)} "
            f"escalations_ok={self.escalated}/{self.probes} "
            f"ledger={'verified' if self.ledger_ok else 'NOT VERIFIED'} ({self.ledger_records} entries, "
            f"{len(self.ledger_missing)} missing) "
            f"resumed={self.resumed} taken_over={self.taken_over} in_flight_at_kill={self.in_flight} "
            f"refused={len(self.refused)} "
            f"worst_green_redelivery={self.redelivery_summary()} seconds={self.seconds:.1f}"
        )

    def worst_redelivery(self) -> dict[str, float]:
        """Per kill kind with GREEN requests in flight: the longest kill-to-next-event time."""
        return {
            kind: max(r.since_kill for r in times) for kind, times in sorted(self.redelivery.items()) if times
        }

    def redelivery_summary(self) -> str:
        worst = self.worst_redelivery()
        return ",".join(f"{kind}:{seconds:.1f}s" for kind, seconds in worst.items()) or "none"

    def redelivery_lines(self) -> list[str]:
        """One line per kill kind: the worst and median times, from the kill and from the restart."""
        lines = []
        for kind, times in sorted(self.redelivery.items()):
            if not times:
                lines.append(f"GREEN redelivery after a {kind} kill: no GREEN request was in flight")
                continue
            from_kill = sorted(r.since_kill for r in times)
            from_back = sorted(r.since_back for r in times if r.since_back is not None)
            line = (
                f"GREEN redelivery after a {kind} kill: worst {from_kill[-1]:.2f}s after the kill "
                f"(median {from_kill[len(from_kill) // 2]:.2f}s) over {len(times)} requests in flight "
                f"at {self.kills[kind]} kills"
            )
            if from_back:
                line += f"; worst {from_back[-1]:.2f}s after the {kind} process was back"
            lines.append(line)
        return lines

    def failures(self) -> list[str]:
        problems = []
        if self.lost:
            problems.append(f"lost: {self.lost[:10]}")
        if self.duplicated:
            problems.append(f"duplicated: {sorted(set(self.duplicated))[:10]}")
        if self.refused:
            problems.append(f"refused: {self.refused[:5]}")
        if self.watch_gaps:
            problems.append(f"final but never shown on Watch: {self.watch_gaps[:10]}")
        if self.watch_repeats:
            problems.append(f"shown twice or out of order on Watch: {self.watch_repeats[:10]}")
        if self.not_executed:
            problems.append(f"final but not executed: {self.not_executed[:10]}")
        if self.escalated != self.probes:
            problems.append(
                f"deadlines that did not fire: {self.probes - self.escalated} of {self.probes}: "
                f"{self.missed_deadlines}"
            )
        if not self.ledger_ok:
            problems.append(f"ledger does not verify: {self.ledger_problems[:10]}")
        if self.ledger_missing:
            problems.append(f"missing from the ledger: {self.ledger_missing[:10]}")
        return problems


class _Run:
    """The load, the tracker and the faults of one scenario."""

    def __init__(
        self,
        world: FaultWorld,
        settings: FaultSettings,
        report: ScenarioReport,
        *,
        rate: float,
    ) -> None:
        self.world = world
        self.settings = settings
        self.report = report
        self.rng = random.Random(f"{settings.seed}/{report.scenario}")
        self.client = world.client(timeout=5.0)
        self.load = Load(
            self.client,
            case_prefix=f"FAULTS-{report.scenario.upper()}-{settings.seed}",
            accounts=world.accounts,
            holder=LOAD_HOLDER,
            rate=rate,
            per_case=settings.per_case,
        )
        self.tracker = Tracker(self.client)
        self.probes: list[Submission] = []
        self.nats_restarts: list[float] = []
        """Monotonic moments at which a killed nats-server (or cluster node) was back."""
        self.kill_times: list[Kill] = []
        """Every SIGKILL, when the process was gone: where redelivery times are measured from."""
        self.down: ManagedProcess | None = None
        """The adapter instance killed and not yet started again."""

    async def __aenter__(self) -> _Run:
        self.tracker.start()
        self.load.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the load (abandoning submissions still retrying), the Watch and the client. Idempotent."""
        await self.load.abort()
        await self.tracker.aclose()
        await self.client.aclose()

    def probe(self) -> None:
        """A STANDARD stop-payment to a bank nobody answers for: its deadlines must fire."""
        self.probes.append(
            self.load.submit(
                PROBE_BANK,
                seed.MULE_ABC_ACCOUNT,
                expect_execution=False,
                priority=S.PRIORITY_STANDARD,
                holder=seed.MULE_ABC_HOLDER,
            )
        )

    async def pause(self) -> None:
        await asyncio.sleep(self.rng.uniform(*self.settings.load_between))

    async def outage(self) -> None:
        await asyncio.sleep(self.rng.uniform(*self.settings.outage))

    async def fault(
        self,
        name: str,
        act: Callable[[], Awaitable[None]],
        *,
        whole: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Load for a while, a probe, the fault (kill and restart), then wait until everything
        acknowledged so far is final, and (``whole``) until the system has fully recovered."""
        await self.pause()
        self.probe()
        started = time.monotonic()
        await act()
        self.report.kills[name] += 1
        recovered = time.monotonic()
        # Everything submitted up to now, including what was retrying through the fault.
        submitted = list(self.load.submissions)

        async def settle() -> list[Submission]:
            await self.load.wait_acked(submitted, timeout=self.settings.settle_timeout)
            return await self.tracker.wait_final(submitted, timeout=self.settings.settle_timeout)

        if whole is None:
            open_ = await settle()
        else:
            open_, _ = await asyncio.gather(settle(), whole())
        self.report.after_fault.append(
            f"{name}: down and back in {recovered - started:.1f}s, "
            f"everything acknowledged final {time.monotonic() - recovered:.1f}s later"
        )
        if open_:
            self.report.diagnosis = await self.diagnose()
            raise AssertionError(
                f"after {name} kill {self.report.kills[name]}: {len(open_)} acknowledged requests "
                f"not final within {self.settings.settle_timeout}s, e.g. {open_[0].request_ids}"
                f"\n{self.report.diagnosis}\n{self.world.broker.tail()}\n{self.world.agencies.tail()}"
            )

    async def diagnose(self) -> str:
        """The server's view of streams and consumers, and (test entry only) the broker's tasks."""
        if "tests.faults._broker_entry" in self.world.broker.spec.argv and self.world.broker.signal(
            signal.SIGUSR1
        ):
            await asyncio.sleep(1.0)
        return await diagnose(self.world.nats_settings("faults-diagnose"))

    def killed(self, kind: str) -> None:
        """Note the moment a process of ``kind`` is gone (call right after the kill returns)."""
        self.kill_times.append(Kill(kind=kind, at=time.time()))

    def back(self) -> None:
        """Note the moment the last killed process is ready again (call right after its start)."""
        self.kill_times[-1] = replace(self.kill_times[-1], back=time.time())

    async def kill_broker(self) -> None:
        await self.world.broker.kill()
        self.killed("broker")
        await self.outage()
        await self.world.broker.start()
        self.back()

    async def kill_agencies(self) -> None:
        """Kill the agencies process (in the split shape: the banks' systems) while the adapter
        holds orders it has not answered yet."""
        self.load.burst(KILL_BANK, self.settings.burst)
        held = await _wait_held(self.world.nats_settings("faults-probe"), KILL_BANK, timeout=10.0)
        await self.world.agencies.kill()
        self.killed("agencies")
        self.report.in_flight.setdefault("agencies", []).append(held)
        await self.outage()
        await self.world.agencies.start()
        self.back()

    async def kill_adapter(self) -> None:
        """Kill one of the bank's adapter instances while they hold GREEN orders; it stays down.

        What it held comes back to the other instance after the inbox ack wait: the time the
        report measures is the standby's, not a restart's (:meth:`restart_adapter` comes after the
        fault has settled)."""
        instances = self.world.adapters[KILL_BANK]
        victim = instances[self.report.kills["adapter"] % len(instances)]
        self.load.burst(KILL_BANK, self.settings.burst)
        held = await _wait_held(self.world.nats_settings("faults-probe"), KILL_BANK, timeout=10.0)
        await victim.kill()
        self.killed("adapter")
        self.report.in_flight.setdefault("adapter", []).append(held)
        self.down = victim

    async def restart_adapter(self) -> None:
        """Start the instance :meth:`kill_adapter` left down, so the bank has its standby again."""
        if self.down is not None:
            await self.down.start()
            self.down = None

    async def finish(self, root: Path) -> None:
        """Stop the load; settle; audit broker, ledger and banks; stop the stack."""
        report, settings = self.report, self.settings
        began = time.monotonic()
        await self.load.stop()
        submissions = self.load.submissions
        load = [s for s in submissions if s.expect_execution]
        report.requests = sum(s.acked for s in load)
        report.probes = sum(s.acked for s in self.probes)
        report.refused = [f"{s.key}: {s.error}" for s in submissions if not s.acked]
        open_ = await self.tracker.wait_final(submissions, timeout=settings.settle_timeout)
        report.lost.extend(rid for s in open_ for rid in s.request_ids)
        if open_:
            report.diagnosis = await self.diagnose()
        missed = await self.tracker.wait_escalated(self.probes, timeout=settings.settle_timeout)
        report.escalated = report.probes - len(missed)
        report.missed_deadlines = [
            f"{rid} (submit attempts {s.attempts})" for s in missed for rid in s.request_ids
        ]
        # One logical submission answered with two request ids is a duplicate whatever follows.
        report.duplicated.extend(rid for s in submissions if len(s.request_ids) > 1 for rid in s.request_ids)
        known = {rid for s in submissions for rid in s.request_ids}
        executing = {rid for s in load for rid in s.request_ids}
        statuses = await sent_requests(self.client)
        report.redelivery = redelivery_times(
            [status for status in statuses if status.id in executing], self.kill_times
        )
        for status in statuses:
            if status.id not in known or timeline_duplicates(status):
                report.duplicated.append(status.id)
            elif (
                status.id in executing and status.state in FINAL and status.state != S.REQUEST_STATE_EXECUTED
            ):
                report.not_executed.append(f"{status.id}: {S.RequestState.Name(status.state)}")
        ledger = await audit_ledger(self.world, submissions, root / "ledger.jsonl")
        report.ledger_ok = ledger.ok
        report.ledger_records = ledger.records
        report.ledger_problems = ledger.problems
        report.ledger_missing = ledger.missing
        report.duplicated.extend(ledger.doubled)
        # The Watch trails Get by a moment (it re-opens its consumer after a NATS restart).
        for _ in range(20):
            if not self.tracker.watch_gaps(submissions):
                break
            await asyncio.sleep(0.5)
        report.watch_gaps = [
            f"{rid} (watch cursors {self.tracker.seen.get(rid)})"
            for rid in self.tracker.watch_gaps(submissions)
        ]
        report.watch_resumes = self.tracker.resumes
        report.watch_repeats = list(self.tracker.repeated)
        if self.tracker.late:
            # A retried intake re-appends a SUBMITTED record it could not write before: it lands
            # after the request's later events (broker/hub/_submit.py, Intake._finish).
            report.notes.append(
                f"watch showed {len(self.tracker.late)} SUBMITTED records behind later records "
                f"of their request: {self.tracker.late[:5]}"
            )
        report.notes.append(
            f"watch showed every event at most {self.tracker.max_lag:.1f}s after the broker took it"
        )
        for restarted in self.nats_restarts:
            quiet = self.tracker.first_update_after(restarted)
            report.notes.append(
                "watch spoke again "
                + (f"{quiet:.1f}s" if quiet is not None else "never")
                + " after a NATS (node) restart"
            )
        await self.aclose()
        await self.world.stop()
        banks = audit_banks(self.world, submissions)
        report.lost.extend(banks.not_executed)
        report.duplicated.extend(banks.duplicated)
        report.resumed = banks.resumed
        report.taken_over = banks.taken_over
        report.notes.append(f"settled, audited and stopped in {time.monotonic() - began:.1f}s")


async def _wait_held(settings: NatsSettings, bank: str, *, timeout: float) -> int:  # noqa: ASYNC109
    """Poll the bank's GREEN inbox consumer until its adapter holds unacked messages; how many."""
    nc = await connect(settings)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while True:
            info = await js.consumer_info(INBOX_STREAM, inbox_consumer(bank, "green"))
            held = int(info.num_ack_pending or 0)
            if held or time.monotonic() >= deadline:
                return held
            await asyncio.sleep(0.005)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def _share(total: int, rounds: int, round_: int) -> int:
    """How many of ``total`` faults fall in round ``round_`` of ``rounds`` (spread evenly)."""
    return total // rounds + (1 if round_ < total % rounds else 0)


def _node_config(root: Path, store_dir: Path | None = None) -> EmbeddedNatsConfig:
    # Restarted while this process runs gRPC: a preexec_fn fork would crash now and then (see
    # EmbeddedNatsConfig.parent_death_signal). The scenarios stop their servers themselves.
    # The per-agency accounts of a real deployment: each adapter reaches only its own inbox.
    return EmbeddedNatsConfig(
        store_dir=store_dir, parent_death_signal=False, authorization=fault_authorization(root)
    )


async def run_single_node(settings: FaultSettings, root: Path) -> ScenarioReport:
    """Broker, agencies and the one nats-server killed in turn, under load."""
    report = ScenarioReport(scenario="single-node", settings=settings)
    began = time.monotonic()
    async with EmbeddedNats(_node_config(root, store_dir=root / "nats")) as nats_server:
        config = WorldConfig(
            root=root,
            nats_url=nats_server.url,
            ack_wait=settings.ack_wait,
            broker_ack_wait=settings.broker_ack_wait,
            adapter_instances=ADAPTER_INSTANCES,
        )
        async with FaultWorld(config) as world:
            report.notes.append(f"stack up in {time.monotonic() - began:.1f}s")
            async with _Run(world, settings, report, rate=settings.rate) as run:

                async def kill_nats() -> None:
                    await nats_server.kill()
                    run.killed("nats")
                    await run.outage()
                    await nats_server.restart()
                    run.back()
                    run.nats_restarts.append(time.monotonic())

                # Round after round: NATS, agencies, adapter, broker. NATS first, so the Watch that
                # was open all along has to resume by itself (a broker restart makes the client
                # re-open it).
                kills = (settings.nats_kills, settings.agencies_kills, settings.adapter_kills)
                rounds = max(*kills, settings.broker_kills)
                for round_ in range(rounds):
                    if round_ < settings.nats_kills:
                        await run.fault("nats", kill_nats)
                    if round_ < settings.agencies_kills:
                        await run.fault("agencies", run.kill_agencies)
                    if round_ < settings.adapter_kills:
                        await run.fault("adapter", run.kill_adapter)
                        await run.restart_adapter()
                    for _ in range(_share(settings.broker_kills, rounds, round_)):
                        await run.fault("broker", run.kill_broker)
                await run.pause()
                await run.finish(root)
    report.seconds = time.monotonic() - began
    return report


async def run_cluster(settings: FaultSettings, root: Path) -> ScenarioReport:
    """Three nats-servers, R3 streams and KV: one node killed and brought back, then another."""
    report = ScenarioReport(scenario="cluster", settings=settings)
    began = time.monotonic()
    cluster_config = EmbeddedClusterConfig(store_dir=root / "nats", name="faults", node=_node_config(root))
    async with EmbeddedCluster(cluster_config) as cluster:
        config = WorldConfig(
            root=root,
            nats_url=cluster.url,
            replicas=3,
            ack_wait=settings.ack_wait,
            broker_ack_wait=settings.broker_ack_wait,
        )
        async with FaultWorld(config) as world:
            await cluster.wait_current(timeout=30.0)
            report.notes.append(f"stack up in {time.monotonic() - began:.1f}s")
            async with _Run(world, settings, report, rate=settings.cluster_rate) as run:
                victim = -1
                for round_ in range(2 * settings.cluster_rounds):
                    # First the node leading the request journal, then one that differs from the last.
                    leader = await cluster.stream_leader(WATCH_STREAM if round_ % 2 == 0 else INBOX_STREAM)
                    victim = leader if leader != victim else (victim + 1) % len(cluster.nodes)
                    target = victim

                    async def kill_node(index: int = target) -> None:
                        await cluster.kill(index)
                        run.killed("node")
                        # The load runs on two nodes for a while: degraded, not a blip.
                        await asyncio.sleep(run.rng.uniform(*settings.node_down))
                        await cluster.restart(index)
                        run.back()
                        run.nats_restarts.append(time.monotonic())

                    async def caught_up(index: int = target) -> None:
                        began = time.monotonic()
                        await cluster.wait_current(timeout=60.0)
                        run.report.notes.append(
                            f"node {index} caught up {time.monotonic() - began:.1f}s after restart"
                        )

                    await run.fault("node", kill_node, whole=caught_up)
                await run.pause()
                await run.finish(root)
    report.seconds = time.monotonic() - began
    return report
