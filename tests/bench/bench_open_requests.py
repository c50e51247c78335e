"""How cost grows with open requests: throughput and memory with 10k / 100k (/ 1M) pending holds.

    python -m tests.bench.bench_open_requests [--sizes 10000,100000] [--json FILE]

The bus of ``bench_e2e`` (nats-server, broker and agencies in their own processes). Between
measurements the open population is raised to each size in turn, then the end-to-end rate is
measured at that size (closed loop: ``--concurrency`` police submitters, each sending its next
stop-payment once the previous one executed) along with every process's memory (VmRSS).

**What an open request is here, and how it is made.** The steady-state population of the bus is
executed stop-payments whose 48 h hold has not lapsed: each leaves its status in the request journal
(GC_WATCH) and one pending hold-expiry timer (a NATS message schedule). At 100 requests/s, 48 h of
them is 17 million. Submitting 100,000 through the whole bus would take longer than this benchmark
runs, so they are **written directly** to JetStream, as the broker writes them: the status of a real
executed request (its four signed events included), re-keyed to a fresh UUIDv7, with its expiry
timer 48 h ahead. No inbox message, watch record or ledger entry is written for them: the fill is
labelled "direct" in the output. The fill rate is measured; a size the run does not reach (e.g.
1,000,000) is never reported as measured, only extrapolated from the measured sizes, and labelled
so."""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from greenchannel.v1 import lifecycle_pb2, requests_pb2
from nats.js.client import JetStreamContext

from broker._logging import configure_logging
from broker.client import BusClient
from broker.hub._store import RequestStore
from broker.hub._timers import DeadlineScheduler, TimerKind, TimerPayload
from broker.protocol import SystemClock, new_uuid7

from ._harness import (
    BenchWorld,
    Completions,
    WorldConfig,
    closed_loop,
    open_loop,
    print_table,
    stop_payment_for,
    write_json,
)

_HOLD = timedelta(hours=48)


async def _template(js: JetStreamContext, request_id: str) -> lifecycle_pb2.RequestStatus:
    return (await RequestStore(js).get(request_id)).status


async def _fill(
    js: JetStreamContext, template: lifecycle_pb2.RequestStatus, count: int, in_flight: int
) -> float:
    """Write ``count`` open holds (journal record + pending expiry timer); seconds it took."""
    store = RequestStore(js)
    scheduler = DeadlineScheduler(js)
    clock = SystemClock()
    expires = datetime.now(UTC) + _HOLD
    remaining = iter(range(count))

    async def writer() -> None:
        status = lifecycle_pb2.RequestStatus()
        for _ in remaining:
            status.CopyFrom(template)
            status.id = new_uuid7(clock)
            status.deadlines.hold_expires_at.FromDatetime(expires)
            await store.create(status, msg_id=status.id)
            await scheduler.set(
                TimerPayload(
                    request_id=status.id, kind=TimerKind.EXPIRY, phase="hold", due_at=expires, fire_at=expires
                ),
                "hold-expiry",
            )

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(in_flight)))
    return time.perf_counter() - started


def _du_mb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue
    return total / 2**20


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        async with BenchWorld(WorldConfig(root=root, accounts=args.accounts)) as world:
            nc = await world.connect()
            js = nc.jetstream()
            async with world.client() as client, Completions(client) as completions:
                warm = await open_loop(
                    client, completions, world.pids, rate=20, count=40, tag="WARM", accounts=args.accounts
                )
                if warm.errors:
                    raise SystemExit(f"warm-up failed: {warm.error_kinds}")
                # A real executed stop-payment, to copy: its status as the broker stored it.
                probe = await client.submit(_probe_request(args.accounts))
                await completions.wait(probe.status.id, 60)
                template = await _template(js, probe.status.id)
                completions.forget()
                rows.append(await _measure_at(0, 0.0, world, client, completions, root, args))
                open_now = 0
                for size in sizes:
                    seconds = await _fill(js, template, size - open_now, args.in_flight)
                    fill_rate = (size - open_now) / seconds
                    open_now = size
                    print(f"filled to {size:,} open holds (direct writes) at {fill_rate:,.0f}/s", flush=True)
                    rows.append(await _measure_at(size, fill_rate, world, client, completions, root, args))
            await nc.drain()
    return {
        "fill": "direct (status + pending hold-expiry timer per request)",
        "sizes": rows,
        **_extrapolate(rows),
    }


