"""The ledger on a real nats-server: writers, competing sequencers, crashes, checkpoints, the
LedgerService on a real grpc.aio server, and export -> verify round trips with tampered files.

The ledger stream is append-only and cannot be purged, so this module runs its own nats-server
and every test works on the same, growing chain: each test finds its own records by their
digests, and every verification covers everything appended so far.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import grpc
import grpc.aio
import nats.js.errors
import pytest
import pytest_asyncio
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import common_pb2, envelope_pb2, ledger_pb2, ledger_pb2_grpc, lifecycle_pb2
from nats.aio.client import Client
from nats.js.api import AckPolicy, RetentionPolicy
from nats.js.client import JetStreamContext

from broker.cli._ledger import add_parser as add_ledger_parser
from broker.cli._ledger import ledger_export_command, ledger_verify_command
from broker.cli._ledger import run as run_ledger
from broker.client import bearer_metadata, error_details, export_ledger
from broker.embedded import EmbeddedNats, EmbeddedNatsConfig
from broker.hub._auth import Authenticator, open_replay_cache
from broker.hub._ledger import (
    LedgerConfig,
    LedgerReader,
    LedgerSequencer,
    LedgerWriter,
    _entry_msg_id,
    ensure_ledger_streams,
)
from broker.hub._ledger_blocks import FIRST_SEQ_HEADER, block_msg_id, pack_block
from broker.hub._ledger_service import LedgerServicer
from broker.hub._store import RequestStore
from broker.protocol import (
    LEDGER_INTAKE_STREAM,
    LEDGER_INTAKE_SUBJECT,
    LEDGER_SEQUENCER_CONSUMER,
    LEDGER_STREAM,
    ChainRecord,
    ManualClock,
    NatsSettings,
    Registry,
    SigningKey,
    SystemClock,
    body_digest,
    build_entry,
    connect,
    ensure_agency_keys,
    ensure_streams,
    entry_hash,
    fetch_batch,
    link_entry,
    load_agency_signing_key,
    load_broker_signing_key,
    load_directory,
    stream_specs,
    verify_chain,
    verify_checkpoint,
)
from tests._wait import eventually
from tests.integration.broker_world import DIRECTORY

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
POLICE, BANK, OTHER_POLICE, OTHER_BANK = "police-310115", "bank-icbc", "police-440300", "bank-ccb"
REGULATOR, UNRELATED = "regulator-pboc", "carrier-cmcc"
CONFIG = LedgerConfig(
    checkpoint_interval=timedelta(seconds=10),
    batch=8,
    linger=0.05,
    fetch_timeout=0.1,
    ack_wait=timedelta(seconds=1),
    publish_timeout=2.0,
    retry_delay=0.05,
    max_retry_delay=0.2,
    shutdown_timeout=3.0,
)
WAIT = 60.0  # upper bound for the chain to catch up; never a timing assertion


@dataclass
class Env:
    nats: EmbeddedNats
    state_dir: Path
    registry: Registry
    broker_key: SigningKey


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    root = tmp_path_factory.mktemp("ledger")
    state_dir = root / "state"
    overlay = ensure_agency_keys(DIRECTORY, state_dir, clock=ManualClock(T0 - timedelta(days=1)))
    registry = load_directory(DIRECTORY, key_overlays=[overlay])
    async with EmbeddedNats(EmbeddedNatsConfig(store_dir=root / "nats")) as server:
        nc = await connect(
            NatsSettings(servers=(server.url,), name="ledger-setup", initial_connect_timeout=5)
        )
        js = nc.jetstream()
        await ensure_streams(js, stream_specs())
        await ensure_ledger_streams(js)
        await ensure_ledger_streams(js)  # idempotent
        await nc.drain()
        yield Env(
            nats=server, state_dir=state_dir, registry=registry, broker_key=load_broker_signing_key(state_dir)
        )


async def _connect(env: Env, name: str) -> Client:
    return await connect(NatsSettings(servers=(env.nats.url,), name=name, initial_connect_timeout=5))


@pytest_asyncio.fixture(loop_scope="session")
async def js(env: Env) -> AsyncIterator[JetStreamContext]:
    client = await _connect(env, "ledger-test")
    try:
        yield client.jetstream()
    finally:
        if not client.is_closed:
            await client.drain()


def digest_of(record_id: str) -> str:
    return body_digest(record_id.encode())


async def record(
    writer: LedgerWriter,
    record_id: str,
    *,
    actor: str = POLICE,
    parties: Iterable[str] = (POLICE, BANK),
    request_id: str = "",
    case_number: str = "SH-PD-2026-0001",
) -> None:
    await writer.record(
        record_id=record_id,
        kind=ledger_pb2.LEDGER_ENTRY_KIND_EVENT,
        actor=actor,
        request_id=request_id,
        case_number=case_number,
        parties=list(parties),
        state=common_pb2.REQUEST_STATE_DELIVERED,
        subject_digest=digest_of(record_id),
        at=T0,
    )


@dataclass
class Chain:
    records: list[ChainRecord]
    checkpoints: list[envelope_pb2.SignedMessage]
    digests: Counter[str]


async def read_chain(js: JetStreamContext) -> Chain:
    reader = LedgerReader(js)
    entries = await reader.entries(after_seq=0, limit=10**9)
    checkpoints = await reader.checkpoints(after_seq=0, limit=10**9)
    return Chain(
        records=[ChainRecord(seq=e.seq, hash=e.hash, prev_hash=e.prev_hash, entry=e.data) for e in entries],
        checkpoints=checkpoints,
        digests=Counter(e.entry.subject_digest for e in entries),
    )


async def wait_chained(js: JetStreamContext, record_ids: Iterable[str]) -> Chain:
    wanted = {digest_of(r) for r in record_ids}
    async with asyncio.timeout(WAIT):
        while True:
            chain = await read_chain(js)
            if wanted <= set(chain.digests):
                return chain
            await asyncio.sleep(0.05)


def assert_verifies(chain: Chain, env: Env) -> None:
    report = verify_chain(chain.records, chain.checkpoints, keys=env.registry)
    assert report.ok, [str(p) for p in report.problems]
    assert [r.seq for r in chain.records] == list(range(1, len(chain.records) + 1))


def assert_once_each(chain: Chain, record_ids: Iterable[str]) -> None:
    counts = {r: chain.digests[digest_of(r)] for r in record_ids}
    assert set(counts.values()) == {1}, {r: n for r, n in counts.items() if n != 1}


async def intake_drained(js: JetStreamContext) -> None:
    """Until every intake record was chained and acked (the work queue is empty)."""
    async with asyncio.timeout(WAIT):
        while True:
            info = await js.consumer_info(LEDGER_INTAKE_STREAM, LEDGER_SEQUENCER_CONSUMER)
            if not info.num_pending and not info.num_ack_pending:
                return
            await asyncio.sleep(0.05)


# -- sequencing ---------------------------------------------------------------------------------


async def test_two_sequencers_chain_concurrent_records_once_each(env: Env, js: JetStreamContext) -> None:
    writer = LedgerWriter(js)
    ids = [f"two-{task}-{i}" for task in range(20) for i in range(10)]
    replica_a, replica_b = await _connect(env, "replica-a"), await _connect(env, "replica-b")
    try:
        async with (
            LedgerSequencer(replica_a.jetstream(), env.broker_key, ManualClock(T0), CONFIG) as seq_a,
            LedgerSequencer(replica_b.jetstream(), env.broker_key, ManualClock(T0), CONFIG) as seq_b,
        ):

            async def one_task(task: int) -> None:
                for i in range(10):
                    await record(writer, f"two-{task}-{i}")
                    if i == 3:  # a retried record: stored once at the intake
                        await record(writer, f"two-{task}-{i}")

            await asyncio.gather(*(one_task(task) for task in range(20)))
            await wait_chained(js, ids)
            await intake_drained(js)
        assert seq_a.appended + seq_b.appended == len(ids)
    finally:
        await replica_a.drain()
        await replica_b.drain()
    chain = await read_chain(js)
    assert_verifies(chain, env)
    assert_once_each(chain, ids)
    # Both replicas signed the head on shutdown; the second found the first's and added nothing.
    assert verify_checkpoint(chain.checkpoints[-1], keys=env.registry).seq == len(chain.records)


async def test_killed_sequencer_loses_nothing_and_duplicates_nothing(env: Env, js: JetStreamContext) -> None:
    writer = LedgerWriter(js)
    early, late = [f"kill-{i}" for i in range(60)], [f"kill-{i}" for i in range(60, 150)]
    before = len((await read_chain(js)).records)
    doomed = await _connect(env, "doomed")
    sequencer = LedgerSequencer(doomed.jetstream(), env.broker_key, ManualClock(T0), CONFIG)
    await sequencer.__aenter__()
    await asyncio.gather(*(record(writer, r) for r in early))

    async def some_chained() -> bool:
        return len((await read_chain(js)).records) >= before + 40

    await eventually(some_chained, within=WAIT, every=0.02)
    # The replica dies mid-way: its connection drops with records in hand, some appended and
    # not acked, some not appended at all. Records keep coming in meanwhile.
    await doomed.close()
    await sequencer.aclose()
    await asyncio.gather(*(record(writer, r) for r in late))

    survivor = await _connect(env, "survivor")
    try:
        async with LedgerSequencer(survivor.jetstream(), env.broker_key, ManualClock(T0), CONFIG) as second:
            await wait_chained(js, early + late)
            await intake_drained(js)
    finally:
        await survivor.drain()
    assert sequencer.appended >= 40
    assert second.appended >= len(late)
    chain = await read_chain(js)
    assert_verifies(chain, env)
    assert_once_each(chain, early + late)


async def test_append_that_was_never_acked_is_not_chained_twice(env: Env, js: JetStreamContext) -> None:
    """The crash window itself: appended, then died before acking the intake record."""
    writer = LedgerWriter(js)
    await record(writer, "crash-window")
    # Play the sequencer that dies: take the record, append it exactly as it would, never ack.
    sub = await js.pull_subscribe_bind(durable=LEDGER_SEQUENCER_CONSUMER, stream=LEDGER_INTAKE_STREAM)
    [taken] = await fetch_batch(sub, 1, 2.0)
    await sub.unsubscribe()
    info = await js.stream_info(LEDGER_STREAM)
    head = await LedgerReader(js).entries(after_seq=0, limit=10**9)
    last = head[-1]
    entry = link_entry(taken.data, seq=last.seq + 1, prev_hash=last.hash)
    await js.publish(
        "gc.ledger.entry",
        entry,
        headers={
            "Nats-Msg-Id": _entry_msg_id("crash-window"),
            "Nats-Expected-Last-Sequence": str(info.state.last_seq),
        },
    )
    # A replica takes the redelivered record: its append is a duplicate, and it acks.
    async with LedgerSequencer(js, env.broker_key, ManualClock(T0), CONFIG) as sequencer:
        await intake_drained(js)
    assert sequencer.appended == 0
    chain = await read_chain(js)
    assert_verifies(chain, env)
    assert_once_each(chain, ["crash-window"])
    assert chain.records[last.seq].hash == entry_hash(entry)


async def test_sequencer_with_a_stale_head_is_refused_and_catches_up(env: Env, js: JetStreamContext) -> None:
    """Another replica appends behind this one's back: its cached head is stale, the stream
    refuses its append, and it reads the head back and chains after the other's entry."""
    writer = LedgerWriter(js)
    async with LedgerSequencer(js, env.broker_key, ManualClock(T0), CONFIG) as sequencer:
        await record(writer, "before-stale")
        await wait_chained(js, ["before-stale"])
        stale = sequencer.head
        # The other replica: one correct append after the current head.
        last = (await LedgerReader(js).entries(after_seq=0, limit=10**9))[-1]
        info = await js.stream_info(LEDGER_STREAM)
        other = build_entry(kind=ledger_pb2.LEDGER_ENTRY_KIND_BREACH, actor="greenchannel-broker", at=T0)
        await js.publish(
            "gc.ledger.entry",
            link_entry(other, seq=last.seq + 1, prev_hash=last.hash),
            headers={
                "Nats-Msg-Id": "entry:other-replica",
                "Nats-Expected-Last-Sequence": str(info.state.last_seq),
            },
        )
        assert sequencer.head == stale  # it has not noticed
        await record(writer, "after-stale")
        chain = await wait_chained(js, ["after-stale"])
    assert sequencer.appended == 2
    assert chain.records[-1].seq == last.seq + 2
    assert_verifies(chain, env)
    assert_once_each(chain, ["before-stale", "after-stale"])


