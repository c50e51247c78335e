"""The broker chases money by itself, on the whole stack: NATS, the broker, the reference banks
behind their adapters, and the Bus API. The banks' own records (holds, balances) are the proof.

Graphs are seeded into the banks next to the demo story (account numbers never collide); each
test uses its own case.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2, requests_pb2, trail_pb2
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from agencies import _seed as demo
from agencies.demo import Stack
from broker.cli._trail import trail_command
from broker.client import fetch_trail, open_accounts, switch_chasing
from broker.hub import load_policy
from broker.hub._store import RequestStore
from broker.hub._trail import TrailChaser, TrailRecorder
from broker.hub._trail_store import TRAILS_BUCKET, TrailChange, TrailStore, trail_key
from broker.hub._watchlog import WatchLog
from broker.protocol import (
    BROKER_ID,
    EVENTS_STREAM,
    NatsSettings,
    SigningKey,
    SystemClock,
    connect,
    ensure_streams,
    event_subject,
    generate_signing_key,
    load_agency_encryption_key,
    load_agency_signing_key,
    load_directory,
    new_uuid7,
    stream_specs,
    to_timestamp,
)
from tests._wait import eventually
from tests.integration.stack_config import quick_stack_config
from tests.integration.trail_world import (
    POLICE,
    GraphAccount,
    MoneyGraph,
    bank_cores,
    chain_graph,
    check_trail,
    fan_graph,
    random_graph,
    root_request,
    seed_graph,
    trail_stack,
    wait_settled,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DIRECTORY = ROOT / "agencies" / "directory.toml"
SAMPLE_POLICY = ROOT / "agencies" / "policy.toml"

L = trail_pb2


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    root = tmp_path_factory.mktemp("trail-stack")
    config = quick_stack_config(root / "keys", root / "data")
    async with trail_stack(config) as running:
        yield running


def police_key(stack: Stack) -> SigningKey:
    return load_agency_signing_key(stack._config.keys_dir, POLICE)


def key_of(stack: Stack, agency: str) -> SigningKey:
    return load_agency_signing_key(stack._config.keys_dir, agency)


def seeded(stack: Stack, graph: MoneyGraph) -> MoneyGraph:
    seed_graph(bank_cores(stack), graph, anchor=datetime.now(UTC) - timedelta(minutes=1))
    return graph


async def chase(
    stack: Stack, graph: MoneyGraph, case: str
) -> tuple[trail_pb2.Trail, lifecycle_pb2.RequestStatus]:
    async with stack.client(POLICE) as police:
        accepted = await police.submit(root_request(graph, case))
    trail = await wait_settled(stack, police_key(stack), case)
    return trail, accepted.status


async def statuses_of(stack: Stack, trail: trail_pb2.Trail) -> dict[str, lifecycle_pb2.RequestStatus]:
    async with stack.client(POLICE) as police:
        ids = [r.request_id for n in trail.nodes for r in n.requests]
        found = await asyncio.gather(*(police.get(request_id) for request_id in ids))
    return dict(zip(ids, found, strict=True))


async def checked(
    stack: Stack, trail: trail_pb2.Trail, graph: MoneyGraph
) -> dict[str, common_pb2.BankAccountRef]:
    """Open the trail's accounts with the case owner's key and check every guarantee."""
    accounts = open_accounts(trail, load_agency_encryption_key(stack._config.keys_dir, POLICE))
    assert set(accounts) >= {n.node_id for n in trail.nodes}, "every node's account opens for the owner"
    check_trail(
        trail,
        graph=graph,
        cores=bank_cores(stack),
        statuses=await statuses_of(stack, trail),
        accounts=accounts,
    )
    return accounts


async def test_one_of_everything_is_chased_across_banks(stack: Stack) -> None:
    graph = seeded(stack, fan_graph(salt=1001))
    trail, root = await chase(stack, graph, "TR-FAN-0001")
    accounts = await checked(stack, trail, graph)
    index = {a.number: i for i, a in enumerate(graph.accounts)}
    held = {index[accounts[n.node_id].account_number]: n.held.minor_units for n in trail.nodes}
    # R keeps 15,000 (5,000 + 10,000 back from B); A, B, D what they kept; C both paths; E all.
    assert held == {1: 1_500_000, 2: 200_000, 3: 100_000, 5: 50_000, 6: 2_300_000, 8: 900_000}
    merged = next(n for n in trail.nodes if accounts[n.node_id].account_number == graph.accounts[6].number)
    assert sorted(r.asked.minor_units for r in merged.requests) == [900_000, 1_400_000]
    assert sorted((lead.reason, lead.amount.minor_units) for lead in trail.leads) == [
        (L.LEAD_REASON_OUTSIDE_DIRECTORY, 900_000),
        (L.LEAD_REASON_BELOW_MINIMUM, 50_000),
        (L.LEAD_REASON_CYCLE, 1_000_000),
    ]
    outside = next(lead for lead in trail.leads if lead.reason == L.LEAD_REASON_OUTSIDE_DIRECTORY)
    assert outside.to_bank_code == graph.accounts[7].bank_code
    assert (
        open_accounts(trail, load_agency_encryption_key(stack._config.keys_dir, POLICE))[
            outside.node_id
        ].account_number
        == graph.accounts[7].number
    )
    # The children: sent by the broker, GREEN, one hop on, under the case's legal reference.
    statuses = await statuses_of(stack, trail)
    for node in trail.nodes:
        for request in node.requests:
            status = statuses[request.request_id]
            if request.role == L.TRAIL_ROLE_CHASE:
                assert status.sender == BROKER_ID
                assert status.recipient == node.bank
                assert status.priority == common_pb2.PRIORITY_GREEN
                assert status.parent_id == request.parent_id
                assert status.hop == statuses[status.parent_id].hop + 1
                assert status.case_ref == root.case_ref
            else:
                assert status.id == root.id
                assert status.hop == 0
    # The store holds digests, amounts and ciphertext: no account number, no name.
    nc = await connect(NatsSettings.from_url(stack.nats_url, name="test-trail-store"))
    try:
        kv = await nc.jetstream().key_value(TRAILS_BUCKET)
        stored = (await kv.get(trail_key(POLICE, "TR-FAN-0001"))).value or b""
    finally:
        await nc.drain()
    assert stored
    for account in graph.accounts:
        assert account.number.encode() not in stored
        assert account.holder.encode() not in stored


# Seeds whose graphs show splits, merges, cycles and leads (the unit tests run forty).
@pytest.mark.parametrize("seed", [12, 49, 51])
async def test_generated_graphs_on_the_stack(stack: Stack, seed: int) -> None:
    graph = seeded(stack, random_graph(seed, salt=2000 + seed, hops=6))
    case = f"TR-GEN-{seed:04d}"
    if seed == 49:
        # The police narrow this case's bounds before the first request.
        await switch_chasing(
            stack.broker_address,
            agency_id=POLICE,
            signing_key=police_key(stack),
            case_number=case,
            enabled=True,
            bounds=trail_pb2.ChaseBounds(max_depth=2, max_accounts=4),
        )
    trail, _root = await chase(stack, graph, case)
    await checked(stack, trail, graph)
    if seed == 49:
        assert trail.bounds.max_depth == 2
        assert trail.bounds.max_accounts == 4
        assert len(trail.nodes) == 4
        assert all(n.depth <= 2 for n in trail.nodes)
        assert {lead.reason for lead in trail.leads} & {L.LEAD_REASON_ACCOUNT_LIMIT, L.LEAD_REASON_DEPTH}
    else:
        assert len(trail.nodes) > 8
        assert any(len(n.requests) > 1 for n in trail.nodes)


async def test_a_long_chain_is_held_to_the_policy_depth_and_no_further(stack: Stack) -> None:
    graph = seeded(stack, chain_graph(salt=3001, hops=10))
    trail, _root = await chase(stack, graph, "TR-CHAIN-0001")
    accounts = await checked(stack, trail, graph)
    cores = bank_cores(stack)
    chain = graph.accounts[1:]  # [0] is the victim's
    assert sorted(n.depth for n in trail.nodes) == list(range(9))
    for hop, account in enumerate(chain):
        holds = cores[account.bank].holds_on(account.number)
        assert [h.amount for h in holds] == ([100_000] if hop <= 8 else []), hop
    (lead,) = trail.leads
    assert lead.reason == L.LEAD_REASON_DEPTH
    assert lead.hop == 9
    assert accounts.get(lead.node_id) is None or accounts[lead.node_id].account_number == chain[9].number


async def test_chasing_switched_off_leaves_leads_and_on_again_chases_them(stack: Stack) -> None:
    graph = seeded(stack, chain_graph(salt=4001, hops=3))
    case = "TR-SWITCH-0001"
    trail = await switch_chasing(
        stack.broker_address, agency_id=POLICE, signing_key=police_key(stack), case_number=case, enabled=False
    )
    assert not trail.chasing
    assert not trail.nodes
    trail, _root = await chase(stack, graph, case)
    assert len(trail.nodes) == 1
    assert [lead.reason for lead in trail.leads] == [L.LEAD_REASON_CHASING_OFF]
    trail = await switch_chasing(
        stack.broker_address, agency_id=POLICE, signing_key=police_key(stack), case_number=case, enabled=True
    )
    assert trail.chasing
    trail = await wait_settled(stack, police_key(stack), case)
    while len(trail.nodes) < 4:
        await asyncio.sleep(0.05)
        trail = await wait_settled(stack, police_key(stack), case)
    await checked(stack, trail, graph)
    assert not trail.leads
    assert sorted(n.depth for n in trail.nodes) == [0, 1, 2, 3]


async def test_an_outcome_processed_again_sends_nothing_twice(stack: Stack) -> None:
    graph = seeded(stack, fan_graph(salt=5001))
    case = "TR-AGAIN-0001"
    trail, root = await chase(stack, graph, case)
    before = {(n.node_id, r.request_id, r.held.minor_units) for n in trail.nodes for r in n.requests}
    holds_before = {
        a.number: len(bank_cores(stack)[a.bank].holds_on(a.number)) for a in graph.accounts if a.bank
    }
    # Every outcome event of the case goes round again, as after a broker crash before its ack.
    statuses = await statuses_of(stack, trail)
    nc = await connect(NatsSettings.from_url(stack.nats_url, name="test-trail-replay"))
    try:
        js = nc.jetstream()
        for status in statuses.values():
            outcome = status.events[-1]
            actor = lifecycle_pb2.LifecycleEvent.FromString(outcome.event.payload).actor
            await js.publish(
                event_subject(actor, status.id),
                outcome.event.SerializeToString(),
                headers={"Nats-Msg-Id": str(uuid.uuid4())},
            )

        async def processed() -> bool:
            info = await js.consumer_info(EVENTS_STREAM, "broker-events")
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        await eventually(processed, what="the broker processed the replayed outcomes")
    finally:
        await nc.drain()
    after = await wait_settled(stack, police_key(stack), case)
    assert {(n.node_id, r.request_id, r.held.minor_units) for n in after.nodes for r in n.requests} == before
    assert len(after.leads) == len(trail.leads)
    holds_after = {
        a.number: len(bank_cores(stack)[a.bank].holds_on(a.number)) for a in graph.accounts if a.bank
    }
    assert holds_after == holds_before
    async with stack.client(POLICE) as police:
        listed = await police.list(case_number=case)
    assert len(listed.requests) == len(before)
    assert root.id in {s.id for s in listed.requests}


async def test_the_demo_fraud_account_fans_out_over_three_hops_and_four_banks(stack: Stack) -> None:
    graph_case = "TR-DEMO-0001"
    request = root_request(
        MoneyGraph(
            name="demo",
            root=GraphAccount(bank=demo.FRAUD_BANK, number=demo.FRAUD_ACCOUNT, holder=demo.FRAUD_HOLDER),
            fraud_transfer_id=demo.FRAUD_TRANSFER_ID,
            amount=demo.FRAUD_AMOUNT,
        ),
        graph_case,
    )
    async with stack.client(POLICE) as police:
        await police.submit(request)
    trail = await wait_settled(stack, police_key(stack), graph_case)
    assert sum(n.held.minor_units for n in trail.nodes) == 4_500_000
    assert {n.depth for n in trail.nodes} == {0, 1, 2, 3}
    assert {n.bank for n in trail.nodes} == {"bank-icbc", "bank-ccb", "bank-abc", "bank-cmb"}
    (lead,) = trail.leads
    assert lead.reason == L.LEAD_REASON_OUTSIDE_DIRECTORY
    assert lead.amount.minor_units == 500_000
    assert lead.to_bank_code == demo.OUTSIDE_BANK_CODE


async def test_who_may_read_and_steer_a_trail(stack: Stack) -> None:
    graph = seeded(stack, chain_graph(salt=6001, hops=1))
    case = "TR-ACCESS-0001"
    await chase(stack, graph, case)
    address = stack.broker_address
    regulator = await fetch_trail(
        address,
        agency_id="regulator-mps",
        signing_key=key_of(stack, "regulator-mps"),
        case_number=case,
        issuing_agency=POLICE,
    )
    assert len(regulator.nodes) == 2
    for agency, owner in (("police-440305", POLICE), ("bank-icbc", POLICE), ("police-440305", "")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await fetch_trail(
                address,
                agency_id=agency,
                signing_key=key_of(stack, agency),
                case_number=case,
                issuing_agency=owner,
            )
        assert refused.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND), agency
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await fetch_trail(
            address, agency_id="regulator-mps", signing_key=key_of(stack, "regulator-mps"), case_number=case
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for agency in ("regulator-mps", "bank-icbc"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await switch_chasing(
                address, agency_id=agency, signing_key=key_of(stack, agency), case_number=case, enabled=False
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await switch_chasing(
            address,
            agency_id=POLICE,
            signing_key=police_key(stack),
            case_number=case,
            enabled=True,
            bounds=trail_pb2.ChaseBounds(max_depth=9),
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await fetch_trail(
            address, agency_id=POLICE, signing_key=police_key(stack), case_number="NO-SUCH-CASE"
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cli_prints_the_tree_to_the_owner_and_digests_to_a_regulator(stack: Stack) -> None:
    graph = seeded(stack, fan_graph(salt=7001))
    case = "TR-CLI-0001"
    await chase(stack, graph, case)
    state_dir = stack._config.keys_dir
    out, err = io.StringIO(), io.StringIO()
    code = await trail_command(
        broker=stack.broker_address, agency_id=POLICE, state_dir=state_dir, case_number=case, out=out, err=err
    )
    text = out.getvalue()
    assert code == 0, err.getvalue()
    assert graph.root.number in text
    assert graph.accounts[7].number in text
    assert "lead, outside the directory" in text
    assert "back to an account on its path" in text
    assert "├── " in text
    assert "└── " in text
    assert "settled" in text
    assert "held now on 6 of 6 accounts: 50,500.00 CNY" in text

    out = io.StringIO()
    code = await trail_command(
        broker=stack.broker_address,
        agency_id="regulator-mps",
        state_dir=state_dir,
        case_number=case,
        owner=POLICE,
        as_json=True,
        out=out,
        err=io.StringIO(),
    )
    document = json.loads(out.getvalue())
    assert code == 0
    assert document["held_minor_units"] == 5_050_000
    assert all(node["sealed"] and "account" not in node for node in document["nodes"])
    assert not any(account.number in out.getvalue() for account in graph.accounts)

    err = io.StringIO()
    code = await trail_command(
        broker=stack.broker_address,
        agency_id="police-440305",
        state_dir=state_dir,
        case_number=case,
        owner=POLICE,
        out=io.StringIO(),
        err=err,
    )
    assert code == 1
    assert "PERMISSION_DENIED" in err.getvalue()


async def test_trail_store_compare_and_set_across_replicas(js: JetStreamContext) -> None:
    """Two stores (two broker replicas) change one trail at once: every change lands, and a store
    that remembers an outdated copy judges on a fresh one."""
    first, second = TrailStore(js), TrailStore(js)
    owner, case = POLICE, f"TR-CAS-{uuid.uuid4().hex[:8]}"

    def add_lead(transfer_id: str) -> TrailChange:
        def change(trail: trail_pb2.Trail | None) -> trail_pb2.Trail | None:
            fresh = trail if trail is not None else trail_pb2.Trail()
            if any(lead.transfer_id == transfer_id for lead in fresh.leads):
                return None
            fresh.leads.add(transfer_id=transfer_id)
            return fresh

        return change

    await asyncio.gather(
        *(
            store.update(owner, case, add_lead(f"{name}-{i}"))
            for i in range(15)
            for name, store in (("a", first), ("b", second))
        )
    )
    stored = await first.get(owner, case)
    assert stored is not None
    assert len(stored.trail.leads) == 30

    # `second` remembers the trail as it last wrote it; `first` adds a node behind its back.
    await second.update(owner, case, add_lead("seen-by-second"))

    def add_node(trail: trail_pb2.Trail | None) -> trail_pb2.Trail | None:
        assert trail is not None
        trail.nodes.add(node_id="n1")
        return trail

    await first.update(owner, case, add_node)

    def needs_node(trail: trail_pb2.Trail | None) -> trail_pb2.Trail | None:
        assert trail is not None
        if not any(node.node_id == "n1" for node in trail.nodes):
            raise LookupError("not there yet")
        trail.leads.add(transfer_id="after-node")
        return trail

    updated = await second.update(owner, case, needs_node)
    assert updated is not None
    assert [lead.transfer_id for lead in updated.leads][-1] == "after-node"
    assert len(updated.nodes) == 1

    # "Nothing to do" is answered from the stored trail, not from an outdated copy.
    await first.update(owner, case, add_lead("behind-seconds-back"))
    seen = await second.update(owner, case, lambda trail: None)
    assert seen is not None
    assert seen.leads[-1].transfer_id == "behind-seconds-back"


# -- the trail is written once per hold, at its outcome -------------------------------------------


@contextlib.asynccontextmanager
async def trail_writes(stack: Stack, case: str) -> AsyncIterator[list[bytes]]:
    """Every write to the case's trail entry while the block runs, in order.

    A KV write is a JetStream publish on ``$KV.<bucket>.<key>``; a plain subscriber sees each one.
    The bucket keeps one revision per key, so its stream cannot count them afterwards. One
    broker replica runs here, so no compare-and-set fails and every publish seen is stored.
    """
    nc = await connect(NatsSettings.from_url(stack.nats_url, name="test-trail-writes"))
    seen: list[bytes] = []

    async def count(msg: Msg) -> None:
        seen.append(msg.data)

    try:
        await nc.subscribe(f"$KV.{TRAILS_BUCKET}.{trail_key(POLICE, case)}", cb=count)
        await nc.flush()
        yield seen
        await nc.flush()
    finally:
        await nc.drain()


async def test_a_stop_payment_with_nothing_onward_writes_its_trail_once(stack: Stack) -> None:
    graph = seeded(stack, chain_graph(salt=8001, hops=0))
    case = "TR-ONCE-0001"
    async with trail_writes(stack, case) as writes:
        trail, root = await chase(stack, graph, case)
    await checked(stack, trail, graph)
    assert len(writes) == 1, "the hold and its outcome are one write"
    stored = trail_pb2.Trail.FromString(writes[0])
    ((node, request),) = [(n, r) for n in stored.nodes for r in n.requests]
    assert (request.request_id, request.role, request.hop) == (root.id, L.TRAIL_ROLE_POLICE, 0)
    assert (request.asked.minor_units, request.held.minor_units) == (6_000_000, 6_000_000)
    assert request.state == common_pb2.REQUEST_STATE_EXECUTED
    assert request.sent_at == root.submitted_at
    assert request.HasField("outcome_at")
    assert node.HasField("account"), "the account sealed at intake reaches the trail"
    assert stored.case_ref == root.case_ref
    assert not stored.leads
    # The status carried the seed: digest and ciphertext, never the account in clear.
    assert root.trail_seed.node_id == node.node_id
    assert graph.root.number.encode() not in root.SerializeToString()
    assert graph.root.holder.encode() not in root.SerializeToString()


async def test_a_two_hop_chase_binds_its_children_and_totals_as_before(stack: Stack) -> None:
    graph = seeded(stack, chain_graph(salt=8002, hops=2))
    case = "TR-TWO-HOPS-0001"
    async with trail_writes(stack, case) as writes:
        trail, root = await chase(stack, graph, case)
        while len(trail.nodes) < 3:  # settled between two hops: not yet the whole chain
            await asyncio.sleep(0.05)
            trail = await wait_settled(stack, police_key(stack), case)
    accounts = await checked(stack, trail, graph)
    by_depth = sorted(trail.nodes, key=lambda n: n.depth)
    assert [accounts[n.node_id].account_number for n in by_depth] == [a.number for a in graph.accounts[1:]]
    # What the code before the seed recorded: the victim's 60,000.00 traced hop by hop, what
    # each account kept held, and no child asking more than its parent did not find.
    assert [n.traced.minor_units for n in by_depth] == [6_000_000, 5_900_000, 5_800_000]
    assert [n.held.minor_units for n in by_depth] == [100_000, 100_000, 5_800_000]
    assert sum(n.held.minor_units for n in trail.nodes) == 6_000_000
    assert not trail.leads
    statuses = await statuses_of(stack, trail)
    parent = root.id
    for node in by_depth[1:]:
        (child,) = node.requests
        assert child.role == L.TRAIL_ROLE_CHASE
        assert child.request_id, "bound to the request the bus accepted"
        assert child.parent_id == parent
        status = statuses[child.request_id]
        assert (status.sender, status.parent_id, status.hop) == (BROKER_ID, parent, node.depth)
        assert status.result.amount_held.minor_units == child.held.minor_units
        parent = child.request_id
    # One write per hold, at its outcome (before: one more per hold at intake).
    assert len(writes) == 3
    last = trail_pb2.Trail.FromString(writes[-1])
    assert all(r.request_id and r.HasField("outcome_at") for n in last.nodes for r in n.requests)


async def test_a_pending_hold_is_read_from_its_status(js: JetStreamContext) -> None:
    """Before its outcome a hold is in no stored trail; GetTrail's reader shows it from its seed."""
    await ensure_streams(js, stream_specs(1))
    registry = load_directory(DIRECTORY)
    policy = load_policy(SAMPLE_POLICY)
    clock = SystemClock()
    store = TrailStore(js)
    recorder = TrailRecorder.for_broker(
        store=store, registry=registry, policy=policy, broker_key=generate_signing_key(), clock=clock
    )
    requests = RequestStore(js)
    chaser = TrailChaser(recorder=recorder, requests=requests, sender=_NoChildren(), cases=WatchLog(js))
    case = f"TR-PEND-{uuid.uuid4().hex[:8]}"
    graph = chain_graph(salt=8003, hops=0)
    request = root_request(graph, case)
    request.stop_payment.account.bank = graph.root.bank
    status = lifecycle_pb2.RequestStatus(
        id=new_uuid7(clock),
        type=common_pb2.REQUEST_TYPE_STOP_PAYMENT,
        sender=POLICE,
        recipient=graph.root.bank,
        case_ref=request.case_ref,
        state=common_pb2.REQUEST_STATE_SUBMITTED,
        submitted_at=to_timestamp(clock.now()),
        trail_seed=recorder.seed(request, sender=POLICE, recipient=graph.root.bank),
        events=[lifecycle_pb2.RecordedEvent(seq=1)],
    )
    assert (await requests.create(status, msg_id=status.id)).stored

    pending = await chaser.read(POLICE, case)
    assert await store.get(POLICE, case) is None, "nothing written before the outcome"
    ((node, entry),) = [(n, r) for n in pending.nodes for r in n.requests]
    assert node.node_id == status.trail_seed.node_id
    assert (entry.request_id, entry.state, entry.asked.minor_units) == (
        status.id,
        common_pb2.REQUEST_STATE_SUBMITTED,
        6_000_000,
    )
    assert not pending.settled
    assert pending.case_ref == request.case_ref

    outcome = lifecycle_pb2.LifecycleEvent(
        event_id=str(uuid.uuid4()), request_id=status.id, state=common_pb2.REQUEST_STATE_EXECUTED
    )

    def executed(current: lifecycle_pb2.RequestStatus) -> lifecycle_pb2.RequestStatus:
        current.state = common_pb2.REQUEST_STATE_EXECUTED
        current.result.amount_held.CopyFrom(common_pb2.Money(currency="CNY", minor_units=6_000_000))
        current.events.add(
            event=envelope_pb2.SignedMessage(payload=outcome.SerializeToString()),
            recorded_at=to_timestamp(clock.now()),
            seq=2,
        )
        return current

    done = await requests.update(status.id, executed)
    await chaser.after_outcome(done)
    stored = await store.get(POLICE, case)
    assert stored is not None
    after = await chaser.read(POLICE, case)
    assert after.settled
    ((node, entry),) = [(n, r) for n in after.nodes for r in n.requests]
    assert (entry.request_id, entry.held.minor_units) == (status.id, 6_000_000)
    assert node.node_id == status.trail_seed.node_id


class _NoChildren:
    async def originate(
        self, request: requests_pb2.Request, *, idempotency_key: str
    ) -> lifecycle_pb2.RequestStatus:
        raise AssertionError("nothing onward to chase")
