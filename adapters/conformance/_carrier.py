"""Checks of a ``CarrierService``: blocks, warnings, subscriber data, location, MISMATCH on SIM
identifiers.

Every check acts on its own fixture line and lifts the blocks it placed.
"""

from __future__ import annotations

from greenchannel.v1 import carrier_pb2, carrier_pb2_grpc, common_pb2, requests_pb2, results_pb2

from ._blocking import BlockingService, blocking_checks
from ._generic import Check
from ._probe import Probe, expect, expect_no_data, expect_outcome, new_request_id

__all__ = ["CARRIER_CHECKS", "carrier_stub"]

carrier_stub = carrier_pb2_grpc.CarrierServiceStub

_WRONG_ICCID = "89860999999999999999"
"""A SIM serial no fixture line has."""
_TEMPLATE = "conformance-warning"


def _phone(probe: Probe, role: str, *, iccid: str = "") -> common_pb2.PhoneRef:
    return common_pb2.PhoneRef(e164=probe.fixture.lines[role].e164, iccid=iccid)


def _block(
    probe: Probe, role: str, request_id: str | None, unblock: bool, *, iccid: str = ""
) -> carrier_pb2.BlockNumberRequest:
    return carrier_pb2.BlockNumberRequest(
        context=probe.context(request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER),
        order=requests_pb2.NumberBlock(
            phone=_phone(probe, role, iccid=iccid), scope=requests_pb2.BLOCK_SCOPE_NUMBER, unblock=unblock
        ),
    )


def _warn(probe: Probe, role: str, request_id: str | None) -> carrier_pb2.WarnSubscriberRequest:
    return carrier_pb2.WarnSubscriberRequest(
        context=probe.context(request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER),
        order=requests_pb2.Warning(
            phone=_phone(probe, role), channel=requests_pb2.WARNING_CHANNEL_SMS, template_id=_TEMPLATE
        ),
    )


def _data(
    probe: Probe, role: str, request_id: str | None, *, iccid: str = ""
) -> carrier_pb2.QuerySubscriberDataRequest:
    return carrier_pb2.QuerySubscriberDataRequest(
        context=probe.context(
            request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_EVIDENCE_NOTICE
        ),
        order=requests_pb2.DataRequest(
            category=requests_pb2.DATA_CATEGORY_SUBSCRIBER, phone=_phone(probe, role, iccid=iccid)
        ),
    )


def _block_unknown(probe: Probe) -> carrier_pb2.BlockNumberRequest:
    request = _block(probe, "block", None, False)
    request.order.phone.e164 = probe.fixture.unknown_number
    return request


def _data_unknown(probe: Probe) -> carrier_pb2.QuerySubscriberDataRequest:
    request = _data(probe, "data", None)
    request.order.phone.e164 = probe.fixture.unknown_number
    return request


_CARRIER = BlockingService(
    kind="carrier",
    block_method="BlockNumber",
    warn_method="WarnSubscriber",
    data_method="QuerySubscriberData",
    block=_block,
    warn=_warn,
    data=_data,
    block_unknown=_block_unknown,
    data_unknown=_data_unknown,
    subject="number",
    lift_method="LiftBlock",
    lift_request=carrier_pb2.LiftBlockRequest,
)


async def _check_mismatch(probe: Probe) -> str:
    line = probe.fixture.lines["mismatch"]
    mismatch = results_pb2.REASON_CODE_MISMATCH
    rejected = common_pb2.REQUEST_STATE_REJECTED
    try:
        what = "BlockNumber with a SIM of another line"
        answer = await probe.call("BlockNumber", _block(probe, "mismatch", None, False, iccid=_WRONG_ICCID))
        expect_outcome(answer.result, rejected, mismatch, what=what)
        expect(len(answer.result.block.blocked) == 0, f"{what}: blocked something")
        what = "QuerySubscriberData with a SIM of another line"
        data = await probe.call("QuerySubscriberData", _data(probe, "mismatch", None, iccid=_WRONG_ICCID))
        expect_outcome(data.result, rejected, mismatch, what=what)
        expect_no_data(data, what=what)
        for result in (answer.result, data.result):
            expect(line.iccid not in result.detail, "a MISMATCH detail quotes the line's records")
    finally:
        await _CARRIER.unblock(probe, "mismatch")
    return "BlockNumber and QuerySubscriberData: REJECTED/MISMATCH, nothing done, nothing told"


# What every record of a location answer carries, at least.
_LOCATION_FIELDS = ("cell_id", "last_activity_at")


def _locate(probe: Probe, e164: str) -> carrier_pb2.QuerySubscriberDataRequest:
    request = _data(probe, "data", None)
    request.order.category = requests_pb2.DATA_CATEGORY_LOCATION
    request.order.phone.e164 = e164
    return request