async def test_watch_log_events_and_rejections_are_chained(env: Env, js: JetStreamContext) -> None:
    writer = LedgerWriter(js)
    request_id = str(uuid.uuid4())
    header = envelope_pb2.EnvelopeHeader(id=request_id, body_digest=digest_of("the request"))
    status = lifecycle_pb2.RequestStatus(
        id=request_id,
        sender=POLICE,
        recipient=BANK,
        case_ref=common_pb2.CaseRef(case_number="SH-PD-2026-0002", issuing_agency=POLICE),
        notarized_header=header.SerializeToString(),
    )

    def recorded(state: common_pb2.RequestState.ValueType, actor: str) -> lifecycle_pb2.RecordedEvent:
        event = lifecycle_pb2.LifecycleEvent(
            event_id=str(uuid.uuid4()),
            request_id=request_id,
            state=state,
            actor=actor,
            request_digest=header.body_digest,  # every event is bound to the notarized body
        )
        return lifecycle_pb2.RecordedEvent(
            event=envelope_pb2.SignedMessage(payload=event.SerializeToString(), signature="x" * 16),
            recorded_at=Timestamp(seconds=int(T0.timestamp())),
        )

    timeline = [
        recorded(common_pb2.REQUEST_STATE_SUBMITTED, "greenchannel-broker"),
        recorded(common_pb2.REQUEST_STATE_DELIVERED, BANK),
        recorded(common_pb2.REQUEST_STATE_ESCALATED, "greenchannel-broker"),
    ]

    def appending(
        item: lifecycle_pb2.RecordedEvent,
    ) -> Callable[[lifecycle_pb2.RequestStatus], lifecycle_pb2.RequestStatus | None]:
        def change(current: lifecycle_pb2.RequestStatus) -> lifecycle_pb2.RequestStatus | None:
            if any(r.event.payload == item.event.payload for r in current.events):
                return None  # applied before: a redelivered event writes nothing
            current.events.append(item)
            return current

        return change

    store = RequestStore(js)
    async with LedgerSequencer(js, env.broker_key, ManualClock(T0), CONFIG):
        status.events.append(timeline[0])
        assert (await store.create(status, msg_id=request_id)).stored
        for item in timeline[1:]:
            await store.update(request_id, appending(item))
            await store.update(request_id, appending(item))  # redelivered
        await writer.record_rejection(
            record_id="rejection:forged-1", actor=BANK, request_id="../../etc", refused=b"forged", at=T0
        )
        digests = [header.body_digest, *(body_digest(r.event.payload) for r in timeline[1:])]
        wanted = {*digests, body_digest(b"forged")}

        async def all_chained() -> bool:
            return wanted <= set((await read_chain(js)).digests)

        await eventually(all_chained, within=WAIT, every=0.02)
    chain = await read_chain(js)
    entries = {
        e.subject_digest: e
        for e in (ledger_pb2.LedgerEntry.FromString(r.entry or b"") for r in chain.records)
    }
    request, delivered, breach = (entries[d] for d in digests)
    assert (request.kind, request.actor) == (ledger_pb2.LEDGER_ENTRY_KIND_REQUEST, POLICE)
    assert (delivered.kind, delivered.actor) == (ledger_pb2.LEDGER_ENTRY_KIND_EVENT, BANK)
    assert (breach.kind, breach.state) == (
        ledger_pb2.LEDGER_ENTRY_KIND_BREACH,
        common_pb2.REQUEST_STATE_ESCALATED,
    )
    for entry in (request, delivered, breach):
        assert (entry.request_id, entry.case_number) == (request_id, "SH-PD-2026-0002")
        assert list(entry.parties) == [POLICE, BANK]
        assert entry.at.ToDatetime(tzinfo=UTC) == T0
        assert chain.digests[entry.subject_digest] == 1
    rejection = entries[body_digest(b"forged")]
    assert (rejection.kind, rejection.actor, rejection.request_id) == (
        ledger_pb2.LEDGER_ENTRY_KIND_REJECTION,
        BANK,
        "",
    )
    assert_verifies(chain, env)


