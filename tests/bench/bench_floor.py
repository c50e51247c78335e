"""The floor under every end-to-end number: one JetStream round trip and raw Ed25519, on this machine.

    python -m tests.bench.bench_floor [--n 2000] [--json FILE]

Three groups, each a median of per-operation timings:

1. **JetStream round trip** (the floor): ``js.publish`` until its PubAck, then a pull ``fetch`` of
   that one message, then ``ack_sync`` (the ack confirmed by the server, as adapters ack): the
   least any message handed from one party to another through a durable stream costs. Also the
   three parts alone, and the write ceiling: PubAcks per second with 64 publishes in flight.
2. **Raw Ed25519** (``cryptography``): sign and verify of a 1 KiB message.
3. **What the bus builds on them** (not the floor; to attribute time): the project's request
   signature (detached JWS) and its verification (with the field rules), the bearer token, the
   field rules alone, and parsing / serialising a request status.

The standalone run starts its own nats-server (file store, ``sync_interval: always``, as the
broker runs it); ``bench_e2e`` runs :func:`measure_jetstream` against the server of its own bus,
so the floor and the end-to-end numbers come from the same server in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from greenchannel.v1 import lifecycle_pb2
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from nats.js.client import JetStreamContext

from broker._logging import configure_logging
from broker.embedded import EmbeddedNats, EmbeddedNatsConfig
from broker.protocol import (
    NatsSettings,
    SystemClock,
    connect,
    ensure_agency_keys,
    fetch_batch,
    load_agency_signing_key,
    load_directory,
    mint_bearer_token,
    sign_request,
    validate_message,
    verify_bearer_token,
    verify_request,
)

from ._harness import (
    DIRECTORY,
    POLICE,
    cpu_seconds,
    latency_summary,
    print_table,
    stop_payment_for,
    write_json,
)

__all__ = ["measure_components", "measure_ed25519", "measure_jetstream"]

_PAYLOAD = bytes(range(256)) * 4  # 1 KiB, about an envelope's size
_STREAM = "BENCH_FLOOR"
_SUBJECT = "bench.floor"


async def measure_jetstream(nats_url: str, *, server_pid: int, n: int = 2000) -> dict[str, float]:
    """JetStream publish -> fetch -> ack round trips (ms) and the pipelined write rate.

    Also the CPU each round trip costs the server (``server_pid``) and this client (nats-py).
    """
    nc = await connect(NatsSettings.from_url(nats_url, name="bench-floor"))
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=_STREAM, subjects=[_SUBJECT, f"{_SUBJECT}.pipe"]))
    sub = await js.pull_subscribe(
        _SUBJECT, durable="floor", stream=_STREAM, config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
    )
    round_trip: list[float] = []
    publish: list[float] = []
    fetch: list[float] = []
    ack: list[float] = []
    try:
        for i in range(-100, n):
            if i == 0:
                server_cpu, client_cpu = (
                    cpu_seconds(server_pid),
                    time.process_time(),
                )  # the first 100 warm up connection, consumer and caches
            t0 = time.perf_counter()
            await js.publish(_SUBJECT, _PAYLOAD, headers={"Nats-Msg-Id": f"floor-{i}"})
            t1 = time.perf_counter()
            msgs = await fetch_batch(sub, 1, 5.0)
            t2 = time.perf_counter()
            if len(msgs) != 1:
                raise RuntimeError(f"floor: fetched {len(msgs)} messages, expected 1")
            await msgs[0].ack_sync()
            t3 = time.perf_counter()
            if i >= 0:
                round_trip.append((t3 - t0) * 1000)
                publish.append((t1 - t0) * 1000)
                fetch.append((t2 - t1) * 1000)
                ack.append((t3 - t2) * 1000)
        server_cpu = cpu_seconds(server_pid) - server_cpu
        client_cpu = time.process_time() - client_cpu
        pipelined_count = max(n * 2, 2000)
        pipelined_cpu = cpu_seconds(server_pid)
        pipelined = await _pipelined_rate(js, count=pipelined_count, in_flight=64)
        pipelined_cpu = cpu_seconds(server_pid) - pipelined_cpu
    finally:
        await sub.unsubscribe()
        await js.delete_stream(_STREAM)
        await nc.drain()
    return {
        **latency_summary(round_trip, "jetstream_round_trip_"),
        "jetstream_publish_p50_ms": statistics.median(publish),
        "jetstream_fetch_p50_ms": statistics.median(fetch),
        "jetstream_ack_sync_p50_ms": statistics.median(ack),
        "jetstream_round_trip_server_cpu_us": server_cpu * 1e6 / n,
        "jetstream_round_trip_client_cpu_us": client_cpu * 1e6 / n,
        "jetstream_pipelined_pubacks_per_s": pipelined,
        "jetstream_pipelined_server_cpu_us_per_publish": pipelined_cpu * 1e6 / pipelined_count,
    }


async def _pipelined_rate(js: JetStreamContext, *, count: int, in_flight: int) -> float:
    """PubAcks per second with ``in_flight`` publishes outstanding: the server's write ceiling."""
    next_index = iter(range(count))

    async def publisher() -> None:
        for i in next_index:
            await js.publish(f"{_SUBJECT}.pipe", _PAYLOAD, headers={"Nats-Msg-Id": f"pipe-{i}"})

    started = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(in_flight)))
    return count / (time.perf_counter() - started)


