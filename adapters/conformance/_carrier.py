"""Checks of a ``CarrierService``: blocks, warnings, subscriber data, MISMATCH on SIM identifiers.

Every check acts on its own fixture line and lifts the blocks it placed.
"""

from __future__ import annotations

import contextlib
from typing import Any

from greenchannel.v1 import carrier_pb2, carrier_pb2_grpc, common_pb2, requests_pb2, results_pb2

from ._generic import Check, Sample, deadline_check, malformed_check, replay_check
from ._probe import CheckFailed, Probe, expect, expect_outcome

__all__ = ["CARRIER_CHECKS", "carrier_stub"]

carrier_stub = carrier_pb2_grpc.CarrierServiceStub

_WRONG_ICCID = "89860999999999999999"
"""A SIM serial no fixture line has."""
_TEMPLATE = "conformance-warning"

EXECUTED = common_pb2.REQUEST_STATE_EXECUTED
REJECTED = common_pb2.REQUEST_STATE_REJECTED


def _phone(probe: Probe, role: str, *, iccid: str = "") -> common_pb2.PhoneRef:
    return common_pb2.PhoneRef(e164=probe.fixture.lines[role].e164, iccid=iccid)


def _block_request(
    probe: Probe, role: str, *, request_id: str | None = None, unblock: bool = False, iccid: str = ""
) -> carrier_pb2.BlockNumberRequest:
    return carrier_pb2.BlockNumberRequest(
        context=probe.context(request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER),
        order=requests_pb2.NumberBlock(
            phone=_phone(probe, role, iccid=iccid), scope=requests_pb2.BLOCK_SCOPE_NUMBER, unblock=unblock
        ),
    )


def _warn_request(
    probe: Probe, role: str, *, request_id: str | None = None
) -> carrier_pb2.WarnSubscriberRequest:
    return carrier_pb2.WarnSubscriberRequest(
        context=probe.context(request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER),
        order=requests_pb2.Warning(
            phone=_phone(probe, role), channel=requests_pb2.WARNING_CHANNEL_SMS, template_id=_TEMPLATE
        ),
    )


def _data_request(
    probe: Probe, role: str, *, request_id: str | None = None, iccid: str = ""
) -> carrier_pb2.QuerySubscriberDataRequest:
    return carrier_pb2.QuerySubscriberDataRequest(
        context=probe.context(
            request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_EVIDENCE_NOTICE
        ),
        order=requests_pb2.DataRequest(
            category=requests_pb2.DATA_CATEGORY_SUBSCRIBER, phone=_phone(probe, role, iccid=iccid)
        ),
    )


async def _unblock(probe: Probe, role: str) -> None:
    """Lift the number block so the next run finds the line as seeded."""
    with contextlib.suppress(CheckFailed):
        await probe.call("BlockNumber", _block_request(probe, role, unblock=True))


async def _check_block(probe: Probe) -> str:
    try:
        answer = await probe.call("BlockNumber", _block_request(probe, "block"))
        expect_outcome(answer.result, EXECUTED, what="BlockNumber")
        expect(
            len(answer.result.block.blocked) > 0, "BlockNumber: result.block.blocked names nothing blocked"
        )
        lifted = await probe.call("BlockNumber", _block_request(probe, "block", unblock=True))
        expect_outcome(lifted.result, EXECUTED, what="BlockNumber with unblock")
    finally:
        await _unblock(probe, "block")
    return f"blocked {', '.join(answer.result.block.blocked)}, then lifted"


async def _check_warn(probe: Probe) -> str:
    answer = await probe.call("WarnSubscriber", _warn_request(probe, "warn"))
    expect_outcome(answer.result, EXECUTED, what="WarnSubscriber by SMS")
    expect(answer.result.block.warned, "WarnSubscriber: result.block.warned is not set")
    return "EXECUTED, warned"


async def _check_query(probe: Probe) -> str:
    answer = await probe.call("QuerySubscriberData", _data_request(probe, "data"))
    expect_outcome(answer.result, EXECUTED, what="QuerySubscriberData SUBSCRIBER")
    expect(len(answer.answer.holder) > 0, "SUBSCRIBER: the answer has no subscriber data")
    return "subscriber data answered in clear"