async def test_ledger_refuses_delete_and_purge(env: Env, js: JetStreamContext) -> None:
    writer = LedgerWriter(js)
    async with LedgerSequencer(js, env.broker_key, ManualClock(T0), CONFIG):
        await record(writer, "append-only")
        await wait_chained(js, ["append-only"])
    with pytest.raises(nats.js.errors.APIError) as deleted:
        await js.delete_msg(LEDGER_STREAM, 1)
    assert deleted.value.err_code == 10057  # message delete not permitted
    with pytest.raises(nats.js.errors.APIError) as purged:
        await js.purge_stream(LEDGER_STREAM)
    assert purged.value.err_code == 10110  # stream purge not permitted
    assert_verifies(await read_chain(js), env)
    intake = await js.stream_info(LEDGER_INTAKE_STREAM)
    assert intake.config.retention == RetentionPolicy.WORK_QUEUE.value
    assert intake.config.subjects == [LEDGER_INTAKE_SUBJECT]
    consumer = await js.consumer_info(LEDGER_INTAKE_STREAM, LEDGER_SEQUENCER_CONSUMER)
    assert consumer.config.ack_policy == AckPolicy.EXPLICIT.value


async def test_checkpoints_on_interval_and_on_shutdown(env: Env, js: JetStreamContext) -> None:
    writer = LedgerWriter(js)
    clock = ManualClock(T0 + timedelta(hours=1))
    reader = LedgerReader(js)
    seen = len(await reader.checkpoints(after_seq=0, limit=10**9))
    async with LedgerSequencer(js, env.broker_key, clock, CONFIG):
        await asyncio.gather(*(record(writer, f"interval-{i}") for i in range(5)))
        chain = await wait_chained(js, [f"interval-{i}" for i in range(5)])
        clock.advance(CONFIG.checkpoint_interval)

        async def signed() -> bool:
            return len(await reader.checkpoints(after_seq=0, limit=10**9)) > seen

        await eventually(signed)
        checkpoints = await reader.checkpoints(after_seq=0, limit=10**9)
        on_interval = verify_checkpoint(checkpoints[-1], keys=env.registry)
        assert (on_interval.seq, on_interval.head_hash) == (len(chain.records), chain.records[-1].hash)
        assert on_interval.at.ToDatetime(tzinfo=UTC) == clock.now()
        assert on_interval.broker_kid == env.broker_key.kid
        await asyncio.gather(*(record(writer, f"shutdown-{i}") for i in range(3)))
        chain = await wait_chained(js, [f"shutdown-{i}" for i in range(3)])
    checkpoints = await reader.checkpoints(after_seq=0, limit=10**9)
    on_shutdown = verify_checkpoint(checkpoints[-1], keys=env.registry)
    assert (on_shutdown.seq, on_shutdown.head_hash) == (len(chain.records), chain.records[-1].hash)
    seqs = [verify_checkpoint(c, keys=env.registry).seq for c in checkpoints]
    assert seqs == sorted(set(seqs)), "one checkpoint per head, in order"

    # Head unmoved: a restart and a shutdown add no checkpoint.
    async with LedgerSequencer(js, env.broker_key, clock, CONFIG):
        clock.advance(CONFIG.checkpoint_interval * 2)
    assert len(await reader.checkpoints(after_seq=0, limit=10**9)) == len(checkpoints)
    report = verify_chain((await read_chain(js)).records, checkpoints, keys=env.registry)
    assert report.ok
    assert (report.covered_seq, report.uncovered) == (len(chain.records), 0)


