"""How long the broker takes to chase money over 6 hops, next to 1 hop, measured in the same run.

    python -m tests.bench.bench_trail [--reps 7] [--json FILE]

One stack in this process (embedded nats-server with its file store, the broker, every reference
agency behind its own adapter, default settings). Each repetition seeds two fresh chains into the
banks, a 6-hop one across the four banks and a 1-hop one, every account keeping 1,000.00, and has
the police stop the first account of each, one case after the other. The chase time of a case
runs from its root's first result (the broker's recorded time of the root's outcome) to the
outcome of the last hold (the same clock); the broker does every step in between by itself.
Reports medians over the repetitions, the time per hop, and how many times a case's trail entry
was written (the most over the repetitions; 7 holds for 6 hops, 2 for 1 hop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import trail_pb2
from nats.aio.msg import Msg

from agencies.demo import Stack, StackConfig
from broker.hub import load_policy
from broker.hub._trail_store import TRAILS_BUCKET, trail_key
from broker.protocol import NatsSettings, SigningKey, connect, load_agency_signing_key
from tests.integration.trail_world import (
    POLICE,
    bank_cores,
    chain_graph,
    root_request,
    seed_graph,
    trail_stack,
    wait_settled,
    wired,
)

SAMPLE_POLICY = Path(__file__).resolve().parents[2] / "agencies" / "policy.toml"


def _seconds(stamp: Timestamp) -> float:
    return stamp.ToDatetime(tzinfo=UTC).timestamp()


def chase_ms(trail: trail_pb2.Trail) -> float:
    """From the root's outcome to the last outcome of the trail, by the broker's clock."""
    requests = [r for n in trail.nodes for r in n.requests]
    root = next(r for r in requests if r.hop == 0)
    last = max(_seconds(r.outcome_at) for r in requests)
    return (last - _seconds(root.outcome_at)) * 1000


async def _one(stack: Stack, key: SigningKey, hops: int, salt: int) -> tuple[float, int]:
    """The chase time of one case, and how many times its trail entry was written."""
    graph = chain_graph(salt=salt, hops=hops, keep=100_000)
    seed_graph(bank_cores(stack), graph, anchor=datetime.now(UTC) - timedelta(minutes=1))
    case = f"BENCH-TRAIL-{salt:05d}"
    # A KV write is a publish on $KV.<bucket>.<key>: a plain subscriber counts them (one replica,
    # so every one is stored; the bucket keeps one revision, so its stream cannot count them).
    nc = await connect(NatsSettings.from_url(stack.nats_url, name="bench-trail-writes"))
    writes = 0

    async def count(_msg: Msg) -> None:
        nonlocal writes
        writes += 1

    try:
        await nc.subscribe(f"$KV.{TRAILS_BUCKET}.{trail_key(POLICE, case)}", cb=count)
        await nc.flush()
        async with stack.client(POLICE) as police:
            await police.submit(root_request(graph, case))
        trail = await wait_settled(stack, key, case, within=60.0, poll=0.02)
        while len(trail.nodes) < hops + 1:  # settled between two hops: not yet the whole chain
            await asyncio.sleep(0.02)
            trail = await wait_settled(stack, key, case, within=60.0, poll=0.02)
        await nc.flush()
    finally:
        await nc.drain()
    assert sorted(n.depth for n in trail.nodes) == list(range(hops + 1))
    assert all(n.held.minor_units == 100_000 for n in trail.nodes if n.depth < hops)
    return chase_ms(trail), writes


async def measure(reps: int) -> dict[str, object]:
    chase = load_policy(SAMPLE_POLICY).chase
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = StackConfig(keys_dir=root / "keys", data_dir=root / "data")
        async with trail_stack(config) as stack:
            key = load_agency_signing_key(root / "keys", POLICE)
            await _one(stack, key, 2, 90_000)  # warm-up: connections, consumers, caches
            six: list[float] = []
            one: list[float] = []
            six_writes: list[int] = []
            one_writes: list[int] = []
            for rep in range(reps):
                ms, writes = await _one(stack, key, 6, 91_000 + rep)
                six.append(ms)
                six_writes.append(writes)
                ms, writes = await _one(stack, key, 1, 92_000 + rep)
                one.append(ms)
                one_writes.append(writes)
    six_ms, one_ms = statistics.median(six), statistics.median(one)
    return {
        "reps": reps,
        "chase_6_hops_p50_ms": six_ms,
        "chase_6_hops_max_ms": max(six),
        "chase_1_hop_p50_ms": one_ms,
        "chase_1_hop_max_ms": max(one),
        "per_hop_6_hops_ms": six_ms / 6,
        "ratio_6_to_1": six_ms / one_ms if one_ms else 0.0,
        "trail_writes_6_hops": max(six_writes),
        "trail_writes_1_hop": max(one_writes),
        "bounds_max_depth": chase.max_depth,
        "bounds_min_amount_cny": chase.min_amount("CNY") / 100,
        "bounds_max_accounts": chase.max_accounts,
        "bounds_max_requests": chase.max_requests,
        "broker_wiring": "broker" if wired() else "stand-in (tests/integration/trail_world.py)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(measure(args.reps))
    width = max(len(k) for k in result)
    for name, value in result.items():
        if isinstance(value, float):
            print(f"{name:<{width}}  {value:10.3f}")
        else:
            print(f"{name:<{width}}  {value!s:>10}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
