"""Hostile clients straight on NATS, against the whole stack running with per-agency NATS users.

Every case connects as someone (nobody, a stranger's nkey, bank-abc with its own genuine seed,
carrier-cmcc) and tries to forge, read or destroy what is not theirs. Each asserts the specific
refusal nats-server gives, and that nothing changed: every stream's and bucket's state, and the
inbox consumers, are the same before and after. The positive control runs last: a request submitted
through the broker is delivered to the bank's adapter, which holds only its own credentials, and
executed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import nkeys
import pytest
import pytest_asyncio
from greenchannel.v1 import common_pb2, requests_pb2

from adapters import AdapterConfig
from agencies import _seed as seed
from agencies.demo import Stack, StackConfig
from broker.embedded import EmbeddedNats, EmbeddedNatsConfig
from broker.protocol import (
    AGENCY_JS_API_PREFIX,
    DEADLETTER_STREAM,
    DEADLINES_STREAM,
    DEFAULT_INBOX_ACK_WAIT,
    EVENTS_STREAM,
    INBOX_STREAM,
    KV_BUCKETS,
    LEDGER_INTAKE_STREAM,
    LEDGER_STREAM,
    NOTICES_STREAM,
    WATCH_STREAM,
    NatsSettings,
    agency_inbox_prefix,
    connect,
    deadline_fired_subject,
    ensure_inbox_consumers,
    ensure_streams,
    event_subject,
    inbox_consumer_config,
    inbox_subject,
    nats_seed_path,
    stream_specs,
)
from tests.integration.broker_world import stop_payment
from tests.integration.hostile_nats import Hostile, raw_connect, violation

pytestmark = pytest.mark.integration

ABC = "bank-abc"
ICBC = "bank-icbc"
CARRIER = "carrier-cmcc"
POLICE = "police-310115"
STREAMS = (
    INBOX_STREAM,
    EVENTS_STREAM,
    WATCH_STREAM,
    LEDGER_STREAM,
    LEDGER_INTAKE_STREAM,
    DEADLINES_STREAM,
    DEADLETTER_STREAM,
    NOTICES_STREAM,
    *(f"KV_{bucket}" for bucket in KV_BUCKETS),
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    root = tmp_path_factory.mktemp("nats-permissions")
    template = AdapterConfig(
        agency_id=ICBC, agency_target="127.0.0.1:1", state_dir=Path(), ack_wait=3.0, idle_fetch_timeout=0.2
    )
    config = StackConfig(keys_dir=root / "keys", data_dir=root / "data", adapter=template, nats_auth=True)
    async with Stack(config) as running:
        yield running


# -- helpers ------------------------------------------------------------------------------------


async def as_agency(stack: Stack, agency: str) -> Hostile:
    """Connected with the agency's own genuine seed and inbox prefix, as its adapter is."""
    seed_bytes = nats_seed_path(stack._config.keys_dir, agency).read_bytes().strip()
    return await raw_connect(stack.nats_url, seed=seed_bytes, inbox_prefix=agency_inbox_prefix(agency))


async def snapshot(stack: Stack) -> dict[str, object]:
    """Every stream's and bucket's state, and GC_INBOX's consumers, read as the broker."""
    nc = await connect(stack.nats_settings("test-snapshot"))
    try:
        js = nc.jetstream()
        state: dict[str, object] = {}
        for name in STREAMS:
            try:
                info = (await js.stream_info(name)).state
            except nats.js.errors.NotFoundError:
                state[name] = None  # a bucket nobody has needed yet: must stay absent
                continue
            state[name] = (info.messages, info.first_seq, info.last_seq, info.deleted)
        consumers = await js.consumers_info(INBOX_STREAM)
        state["consumers"] = sorted(
            (c.name, c.config.filter_subject, c.config.deliver_subject, c.config.ack_wait) for c in consumers
        )
        return state
    finally:
        await nc.drain()


# -- the hostile table --------------------------------------------------------------------------