# -- LedgerService ------------------------------------------------------------------------------


class Service:
    """LedgerService on a real grpc.aio server, called as any agency."""

    def __init__(self, env: Env, js: JetStreamContext) -> None:
        self.env, self.js = env, js
        self.server = grpc.aio.server()
        self.address = ""
        self.channel: grpc.aio.Channel | None = None
        self.bucket = f"gc_replay_ledger_{uuid.uuid4().hex[:8]}"

    async def __aenter__(self) -> Service:
        auth = Authenticator(
            self.env.registry, await open_replay_cache(self.js, bucket=self.bucket), SystemClock()
        )
        ledger_pb2_grpc.add_LedgerServiceServicer_to_server(
            LedgerServicer(auth=auth, js=self.js), self.server
        )
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.address = f"127.0.0.1:{port}"
        self.channel = grpc.aio.insecure_channel(self.address)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.channel is not None:
            await self.channel.close()
        await self.server.stop(None)
        await self.js.delete_key_value(self.bucket)

    def metadata(self, agency: str) -> tuple[tuple[str, str], ...]:
        key = load_agency_signing_key(self.env.state_dir, agency)
        return bearer_metadata(key, agency_id=agency, clock=SystemClock())

    @property
    def stub(self) -> ledger_pb2_grpc.LedgerServiceAsyncStub:
        return cast("ledger_pb2_grpc.LedgerServiceAsyncStub", ledger_pb2_grpc.LedgerServiceStub(self.channel))

    async def entries(self, agency: str, **request: object) -> ledger_pb2.ListEntriesResponse:
        message = ledger_pb2.ListEntriesRequest(**request)  # type: ignore[arg-type]
        response: ledger_pb2.ListEntriesResponse = await self.stub.ListEntries(
            message, metadata=self.metadata(agency)
        )
        return response

    async def checkpoints(self, agency: str, after_seq: int = 0) -> list[envelope_pb2.SignedMessage]:
        message = ledger_pb2.ListCheckpointsRequest(after_seq=after_seq)
        return list((await self.stub.ListCheckpoints(message, metadata=self.metadata(agency))).checkpoints)


