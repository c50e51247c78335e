"""Checks of a ``PlatformService``: account restrictions, in-app warnings, account data.

Every check acts on its own fixture account and lifts the restrictions it placed.
"""

from __future__ import annotations

import contextlib
from typing import Any

from greenchannel.v1 import common_pb2, platform_pb2, platform_pb2_grpc, requests_pb2, results_pb2

from ._generic import Check, Sample, deadline_check, malformed_check, replay_check
from ._probe import CheckFailed, Probe, expect, expect_outcome

__all__ = ["PLATFORM_CHECKS", "platform_stub"]

platform_stub = platform_pb2_grpc.PlatformServiceStub

_TEMPLATE = "conformance-warning"
EXECUTED = common_pb2.REQUEST_STATE_EXECUTED
REJECTED = common_pb2.REQUEST_STATE_REJECTED


def _account(probe: Probe, role: str) -> common_pb2.PlatformAccountRef:
    acct = probe.fixture.platform_accounts[role]
    return common_pb2.PlatformAccountRef(
        platform=probe.fixture.platform_code, account_id=acct.account_id, display_name=acct.display_name
    )


def _block_request(
    probe: Probe, role: str, *, request_id: str | None = None, unblock: bool = False
) -> platform_pb2.BlockAccountRequest:
    return platform_pb2.BlockAccountRequest(
        context=probe.context(request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER),
        order=requests_pb2.AccountBlock(
            account=_account(probe, role), level=requests_pb2.RESTRICTION_LEVEL_PAYMENTS, unblock=unblock
        ),
    )


def _warn_request(probe: Probe, role: str, *, request_id: str | None = None) -> platform_pb2.WarnUserRequest:
    return platform_pb2.WarnUserRequest(
        context=probe.context(request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER),
        order=requests_pb2.Warning(
            platform_account=_account(probe, role),
            channel=requests_pb2.WARNING_CHANNEL_IN_APP,
            template_id=_TEMPLATE,
        ),
    )


def _data_request(
    probe: Probe, role: str, *, request_id: str | None = None
) -> platform_pb2.QueryPlatformDataRequest:
    return platform_pb2.QueryPlatformDataRequest(
        context=probe.context(
            request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_EVIDENCE_NOTICE
        ),
        order=requests_pb2.DataRequest(
            category=requests_pb2.DATA_CATEGORY_PLATFORM_ACCOUNT, platform_account=_account(probe, role)
        ),
    )


async def _unblock(probe: Probe, role: str) -> None:
    """Lift the restriction so the next run finds the account as seeded."""
    with contextlib.suppress(CheckFailed):
        await probe.call("BlockAccount", _block_request(probe, role, unblock=True))


async def _check_block(probe: Probe) -> str:
    try:
        answer = await probe.call("BlockAccount", _block_request(probe, "block"))
        expect_outcome(answer.result, EXECUTED, what="BlockAccount at PAYMENTS")
        expect(
            len(answer.result.block.blocked) > 0,
            "BlockAccount: result.block.blocked names nothing restricted",
        )
        lifted = await probe.call("BlockAccount", _block_request(probe, "block", unblock=True))
        expect_outcome(lifted.result, EXECUTED, what="BlockAccount with unblock")
    finally:
        await _unblock(probe, "block")
    return f"restricted {', '.join(answer.result.block.blocked)}, then lifted"


async def _check_warn(probe: Probe) -> str:
    answer = await probe.call("WarnUser", _warn_request(probe, "warn"))
    expect_outcome(answer.result, EXECUTED, what="WarnUser in the app")
    expect(answer.result.block.warned, "WarnUser: result.block.warned is not set")
    return "EXECUTED, warned"


async def _check_query(probe: Probe) -> str:
    answer = await probe.call("QueryPlatformData", _data_request(probe, "data"))
    expect_outcome(answer.result, EXECUTED, what="QueryPlatformData PLATFORM_ACCOUNT")
    expect(len(answer.answer.holder) > 0, "PLATFORM_ACCOUNT: the answer has no account data")
    return "account data answered in clear"


async def _check_not_found(probe: Probe) -> str:
    block = _block_request(probe, "block")
    block.order.account.account_id = probe.fixture.unknown_platform_account
    answer = await probe.call("BlockAccount", block)
    expect_outcome(
        answer.result, REJECTED, results_pb2.REASON_CODE_NOT_FOUND, what="BlockAccount of an unknown account"
    )
    query = _data_request(probe, "data")
    query.order.platform_account.account_id = probe.fixture.unknown_platform_account
    data = await probe.call("QueryPlatformData", query)
    expect_outcome(
        data.result,
        REJECTED,
        results_pb2.REASON_CODE_NOT_FOUND,
        what="QueryPlatformData of an unknown account",
    )
    expect(
        len(data.answer.holder) == 0 and len(data.answer.records) == 0,
        "QueryPlatformData of an unknown account returned data",
    )
    return "REJECTED/NOT_FOUND"


def _sample(role: str) -> Sample:
    return Sample(method="BlockAccount", build=lambda probe, rid: _block_request(probe, role, request_id=rid))


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
        Sample(method="WarnUser", build=warn),
        Sample(method="QueryPlatformData", build=query),
    )


PLATFORM_CHECKS: tuple[Check, ...] = (
    Check(
        name="platform.block_account",
        proves="an account is restricted and the restriction lifted on order",
        run=_check_block,
    ),
    Check(name="platform.warn_user", proves="a user is warned in the app", run=_check_warn),
    Check(name="platform.query_platform_data", proves="account data is answered in clear", run=_check_query),
    Check(
        name="platform.not_found",
        proves="an account the platform does not have is REJECTED/NOT_FOUND",
        run=_check_not_found,
    ),
    replay_check("platform", _sample("idempotent"), cleanup=_unblock_idempotent),
    malformed_check("platform", _error_samples(), after=_unblock_errors),
    deadline_check("platform", _sample("deadline"), cleanup=_unblock_deadline),
)
