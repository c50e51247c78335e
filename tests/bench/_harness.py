"""What the end-to-end benchmarks share: a multi-process bus, load generators, and reporting.

:class:`BenchWorld` runs the bus as it is deployed, one process per role, on this machine:

* ``nats-server`` (the embedded binary, file store, ``sync_interval: always``);
* the broker, ``greenchannel broker`` (its own interpreter);
* the agency side, ``python -m tests.bench._agencies``: the reference bank's core as a gRPC server
  and its adapter (its own interpreter);
* this process: the police submitter, a :class:`~broker.client.BusClient` with every signature
  on, which follows its requests through ONE Watch over all of its own requests.

Latencies are wall time in this process from the instant a request was due to be sent (open
loop: its slot in the schedule, so a generator that falls behind does not hide queueing) to the
instant the Watch delivered its EXECUTED (or PARTIALLY_EXECUTED) event. Each process's CPU time
and memory are read from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from greenchannel.v1 import bus_pb2, common_pb2, lifecycle_pb2, requests_pb2
from nats.aio.client import Client

from broker.client import BusClient
from broker.embedded import EmbeddedNats, EmbeddedNatsConfig
from broker.protocol import NatsSettings, SystemClock, connect, ensure_agency_keys, load_agency_signing_key

from ._agencies import BENCH_HOLDER, bench_account

__all__ = [
    "BANK",
    "DIRECTORY",
    "POLICE",
    "STAGES",
    "BenchWorld",
    "Completions",
    "LoadResult",
    "ProcessMeter",
    "Trace",
    "WorldConfig",
    "closed_loop",
    "cpu_seconds",
    "describe",
    "latency_summary",
    "machine_busy_seconds",
    "open_loop",
    "print_table",
    "quantile",
    "rss_mb",
    "stop_payment_for",
    "stream_writes",
    "write_json",
]

_REPO = Path(__file__).resolve().parents[2]
DIRECTORY = _REPO / "agencies" / "directory.toml"
POLICE = "police-310115"
BANK = "bank-icbc"

_DONE = {common_pb2.REQUEST_STATE_EXECUTED, common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED}
_FAILED = {
    common_pb2.REQUEST_STATE_REJECTED,
    common_pb2.REQUEST_STATE_FAILED,
    common_pb2.REQUEST_STATE_CANCELLED,
}
_CLK_TCK = os.sysconf("SC_CLK_TCK")
# Completions over (offer + drain) of an open loop that kept up: a 10 s step drained within the
# 2 s p99 limit reaches 10/12 of its offer.
_KEPT_UP = 0.8


# -- numbers ----------------------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_summary(values_ms: Sequence[float], prefix: str = "") -> dict[str, float]:
    """p50 / p95 / p99 / max of latencies in milliseconds."""
    return {
        f"{prefix}p50_ms": statistics.median(values_ms) if values_ms else float("nan"),
        f"{prefix}p95_ms": quantile(values_ms, 0.95),
        f"{prefix}p99_ms": quantile(values_ms, 0.99),
        f"{prefix}max_ms": max(values_ms) if values_ms else float("nan"),
    }


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (``VmRSS``), NaN when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far, all threads."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all processes on this machine have used (``/proc/stat``, every CPU)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


class ProcessMeter:
    """CPU seconds each named process used between :meth:`start` and :meth:`stop`, and what the
    rest of the machine used meanwhile (anything else running skews a benchmark: it is reported)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
        self._start: dict[str, float] = {}
        self._busy = 0.0
        self._wall = 0.0
        self.used: dict[str, float] = {}
        self.foreign = 0.0
        self.wall = 0.0

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._busy = machine_busy_seconds()
        self._start = {name: cpu_seconds(pid) for name, pid in self._pids.items()}

    def stop(self) -> None:
        self.wall = time.perf_counter() - self._wall
        self.used = {name: cpu_seconds(pid) - self._start[name] for name, pid in self._pids.items()}
        busy = machine_busy_seconds() - self._busy
        self.foreign = max(0.0, busy - sum(self.used.values()))

    @property
    def foreign_share(self) -> float:
        """Share of the machine's CPUs used by processes outside the benchmark."""
        return self.foreign / max(self.wall, 1e-9) / (os.cpu_count() or 1)


async def stream_writes(nc: Client) -> dict[str, int]:
    """Per stream, how many messages were ever written (its last sequence)."""
    js = nc.jetstream()
    return {info.config.name or "?": info.state.last_seq for info in await js.streams_info()}