def _median_us(operation: Callable[[], object], n: int) -> float:
    for _ in range(min(100, n)):
        operation()
    timings: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        operation()
        timings.append((time.perf_counter_ns() - t0) / 1000)
    return statistics.median(timings)


def measure_ed25519(*, n: int = 5000) -> dict[str, float]:
    """Raw Ed25519 sign and verify of 1 KiB (microseconds, medians)."""
    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key()
    signature = key.sign(_PAYLOAD)
    return {
        "ed25519_sign_p50_us": _median_us(lambda: key.sign(_PAYLOAD), n),
        "ed25519_verify_p50_us": _median_us(lambda: public.verify(signature, _PAYLOAD), n),
    }


def measure_components(state_dir: Path, *, n: int = 2000) -> dict[str, float]:
    """What the bus does per message on top of the raw primitives (microseconds, medians)."""
    clock = SystemClock()
    overlay = ensure_agency_keys(DIRECTORY, state_dir, clock=clock)
    registry = load_directory(DIRECTORY, key_overlays=[overlay])
    key = load_agency_signing_key(state_dir, POLICE)
    request = stop_payment_for(1, tag="FLOOR", accounts=1)
    request.idempotency_key = "bench-floor"
    request.issued_at.GetCurrentTime()
    signed = sign_request(request, key=key, sender=POLICE, clock=clock)
    token = mint_bearer_token(key, agency_id=POLICE, clock=clock)
    status = lifecycle_pb2.RequestStatus(id="0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b", sender=POLICE)
    status.case_ref.CopyFrom(request.case_ref)
    status_bytes = status.SerializeToString()
    return {
        "sign_request_p50_us": _median_us(
            lambda: sign_request(request, key=key, sender=POLICE, clock=clock), n
        ),
        "verify_request_p50_us": _median_us(
            lambda: verify_request(signed, keys=registry, sender=POLICE, clock=clock), n
        ),
        "validate_request_fields_p50_us": _median_us(lambda: validate_message(request), n),
        "mint_bearer_token_p50_us": _median_us(
            lambda: mint_bearer_token(key, agency_id=POLICE, clock=clock), n
        ),
        "verify_bearer_token_p50_us": _median_us(
            lambda: verify_bearer_token(token, keys=registry, clock=clock), n
        ),
        "request_status_parse_serialize_p50_us": _median_us(
            lambda: lifecycle_pb2.RequestStatus.FromString(status_bytes).SerializeToString(), n
        ),
    }


async def measure(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        async with EmbeddedNats(EmbeddedNatsConfig(store_dir=root / "nats")) as server:
            jetstream = await measure_jetstream(server.url, server_pid=server.pid, n=n)
        return {
            **jetstream,
            **measure_ed25519(n=max(n, 5000)),
            **measure_components(root / "state", n=n),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="round trips / operations per median")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    configure_logging("warning")
    result = asyncio.run(measure(args.n))
    print_table("floor (this machine)", list(result.items()))
    write_json(args.json, result)


if __name__ == "__main__":
    main()