async def _check_not_found(probe: Probe) -> str:
    block = _block_request(probe, "block")
    block.order.phone.e164 = probe.fixture.unknown_number
    answer = await probe.call("BlockNumber", block)
    expect_outcome(
        answer.result, REJECTED, results_pb2.REASON_CODE_NOT_FOUND, what="BlockNumber of an unknown number"
    )
    query = _data_request(probe, "data")
    query.order.phone.e164 = probe.fixture.unknown_number
    data = await probe.call("QuerySubscriberData", query)
    expect_outcome(
        data.result,
        REJECTED,
        results_pb2.REASON_CODE_NOT_FOUND,
        what="QuerySubscriberData of an unknown number",
    )
    expect(
        len(data.answer.holder) == 0 and len(data.answer.records) == 0,
        "QuerySubscriberData of an unknown number returned data",
    )
    return "REJECTED/NOT_FOUND"


async def _check_mismatch(probe: Probe) -> str:
    line = probe.fixture.lines["mismatch"]
    try:
        answer = await probe.call("BlockNumber", _block_request(probe, "mismatch", iccid=_WRONG_ICCID))
        expect_outcome(
            answer.result,
            REJECTED,
            results_pb2.REASON_CODE_MISMATCH,
            what="BlockNumber with a SIM of another line",
        )
        expect(
            len(answer.result.block.blocked) == 0, "BlockNumber with a SIM of another line blocked something"
        )
        data = await probe.call("QuerySubscriberData", _data_request(probe, "mismatch", iccid=_WRONG_ICCID))
        expect_outcome(
            data.result,
            REJECTED,
            results_pb2.REASON_CODE_MISMATCH,
            what="QuerySubscriberData with a SIM of another line",
        )
        expect(len(data.answer.holder) == 0, "QuerySubscriberData with a SIM of another line returned data")
        for result in (answer.result, data.result):
            expect(line.iccid not in result.detail, "a MISMATCH detail quotes the line's records")
    finally:
        await _unblock(probe, "mismatch")
    return "BlockNumber and QuerySubscriberData: REJECTED/MISMATCH, nothing done, nothing told"


def _sample(role: str) -> Sample:
    return Sample(method="BlockNumber", build=lambda probe, rid: _block_request(probe, role, request_id=rid))


async def _unblock_idempotent(probe: Probe) -> None:
    await _unblock(probe, "idempotent")


async def _unblock_deadline(probe: Probe, _request_id: str) -> None:
    await _unblock(probe, "deadline")


async def _unblock_errors(probe: Probe) -> None:
    await _unblock(probe, "errors")


def _error_samples() -> tuple[Sample, ...]:
    def warn(probe: Probe, rid: str) -> Any:
        return _warn_request(probe, "errors", request_id=rid)

    def query(probe: Probe, rid: str) -> Any:
        return _data_request(probe, "errors", request_id=rid)

    return (
        _sample("errors"),
        Sample(method="WarnSubscriber", build=warn),
        Sample(method="QuerySubscriberData", build=query),
    )


CARRIER_CHECKS: tuple[Check, ...] = (
    Check(name="carrier.block_number", proves="a number is blocked and unblocked on order", run=_check_block),
    Check(name="carrier.warn_subscriber", proves="a subscriber is warned by SMS", run=_check_warn),
    Check(
        name="carrier.query_subscriber_data", proves="subscriber data is answered in clear", run=_check_query
    ),
    Check(
        name="carrier.not_found",
        proves="a number the carrier does not serve is REJECTED/NOT_FOUND",
        run=_check_not_found,
    ),
    Check(
        name="carrier.mismatch.sim",
        proves="a SIM that is not the number's is MISMATCH before anything is done",
        run=_check_mismatch,
    ),
    replay_check("carrier", _sample("idempotent"), cleanup=_unblock_idempotent),
    malformed_check("carrier", _error_samples(), after=_unblock_errors),
    deadline_check("carrier", _sample("deadline"), cleanup=_unblock_deadline),
)