@contextlib.asynccontextmanager
async def service_with_entries(
    env: Env, js: JetStreamContext, tag: str
) -> AsyncIterator[tuple[Service, str]]:
    """Entries of two cases (one of POLICE/BANK, one of OTHER_POLICE/OTHER_BANK), then checkpointed."""
    writer = LedgerWriter(js)
    request_id = str(uuid.uuid4())
    ids = []
    async with LedgerSequencer(js, env.broker_key, ManualClock(T0), CONFIG):
        for i in range(6):
            ours = i % 2 == 0
            ids.append(f"{tag}-{i}")
            await record(
                writer,
                f"{tag}-{i}",
                actor=BANK if ours else OTHER_BANK,
                parties=(POLICE, BANK) if ours else (OTHER_POLICE, OTHER_BANK),
                request_id=request_id if ours else str(uuid.uuid4()),
            )
        await wait_chained(js, ids)
    async with Service(env, js) as service:
        yield service, request_id


async def test_service_shows_entries_to_whom_they_concern(env: Env, js: JetStreamContext) -> None:
    async with service_with_entries(env, js, "visible") as (service, request_id):
        full = await service.entries(REGULATOR, limit=5000)
        assert full.head_seq == len(full.records) == len(full.entries) == full.next_after_seq
        assert all(r.entry for r in full.records)
        assert [e.hash for e in full.entries] == [entry_hash(r.entry) for r in full.records]

        bank = await service.entries(BANK, limit=5000)
        assert [(r.seq, r.hash, r.prev_hash) for r in bank.records] == [
            (r.seq, r.hash, r.prev_hash) for r in full.records
        ]
        readable = {e.seq for e in full.entries if BANK in (e.actor, *e.parties)}
        assert {r.seq for r in bank.records if r.entry} == readable == {e.seq for e in bank.entries}

        outsider = await service.entries(UNRELATED, limit=5000)
        assert not outsider.entries
        assert not any(r.entry for r in outsider.records)
        withheld = [ChainRecord(seq=r.seq, hash=r.hash, prev_hash=r.prev_hash) for r in outsider.records]
        assert verify_chain(withheld, await service.checkpoints(UNRELATED), keys=env.registry).ok

        mine = await service.entries(BANK, request_id=request_id)
        assert [e.request_id for e in mine.entries] == [request_id] * 3
        assert not (await service.entries(UNRELATED, request_id=request_id)).entries