REQUEST_ID = "0190c7c2-7a80-7000-8000-00000000beef"


@dataclass(frozen=True)
class Case:
    id: str
    agency: str
    act: Callable[[Hostile], Awaitable[None]]
    expected: tuple[str, ...]
    """Each must appear in the errors the server sent back."""


async def _publish(h: Hostile, subject: str, *, reply: str = "") -> None:
    await h.nc.publish(subject, b"forged", reply=reply, headers={"Nats-Msg-Id": str(uuid.uuid4())})


async def _js_publish(h: Hostile, subject: str) -> None:
    with pytest.raises(nats.errors.TimeoutError):
        await h.nc.jetstream().publish(subject, b"forged", timeout=0.3)


async def _request(h: Hostile, subject: str, payload: bytes = b"") -> None:
    with pytest.raises(nats.errors.TimeoutError):
        await h.nc.request(subject, payload, timeout=0.3)


async def _subscribe(h: Hostile, subject: str) -> None:
    sub = await h.nc.subscribe(subject)
    await h.settle()
    assert sub.pending_msgs == 0


PUSH = (
    b'{"stream_name":"GC_INBOX","config":{"name":"inbox-bank-abc-green","deliver_subject":"gc.ledger.intake",'
    b'"filter_subject":"gc.inbox.bank-abc.green.>","ack_policy":"none"}}'
)

