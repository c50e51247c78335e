"""The adapter alone: how fast one bank adapter drains an inbox of GREEN stop-payments.

    python -m tests.bench.bench_adapter [--n 1000] [--rounds 3] [--json FILE]
        [--variant LABEL=SRC[,field=value...]]...

No broker: each run starts its own nats-server (file store, ``sync_interval: always``, as the bus
runs it), pre-fills bank-icbc's GREEN inbox with ``--n`` stop-payments exactly as the broker
publishes them (signed by the police, notarized by the broker, body sealed to the bank), then
starts a process of its own with the reference bank's core as a real gRPC server and an
:class:`adapters.AdapterRuntime` for it (as ``tests.bench._agencies`` does), and measures the
time from "start" until the inbox consumer has every message acked. Every run checks that each
request got its events in order, each once, and nothing else: EXECUTED, after an ACKNOWLEDGED when
the bank took longer than the adapter's ``acknowledge_after`` (and after a DELIVERED from a tree
whose adapter still sends it), and that the bank's journal holds each request once. Reported
beside the rate: the events per message, each a durable write on GC_EVENTS.

A **variant** is a label, the directory its ``adapters`` package is imported from (``.`` for this
tree) and ``AdapterConfig`` fields to set (only those given are passed, so an older tree's package
works too). To compare with an earlier tree side by side in one run::

    mkdir -p /tmp/before && git archive HEAD adapters | tar -x -C /tmp/before
    python -m tests.bench.bench_adapter --variant before=/tmp/before --variant after=. \\
        --variant serial=.,concurrency=1

Variants run interleaved, round by round (``before, after, serial, before, ...``), each on a
fresh server and fresh state, so a machine that gets busier affects them alike. Reported per
variant: median drain time, messages per second, CPU of the adapter process per message, and
the ratio of each variant's median rate to the first variant's. Timing lives here, never in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[2]
_DIRECTORY = _REPO / "agencies" / "directory.toml"
_BANK = "bank-icbc"
_POLICE = "police-310115"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_ACCOUNT_PREFIX = "6222029"
_HOLDER = "基准测试户"


@dataclass(frozen=True, kw_only=True)
class Variant:
    """An adapters package to import and the AdapterConfig fields to set on it."""

    label: str
    """Name in the report."""
    src: str
    """Directory holding the ``adapters`` package; ``.`` for this tree."""
    settings: dict[str, str] = field(default_factory=dict)
    """AdapterConfig fields, as text (converted to the field's type in the child)."""


def _parse_variant(text: str) -> Variant:
    label, _, rest = text.partition("=")
    if not label or not rest:
        raise argparse.ArgumentTypeError(f"--variant LABEL=SRC[,field=value...], got {text!r}")
    src, *pairs = rest.split(",")
    settings = dict(pair.split("=", 1) for pair in pairs)
    return Variant(label=label, src=src, settings=settings)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _account(index: int, accounts: int) -> str:
    return f"{_ACCOUNT_PREFIX}{index % accounts:012d}"


# -- the child: the bank's core and its adapter ----------------------------------------------


async def _child(args: argparse.Namespace) -> None:
    import dataclasses

    from adapters import AdapterConfig, AdapterRuntime
    from agencies import build_reference_agency
    from agencies.bank import BankCore
    from broker._logging import configure_logging
    from broker.protocol import (
        NatsSettings,
        SystemClock,
        connect,
        ensure_agency_keys,
        load_agency_encryption_keys,
        load_agency_signing_key,
        load_directory,
    )

    configure_logging("warning")
    clock = SystemClock()
    overlay = ensure_agency_keys(_DIRECTORY, args.keys_dir, clock=clock)
    registry = load_directory(_DIRECTORY, key_overlays=[overlay])
    reference = build_reference_agency(registry.get(_BANK), data_dir=args.data_dir, clock=clock)
    core = reference.core
    assert isinstance(core, BankCore)
    with core.batch():
        for i in range(args.accounts):
            core.open_account(_account(i, args.accounts), _HOLDER, balance=10**15)
    types = {f.name: f.type for f in dataclasses.fields(AdapterConfig)}
    settings: dict[str, Any] = {}
    for pair in args.set:
        name, value = pair.split("=", 1)
        kind = str(types[name])
        settings[name] = int(value) if kind == "int" else float(value) if kind == "float" else value
    nc = await connect(NatsSettings.from_url(args.nats, name="bench-adapter"))
    async with reference.server() as server:
        adapter = AdapterRuntime(
            AdapterConfig(
                agency_id=_BANK,
                agency_target=server.address,
                state_dir=args.data_dir / "adapter",
                **settings,
            ),
            registry=registry,
            signing_key=load_agency_signing_key(args.keys_dir, _BANK),
            clock=clock,
            nats_client=nc,
            decryption_keys=load_agency_encryption_keys(args.keys_dir, _BANK),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        await adapter.start()
        await stop.wait()
        await adapter.aclose()
    await nc.drain()
    reference.close()


# -- the parent: inbox, timing, checks ---------------------------------------------------------


async def _envelopes(keys_dir: Path, n: int, accounts: int) -> list[tuple[str, bytes]]:
    """(request id, envelope bytes) as the broker publishes them to the bank's inbox."""
    from google.protobuf.timestamp_pb2 import Timestamp
    from greenchannel.v1 import common_pb2, envelope_pb2, requests_pb2

    from broker.protocol import (
        SystemClock,
        current_encryption_key,
        ensure_agency_keys,
        load_agency_signing_key,
        load_broker_signing_key,
        load_directory,
        new_uuid7,
        notarize,
        seal_for_recipient,
        sign_request,
        verify_request,
    )

    clock = SystemClock()
    overlay = ensure_agency_keys(_DIRECTORY, keys_dir, clock=clock)
    registry = load_directory(_DIRECTORY, key_overlays=[overlay])
    police_key = load_agency_signing_key(keys_dir, _POLICE)
    broker_key = load_broker_signing_key(keys_dir)
    bank_key = current_encryption_key(registry.get(_BANK), at=clock.now())
    out = []
    for index in range(n):
        issued = Timestamp()
        issued.FromDatetime(clock.now())
        request = requests_pb2.Request(
            case_ref=common_pb2.CaseRef(
                case_number=f"BENCH-ADAPTER-{index:07d}",
                issuing_agency=_POLICE,
                legal_instrument_id=f"BENCH-ADAPTER-{index:07d}",
                legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
            ),
            priority=common_pb2.PRIORITY_GREEN,
            issued_at=issued,
            stop_payment=requests_pb2.StopPayment(
                account=common_pb2.BankAccountRef(
                    account_number=_account(index, accounts), holder_name=_HOLDER
                ),
                amount=common_pb2.Money(currency="CNY", minor_units=10_000),
            ),
        )
        signed = sign_request(request, key=police_key, sender=_POLICE, clock=clock)
        verified = verify_request(signed, keys=registry, sender=_POLICE, clock=clock)
        due, hold = clock.now(), clock.now()
        deadlines = envelope_pb2.Deadlines()
        phase = deadlines.phases.add(phase=common_pb2.PHASE_EXECUTE)
        phase.due_at.FromDatetime(due.replace(year=due.year + 1))
        deadlines.hold_expires_at.FromDatetime(hold.replace(year=hold.year + 1))
        request_id = new_uuid7(clock)
        envelope = notarize(
            verified,
            request_id=request_id,
            recipient=_BANK,
            deadlines=deadlines,
            broker_key=broker_key,
            clock=clock,
        )
        out.append((request_id, seal_for_recipient(envelope, bank_key).SerializeToString()))
    return out


@dataclass(frozen=True, kw_only=True)
class RunResult:
    variant: str
    n: int
    seconds: float
    cpu_ms_per_message: float
    events_per_message: float

    @property
    def rate(self) -> float:
        return self.n / self.seconds


async def _run_once(variant: Variant, args: argparse.Namespace, root: Path) -> RunResult:
    import nats.js.errors
    from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2

    from broker.embedded import EmbeddedNats, EmbeddedNatsConfig
    from broker.protocol import (
        EVENTS_STREAM,
        INBOX_STREAM,
        NatsSettings,
        connect,
        ensure_streams,
        inbox_consumer,
        inbox_subject,
        stream_specs,
    )

    keys_dir = args.keys_dir
    envelopes = await _envelopes(keys_dir, args.n, args.accounts)
    async with EmbeddedNats(EmbeddedNatsConfig(store_dir=root / "nats", sync_always=True)) as server:
        nc = await connect(NatsSettings.from_url(server.url, name="bench-adapter-feeder"))
        js = nc.jetstream()
        await ensure_streams(js, stream_specs())
        subject = inbox_subject(_BANK, "green", "stop_payment")
        acks = [
            await js.publish_async(subject, data, headers={"Nats-Msg-Id": request_id})
            for request_id, data in envelopes
        ]
        await asyncio.gather(*acks)
        argv = [
            *(sys.executable, "-m", "tests.bench.bench_adapter", "--child", "--nats", server.url),
            *("--keys-dir", str(keys_dir), "--data-dir", str(root / "agency")),
            *("--accounts", str(args.accounts), "--adapters-src", variant.src),
        ]
        for name, value in variant.settings.items():
            argv += ["--set", f"{name}={value}"]
        log = (root / "child.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, cwd=_REPO
        )
        try:
            assert proc.stdout is not None
            assert proc.stdin is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            if b"ready" not in line:
                raise RuntimeError(f"child failed: {(root / 'child.log').read_text()[-3000:]}")
            cpu0 = _cpu_seconds(proc.pid)
            t0 = time.perf_counter()
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            durable = inbox_consumer(_BANK, "green")
            acked, moved = 0, time.perf_counter()
            while acked < args.n:
                await asyncio.sleep(0.005)
                try:
                    info = await js.consumer_info(INBOX_STREAM, durable)
                except nats.js.errors.NotFoundError:
                    continue
                floor = (info.ack_floor.stream_seq or 0) if info.ack_floor is not None else 0
                now = time.perf_counter()
                if floor > acked:
                    acked, moved = floor, now
                elif now - moved > args.stall:
                    raise RuntimeError(f"{variant.label}: stalled at {acked} of {args.n} for {args.stall} s")
            seconds = time.perf_counter() - t0
            cpu = _cpu_seconds(proc.pid) - cpu0
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            log.close()
        # Exactly three events per request, in order, and nothing else.
        stream = await js.stream_info(EVENTS_STREAM)
        seen: dict[str, list[int]] = {}
        sub = await js.subscribe("gc.events.>", ordered_consumer=True)
        for _ in range(stream.state.messages):
            msg = await sub.next_msg(timeout=10)
            signed = envelope_pb2.SignedMessage.FromString(msg.data)
            event = lifecycle_pb2.LifecycleEvent.FromString(signed.payload)
            seen.setdefault(event.request_id, []).append(event.state)
        await sub.unsubscribe()
        progress = (common_pb2.REQUEST_STATE_DELIVERED, common_pb2.REQUEST_STATE_ACKNOWLEDGED)
        allowed = [
            [*steps, common_pb2.REQUEST_STATE_EXECUTED]
            for steps in ((), progress[1:], progress[:1], progress)  # each progress step optional
        ]
        wrong = [rid for rid, _ in envelopes if seen.get(rid) not in allowed]
        if wrong or len(seen) != args.n:
            raise RuntimeError(
                f"{variant.label}: {len(wrong)} requests without [DELIVERED] [ACKNOWLEDGED] EXECUTED"
            )
        await nc.drain()
    _check_bank_journal(root / "agency", args.n)
    return RunResult(
        variant=variant.label,
        n=args.n,
        seconds=seconds,
        cpu_ms_per_message=cpu * 1000 / args.n,
        events_per_message=sum(len(states) for states in seen.values()) / args.n,
    )


def _check_bank_journal(data_dir: Path, n: int) -> None:
    """Each request executed once by the bank: as many holds as requests, no more."""
    import sqlite3

    databases = [path for path in data_dir.rglob("*.sqlite*") if path.suffix in {".sqlite", ".sqlite3"}]
    for path in databases:
        with contextlib.closing(sqlite3.connect(path)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "holds" in tables:
                count = db.execute("SELECT COUNT(*) FROM holds").fetchone()[0]
                if count != n:
                    raise RuntimeError(f"the bank holds {count} times for {n} requests")


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    from broker.protocol import SystemClock, ensure_agency_keys

    variants: list[Variant] = args.variant or [Variant(label="current", src=".")]
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-adapter-") as tmp:
        args.keys_dir = Path(tmp) / "keys"
        ensure_agency_keys(_DIRECTORY, args.keys_dir, clock=SystemClock())
        for round_no in range(args.rounds):
            for variant in variants:
                root = Path(tmp) / f"{variant.label}-{round_no}"
                root.mkdir()
                result = await _run_once(variant, args, root)
                results.append(result)
                print(
                    f"round {round_no + 1} {variant.label}: {result.n} in {result.seconds:.3f} s"
                    f" = {result.rate:.0f}/s, adapter CPU {result.cpu_ms_per_message:.2f} ms/message,"
                    f" {result.events_per_message:.2f} events/message",
                    flush=True,
                )
    summary: dict[str, Any] = {"n": args.n, "rounds": args.rounds, "variants": {}}
    base_rate: float | None = None
    for variant in variants:
        mine = [r for r in results if r.variant == variant.label]
        rate = statistics.median(r.rate for r in mine)
        base_rate = base_rate or rate
        summary["variants"][variant.label] = {
            "src": variant.src,
            "settings": variant.settings,
            "median_seconds": round(statistics.median(r.seconds for r in mine), 3),
            "median_rate": round(rate, 1),
            "rates": [round(r.rate, 1) for r in mine],
            "median_cpu_ms_per_message": round(statistics.median(r.cpu_ms_per_message for r in mine), 3),
            "median_events_per_message": round(statistics.median(r.events_per_message for r in mine), 3),
            "rate_ratio_to_first": round(rate / base_rate, 2),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="stop-payments in the inbox per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per variant (interleaved)")
    parser.add_argument("--accounts", type=int, default=1000, help="benchmark accounts at the bank")
    parser.add_argument("--stall", type=float, default=30.0, help="seconds without progress = failure")
    parser.add_argument(
        "--variant", type=_parse_variant, action="append", help="LABEL=SRC[,field=value...] (repeatable)"
    )
    parser.add_argument("--json", type=Path)
    # The child process (internal).
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--nats", help=argparse.SUPPRESS)
    parser.add_argument("--keys-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--adapters-src", default=".", help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.adapters_src != ".":
            # Before anything imports ``adapters``: the variant's package shadows this tree's.
            sys.path.insert(0, str(Path(args.adapters_src).resolve()))
        asyncio.run(_child(args))
        return
    import json

    from broker._logging import configure_logging

    configure_logging("warning")
    summary = asyncio.run(_main(args))
    for label, row in summary["variants"].items():
        print(
            f"{label}: median {row['median_seconds']} s for {summary['n']} = {row['median_rate']}/s"
            f" (x{row['rate_ratio_to_first']}), adapter CPU {row['median_cpu_ms_per_message']} ms/message,"
            f" {row['median_events_per_message']} events/message"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
