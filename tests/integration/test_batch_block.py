"""Batch and selector NUMBER_BLOCK end to end: NATS, the broker, the reference carriers behind adapters.

A batch spanning two carriers is one parent (addressed to the broker) and one child per carrier;
each carrier blocks item by item; the parent's answer maps the children's back and sums the totals.
Nothing is blocked twice: a new order of the same lines is ALREADY_BLOCKED throughout, and a
redelivered child gets the carrier's first answer. Hostile orders are refused, nothing stored.
A holder's appeal lifts their own line of a batch only: the others stay blocked, the batch is not
RELEASED; appeals naming no item, another's item or an item of a single block are refused.
One stack for the module, with a policy bounding batches at 1,000 lines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, results_pb2

from adapters import AdapterConfig
from agencies.carrier import CarrierCore
from agencies.demo import Stack, StackConfig
from broker.client import BusClient, error_details
from broker.protocol import (
    BROKER_ID,
)
from tests._wait import eventually
from tests.integration.stack_journal import events_settled, journal_size, redeliver_last

pytestmark = pytest.mark.integration

S = common_pb2
POLICE = "police-310115"
CASE = "SH-PD-2026-0170"
LIMIT = 1_000
DONE = {
    S.REQUEST_STATE_EXECUTED,
    S.REQUEST_STATE_PARTIALLY_EXECUTED,
    S.REQUEST_STATE_REJECTED,
    S.REQUEST_STATE_FAILED,
}
POLICY = Path(__file__).resolve().parents[2] / "agencies" / "policy.toml"
CELL = "460-00-22801-40961"
SEEN_AT = datetime(2026, 11, 1, 8, 30, tzinfo=UTC)


def cmcc(i: int) -> str:
    return f"+86139777{i:05d}"  # segment +86139: carrier-cmcc


def ctcc(i: int) -> str:
    return f"+86189777{i:05d}"  # segment +86189: carrier-ctcc


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batch")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(root: Path) -> AsyncIterator[Stack]:
    text = POLICY.read_text(encoding="utf-8")
    assert text.count("max_items = 10000\n") == 1
    policy = root / "policy.toml"
    policy.write_text(text.replace("max_items = 10000\n", f"max_items = {LIMIT}\n"), encoding="utf-8")
    template = AdapterConfig(
        agency_id="bank-icbc",
        agency_target="127.0.0.1:1",
        state_dir=Path(),
        retry_initial=0.05,
        retry_max=0.3,
        reconnect_backoff_max=0.3,
        ack_wait=3.0,
        idle_fetch_timeout=0.2,
    )
    config = StackConfig(keys_dir=root / "keys", data_dir=root / "data", adapter=template, policy=policy)
    async with Stack(config) as running:
        for i in range(500):
            for carrier, number in (("carrier-cmcc", cmcc(i)), ("carrier-ctcc", ctcc(i))):
                core(running, carrier).register_line(
                    number,
                    iccid=f"8986{i:016d}",
                    imsi=f"46000{i:010d}",
                    subscriber_name="某",
                    issuing_batch="B-2026-11" if carrier == "carrier-cmcc" and i >= 490 else "",
                )
        core(running, "carrier-cmcc").record_call(
            cmcc(495), "+8613900000000", started_at=SEEN_AT, duration_s=40, cell_id=CELL
        )
        yield running


def core(stack: Stack, carrier: str) -> CarrierCore:
    found = stack.agencies[carrier].core
    assert isinstance(found, CarrierCore)
    return found


def block(
    *numbers: str, recipient: str = "", selector: requests_pb2.NumberSelector | None = None
) -> requests_pb2.Request:
    return requests_pb2.Request(
        case_ref=S.CaseRef(
            case_number=CASE,
            issuing_agency=POLICE,
            legal_instrument_id="沪公(浦)封字[2026]0170号",
            legal_instrument_type=S.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER,
        ),
        priority=S.PRIORITY_GREEN,
        recipient=recipient,
        number_block=requests_pb2.NumberBlock(
            phones=[S.PhoneRef(e164=n) for n in numbers],
            selector=selector,
            scope=requests_pb2.BLOCK_SCOPE_NUMBER,
        ),
    )


async def children_of(police: BusClient, parent_id: str, carriers: int) -> list[str]:
    listed: list[str] = []

    async def all_sent() -> bool:
        statuses = await police.list_all(case_number=CASE)
        listed[:] = [s.id for s in statuses if s.parent_id == parent_id]
        return len(listed) == carriers

    await eventually(all_sent, what="every child of the batch is in the journal")
    return listed


async def test_a_batch_across_two_carriers_is_split_and_answered_item_by_item(stack: Stack) -> None:
    numbers = [n for i in range(500) for n in (cmcc(i), ctcc(i))]  # interleaved: 1,000 lines
    async with stack.client(POLICE) as police:
        signed = police.sign(block(*numbers))
        submitted = (await police.submit_signed(signed)).status
        assert submitted.recipient == BROKER_ID
        parent = await police.wait_for(submitted.id, DONE, within=timedelta(seconds=60))
        assert parent.state == S.REQUEST_STATE_EXECUTED, parent
        assert parent.result.block.totals == results_pb2.BlockTotals(blocked=1_000)
        assert [item.index for item in parent.result.block.items] == list(range(1_000))
        assert {item.state for item in parent.result.block.items} == {results_pb2.BLOCK_ITEM_STATE_BLOCKED}
        children = [await police.get(child) for child in await children_of(police, submitted.id, 2)]
        # The same order sent again (a retry): the same parent, and still one child per carrier.
        retried = await police.submit_signed(signed)
        assert (retried.duplicate, retried.status.id) == (True, submitted.id)
        assert len(await children_of(police, submitted.id, 2)) == 2
        assert sorted(c.recipient for c in children) == ["carrier-cmcc", "carrier-ctcc"]
        for child in children:
            assert (child.sender, child.hop, child.case_ref) == (BROKER_ID, 1, parent.case_ref)
            assert child.state == S.REQUEST_STATE_EXECUTED
            assert child.result.block.totals == results_pb2.BlockTotals(blocked=500)
        for i in (0, 499):
            for carrier, number in (("carrier-cmcc", cmcc(i)), ("carrier-ctcc", ctcc(i))):
                line = core(stack, carrier).line(number)
                assert line is not None
                assert line.number_blocked

        # The same lines in a new order: nothing blocked twice.
        again = (await police.submit(block(*numbers))).status
        repeated = await police.wait_for(again.id, DONE, within=timedelta(seconds=60))
        assert repeated.state == S.REQUEST_STATE_EXECUTED
        assert repeated.result.block.totals == results_pb2.BlockTotals(already_blocked=1_000)

        # A child redelivered to its carrier: the first answer again, its record unchanged.
        cmcc_child = next(c for c in children if c.recipient == "carrier-cmcc")
        await redeliver_last(stack, "carrier-cmcc", "number_block")
        assert (await police.get(cmcc_child.id)).result == cmcc_child.result


async def test_unrouted_lines_are_not_ours_at_the_parent(stack: Stack) -> None:
    async with stack.client(POLICE) as police:
        submitted = (await police.submit(block(cmcc(0), "+8617012345678", ctcc(1)))).status
        parent = await police.wait_for(submitted.id, DONE, within=timedelta(seconds=30))
        assert parent.state == S.REQUEST_STATE_PARTIALLY_EXECUTED
        assert parent.result.block.totals == results_pb2.BlockTotals(not_ours=1, already_blocked=2)
        assert parent.result.block.items[1].state == results_pb2.BLOCK_ITEM_STATE_NOT_OURS


async def test_a_batch_of_one_carrier_goes_to_it_as_the_police_order(stack: Stack) -> None:
    async with stack.client(POLICE) as police:
        submitted = (await police.submit(block(cmcc(900), cmcc(1)))).status
        assert (submitted.recipient, submitted.sender) == ("carrier-cmcc", POLICE)
        done = await police.wait_for(submitted.id, DONE, within=timedelta(seconds=30))
        assert done.state == S.REQUEST_STATE_PARTIALLY_EXECUTED  # the first is nobody's line here
        assert done.result.block.totals == results_pb2.BlockTotals(not_found=1, already_blocked=1)


async def test_an_issuing_batch_selector_is_resolved_by_the_named_carrier(stack: Stack) -> None:
    selector = requests_pb2.NumberSelector(issuing_batch="B-2026-11")
    async with stack.client(POLICE) as police:
        submitted = (await police.submit(block(recipient="carrier-cmcc", selector=selector))).status
        done = await police.wait_for(submitted.id, DONE, within=timedelta(seconds=30))
        assert done.state == S.REQUEST_STATE_EXECUTED
        assert done.result.block.totals.already_blocked + done.result.block.totals.blocked == 10


async def test_a_cell_selector_blocks_the_lines_seen_there(stack: Stack) -> None:
    window = S.TimeRange()
    window.start.FromDatetime(SEEN_AT - timedelta(minutes=10))
    window.end.FromDatetime(SEEN_AT + timedelta(minutes=10))
    selector = requests_pb2.NumberSelector(cell=requests_pb2.CellWindow(cell_id=CELL, window=window))
    async with stack.client(POLICE) as police:
        submitted = (await police.submit(block(recipient="carrier-cmcc", selector=selector))).status
        done = await police.wait_for(submitted.id, DONE, within=timedelta(seconds=30))
    assert done.state == S.REQUEST_STATE_EXECUTED
    assert len(done.result.block.items) == 1


def empty_window() -> requests_pb2.NumberSelector:
    window = S.TimeRange()
    at = datetime(2026, 11, 1, tzinfo=UTC)
    window.start.FromDatetime(at)
    window.end.FromDatetime(at - timedelta(hours=1))
    return requests_pb2.NumberSelector(cell=requests_pb2.CellWindow(cell_id=CELL, window=window))


@pytest.mark.parametrize(
    ("build", "code", "reason", "where"),
    [
        pytest.param(
            lambda: block(*(cmcc(i % 500) for i in range(LIMIT + 1))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "BATCH_TOO_LARGE",
            "request.number_block.phones",
            id="over-the-limit",
        ),
        pytest.param(
            lambda: block(recipient="carrier-cmcc", selector=empty_window()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            "request.number_block.selector.cell.window",
            id="empty-window",
        ),
        pytest.param(
            lambda: block(ctcc(1), ctcc(2), recipient="carrier-cmcc"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "NOT_OURS",
            "request.number_block.phones",
            id="another-carriers-lines",
        ),
        pytest.param(
            lambda: block(cmcc(1), ctcc(2), recipient="carrier-cmcc"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "RECIPIENT_MISMATCH",
            "request.number_block.phones[1].e164",
            id="recipient-mismatch",
        ),
        pytest.param(
            lambda: block(selector=requests_pb2.NumberSelector(issuing_batch="B-2026-11")),
            grpc.StatusCode.FAILED_PRECONDITION,
            "RECIPIENT_REQUIRED",
            "request.recipient",
            id="selector-without-carrier",
        ),
    ],
)
async def test_hostile_batches_are_refused_and_nothing_is_stored(
    stack: Stack, build: object, code: grpc.StatusCode, reason: str, where: str
) -> None:
    before = await journal_size(stack)
    async with stack.client(POLICE) as police:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await police.submit(build())  # type: ignore[operator]
    details = error_details(info.value)
    assert (info.value.code(), details.reason) == (code, reason), info.value.details()
    assert where in [field for field, _ in details.field_violations] + list(details.precondition_subjects)
    assert "+86" not in (info.value.details() or "")
    assert await journal_size(stack) == before


async def appeal_item(
    carrier: BusClient, restriction_id: str, item: int | None
) -> lifecycle_pb2.RequestStatus:
    return await carrier.file_appeal(
        restriction_id,
        ground=requests_pb2.APPEAL_GROUND_NOT_INVOLVED,
        statement=requests_pb2.AppealStatement(statement="the line is my own since 2019"),
        ticket=f"CM-{restriction_id[-8:]}-{item}",
        item_index=item,
    )


def register(stack: Stack, *indexes: int) -> list[str]:
    numbers = [cmcc(i) for i in indexes]
    for i, number in zip(indexes, numbers, strict=True):
        core(stack, "carrier-cmcc").register_line(
            number, iccid=f"8986{i:016d}", imsi=f"46000{i:010d}", subscriber_name="某"
        )
    return numbers


FILED = {S.REQUEST_STATE_ACKNOWLEDGED, *DONE}


async def test_an_appeal_lifts_the_holders_own_line_of_a_batch(stack: Stack) -> None:
    numbers = register(stack, 600, 601, 602)
    async with stack.client(POLICE) as police, stack.client("carrier-cmcc") as carrier:
        submitted = (await police.submit(block(*numbers))).status
        batch = await police.wait_for(submitted.id, DONE, within=timedelta(seconds=30))
        assert batch.recipient == "carrier-cmcc"
        assert batch.result.block.totals == results_pb2.BlockTotals(blocked=3)
        # Two holders of one batch appeal at once: one open appeal per item, not per batch.
        first = await appeal_item(carrier, batch.id, 1)
        second = await appeal_item(carrier, batch.id, 2)
        # The same item appealed again while its appeal is open: pending, nothing stored.
        before = await journal_size(stack)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await appeal_item(carrier, batch.id, 1)
        assert error_details(info.value).reason == "APPEAL_PENDING"
        assert await journal_size(stack) == before
        await police.wait_for(first.id, FILED)
        await police.wait_for(second.id, FILED)
        decided = await police.decide_appeal(first.id, results_pb2.APPEAL_DECISION_LIFTED, "not involved")
        (lifting,) = decided.lifting
        assert (lifting.type, lifting.recipient, lifting.target_id) == (
            S.REQUEST_TYPE_RELEASE,
            "carrier-cmcc",
            batch.id,
        )
        assert lifting.release_seed.item_index == 1
        lifted = await police.wait_for(lifting.id, DONE, within=timedelta(seconds=30))
        assert lifted.state == S.REQUEST_STATE_EXECUTED, lifted
        assert list(lifted.result.block.items) == [
            results_pb2.BlockItem(index=1, state=results_pb2.BLOCK_ITEM_STATE_BLOCKED)
        ]
        assert lifted.result.block.totals == results_pb2.BlockTotals(blocked=1)
        blocked = [core(stack, "carrier-cmcc").line(number) for number in numbers]
        assert [line.number_blocked for line in blocked if line is not None] == [True, False, True]
        await events_settled(stack)
        assert (await police.get(batch.id)).state == S.REQUEST_STATE_EXECUTED  # not RELEASED
        # The other holder's appeal is still open, and theirs is decided on its own.
        assert (await police.get(second.id)).state == S.REQUEST_STATE_ACKNOWLEDGED
        await lift_appealed(police, second.id)
        await events_settled(stack)
        assert (await police.get(batch.id)).state == S.REQUEST_STATE_EXECUTED  # item 0 still blocked
        # The last blocked item lifted: the batch is lifted in all, RELEASED like a single block.
        last = await appeal_item(carrier, batch.id, 0)
        await police.wait_for(last.id, FILED)
        await lift_appealed(police, last.id)
        assert not any(line.number_blocked for line in map(core(stack, "carrier-cmcc").line, numbers) if line)

        async def released() -> bool:
            return (await police.get(batch.id)).state == S.REQUEST_STATE_RELEASED

        await eventually(released, what="the batch RELEASED once every item is lifted")


async def lift_appealed(police: BusClient, appeal_id: str) -> lifecycle_pb2.RequestStatus:
    """Decide an appeal LIFTED; its lifting order, executed."""
    (lifting,) = (
        await police.decide_appeal(appeal_id, results_pb2.APPEAL_DECISION_LIFTED, "not involved")
    ).lifting
    lifted = await police.wait_for(lifting.id, DONE, within=timedelta(seconds=30))
    assert lifted.state == S.REQUEST_STATE_EXECUTED, lifted
    return lifted


async def test_a_split_batch_is_appealed_against_the_carriers_child(stack: Stack) -> None:
    numbers = [*register(stack, 610), ctcc(1)]  # ctcc(1) is blocked already by the first test
    async with stack.client(POLICE) as police, stack.client("carrier-cmcc") as carrier:
        submitted = (await police.submit(block(*numbers))).status
        assert submitted.recipient == BROKER_ID
        await police.wait_for(submitted.id, DONE, within=timedelta(seconds=30))
        children = [await police.get(c) for c in await children_of(police, submitted.id, 2)]
        child = next(c for c in children if c.recipient == "carrier-cmcc")
        filed = await appeal_item(carrier, child.id, 0)
        await police.wait_for(filed.id, FILED)
        await lift_appealed(police, filed.id)
        line = core(stack, "carrier-cmcc").line(numbers[0])
        assert line is not None
        assert not line.number_blocked


async def test_hostile_item_appeals_are_refused_and_nothing_is_stored(stack: Stack) -> None:
    numbers = register(stack, 620, 621)
    async with stack.client(POLICE) as police, stack.client("carrier-cmcc") as carrier:
        # Item 2 is nobody's line (NOT_FOUND), item 1 was blocked before (ALREADY_BLOCKED).
        order = block(numbers[0], cmcc(1), cmcc(990), numbers[1])
        batch = (await police.submit(order)).status
        batch = await police.wait_for(batch.id, DONE, within=timedelta(seconds=30))
        assert batch.state == S.REQUEST_STATE_PARTIALLY_EXECUTED, batch
        single = requests_pb2.Request()
        single.CopyFrom(block())
        single.number_block.ClearField("phones")
        single.number_block.phone.e164 = cmcc(2)
        one = (await police.submit(single)).status
        one = await police.wait_for(one.id, DONE, within=timedelta(seconds=30))
        assert one.state == S.REQUEST_STATE_EXECUTED, one
        before = await journal_size(stack)
        for restriction, item, code, reason in (
            (batch.id, 9, grpc.StatusCode.FAILED_PRECONDITION, "NO_SUCH_ITEM"),
            (batch.id, 2, grpc.StatusCode.FAILED_PRECONDITION, "ITEM_NOT_BLOCKED"),
            (batch.id, 1, grpc.StatusCode.FAILED_PRECONDITION, "ITEM_NOT_BLOCKED"),
            (batch.id, None, grpc.StatusCode.INVALID_ARGUMENT, "ITEM_REQUIRED"),
            (one.id, 0, grpc.StatusCode.FAILED_PRECONDITION, "NOT_A_BATCH"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await appeal_item(carrier, restriction, item)
            assert (info.value.code(), error_details(info.value).reason) == (code, reason), (
                item,
                info.value.details(),
            )
            assert "+86" not in (info.value.details() or "")
        assert await journal_size(stack) == before
        # The blocked items themselves may be appealed.
        filed = await appeal_item(carrier, batch.id, 3)
        assert filed.type == S.REQUEST_TYPE_APPEAL
