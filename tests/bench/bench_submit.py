"""Submit latency next to the raw JetStream publish it is built on, measured side by side.

    python -m tests.bench.bench_submit [--n 1000] [--json FILE]

One nats-server (file store, sync always, as the broker runs it), one broker, one police client.
For each of N rounds: one raw ``js.publish`` of an envelope-sized payload, then one full Submit
(token, signature, auth with the replay cache, field rules, routing, policy, idempotency claim,
notarization, KV state, inbox publish, watch log). Interleaving the two keeps machine noise
from landing on one side only. Reports medians and p95, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from nats.js.api import StreamConfig

from agencies import DEFAULT_POLICY
from broker.client import BusClient
from broker.embedded import EmbeddedNats, EmbeddedNatsConfig
from broker.hub import Broker, BrokerConfig
from broker.protocol import NatsSettings, SystemClock, connect, ensure_agency_keys, load_agency_signing_key
from tests._sla import DEFAULT_SLA_POLICY
from tests.integration.broker_world import DIRECTORY, POLICE, stop_payment


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ensure_agency_keys(DIRECTORY, root / "state", clock=SystemClock())
        async with EmbeddedNats(EmbeddedNatsConfig(store_dir=root / "nats")) as server:
            settings = NatsSettings(servers=(server.url,), name="bench")
            config = BrokerConfig(
                nats=settings,
                state_dir=root / "state",
                directory=DIRECTORY,
                policy=DEFAULT_POLICY,
                sla=DEFAULT_SLA_POLICY,
                listen="127.0.0.1:0",
            )
            async with Broker(config) as broker:
                nc = await connect(settings)
                js = nc.jetstream()
                await js.add_stream(StreamConfig(name="BENCH_RAW", subjects=["bench.raw"]))
                key = load_agency_signing_key(root / "state", POLICE)
                async with BusClient(broker.address, agency_id=POLICE, signing_key=key) as police:
                    payload = police.sign(stop_payment()).SerializeToString() * 2
                    for i in range(50):  # warm-up: connections, caches, JIT-free but lazy imports
                        await police.submit(stop_payment(case_number=f"WARM-{i:04d}"))
                        await js.publish("bench.raw", payload)
                    raw: list[float] = []
                    submit: list[float] = []
                    for i in range(n):
                        started = time.perf_counter()
                        await js.publish("bench.raw", payload, headers={"Nats-Msg-Id": f"raw-{i}"})
                        raw.append((time.perf_counter() - started) * 1000)
                        request = stop_payment(case_number=f"BENCH-{i:05d}")
                        started = time.perf_counter()
                        await police.submit(request)
                        submit.append((time.perf_counter() - started) * 1000)
                await nc.drain()
    return {
        "n": n,
        "submit_p50_ms": statistics.median(submit),
        "submit_p95_ms": _quantile(submit, 0.95),
        "raw_publish_p50_ms": statistics.median(raw),
        "raw_publish_p95_ms": _quantile(raw, 0.95),
        "ratio_p50": statistics.median(submit) / statistics.median(raw),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(measure(args.n))
    width = max(len(k) for k in result)
    for name, value in result.items():
        print(
            f"{name:<{width}}  {value:10.3f}" if isinstance(value, float) else f"{name:<{width}}  {value:>10}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