def print_table(title: str, rows: Iterable[tuple[str, object]]) -> None:
    """A two-column table: name, value (floats with three decimals)."""
    rows = list(rows)
    print(f"\n== {title}")
    width = max((len(name) for name, _ in rows), default=10)
    for name, value in rows:
        text = f"{value:12.3f}" if isinstance(value, float) else f"{value!s:>12}"
        print(f"{name:<{width}}  {text}")


def write_json(path: Path | None, result: Mapping[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")


def stop_payment_for(
    index: int, *, tag: str, accounts: int, minor_units: int = 10_000
) -> requests_pb2.Request:
    """A GREEN stop-payment of 100 CNY on benchmark account ``index``, with a case of its own."""
    return requests_pb2.Request(
        case_ref=common_pb2.CaseRef(
            case_number=f"BENCH-{tag}-{index:07d}",
            issuing_agency=POLICE,
            legal_instrument_id=f"BENCH-{tag}-{index:07d}",
            legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
        ),
        priority=common_pb2.PRIORITY_GREEN,
        stop_payment=requests_pb2.StopPayment(
            account=common_pb2.BankAccountRef(
                account_number=bench_account(index, accounts), holder_name=BENCH_HOLDER
            ),
            amount=common_pb2.Money(currency="CNY", minor_units=minor_units),
        ),
    )


# -- the world --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """Where and what a :class:`BenchWorld` runs."""

    root: Path
    """Directory for keys, NATS's store, the banks' databases and the processes' logs."""
    banks: tuple[str, ...] = (BANK,)
    """Banks whose reference system and adapter run (in one agency process)."""
    accounts: int = 1000
    """Benchmark accounts per bank; requests go round robin over them."""
    startup_timeout: float = 60.0
    """Seconds each child process gets to say it is ready."""
    sync_always: bool = True
    """nats-server fsyncs every write before its PubAck, as the broker runs it; False measures what
    that costs (the server then syncs in the background, as nats-server does by default)."""
    metrics: bool = False
    """The broker and the adapters count Prometheus metrics and serve them (on free ports): what
    that costs on the hot path (docs/metrics.md)."""


async def _ready_line(proc: asyncio.subprocess.Process, marker: str, within: float, log: Path) -> str:
    """The first stdout line containing ``marker``; the child's log in the error if it died first."""
    assert proc.stdout is not None

    async def read() -> str:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").strip()
            if marker in text:
                return text
        tail = (await asyncio.to_thread(log.read_text))[-4000:]
        raise RuntimeError(f"exited before ready ({proc.returncode}); log:\n{tail}")

    return await asyncio.wait_for(read(), within)


class BenchWorld:
    """``async with BenchWorld(config) as world``: NATS, broker and agencies each in its own process."""

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        self._exit = contextlib.AsyncExitStack()
        self.nats: EmbeddedNats | None = None
        self.broker_address = ""
        self.pids: dict[str, int] = {}
        self._procs: list[tuple[str, asyncio.subprocess.Process]] = []

    @property
    def keys_dir(self) -> Path:
        return self.config.root / "state"

    @property
    def nats_url(self) -> str:
        assert self.nats is not None, "the world is not running"
        return self.nats.url

    async def __aenter__(self) -> BenchWorld:
        try:
            await self._start()
        except BaseException:
            await self._exit.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._exit.aclose()

    async def _start(self) -> None:
        root = self.config.root
        (root / "logs").mkdir(parents=True, exist_ok=True)
        ensure_agency_keys(DIRECTORY, self.keys_dir, clock=SystemClock())
        self.nats = await self._exit.enter_async_context(
            EmbeddedNats(EmbeddedNatsConfig(store_dir=root / "nats", sync_always=self.config.sync_always))
        )
        self.pids["nats-server"] = self.nats.pid
        env = {**os.environ, "GREENCHANNEL_NATS_URL": self.nats.url}
        broker = await self._spawn(
            "broker",
            [
                *("-m", "broker.cli", "--state-dir", str(self.keys_dir), "--directory", str(DIRECTORY)),
                *("broker", "--listen", "127.0.0.1:0", "--no-reflection"),
                *(("--metrics-listen", "127.0.0.1:0") if self.config.metrics else ()),
            ],
            env,
            marker="listening on",
        )
        # "greenchannel broker listening on 127.0.0.1:PORT (NATS ...); Ctrl-C to stop"
        self.broker_address = broker.split("listening on ", 1)[1].split(" ", 1)[0]
        banks = [arg for bank in self.config.banks for arg in ("--bank", bank)]
        await self._spawn(
            "agencies",
            [
                *("-m", "tests.bench._agencies", "--nats", self.nats.url),
                *("--keys-dir", str(self.keys_dir), "--data-dir", str(root / "agencies")),
                *("--accounts", str(self.config.accounts), *banks),
                *(("--metrics",) if self.config.metrics else ()),
            ],
            env,
            marker="ready",
        )

    async def _spawn(self, name: str, args: list[str], env: dict[str, str], *, marker: str) -> str:
        log = self.config.root / "logs" / f"{name}.log"
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=env,
                cwd=_REPO,
            )
        self._exit.push_async_callback(self._stop, name, proc)
        self.pids[name] = proc.pid
        return await _ready_line(proc, marker, self.config.startup_timeout, log)

    async def _stop(self, name: str, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                print(f"bench: {name} did not stop on SIGTERM; killing it", file=sys.stderr)
                proc.kill()
                await proc.wait()

    def client(self, agency_id: str = POLICE) -> BusClient:
        key = load_agency_signing_key(self.keys_dir, agency_id)
        return BusClient(self.broker_address, agency_id=agency_id, signing_key=key, timeout=30.0, attempts=1)

    async def connect(self) -> Client:
        return await connect(NatsSettings.from_url(self.nats_url, name="bench-observer"))

    def rss(self) -> dict[str, float]:
        return {name: rss_mb(pid) for name, pid in self.pids.items()}


# -- following requests -----------------------------------------------------------------------------


@dataclass
class Trace:
    """What one Watch saw of a request: per state, the event's own time, the broker's recording
    time and when this process received it (all wall-clock seconds, one machine, one clock)."""

    at: dict[int, float] = field(default_factory=dict)
    recorded: dict[int, float] = field(default_factory=dict)
    seen: dict[int, float] = field(default_factory=dict)
    seen_perf: float = 0.0
    """``perf_counter`` when the outcome arrived."""
    outcome: int = 0


class Completions:
    """One Watch over all of the submitter's requests; resolves a waiter per request id on its outcome."""

    def __init__(self, client: BusClient) -> None:
        self._client = client
        self._traces: dict[str, Trace] = {}
        self._waiters: dict[str, asyncio.Future[Trace]] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Completions:
        self._task = asyncio.create_task(self._follow(), name="bench-watch")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._task

    async def _follow(self) -> None:
        async for update in self._client.watch(only_new=True):
            self._record(update)

    def _record(self, update: bus_pb2.WatchResponse) -> None:
        now, perf = time.time(), time.perf_counter()
        event = lifecycle_pb2.LifecycleEvent.FromString(update.event.event.payload)
        trace = self._traces.setdefault(update.request_id, Trace())
        state = event.state
        trace.at.setdefault(state, event.at.seconds + event.at.nanos / 1e9)
        trace.recorded.setdefault(
            state, update.event.recorded_at.seconds + update.event.recorded_at.nanos / 1e9
        )
        trace.seen.setdefault(state, now)
        if (state in _DONE or state in _FAILED) and not trace.outcome:
            trace.outcome = state
            trace.seen_perf = perf
            waiter = self._waiters.pop(update.request_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(trace)

    async def wait(self, request_id: str, timeout: float) -> Trace:  # noqa: ASYNC109
        trace = self._traces.get(request_id)
        if trace is not None and trace.outcome:
            return trace
        waiter = self._waiters.setdefault(request_id, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(asyncio.shield(waiter), timeout)

    def forget(self) -> None:
        """Drop finished traces (between runs)."""
        self._traces = {rid: t for rid, t in self._traces.items() if not t.outcome}


# -- load -------------------------------------------------------------------------------------------


@dataclass
class _Sample:
    due: float
    sent: float
    accepted: float = 0.0
    sent_wall: float = 0.0
    trace: Trace | None = None
    error: str = ""


@dataclass(frozen=True, kw_only=True)
class LoadResult:
    """One load run, reduced."""

    mode: str
    offered_rps: float
    concurrency: int
    requests: int
    completed: int
    errors: int
    error_kinds: dict[str, int]
    duration_s: float
    achieved_rps: float
    e2e: dict[str, float]
    submit: dict[str, float]
    send_lag_p99_ms: float
    drain_ms: float
    """From the last request's scheduled send to the last outcome seen."""
    stages: dict[str, float]
    cpu_ms_per_request: dict[str, float]
    cpu_share: dict[str, float]
    foreign_cpu_share: float
    """Share of the machine's CPUs that processes outside the benchmark used during the run."""

    def ok(self, p99_limit_ms: float) -> bool:
        """Sustained: every request executed, p99 within the limit, the last request of the run
        executed within the limit of its send (a backlog that grows through the run shows there),
        and an open loop's completions kept up with its offer (a step too short to build a
        backlog, as under --quick, must not pass a rate the bus cannot carry)."""
        kept_up = self.mode != "open" or self.achieved_rps >= _KEPT_UP * self.offered_rps
        return (
            self.errors == 0
            and kept_up
            and self.e2e["p99_ms"] <= p99_limit_ms
            and self.drain_ms <= p99_limit_ms
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "offered_rps": self.offered_rps,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "completed": self.completed,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "duration_s": self.duration_s,
            "achieved_rps": self.achieved_rps,
            **{f"e2e_{k}": v for k, v in self.e2e.items()},
            **{f"submit_{k}": v for k, v in self.submit.items()},
            "send_lag_p99_ms": self.send_lag_p99_ms,
            "drain_ms": self.drain_ms,
            "stages_p50_ms": self.stages,
            "cpu_ms_per_request": self.cpu_ms_per_request,
            "cpu_share_of_machine": self.cpu_share,
            "foreign_cpu_share": self.foreign_cpu_share,
        }


_STAGES = (
    # (name, from, to); each a (state, clock) pair: "sent" is this process's send time. A stage
    # whose events a request lacks is left out for it, and one no request had is not reported:
    # the adapter sends no DELIVERED, and ACKNOWLEDGED only when the bank is slower than its grace.
    ("submit -> broker accepted", ("sent", None), (common_pb2.REQUEST_STATE_SUBMITTED, "at")),
    (
        "accepted -> bank executed",
        (common_pb2.REQUEST_STATE_SUBMITTED, "at"),
        ("outcome", "at"),
    ),
    (
        "accepted -> adapter DELIVERED",
        (common_pb2.REQUEST_STATE_SUBMITTED, "at"),
        (common_pb2.REQUEST_STATE_DELIVERED, "at"),
    ),
    (
        "DELIVERED -> ACKNOWLEDGED",
        (common_pb2.REQUEST_STATE_DELIVERED, "at"),
        (common_pb2.REQUEST_STATE_ACKNOWLEDGED, "at"),
    ),
    (
        "ACKNOWLEDGED -> bank executed",
        (common_pb2.REQUEST_STATE_ACKNOWLEDGED, "at"),
        ("outcome", "at"),
    ),
    ("executed -> broker applied", ("outcome", "at"), ("outcome", "recorded")),
    ("broker applied -> Watch seen", ("outcome", "recorded"), ("outcome", "seen")),
)


STAGES: tuple[str, ...] = tuple(name for name, _, _ in _STAGES)
"""Names of the critical path's stages, in order; a run reports those its requests had."""


def _stage_times(samples: Sequence[_Sample]) -> dict[str, float]:
    """Median per stage of the critical path, from the events' own timestamps (one clock)."""
    spans: dict[str, list[float]] = {name: [] for name, _, _ in _STAGES}
    for sample in samples:
        trace = sample.trace
        if trace is None or not trace.outcome:
            continue
        for name, (s_from, c_from), (s_to, c_to) in _STAGES:
            start = _point(sample, trace, s_from, c_from)
            end = _point(sample, trace, s_to, c_to)
            if start is not None and end is not None:
                spans[name].append((end - start) * 1000)
    return {name: statistics.median(values) for name, values in spans.items() if values}


def _point(sample: _Sample, trace: Trace, state: object, clock: str | None) -> float | None:
    if state == "sent":
        return sample.sent_wall
    key = trace.outcome if state == "outcome" else state
    assert isinstance(key, int)
    table = {"at": trace.at, "recorded": trace.recorded, "seen": trace.seen}[clock or "at"]
    return table.get(key)


async def _one(
    client: BusClient,
    completions: Completions,
    request: requests_pb2.Request,
    sample: _Sample,
    timeout: float,  # noqa: ASYNC109
) -> None:
    sample.sent = time.perf_counter()
    sample.sent_wall = time.time()
    try:
        response = await client.submit(request)
    except grpc.aio.AioRpcError as exc:
        sample.error = f"submit:{exc.code().name}"
        return
    sample.accepted = time.perf_counter()
    try:
        trace = await completions.wait(response.status.id, timeout)
    except TimeoutError:
        sample.error = "timeout"
        return
    sample.trace = trace
    if trace.outcome not in _DONE:
        sample.error = (
            f"outcome:{common_pb2.RequestState.Name(common_pb2.RequestState.ValueType(trace.outcome))}"
        )


def _reduce(
    mode: str,
    samples: Sequence[_Sample],
    *,
    offered: float,
    concurrency: int,
    meter: ProcessMeter,
) -> LoadResult:
    done = [s for s in samples if s.trace is not None and not s.error]
    errors: dict[str, int] = {}
    for s in samples:
        if s.error:
            errors[s.error] = errors.get(s.error, 0) + 1
    e2e = [(s.trace.seen_perf - s.due) * 1000 for s in done if s.trace is not None]
    submit = [(s.accepted - s.sent) * 1000 for s in samples if s.accepted]
    lag = [(s.sent - s.due) * 1000 for s in samples]
    first = min(s.due for s in samples)
    last = max((s.trace.seen_perf for s in done if s.trace is not None), default=first)
    duration = max(last - first, 1e-9)
    n = max(len(samples), 1)
    return LoadResult(
        mode=mode,
        offered_rps=offered,
        concurrency=concurrency,
        requests=len(samples),
        completed=len(done),
        errors=sum(errors.values()),
        error_kinds=errors,
        duration_s=duration,
        achieved_rps=len(done) / duration,
        e2e=latency_summary(e2e),
        submit=latency_summary(submit),
        send_lag_p99_ms=quantile(lag, 0.99),
        drain_ms=(last - max(s.due for s in samples)) * 1000,
        stages=_stage_times(done),
        cpu_ms_per_request={name: used * 1000 / n for name, used in meter.used.items()},
        cpu_share={name: used / meter.wall / (os.cpu_count() or 1) for name, used in meter.used.items()},
        foreign_cpu_share=meter.foreign_share,
    )


def _pids_with_self(pids: Mapping[str, int]) -> dict[str, int]:
    return {**pids, "submitter": os.getpid()}


async def open_loop(
    client: BusClient,
    completions: Completions,
    pids: Mapping[str, int],
    *,
    rate: float,
    count: int,
    tag: str,
    accounts: int,
    timeout: float = 180.0,  # noqa: ASYNC109
) -> LoadResult:
    """Offer ``count`` requests at ``rate`` per second on a fixed schedule, whatever completes."""
    meter = ProcessMeter(_pids_with_self(pids))
    requests = [stop_payment_for(i, tag=tag, accounts=accounts) for i in range(count)]
    samples: list[_Sample] = []
    tasks: list[asyncio.Task[None]] = []
    meter.start()
    start = time.perf_counter() + 0.01
    for i, request in enumerate(requests):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sample = _Sample(due=due, sent=due)
        samples.append(sample)
        tasks.append(asyncio.create_task(_one(client, completions, request, sample, timeout)))
    await asyncio.gather(*tasks)
    meter.stop()
    return _reduce("open", samples, offered=rate, concurrency=0, meter=meter)


async def closed_loop(
    client: BusClient,
    completions: Completions,
    pids: Mapping[str, int],
    *,
    concurrency: int,
    duration: float,
    tag: str,
    accounts: int,
    timeout: float = 180.0,  # noqa: ASYNC109
) -> LoadResult:
    """``concurrency`` submitters, each sending its next request once the previous one executed."""
    meter = ProcessMeter(_pids_with_self(pids))
    samples: list[_Sample] = []
    counter = iter(range(10**9))
    meter.start()
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            i = next(counter)
            now = time.perf_counter()
            sample = _Sample(due=now, sent=now)
            samples.append(sample)
            await _one(client, completions, stop_payment_for(i, tag=tag, accounts=accounts), sample, timeout)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    meter.stop()
    return _reduce("closed", samples, offered=0.0, concurrency=concurrency, meter=meter)


def describe(result: LoadResult) -> list[tuple[str, object]]:
    """Table rows for one load run."""
    rows: list[tuple[str, object]] = [
        ("requests", result.requests),
        ("completed (EXECUTED seen)", result.completed),
        ("errors", result.errors),
        ("achieved rps", result.achieved_rps),
        ("e2e p50 ms", result.e2e["p50_ms"]),
        ("e2e p95 ms", result.e2e["p95_ms"]),
        ("e2e p99 ms", result.e2e["p99_ms"]),
        ("submit p50 ms", result.submit["p50_ms"]),
        ("send lag p99 ms", result.send_lag_p99_ms),
        ("other processes' CPU share %", result.foreign_cpu_share * 100),
    ]
    rows += [(f"cpu ms/request {name}", value) for name, value in result.cpu_ms_per_request.items()]
    return rows