CASES = [
    Case(
        "forged-event-for-another-agency",
        ABC,
        lambda h: _js_publish(h, event_subject(ICBC, REQUEST_ID)),
        (violation("publish", event_subject(ICBC, REQUEST_ID)),),
    ),
    Case(
        "forged-request-in-another-inbox",
        ABC,
        lambda h: _js_publish(h, inbox_subject(ICBC, "green", "stop_payment")),
        (violation("publish", inbox_subject(ICBC, "green", "stop_payment")),),
    ),
    Case(
        "forged-request-in-own-inbox",
        ABC,
        lambda h: _js_publish(h, inbox_subject(ABC, "green", "freeze")),
        (violation("publish", inbox_subject(ABC, "green", "freeze")),),
    ),
    Case(
        "create-consumer-on-another-inbox",
        ABC,
        lambda h: _request(h, f"$JS.API.CONSUMER.CREATE.{INBOX_STREAM}.spy.gc.inbox.{ICBC}.>", b"{}"),
        (violation("publish", f"$JS.API.CONSUMER.CREATE.{INBOX_STREAM}.spy.gc.inbox.{ICBC}.>"),),
    ),
    Case(
        # A push consumer on its own inbox would deliver into any subject of the broker's account.
        "create-push-consumer-on-own-inbox",
        ABC,
        lambda h: _request(
            h,
            f"{AGENCY_JS_API_PREFIX}.CONSUMER.CREATE.{INBOX_STREAM}.inbox-{ABC}-green.gc.inbox.{ABC}.green.>",
            PUSH,
        ),
        (
            violation(
                "publish",
                f"{AGENCY_JS_API_PREFIX}.CONSUMER.CREATE.{INBOX_STREAM}.inbox-{ABC}-green.gc.inbox.{ABC}.green.>",
            ),
        ),
    ),
    Case(
        "pull-another-inbox",
        ABC,
        lambda h: _request(h, f"$JS.API.CONSUMER.MSG.NEXT.{INBOX_STREAM}.inbox-{ICBC}-green", b'{"batch":1}'),
        (violation("publish", f"$JS.API.CONSUMER.MSG.NEXT.{INBOX_STREAM}.inbox-{ICBC}-green"),),
    ),
    Case(
        "pull-another-inbox-through-the-agency-prefix",
        ABC,
        lambda h: _request(
            h, f"{AGENCY_JS_API_PREFIX}.CONSUMER.MSG.NEXT.{INBOX_STREAM}.inbox-{ICBC}-green", b'{"batch":1}'
        ),
        (
            violation(
                "publish", f"{AGENCY_JS_API_PREFIX}.CONSUMER.MSG.NEXT.{INBOX_STREAM}.inbox-{ICBC}-green"
            ),
        ),
    ),
    Case(
        "ack-another-inbox",
        ABC,
        lambda h: _publish(h, f"$JS.ACK.{INBOX_STREAM}.inbox-{ICBC}-green.1.1.1.1.0"),
        (violation("publish", f"$JS.ACK.{INBOX_STREAM}.inbox-{ICBC}-green.1.1.1.1.0"),),
    ),
    Case(
        "read-every-inbox",
        ABC,
        lambda h: _subscribe(h, "gc.inbox.>"),
        (violation("subscription", "gc.inbox.>"),),
    ),
    Case(
        "read-status",
        ABC,
        lambda h: _subscribe(h, "gc.status.>"),
        (violation("subscription", "gc.status.>"),),
    ),
    Case(
        "read-ledger",
        ABC,
        lambda h: _subscribe(h, "gc.ledger.>"),
        (violation("subscription", "gc.ledger.>"),),
    ),
    Case(
        "write-request-state",
        ABC,
        lambda h: _publish(h, f"$KV.gc_requests.{REQUEST_ID}"),
        (violation("publish", f"$KV.gc_requests.{REQUEST_ID}"),),
    ),
    Case(
        "delete-ledger",
        ABC,
        lambda h: _request(h, f"$JS.API.STREAM.DELETE.{LEDGER_STREAM}"),
        (violation("publish", f"$JS.API.STREAM.DELETE.{LEDGER_STREAM}"),),
    ),
    Case(
        "purge-ledger",
        ABC,
        lambda h: _request(h, f"$JS.API.STREAM.PURGE.{LEDGER_STREAM}"),
        (violation("publish", f"$JS.API.STREAM.PURGE.{LEDGER_STREAM}"),),
    ),
    Case(
        "delete-an-inbox-message",
        ABC,
        lambda h: _request(h, f"$JS.API.STREAM.MSG.DELETE.{INBOX_STREAM}", b'{"seq":1}'),
        (violation("publish", f"$JS.API.STREAM.MSG.DELETE.{INBOX_STREAM}"),),
    ),
    Case(
        "create-a-stream",
        ABC,
        lambda h: _request(h, "$JS.API.STREAM.CREATE.SHADOW", b'{"name":"SHADOW","subjects":["gc.inbox.>"]}'),
        (violation("publish", "$JS.API.STREAM.CREATE.SHADOW"),),
    ),
    Case(
        "forge-a-ledger-record",
        ABC,
        lambda h: _js_publish(h, "gc.ledger.intake"),
        (violation("publish", "gc.ledger.intake"),),
    ),
    Case(
        "fire-a-deadline",
        ABC,
        lambda h: _js_publish(h, deadline_fired_subject(REQUEST_ID, "execute")),
        (violation("publish", deadline_fired_subject(REQUEST_ID, "execute")),),
    ),
    Case(
        "read-another-agencys-replies",
        ABC,
        lambda h: _subscribe(h, f"{agency_inbox_prefix(ICBC)}.>"),
        (violation("subscription", f"{agency_inbox_prefix(ICBC)}.>"),),
    ),
    Case(
        "read-the-brokers-replies",
        ABC,
        lambda h: _subscribe(h, "_INBOX.>"),
        (violation("subscription", "_INBOX.>"),),
    ),
    Case(
        "carrier-reads-a-banks-notices",
        CARRIER,
        lambda h: _subscribe(h, f"gc.notice.{ICBC}"),
        (violation("subscription", f"gc.notice.{ICBC}"),),
    ),
    Case(
        "carrier-consumes-a-banks-notices",
        CARRIER,
        lambda h: _request(h, f"$JS.API.CONSUMER.CREATE.{NOTICES_STREAM}.spy.gc.notice.{ICBC}", b"{}"),
        (violation("publish", f"$JS.API.CONSUMER.CREATE.{NOTICES_STREAM}.spy.gc.notice.{ICBC}"),),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_hostile_client_is_refused_and_changes_nothing(stack: Stack, case: Case) -> None:
    before = await snapshot(stack)
    hostile = await as_agency(stack, case.agency)
    try:
        await case.act(hostile)
        await hostile.settle()
        await hostile.refused(*case.expected)
        assert hostile.nc.is_connected, "a refusal must not cost the agency its connection"
    finally:
        await hostile.nc.close()
    assert await snapshot(stack) == before


async def test_reply_subjects_cannot_aim_answers_into_the_brokers_streams(stack: Stack) -> None:
    """Its own consumer's info may be asked, but the answer lands in the agency's own account only."""
    before = await snapshot(stack)
    hostile = await as_agency(stack, ABC)
    try:
        for target in ("gc.ledger.intake", f"$KV.gc_requests.{REQUEST_ID}", event_subject(ICBC, REQUEST_ID)):
            await _publish(
                hostile,
                f"{AGENCY_JS_API_PREFIX}.CONSUMER.INFO.{INBOX_STREAM}.inbox-{ABC}-green",
                reply=target,
            )
        await hostile.settle()
    finally:
        await hostile.nc.close()
    assert hostile.errors == []
    assert await snapshot(stack) == before


async def test_without_credentials_nobody_connects(stack: Stack) -> None:
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
        await raw_connect(stack.nats_url, seed=None)


async def test_an_unknown_nkey_does_not_connect(stack: Stack) -> None:
    stranger = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
        await raw_connect(stack.nats_url, seed=bytes(stranger))


async def test_own_consumer_is_visible_through_the_agency_prefix(stack: Stack) -> None:
    hostile = await as_agency(stack, ABC)
    try:
        js = hostile.nc.jetstream(prefix=AGENCY_JS_API_PREFIX)
        info = await js.consumer_info(INBOX_STREAM, f"inbox-{ABC}-green")
    finally:
        await hostile.nc.close()
    assert info.config.filter_subject == f"gc.inbox.{ABC}.green.>"
    assert hostile.errors == []


async def test_an_adapter_with_only_its_own_credentials_executes_a_request(stack: Stack) -> None:
    request = requests_pb2.Request()
    request.CopyFrom(stop_payment(account=seed.MULE_ICBC_ACCOUNT, minor_units=100_000))
    request.stop_payment.account.holder_name = seed.MULE_ICBC_HOLDER
    async with stack.client(POLICE) as police:
        request_id = (await police.submit(request)).status.id
        status = await police.wait_for(
            request_id,
            {
                common_pb2.REQUEST_STATE_EXECUTED,
                common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED,
                common_pb2.REQUEST_STATE_REJECTED,
                common_pb2.REQUEST_STATE_FAILED,
            },
        )
    assert status.state in (common_pb2.REQUEST_STATE_EXECUTED, common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED)


async def test_the_broker_brings_inbox_consumers_of_an_older_store_to_the_short_ack_wait(
    tmp_path: Path,
) -> None:
    """A store from before the short ack wait has 30 s inbox consumers; an adapter under its own
    NATS user may not change them and would be refused binding with its (short) one."""
    async with EmbeddedNats(EmbeddedNatsConfig(store_dir=tmp_path)) as server:
        nc = await connect(NatsSettings(servers=(server.url,), name="test-upgrade"))
        try:
            js = nc.jetstream()
            await ensure_streams(js, stream_specs(1))
            await js.add_consumer(INBOX_STREAM, inbox_consumer_config(ABC, "green", ack_wait=30.0))
            assert await ensure_inbox_consumers(js, [ABC]) == 1  # the standard lane was missing
            waits = [
                (await js.consumer_info(INBOX_STREAM, f"inbox-{ABC}-{lane}")).config.ack_wait
                for lane in ("green", "standard")
            ]
        finally:
            await nc.drain()
    assert waits == [DEFAULT_INBOX_ACK_WAIT, DEFAULT_INBOX_ACK_WAIT]