def _probe_request(accounts: int) -> requests_pb2.Request:
    return stop_payment_for(0, tag="PROBE", accounts=accounts)


async def _measure_at(
    size: int,
    fill_rate: float,
    world: BenchWorld,
    client: BusClient,
    completions: Completions,
    root: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    await asyncio.sleep(2)  # let the server settle after the fill (schedule bookkeeping, flushes)
    rss_before = world.rss()
    run = await closed_loop(
        client,
        completions,
        world.pids,
        concurrency=args.concurrency,
        duration=args.seconds,
        tag=f"O{size}",
        accounts=args.accounts,
    )
    completions.forget()
    row = {
        "open_requests": size,
        "fill_per_s": fill_rate,
        "e2e_rps": run.achieved_rps,
        "e2e_p50_ms": run.e2e["p50_ms"],
        "e2e_p99_ms": run.e2e["p99_ms"],
        "submit_p50_ms": run.submit["p50_ms"],
        "errors": run.errors,
        "rss_mb": rss_before,
        "rss_mb_after_load": world.rss(),
        "nats_store_mb": _du_mb(root / "nats"),
        "foreign_cpu_share": run.foreign_cpu_share,
    }
    print_table(
        f"{size:,} open holds",
        [
            ("e2e rps (closed loop)", row["e2e_rps"]),
            ("e2e p50 ms", row["e2e_p50_ms"]),
            ("e2e p99 ms", row["e2e_p99_ms"]),
            ("submit p50 ms", row["submit_p50_ms"]),
            ("errors", row["errors"]),
            *((f"RSS MiB {name}", value) for name, value in rss_before.items()),
            ("NATS store on disk MiB", row["nats_store_mb"]),
            ("other processes' CPU share %", run.foreign_cpu_share * 100),
        ],
    )
    return row


def _extrapolate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Linear extrapolation to 1,000,000 from the two largest measured sizes, when 1M was not run."""
    measured = [r for r in rows if r["open_requests"]]
    if any(r["open_requests"] >= 1_000_000 for r in measured) or len(measured) < 2:
        return {}
    low, high = measured[-2], measured[-1]
    span = high["open_requests"] - low["open_requests"]
    target = 1_000_000

    def line(key: str, sub: str | None = None) -> float:
        a = low[key][sub] if sub else low[key]
        b = high[key][sub] if sub else high[key]
        return float(b + (b - a) / span * (target - high["open_requests"]))

    return {
        "extrapolated_1m": {
            "note": "NOT MEASURED: linear extrapolation from the two largest measured sizes",
            "fill_minutes": target / high["fill_per_s"] / 60,
            "nats_server_rss_mb": line("rss_mb", "nats-server"),
            "broker_rss_mb": line("rss_mb", "broker"),
            "nats_store_mb": line("nats_store_mb"),
        }
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000", help="open-request counts, comma separated")
    parser.add_argument("--seconds", type=float, default=6.0, help="duration of each throughput run")
    parser.add_argument("--concurrency", type=int, default=16, help="submitters in the closed loop")
    parser.add_argument("--in-flight", type=int, default=256, help="direct writes in flight while filling")
    parser.add_argument("--accounts", type=int, default=1000, help="benchmark accounts at the bank")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    configure_logging("warning")
    result = asyncio.run(measure(args))
    extrapolated = result.get("extrapolated_1m")
    if extrapolated:
        print_table(
            "1,000,000 open holds: NOT MEASURED, extrapolated linearly",
            [(k, v) for k, v in extrapolated.items() if k != "note"],
        )
    write_json(args.json, result)


if __name__ == "__main__":
    main()