async def _check_location(probe: Probe) -> str:
    what = "QuerySubscriberData LOCATION of an unknown number"
    unknown = await probe.call("QuerySubscriberData", _locate(probe, probe.fixture.unknown_number))
    expect_outcome(
        unknown.result, common_pb2.REQUEST_STATE_REJECTED, results_pb2.REASON_CODE_NOT_FOUND, what=what
    )
    expect_no_data(unknown, what=what)
    what = "QuerySubscriberData LOCATION of a line"
    known = await probe.call("QuerySubscriberData", _locate(probe, probe.fixture.lines["data"].e164))
    if known.result.outcome == common_pb2.REQUEST_STATE_REJECTED:
        # A line the network has not seen lately has no location to give.
        expect_outcome(
            known.result, common_pb2.REQUEST_STATE_REJECTED, results_pb2.REASON_CODE_NOT_FOUND, what=what
        )
        expect_no_data(known, what=what)
        return "unknown number REJECTED/NOT_FOUND; the fixture line has no known location (NOT_FOUND)"
    expect_outcome(known.result, common_pb2.REQUEST_STATE_EXECUTED, what=what)
    records = [dict(record.fields) for record in known.answer.records]
    expect(len(records) > 0, f"{what}: EXECUTED without a record")
    for record in records:
        missing = [name for name in _LOCATION_FIELDS if not record.get(name)]
        expect(not missing, f"{what}: a record without {', '.join(missing)}")
    return f"unknown number REJECTED/NOT_FOUND; {len(records)} location record(s) answered in clear"


async def _check_batch(probe: Probe) -> str:
    """A batch of the block line twice and an unknown number: answered by index, totals adding up,
    the line blocked once, no number in the answer."""
    known = _phone(probe, "block")
    request = _block(probe, "block", None, False)
    request.order.ClearField("phone")
    request.order.phones.extend([known, common_pb2.PhoneRef(e164=probe.fixture.unknown_number), known])
    what = "BlockNumber with a batch"
    try:
        answer = await probe.call("BlockNumber", request)
        result = answer.result
        expect_outcome(result, common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED, what=what)
        items = [(item.index, item.state) for item in result.block.items]
        expect(
            items
            == [
                (0, results_pb2.BLOCK_ITEM_STATE_BLOCKED),
                (1, results_pb2.BLOCK_ITEM_STATE_NOT_FOUND),
                (2, results_pb2.BLOCK_ITEM_STATE_ALREADY_BLOCKED),
            ],
            f"{what}: items are not BLOCKED, NOT_FOUND, ALREADY_BLOCKED by index",
        )
        expect(
            result.block.totals == results_pb2.BlockTotals(blocked=1, not_found=1, already_blocked=1),
            f"{what}: totals do not add up to the items",
        )
        expect(known.e164 not in str(result), f"{what}: the answer names a number")
    finally:
        await _CARRIER.unblock(probe, "block")
    return "PARTIALLY_EXECUTED, items by index (BLOCKED, NOT_FOUND, ALREADY_BLOCKED), totals add up"


async def _check_batch_lift(probe: Probe) -> str:
    """A lifting order naming one item of a batch (an appeal against one line): that item only,
    answered for it; an item the batch did not block is NOT_FOUND."""
    known = _phone(probe, "block")
    request_id = new_request_id()
    request = _block(probe, "block", request_id, False)
    request.order.ClearField("phone")
    request.order.phones.extend([common_pb2.PhoneRef(e164=probe.fixture.unknown_number), known])
    what = "LiftBlock of one item of a batch"
    try:
        blocked = await probe.call("BlockNumber", request)
        expect_outcome(
            blocked.result, common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED, what="BlockNumber with a batch"
        )
        not_blocked = _CARRIER.lift(probe, request_id)
        not_blocked.order.item_index = 0  # type: ignore[attr-defined]
        answer = await probe.call("LiftBlock", not_blocked)
        expect_outcome(
            answer.result, common_pb2.REQUEST_STATE_REJECTED, results_pb2.REASON_CODE_NOT_FOUND, what=what
        )
        lift = _CARRIER.lift(probe, request_id)
        lift.order.item_index = 1  # type: ignore[attr-defined]
        result = (await probe.call("LiftBlock", lift)).result
        expect_outcome(result, common_pb2.REQUEST_STATE_EXECUTED, what=what)
        expect(
            [(item.index, item.state) for item in result.block.items]
            == [(1, results_pb2.BLOCK_ITEM_STATE_BLOCKED)]
            and result.block.totals == results_pb2.BlockTotals(blocked=1),
            f"{what}: not answered for that one item (index 1 BLOCKED, totals blocked=1)",
        )
        expect(known.e164 not in str(result), f"{what}: the answer names a number")
    finally:
        await _CARRIER.unblock(probe, "block")
    return "the item's lift EXECUTED for that item alone; an item the batch did not block NOT_FOUND"


_SHARED = blocking_checks(_CARRIER)

CARRIER_CHECKS: tuple[Check, ...] = (
    *_SHARED[:4],
    Check(
        name="carrier.mismatch.sim",
        proves="a SIM that is not the number's is MISMATCH before anything is done",
        run=_check_mismatch,
    ),
    Check(
        name="carrier.location",
        proves="a LOCATION request is answered with cell records, and an unknown number is NOT_FOUND",
        run=_check_location,
    ),
    Check(
        name="carrier.batch.items",
        proves="a batch is answered item by item, by index, with totals, each line blocked once",
        run=_check_batch,
    ),
    Check(
        name="carrier.batch.lift_item",
        proves="a lifting order naming one item of a batch lifts that line only, answered for it",
        run=_check_batch_lift,
    ),
    *_SHARED[4:],
)
