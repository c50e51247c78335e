"""Deadline timer accuracy: how late NATS message schedules fire, as the broker receives them.

    python -m tests.bench.bench_timers [--n 1000] [--spread 5] [--json FILE]

Sets N one-shot timers (the broker's own DeadlineScheduler, one schedule subject per request)
due at random instants over the next ``spread`` seconds, consumes the fired messages with a
durable pull consumer exactly as the broker's deadline watch does, and reports lateness
(arrival minus due time): median, p95, p99 and max. The server's clock and ours are the same
machine's, so lateness is directly comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from broker.embedded import EmbeddedNats, EmbeddedNatsConfig
from broker.hub._timers import DeadlineScheduler, TimerKind, TimerPayload
from broker.protocol import (
    DEADLINES_STREAM,
    NatsSettings,
    connect,
    deadline_fired_filter,
    ensure_streams,
    fetch_batch,
    stream_specs,
)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(n: int, spread: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedNats(EmbeddedNatsConfig(store_dir=Path(tmp))) as server:
            nc = await connect(NatsSettings(servers=(server.url,), name="bench-timers"))
            js = nc.jetstream()
            await ensure_streams(js, stream_specs())
            scheduler = DeadlineScheduler(js)
            sub = await js.pull_subscribe(deadline_fired_filter(), durable="bench", stream=DEADLINES_STREAM)
            start = datetime.now(UTC) + timedelta(seconds=1)
            due: dict[str, datetime] = {}
            set_started = time.perf_counter()
            for _ in range(n):
                request_id = str(uuid.uuid4())
                when = start + timedelta(seconds=random.uniform(0, spread))
                due[request_id] = when
                payload = TimerPayload(
                    request_id=request_id, kind=TimerKind.BREACH, phase="deliver", due_at=when, fire_at=when
                )
                await scheduler.set(payload, "sla")
            set_ms = (time.perf_counter() - set_started) * 1000 / n
            lateness: list[float] = []
            while len(lateness) < n:
                for msg in await fetch_batch(sub, 256, 2.0):
                    arrived = datetime.now(UTC)
                    fired = TimerPayload.decode(msg.data)
                    lateness.append((arrived - due[fired.request_id]).total_seconds() * 1000)
                    await msg.ack()
                if datetime.now(UTC) > start + timedelta(seconds=spread + 30):
                    break
            await nc.drain()
    return {
        "timers": n,
        "fired": len(lateness),
        "set_ms_per_timer": set_ms,
        "lateness_p50_ms": statistics.median(lateness),
        "lateness_p95_ms": _quantile(lateness, 0.95),
        "lateness_p99_ms": _quantile(lateness, 0.99),
        "lateness_max_ms": max(lateness),
        "early": sum(1 for value in lateness if value < -1.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=5.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(measure(args.n, args.spread))
    width = max(len(k) for k in result)
    for name, value in result.items():
        print(
            f"{name:<{width}}  {value:10.3f}" if isinstance(value, float) else f"{name:<{width}}  {value:>10}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
