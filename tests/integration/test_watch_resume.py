"""A Watch that is open while its nats-server restarts, or loses its consumer, goes on by itself.

Real nats-server on a fixed store directory (killed with SIGKILL and restarted on the same port),
real broker and gRPC clients. What the watcher sees is compared with the watch log itself: every
record after the restart arrives, none is lost and none comes twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from greenchannel.v1 import bus_pb2, common_pb2, lifecycle_pb2
from nats.js.client import JetStreamContext

from broker.client import BusClient
from broker.embedded import EmbeddedNats, EmbeddedNatsConfig
from broker.hub._watchlog import WatchConfig, WatchLog, WatchPosition
from broker.protocol import (
    WATCH_STREAM,
    NatsSettings,
    SystemClock,
    connect,
    ensure_agency_keys,
    ensure_streams,
    load_directory,
    status_filter,
    status_subject,
    stream_specs,
)
from tests._wait import eventually
from tests.integration.broker_world import DIRECTORY, POLICE, World, stop_payment

pytestmark = pytest.mark.integration

_OVERALL = 60.0  # generous: only a hung watch may trip it; no timing is asserted below it
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}


async def _submit(police: BusClient, case_number: str) -> str:
    """Submit (retrying while the broker's NATS comes back); the request id."""
    request = stop_payment(case_number=case_number)
    signed = police.sign(request, idempotency_key=uuid.uuid4().hex)
    while True:
        try:
            return (await police.submit_signed(signed)).status.id
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in _TRANSIENT:
                raise
            await asyncio.sleep(0.1)


def _server_config(store: Path) -> EmbeddedNatsConfig:
    # Restarted from a process with live gRPC: no preexec_fn fork (EmbeddedNatsConfig says why).
    return EmbeddedNatsConfig(store_dir=store, parent_death_signal=False)


@contextlib.asynccontextmanager
async def restartable_world(tmp_path: Path) -> AsyncIterator[World]:
    """broker_world, with a server this process may restart while gRPC runs."""
    state_dir = tmp_path / "state"
    overlay = ensure_agency_keys(DIRECTORY, state_dir, clock=SystemClock())
    registry = load_directory(DIRECTORY, key_overlays=[overlay])
    async with EmbeddedNats(_server_config(tmp_path / "nats")) as nats_server:
        nc = await connect(
            NatsSettings(servers=(nats_server.url,), name="test-world", initial_connect_timeout=5.0)
        )
        world = World(state_dir=state_dir, nats=nats_server, registry=registry, nc=nc, js=nc.jetstream())
        try:
            yield world
        finally:
            for broker in reversed(world.brokers):
                await broker.aclose()
            await nc.close()


async def _wait_until(condition: Callable[[], bool], what: str) -> None:
    await eventually(condition, within=_OVERALL, what=f"the watch showed {what}")


async def _log_cursors(world: World, case_number: str) -> list[int]:
    """Stream sequences of every record of the case in the watch log, read straight from NATS."""
    sub = await world.js.subscribe(
        status_filter(case_number=case_number), stream=WATCH_STREAM, ordered_consumer=True
    )
    cursors: list[int] = []
    try:
        # Read until the server says nothing of the case is left (not until a pause, which a
        # loaded machine can make at any point); the test has at least one record of the case.
        while True:
            msg = await sub.next_msg(timeout=_OVERALL)
            cursors.append(msg.metadata.sequence.stream)
            if not msg.metadata.num_pending:
                return cursors
    finally:
        await sub.unsubscribe()


async def test_watch_resumes_after_a_nats_server_restart_without_loss_or_repeat(tmp_path: Path) -> None:
    case = f"WR-{uuid.uuid4().hex[:10]}"
    async with restartable_world(tmp_path) as world:
        broker = await world.start_broker()
        async with world.client(broker) as police, world.client(broker) as watcher:
            seen: list[bus_pb2.WatchResponse] = []

            async def follow() -> None:
                # resume=False: the broker's own watch must carry on; a client-side resume would
                # hide a silent server-side stream.
                async for update in watcher.watch(case_number=case, resume=False):
                    seen.append(update)

            task = asyncio.create_task(follow())
            try:
                before = await _submit(police, case)
                await _wait_until(lambda: any(u.request_id == before for u in seen), "the first request")

                await world.nats.kill()
                await world.nats.restart()
                restarted = time.monotonic()

                after = await _submit(police, case)
                await _wait_until(lambda: any(u.request_id == after for u in seen), "the request after")
                # Reported, not asserted: the old watch stayed silent for 12-17 s here.
                print(f"watch resumed {time.monotonic() - restarted:.1f}s after the restart")
                assert not task.done(), "the watch stream ended instead of resuming"
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        cursors = [u.cursor for u in seen]
        assert cursors == sorted(set(cursors)), f"records repeated or out of order: {cursors}"
        assert cursors == await _log_cursors(world, case), "the watch missed records of the log"
        assert [(u.request_id, u.state) for u in seen] == [
            (before, common_pb2.REQUEST_STATE_SUBMITTED),
            (after, common_pb2.REQUEST_STATE_SUBMITTED),
        ]


async def _wait_for_consumer(js: JetStreamContext) -> None:
    async def made() -> bool:
        return bool(await js.consumers_info(WATCH_STREAM))

    await eventually(made, within=_OVERALL, what="the watch made its consumer")


def _record_subject(case_number: str) -> str:
    return status_subject(
        sender=POLICE,
        recipient="bank-icbc",
        case_owner=POLICE,
        case_number=case_number,
        request_id=str(uuid.uuid4()),
    )


async def test_watch_log_recreates_a_consumer_lost_without_a_reconnect(tmp_path: Path) -> None:
    """A cluster node holding a watcher's consumer can die while the connection stays up: the
    heartbeats stop and the follower makes a new consumer after the last record it handed out."""
    case = f"WL-{uuid.uuid4().hex[:10]}"
    async with EmbeddedNats(_server_config(tmp_path / "nats")) as server:
        nc = await connect(NatsSettings(servers=(server.url,), initial_connect_timeout=5.0))
        try:
            js = nc.jetstream()
            await ensure_streams(js, stream_specs(1))
            watchlog = WatchLog(js, config=WatchConfig(idle_heartbeat=0.2, missed_heartbeats=2))
            seen: list[bus_pb2.WatchResponse] = []

            async def follow() -> None:
                async for record in watchlog.follow([status_filter(case_number=case)], WatchPosition()):
                    seen.append(record)

            async def publish(n: int) -> None:
                for i in range(n):
                    record = lifecycle_pb2.RequestStatus(id=f"r{len(seen)}-{i}")
                    await js.publish(_record_subject(case), record.SerializeToString())

            task = asyncio.create_task(follow())
            try:
                await publish(3)
                await _wait_until(lambda: len(seen) == 3, "the first records")
                for consumer in await js.consumers_info(WATCH_STREAM):
                    await js.delete_consumer(WATCH_STREAM, consumer.name)
                await publish(2)
                await _wait_until(lambda: len(seen) == 5, "the records after the consumer was lost")
                assert not task.done()
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert [r.cursor for r in seen] == [1, 2, 3, 4, 5]
        finally:
            await nc.close()


async def test_watch_only_new_resumes_from_where_it_started(tmp_path: Path) -> None:
    """``only_new`` is pinned to a stream sequence when the watch opens: a consumer made again
    later neither replays what came before the watch nor skips what came while it was away."""
    case = f"WN-{uuid.uuid4().hex[:10]}"
    async with EmbeddedNats(_server_config(tmp_path / "nats")) as server:
        nc = await connect(
            NatsSettings(servers=(server.url,), initial_connect_timeout=5.0, reconnect_time_wait=0.2)
        )
        try:
            js = nc.jetstream()
            await ensure_streams(js, stream_specs(1))
            for _ in range(4):
                await js.publish(_record_subject(case), lifecycle_pb2.RequestStatus().SerializeToString())
            watchlog = WatchLog(js)
            seen: list[int] = []

            async def follow() -> None:
                async for record in watchlog.follow(["gc.status.>"], WatchPosition(only_new=True)):
                    seen.append(record.cursor)

            task = asyncio.create_task(follow())
            try:
                await _wait_for_consumer(js)  # the watch is open before the server goes
                await server.kill()
                await server.restart()
                published: list[int] = []
                while len(published) < 2:
                    try:
                        ack = await js.publish(
                            _record_subject(case),
                            lifecycle_pb2.RequestStatus().SerializeToString(),
                            headers={"Nats-Msg-Id": f"after-{len(published)}"},
                        )
                    except Exception:  # NATS still coming back
                        await asyncio.sleep(0.1)
                        continue
                    published.append(ack.seq)
                await _wait_until(lambda: len(seen) >= 2, "the records after the restart")
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert seen == published == [5, 6]
        finally:
            await nc.close()


async def test_watch_log_replays_a_long_history_through_flow_control(tmp_path: Path) -> None:
    """A watcher resuming far behind gets the whole backlog in order: the follower answers the
    server's flow control, so the replay neither stalls nor drops records."""
    case = f"WF-{uuid.uuid4().hex[:10]}"
    async with EmbeddedNats(_server_config(tmp_path / "nats")) as server:
        nc = await connect(NatsSettings(servers=(server.url,), initial_connect_timeout=5.0))
        try:
            js = nc.jetstream()
            await ensure_streams(js, stream_specs(1))
            # 2 KB records, 6 MB in all: enough for the server to ask for flow control replies.
            payload = lifecycle_pb2.RequestStatus(id="x" * 2000, state=common_pb2.REQUEST_STATE_EXECUTED)
            # All at once, each fsynced: on a loaded machine the last PubAcks take far longer than
            # nats-py's default 5 s, so the bound is generous (it only limits a failure).
            acks = await asyncio.gather(
                *(
                    js.publish(_record_subject(case), payload.SerializeToString(), timeout=_OVERALL * 2)
                    for _ in range(3000)
                )
            )
            seen: list[int] = []

            async def follow() -> None:
                async for record in WatchLog(js).follow(["gc.status.>"], WatchPosition(after_cursor=10)):
                    seen.append(record.cursor)
                    if len(seen) == len(acks) - 10:
                        return

            await asyncio.wait_for(follow(), _OVERALL)
            assert seen == list(range(11, len(acks) + 1))
        finally:
            await nc.close()