async def test_service_pages_entries_and_checkpoints(env: Env, js: JetStreamContext) -> None:
    async with service_with_entries(env, js, "paged") as (service, _):
        full = await service.entries(REGULATOR, limit=5000)
        paged: list[ledger_pb2.LedgerRecord] = []
        after = 0
        while True:
            page = await service.entries(REGULATOR, after_seq=after, limit=7)
            if not page.records:
                break
            assert len(page.records) <= 7
            paged.extend(page.records)
            after = page.next_after_seq
        assert paged == list(full.records)
        assert after == full.head_seq

        checkpoints = await service.checkpoints(UNRELATED)
        seqs = [verify_checkpoint(c, keys=env.registry).seq for c in checkpoints]
        assert seqs == sorted(seqs)
        assert seqs[-1] == full.head_seq
        later = await service.checkpoints(UNRELATED, after_seq=seqs[0])
        assert [verify_checkpoint(c, keys=env.registry).seq for c in later] == seqs[1:]


async def test_service_refuses_unauthenticated_and_invalid_calls(env: Env, js: JetStreamContext) -> None:
    async with Service(env, js) as service:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await service.stub.ListEntries(ledger_pb2.ListEntriesRequest())
        assert error_details(missing.value).code is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await service.entries(REGULATOR, limit=5001)
        assert error_details(invalid.value).code is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as bad_id:
            await service.entries(REGULATOR, request_id="not-a-uuid")
        assert error_details(bad_id.value).code is grpc.StatusCode.INVALID_ARGUMENT


# -- export and verify --------------------------------------------------------------------------


async def export_as_regulator(
    service: Service, path: Path, *, as_json: bool = False, out: io.StringIO | None = None
) -> Path:
    """``greenchannel ledger export --as regulator-pboc [--json]``, into ``path``; what it prints
    goes to ``out``."""
    out = out or io.StringIO()
    code = await ledger_export_command(
        broker=service.address,
        agency_id=REGULATOR,
        state_dir=service.env.state_dir,
        out_path=path,
        out=out,
        err=out,
        as_json=as_json,
    )
    assert code == 0, out.getvalue()
    return path


