"""What the ledger costs: record() latency next to a raw JetStream publish, and chaining throughput.

    python -m tests.bench.bench_ledger [--n 5000] [--json FILE]

One nats-server (file store, sync always, as the broker runs it). Three measurements:

1. ``record()``, what a request or event handler pays, interleaved round by round with a raw
   ``js.publish`` of a payload of the same size, while a sequencer chains in the background;
2. how fast one sequencer chains a backlog of N records (intake -> hash chain, one block of
   entries per append, each with its concurrency check), and how fast two competing replicas do;
3. how fast ``verify_chain`` proves the resulting ledger offline, and how many GC_LEDGER messages
   (durable writes) hold its entries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import structlog
from greenchannel.v1 import common_pb2, ledger_pb2
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext

from broker.embedded import EmbeddedNats, EmbeddedNatsConfig
from broker.hub._ledger import (
    LedgerConfig,
    LedgerReader,
    LedgerSequencer,
    LedgerWriter,
    ensure_ledger_streams,
)
from broker.protocol import (
    BROKER_ID,
    LEDGER_ENTRY_SUBJECT,
    LEDGER_STREAM,
    ChainRecord,
    ManualClock,
    NatsSettings,
    SigningKey,
    StaticKeyStore,
    body_digest,
    build_entry,
    connect,
    ensure_streams,
    generate_signing_key,
    stream_specs,
    verify_chain,
)

AT = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _record(writer: LedgerWriter, record_id: str) -> None:
    await writer.record(
        record_id=record_id,
        kind=ledger_pb2.LEDGER_ENTRY_KIND_EVENT,
        actor="bank-icbc",
        request_id="0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b",
        case_number="SH-PD-2026-0001",
        parties=["police-310115", "bank-icbc"],
        state=common_pb2.REQUEST_STATE_EXECUTED,
        subject_digest=body_digest(record_id.encode()),
        at=AT,
    )


async def _chained(sequencers: list[LedgerSequencer], total: int) -> None:
    # A counter polled finely: the sequencer has no event to wait on, and 2 ms is noise here.
    while sum(s.appended for s in sequencers) < total:  # noqa: ASYNC110
        await asyncio.sleep(0.002)


async def _drain(
    settings: NatsSettings, writer: LedgerWriter, key: SigningKey, n: int, replicas: int, tag: str
) -> float:
    """Entries per second that ``replicas`` sequencers chain a backlog of ``n`` records at."""
    for i in range(n):
        await _record(writer, f"{tag}-{i}")
    connections = [await connect(settings) for _ in range(replicas)]
    config = LedgerConfig(fetch_timeout=0.05)
    sequencers = [LedgerSequencer(c.jetstream(), key, ManualClock(AT), config) for c in connections]
    started = time.perf_counter()
    for sequencer in sequencers:
        await sequencer.__aenter__()
    await _chained(sequencers, n)
    elapsed = time.perf_counter() - started
    for sequencer in sequencers:
        await sequencer.aclose()
    for connection in connections:
        await connection.drain()
    return n / elapsed


async def _ledger_messages(js: JetStreamContext) -> int:
    """GC_LEDGER messages holding entries: the ledger's durable writes."""
    info = await js.stream_info(LEDGER_STREAM, subjects_filter=LEDGER_ENTRY_SUBJECT)
    return int((info.state.subjects or {}).get(LEDGER_ENTRY_SUBJECT, 0))


async def _verify_rate(js: JetStreamContext, key: SigningKey) -> tuple[int, float]:
    reader = LedgerReader(js)
    entries = await reader.entries(after_seq=0, limit=10**9)
    checkpoints = await reader.checkpoints(after_seq=0, limit=10**9)
    records = [ChainRecord(seq=e.seq, hash=e.hash, prev_hash=e.prev_hash, entry=e.data) for e in entries]
    started = time.perf_counter()
    report = verify_chain(records, checkpoints, keys=StaticKeyStore({BROKER_ID: [key.public()]}))
    elapsed = time.perf_counter() - started
    if not report.ok:
        raise SystemExit(f"the benchmark's own ledger does not verify: {report.problems[:3]}")
    return len(records), len(records) / elapsed


async def measure(n: int) -> dict[str, float | int]:
    # The sequencer logs every checkpoint; keep the table readable.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedNats(EmbeddedNatsConfig(store_dir=Path(tmp))) as server:
            settings = NatsSettings(servers=(server.url,), name="bench")
            nc = await connect(settings)
            js = nc.jetstream()
            await ensure_streams(js, stream_specs())
            await ensure_ledger_streams(js)
            await js.add_stream(StreamConfig(name="BENCH_RAW", subjects=["bench.raw"]))
            key = generate_signing_key()
            writer = LedgerWriter(js)
            payload = build_entry(
                kind=ledger_pb2.LEDGER_ENTRY_KIND_EVENT,
                actor="bank-icbc",
                at=AT,
                request_id="0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b",
                case_number="SH-PD-2026-0001",
                parties=["police-310115", "bank-icbc"],
                state=common_pb2.REQUEST_STATE_EXECUTED,
                subject_digest=body_digest(b"x"),
            )

            # 1. record() against a raw publish, with a sequencer chaining meanwhile.
            background = await connect(settings)
            sequencer = LedgerSequencer(background.jetstream(), key, ManualClock(AT))
            await sequencer.__aenter__()
            for i in range(100):  # warm-up: connections, caches, lazy imports
                await _record(writer, f"warm-{i}")
                await js.publish("bench.raw", payload)
            raw: list[float] = []
            recorded: list[float] = []
            for i in range(n):
                started = time.perf_counter()
                await js.publish("bench.raw", payload, headers={"Nats-Msg-Id": f"raw-{i}"})
                raw.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                await _record(writer, f"live-{i}")
                recorded.append((time.perf_counter() - started) * 1000)
            await _chained([sequencer], n + 100)
            await sequencer.aclose()
            await background.drain()
            live_messages = await _ledger_messages(js)

            # 2. Chaining a backlog: one replica, then two competing.
            one = await _drain(settings, writer, key, n, 1, "one")
            two = await _drain(settings, writer, key, n, 2, "two")

            # 3. Proving it offline; what it took to store.
            entries, verify_rate = await _verify_rate(js, key)
            messages = await _ledger_messages(js)
            await nc.drain()
    return {
        "n": n,
        "record_p50_ms": statistics.median(recorded),
        "record_p95_ms": _quantile(recorded, 0.95),
        "raw_publish_p50_ms": statistics.median(raw),
        "raw_publish_p95_ms": _quantile(raw, 0.95),
        "ratio_p50": statistics.median(recorded) / statistics.median(raw),
        "chain_entries_per_s_1_replica": one,
        "chain_entries_per_s_2_replicas": two,
        "verified_entries": entries,
        "verify_entries_per_s": verify_rate,
        "live_entries_per_ledger_message": (n + 100) / max(1, live_messages),
        "ledger_messages": messages,
        "entries_per_ledger_message": entries / max(1, messages),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
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
