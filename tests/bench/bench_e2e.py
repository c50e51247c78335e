"""End to end: a GREEN stop-payment from the police's submit to the EXECUTED its Watch delivers.

    python -m tests.bench.bench_e2e [--json FILE] [--profile DIR] [--quick]

One run on this machine, every signature on, each role in its own process (see ``_harness``):

1. **floor**, on the same nats-server before any load: JetStream publish -> pull fetch -> ack
   round trip, and raw Ed25519 sign / verify (``bench_floor``);
2. **fixed offered loads**, open loop (requests sent on a schedule whatever completes): 10/s for
   5 s, 100/s for 10 s and 500/s for 6 s; latency p50 / p95 / p99 from the scheduled send to the
   Watch's EXECUTED;
3. **highest sustained throughput**: a closed loop (N submitters, each sending its next request
   when the previous one executed) finds the capacity, then open-loop steps climb a ladder of
   rates from below it until one fails; a step passes when every request executed, p99 <=
   ``--p99-limit-ms`` and the last request executed within that limit of its send (a backlog
   growing through the step shows there); ``max_rps`` is the highest passing offered rate;
4. **where the time goes**: the critical path split into stages by the events' own timestamps,
   CPU milliseconds per request of each process, JetStream writes per request, and with
   ``--profile`` a py-spy profile of the broker and the agency process under load.

Ends with ``bench: e2e_p50_ms=... floor_p50_ms=... ratio=... max_rps=... unloaded_p50_ms=...
unloaded_ratio=... writes_per_request=... cpu_ms_per_request=...`` where e2e_p50 is the median at
100/s, unloaded the median at 10/s, the floor the JetStream round trip's median, writes the stream
messages per request at 10/s and CPU the closed loop's milliseconds per request summed over every
process of the bus.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
from pathlib import Path
from typing import Any

from broker._logging import configure_logging
from broker.client import BusClient

from . import _profile
from ._harness import (
    STAGES,
    BenchWorld,
    Completions,
    LoadResult,
    WorldConfig,
    closed_loop,
    describe,
    open_loop,
    print_table,
    stream_writes,
    write_json,
)
from .bench_floor import measure_ed25519, measure_jetstream

# Offered rates of the ramp, per second.
_LADDER = (*range(5, 35, 5), 40, 50, 60, 80, 100, 150, 200, 300, 400, 500, 600, 800, 1000, 1500, 2000)


async def _steps(
    world: BenchWorld, client: BusClient, completions: Completions, args: argparse.Namespace
) -> dict[str, Any]:
    pids = dict(world.pids)
    accounts = args.accounts
    result: dict[str, Any] = {}

    async def offer(rate: float, count: int, tag: str) -> LoadResult:
        run = await open_loop(client, completions, pids, rate=rate, count=count, tag=tag, accounts=accounts)
        completions.forget()
        await asyncio.sleep(2)  # let background work (ledger chaining, acks) settle before the next run
        return run

    # Warm-up: connections, consumers, caches, lazy imports; also proves the Watch is live.
    await offer(20, 60, "WARM")

    observer = await world.connect()
    loads: dict[str, LoadResult] = {}
    for rate, seconds in ((10, args.seconds_10), (100, args.seconds_100), (500, args.seconds_500)):
        before = await stream_writes(observer)
        run = await offer(rate, int(rate * seconds), f"L{rate}")
        after = await stream_writes(observer)
        loads[f"open_{rate}"] = run
        if rate == 10:
            per_stream = {
                name: (after.get(name, 0) - before.get(name, 0)) / max(run.requests, 1) for name in after
            }
            result["jetstream_writes_per_request"] = {k: v for k, v in per_stream.items() if v}
            result["jetstream_writes_per_request_total"] = sum(per_stream.values())
        print_table(f"open loop {rate}/s x {seconds:g} s", describe(run))

    closed = await closed_loop(
        client,
        completions,
        pids,
        concurrency=args.concurrency,
        duration=args.closed_seconds,
        tag="CLOSED",
        accounts=accounts,
    )
    completions.forget()
    print_table(f"closed loop, {args.concurrency} submitters x {args.closed_seconds:g} s", describe(closed))
    await asyncio.sleep(2)

    # The ramp starts below the closed loop's capacity and climbs until a step fails.
    measured = {run.offered_rps: run for run in loads.values()}
    start = max((r for r in _LADDER if r <= 0.7 * closed.achieved_rps), default=_LADDER[0])
    ramp: list[LoadResult] = []
    passing = [r for r in loads.values() if r.ok(args.p99_limit_ms)]
    for rate in (r for r in _LADDER if r >= start):
        if rate in measured:
            run = measured[rate]
        else:
            run = await offer(rate, int(rate * args.ramp_seconds), f"R{rate}")
            ramp.append(run)
        ok = run.ok(args.p99_limit_ms)
        print(
            f"ramp {rate:>5}/s: achieved {run.achieved_rps:7.1f}/s p50 {run.e2e['p50_ms']:8.1f} ms"
            f" p99 {run.e2e['p99_ms']:8.1f} ms errors {run.errors} -> {'pass' if ok else 'FAIL'}",
            flush=True,
        )
        if not ok:
            break
        passing.append(run)
    # A passing open-loop step carried its whole offer: the sustained rate is the offered one.
    best = max(passing, key=lambda r: r.offered_rps, default=None)
    result["max_rps"] = best.offered_rps if best else 0.0
    result["max_rps_e2e_p99_ms"] = best.e2e["p99_ms"] if best else math.nan

    if args.profile is not None:
        rate = args.profile_rps or max(10.0, 0.8 * result["max_rps"])
        result["profile"] = await _profile_under_load(world, client, completions, args, rate=rate)
    result["rss_mb_after"] = world.rss()
    await observer.drain()
    result["loads"] = {name: run.as_json() for name, run in loads.items()}
    result["closed_loop"] = closed.as_json()
    result["ramp"] = [run.as_json() for run in ramp]
    result["_loads"] = loads
    return result


async def _profile_under_load(
    world: BenchWorld,
    client: BusClient,
    completions: Completions,
    args: argparse.Namespace,
    *,
    rate: float,
) -> dict[str, Any]:
    if _profile.py_spy() is None:
        print("\nprofile: py-spy is not installed (pip install py-spy); no profile taken")
        return {"skipped": "py-spy not installed"}
    seconds = args.profile_seconds
    targets = {name: pid for name, pid in world.pids.items() if name in ("broker", "agencies")}
    count = int(rate * (seconds + 2))
    load = asyncio.create_task(
        open_loop(client, completions, world.pids, rate=rate, count=count, tag="PROF", accounts=args.accounts)
    )
    await asyncio.sleep(1)
    files = await _profile.record(targets, args.profile, duration=seconds)
    run = await load
    completions.forget()
    summary: dict[str, Any] = {"offered_rps": rate, "achieved_rps": run.achieved_rps}
    for name, path in files.items():
        reduced = _profile.summarize(path)
        summary[name] = reduced.as_json()
        print_table(
            f"profile {name} at {rate:.0f}/s: % of {reduced.samples} samples holding the GIL, by kind",
            [(category, share * 100) for category, share in reduced.categories.items()],
        )
        print_table(
            f"profile {name}: top functions, self % (innermost Python frame)",
            [(fn[:90], share * 100) for fn, share in reduced.self_top],
        )
        print_table(
            f"profile {name}: top functions, inclusive %",
            [(fn[:90], share * 100) for fn, share in reduced.inclusive_top],
        )
    return summary


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        config = WorldConfig(
            root=Path(tmp), accounts=args.accounts, sync_always=not args.no_fsync, metrics=args.metrics
        )
        async with BenchWorld(config) as world:
            floor = await measure_jetstream(
                world.nats_url, server_pid=world.pids["nats-server"], n=args.floor_n
            )
            floor.update(measure_ed25519())
            print_table("floor (same nats-server, before any load)", list(floor.items()))
            async with world.client() as client, Completions(client) as completions:
                steps = await _steps(world, client, completions, args)
    loads: dict[str, LoadResult] = steps.pop("_loads")
    e2e_p50 = loads["open_100"].e2e["p50_ms"]
    unloaded_p50 = loads["open_10"].e2e["p50_ms"]
    floor_p50 = floor["jetstream_round_trip_p50_ms"]
    return {
        "nats_sync_always": not args.no_fsync,
        "metrics": args.metrics,
        "floor": floor,
        **steps,
        "e2e_p50_ms": e2e_p50,
        "floor_p50_ms": floor_p50,
        "ratio": e2e_p50 / floor_p50 if floor_p50 else math.nan,
        "unloaded_p50_ms": unloaded_p50,
        "unloaded_ratio": unloaded_p50 / floor_p50 if floor_p50 else math.nan,
        # Every process of the bus (nats-server, broker, agencies, submitter), closed loop.
        "cpu_ms_per_request_total": sum(steps["closed_loop"]["cpu_ms_per_request"].values()),
    }


def _report(result: dict[str, Any]) -> None:
    loads = result["loads"]
    rows: list[tuple[str, object]] = []
    for name, run in loads.items():
        rows += [
            (f"{name}: achieved rps", run["achieved_rps"]),
            (f"{name}: e2e p50 / p95 / p99 ms", _triple(run)),
            (f"{name}: errors", run["errors"]),
        ]
    closed = result["closed_loop"]
    rows += [
        (f"closed loop x{closed['concurrency']}: achieved rps", closed["achieved_rps"]),
        (f"closed loop x{closed['concurrency']}: e2e p50 / p95 / p99 ms", _triple(closed)),
        ("max sustained rps (p99 within limit, no errors)", result["max_rps"]),
        ("floor: JetStream round trip p50 ms", result["floor_p50_ms"]),
        ("floor: Ed25519 sign / verify p50 us", _pair(result["floor"])),
        ("e2e p50 at 100/s ms", result["e2e_p50_ms"]),
        ("ratio e2e p50 / floor p50", result["ratio"]),
        ("JetStream writes per request", result["jetstream_writes_per_request_total"]),
        (
            "other processes' CPU share %, most of any run",
            100 * max(run["foreign_cpu_share"] for run in [*loads.values(), closed]),
        ),
    ]
    print_table("end to end, summary", rows)
    closed = result["closed_loop"]
    print_table(
        "critical path, median ms per stage (events' own timestamps): 10/s | 100/s | closed loop",
        [
            (
                stage,
                f"{loads['open_10']['stages_p50_ms'].get(stage, math.nan):9.1f}"
                f" | {loads['open_100']['stages_p50_ms'].get(stage, math.nan):9.1f}"
                f" | {closed['stages_p50_ms'].get(stage, math.nan):9.1f}",
            )
            # Every stage any run saw, in the order of the path (ACKNOWLEDGED may appear only under load).
            for stage in STAGES
            if any(stage in run["stages_p50_ms"] for run in (loads["open_10"], loads["open_100"], closed))
        ],
    )
    print_table(
        "CPU ms per request, per process: 10/s | 100/s | closed loop",
        [
            (
                name,
                f"{loads['open_10']['cpu_ms_per_request'][name]:7.2f}"
                f" | {loads['open_100']['cpu_ms_per_request'][name]:7.2f}"
                f" | {closed['cpu_ms_per_request'][name]:7.2f}",
            )
            for name in loads["open_10"]["cpu_ms_per_request"]
        ],
    )
    print_table(
        "JetStream writes per request, per stream", list(result["jetstream_writes_per_request"].items())
    )
    print_table("RSS MiB after the run", list(result["rss_mb_after"].items()))


def _triple(run: dict[str, Any]) -> str:
    return f"{run['e2e_p50_ms']:.1f} / {run['e2e_p95_ms']:.1f} / {run['e2e_p99_ms']:.1f}"


def _pair(floor: dict[str, float]) -> str:
    return f"{floor['ed25519_sign_p50_us']:.1f} / {floor['ed25519_verify_p50_us']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--profile", type=Path, help="profile broker and agencies with py-spy into DIR")
    parser.add_argument("--profile-seconds", type=int, default=10)
    parser.add_argument(
        "--profile-rps", type=float, default=0.0, help="offered load while profiling (default: 80%% of max)"
    )
    parser.add_argument("--accounts", type=int, default=1000, help="benchmark accounts at the bank")
    parser.add_argument("--floor-n", type=int, default=2000, help="JetStream round trips for the floor")
    parser.add_argument("--seconds-10", type=float, default=5.0, help="duration of the 10/s load")
    parser.add_argument("--seconds-100", type=float, default=10.0, help="duration of the 100/s load")
    parser.add_argument("--seconds-500", type=float, default=6.0, help="duration of the 500/s load")
    parser.add_argument("--ramp-seconds", type=float, default=10.0, help="duration of each ramp step")
    parser.add_argument("--closed-seconds", type=float, default=8.0, help="duration of the closed loop")
    parser.add_argument("--concurrency", type=int, default=32, help="submitters in the closed loop")
    parser.add_argument("--p99-limit-ms", type=float, default=2000.0, help="p99 a sustained rate must keep")
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="what-if: nats-server without sync_interval=always (NOT how the bus runs; labelled)",
    )
    parser.add_argument(
        "--metrics", action="store_true", help="broker and adapter count and serve Prometheus metrics"
    )
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test of the bench itself")
    args = parser.parse_args()
    if args.quick:
        args.seconds_10, args.seconds_100, args.seconds_500 = 2.0, 1.0, 0.2
        args.ramp_seconds, args.closed_seconds = 1.0, 2.0
        args.floor_n, args.profile_seconds = 200, 3
    configure_logging("warning")
    result = asyncio.run(measure(args))
    _report(result)
    write_json(args.json, result)
    runs = [*result["loads"].values(), result["closed_loop"], *result["ramp"]]
    foreign = max(run["foreign_cpu_share"] for run in runs)
    if foreign > 0.1:
        print(
            f"WARNING: processes outside the benchmark used up to {foreign:.0%} of this machine's CPUs"
            " during the runs; these numbers are pessimistic"
        )
    if args.no_fsync:
        print("NOTE: what-if run, nats-server WITHOUT fsync per write: not the configuration the bus runs")
    print(
        f"bench: e2e_p50_ms={result['e2e_p50_ms']:.2f} floor_p50_ms={result['floor_p50_ms']:.3f}"
        f" ratio={result['ratio']:.1f} max_rps={result['max_rps']:.0f}"
        f" unloaded_p50_ms={result['unloaded_p50_ms']:.2f} unloaded_ratio={result['unloaded_ratio']:.1f}"
        f" writes_per_request={result['jetstream_writes_per_request_total']:.2f}"
        f" cpu_ms_per_request={result['cpu_ms_per_request_total']:.2f}"
    )


if __name__ == "__main__":
    main()