def verify_file(env: Env, path: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = ledger_verify_command(path=path, keys=env.registry, out=out, err=out)
    return code, out.getvalue()


def entry_lines(path: Path) -> tuple[list[str], list[int]]:
    lines = path.read_text().splitlines()
    return lines, [i for i, line in enumerate(lines) if json.loads(line).get("type") == "entry"]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def changed_line(line: str) -> str:
    document = json.loads(line)
    entry = ledger_pb2.LedgerEntry.FromString(base64.b64decode(document["entry"]))
    entry.actor = "bank-forged"
    data = entry.SerializeToString()
    document["entry"] = base64.b64encode(data).decode()
    document["hash"] = entry_hash(data)
    return json.dumps(document)


async def test_export_verify_round_trip_and_tampered_files(
    env: Env, js: JetStreamContext, tmp_path: Path
) -> None:
    async with service_with_entries(env, js, "export") as (service, _):
        path = await export_as_regulator(service, tmp_path / "ledger.jsonl")
        outsider = await export_ledger(
            broker=service.address,
            agency_id=UNRELATED,
            signing_key=load_agency_signing_key(env.state_dir, UNRELATED),
            out=tmp_path / "outsider.jsonl",
        )
        # --json: what was exported, as one JSON object.
        printed = io.StringIO()
        again = await export_as_regulator(service, tmp_path / "again.jsonl", as_json=True, out=printed)
        summary = json.loads(printed.getvalue())
        assert Path(summary["file"]).name == again.name
        assert summary["exported_by"] == REGULATOR
        assert summary["records"] == summary["head_seq"] > 0
        assert summary["withheld"] == 0
    code, verdict = verify_file(env, path)
    assert code == 0, verdict
    assert "VERIFIED" in verdict
    assert outsider.withheld == outsider.records > 0
    assert verify_file(env, outsider.path)[0] == 0

    lines, entries = entry_lines(path)
    n = len(entries)
    assert json.loads(lines[0])["format"] == "greenchannel-ledger/1"
    first, middle, last = entries[0], entries[n // 2], entries[-1]
    for index in (first, middle, last):
        seq = json.loads(lines[index])["seq"]
        cases = {
            "changed": [*lines[:index], changed_line(lines[index]), *lines[index + 1 :]],
            "deleted": lines[:index] + lines[index + 1 :],
            "inserted": [*lines[: index + 1], changed_line(lines[index]), *lines[index + 1 :]],
            "reordered": (
                lines[:index] + lines[index + 1 : index + 4] + [lines[index]] + lines[index + 4 :]
                if index != last
                else [*lines[: index - 4], lines[index], *lines[index - 4 : index], *lines[index + 1 :]]
            ),
        }
        kinds = {"changed": "CHANGED", "deleted": "MISSING", "inserted": "INSERTED", "reordered": "REORDERED"}
        for name, tampered in cases.items():
            code, verdict = verify_file(env, write(tmp_path / f"{name}-{seq}.jsonl", tampered))
            assert code == 1, (name, seq, verdict)
            problems = [line.strip() for line in verdict.splitlines()[1:]]
            assert len(problems) == 1, (name, seq, verdict)
            assert f"{kinds[name]}: entry {seq}" in problems[0], (name, seq, verdict)

    # The command line, as `greenchannel ledger verify FILE --json` runs it.

    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--directory", type=Path)
    add_ledger_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["--state-dir", str(env.state_dir), "--directory", str(DIRECTORY), "ledger", "verify", str(path)]
    )
    assert run_ledger(args) == 0
    garbage = write(tmp_path / "garbage.jsonl", ["not a ledger"])
    assert verify_file(env, garbage)[0] == 1
    with_bad_line = write(tmp_path / "bad-line.jsonl", [*lines, "{oops"])
    code, verdict = verify_file(env, with_bad_line)
    assert code == 1
    assert f"line {len(lines) + 1}: UNREADABLE" in verdict


# -- blocks -------------------------------------------------------------------------------------


async def ledger_messages(js: JetStreamContext) -> int:
    """Messages on gc.ledger.entry: one per block (or per bare entry, as written before blocks)."""
    info = await js.stream_info(LEDGER_STREAM, subjects_filter="gc.ledger.entry")
    return int((info.state.subjects or {}).get("gc.ledger.entry", 0))


async def test_a_block_holds_many_entries_and_verify_sees_inside_it(
    env: Env, js: JetStreamContext, tmp_path: Path
) -> None:
    writer = LedgerWriter(js)
    ids = [f"block-{i}" for i in range(20)]
    entries_before = len((await read_chain(js)).records)
    messages_before = await ledger_messages(js)
    # Records waiting before the sequencer starts, and a linger long enough to gather them.
    await asyncio.gather(*(record(writer, r) for r in ids))
    lingering = dataclasses.replace(CONFIG, batch=64, linger=0.5, ack_wait=timedelta(seconds=5))
    async with LedgerSequencer(js, env.broker_key, ManualClock(T0), lingering) as sequencer:
        chain = await wait_chained(js, ids)
    assert sequencer.appended == len(ids) == len(chain.records) - entries_before
    assert await ledger_messages(js) - messages_before == sequencer.blocks < len(ids)
    assert_verifies(chain, env)
    assert_once_each(chain, ids)

    # The stored form: one message, the first entry's seq in a header, each entry as hashed.
    last = await js.get_last_msg(LEDGER_STREAM, "gc.ledger.entry")
    block = ledger_pb2.LedgerBlock.FromString(last.data or b"")
    first = int((last.headers or {})["Gc-Ledger-First-Seq"])
    assert len(block.entries) == len(block.record_ids) > 1
    assert [r.hash for r in chain.records[first - 1 :]] == [entry_hash(e) for e in block.entries]

    # A reader that knows no position finds any entry inside a block, and pages across blocks.
    for after in sorted({max(0, first - 2), first - 1, first, first + 3, len(chain.records) - 2}):
        page = await LedgerReader(js).entries(after_seq=after, limit=3)
        assert [e.seq for e in page] == list(range(after + 1, min(after + 3, len(chain.records)) + 1))

    # Exported and verified entry by entry: a change or a removal inside the block is found.
    async with Service(env, js) as service:
        path = await export_as_regulator(service, tmp_path / "blocks.jsonl")
    code, verdict = verify_file(env, path)
    assert code == 0, verdict
    lines, entry_indexes = entry_lines(path)
    inside = first + len(block.entries) // 2  # neither the block's first entry nor its last
    index = next(i for i in entry_indexes if json.loads(lines[i])["seq"] == inside)
    changed = [*lines[:index], changed_line(lines[index]), *lines[index + 1 :]]
    code, verdict = verify_file(env, write(tmp_path / "changed-in-block.jsonl", changed))
    assert code == 1
    problems = [line.strip() for line in verdict.splitlines()[1:]]
    assert len(problems) == 1, verdict
    assert f"CHANGED: entry {inside}" in problems[0], verdict
    code, verdict = verify_file(
        env, write(tmp_path / "removed-from-block.jsonl", lines[:index] + lines[index + 1 :])
    )
    assert code == 1
    assert f"MISSING: entry {inside}" in verdict, verdict


async def test_a_block_appended_and_never_acked_is_not_chained_again_when_regrouped(
    env: Env, js: JetStreamContext
) -> None:
    """The crash window with blocks: a sequencer appended a block and died before acking its
    records. Three come back to another replica as redelivered, grouped differently (two per
    pull, next to a new record); one comes back as if never delivered (a NATS server that
    lost its consumer's ack state). None is chained twice; the new one is chained."""
    writer = LedgerWriter(js)
    async with LedgerSequencer(js, env.broker_key, ManualClock(T0), CONFIG):
        pass  # its consumers exist from here on
    redelivered = ["regroup-a", "regroup-b", "regroup-c"]
    for record_id in redelivered:
        await record(writer, record_id)
    sub = await js.pull_subscribe_bind(durable=LEDGER_SEQUENCER_CONSUMER, stream=LEDGER_INTAKE_STREAM)
    taken = [msg.data for msg in await fetch_batch(sub, 3, 2.0)]
    await sub.unsubscribe()
    assert len(taken) == 3
    await record(writer, "regroup-lost")
    lost = await js.get_last_msg(LEDGER_INTAKE_STREAM, LEDGER_INTAKE_SUBJECT)  # never delivered
    died_with = [*redelivered, "regroup-lost"]
    head = await LedgerReader(js).head_seq()
    prev = (await LedgerReader(js).entries(after_seq=head - 1, limit=1))[0].hash if head else ""
    entries: list[bytes] = []
    for seq, data in enumerate([*taken, lost.data or b""], start=head + 1):
        entries.append(link_entry(data, seq=seq, prev_hash=prev))
        prev = entry_hash(entries[-1])
    info = await js.stream_info(LEDGER_STREAM)
    await js.publish(
        "gc.ledger.entry",
        pack_block(entries, died_with, {LEDGER_INTAKE_STREAM: int(lost.seq or 0)}),
        headers={
            "Nats-Msg-Id": block_msg_id(died_with),
            "Nats-Expected-Last-Sequence": str(info.state.last_seq),
            FIRST_SEQ_HEADER: str(head + 1),
        },
    )
    await record(writer, "regroup-new")
    regrouping = dataclasses.replace(CONFIG, batch=2, linger=0.0)
    async with LedgerSequencer(js, env.broker_key, ManualClock(T0), regrouping) as sequencer:
        await wait_chained(js, ["regroup-new"])
        await intake_drained(js)
    assert sequencer.appended == 1
    chain = await read_chain(js)
    assert_verifies(chain, env)
    assert_once_each(chain, [*died_with, "regroup-new"])
