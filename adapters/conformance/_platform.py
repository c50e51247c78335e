"""Checks of a ``PlatformService``: account restrictions, in-app warnings, account data.

Every check acts on its own fixture account and lifts the restrictions it placed.
"""

from __future__ import annotations

from greenchannel.v1 import common_pb2, platform_pb2, platform_pb2_grpc, requests_pb2

from ._blocking import BlockingService, blocking_checks
from ._generic import Check
from ._probe import Probe

__all__ = ["PLATFORM_CHECKS", "platform_stub"]

platform_stub = platform_pb2_grpc.PlatformServiceStub

_TEMPLATE = "conformance-warning"


def _account(probe: Probe, role: str) -> common_pb2.PlatformAccountRef:
    acct = probe.fixture.platform_accounts[role]
    return common_pb2.PlatformAccountRef(
        platform=probe.fixture.platform_code, account_id=acct.account_id, display_name=acct.display_name
    )


def _block(
    probe: Probe, role: str, request_id: str | None, unblock: bool
) -> platform_pb2.BlockAccountRequest:
    return platform_pb2.BlockAccountRequest(
        context=probe.context(request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER),
        order=requests_pb2.AccountBlock(
            account=_account(probe, role), level=requests_pb2.RESTRICTION_LEVEL_PAYMENTS, unblock=unblock
        ),
    )


def _warn(probe: Probe, role: str, request_id: str | None) -> platform_pb2.WarnUserRequest:
    return platform_pb2.WarnUserRequest(
        context=probe.context(request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER),
        order=requests_pb2.Warning(
            platform_account=_account(probe, role),
            channel=requests_pb2.WARNING_CHANNEL_IN_APP,
            template_id=_TEMPLATE,
        ),
    )


def _data(probe: Probe, role: str, request_id: str | None) -> platform_pb2.QueryPlatformDataRequest:
    return platform_pb2.QueryPlatformDataRequest(
        context=probe.context(
            request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_EVIDENCE_NOTICE
        ),
        order=requests_pb2.DataRequest(
            category=requests_pb2.DATA_CATEGORY_PLATFORM_ACCOUNT, platform_account=_account(probe, role)
        ),
    )


def _block_unknown(probe: Probe) -> platform_pb2.BlockAccountRequest:
    request = _block(probe, "block", None, False)
    request.order.account.account_id = probe.fixture.unknown_platform_account
    return request


def _data_unknown(probe: Probe) -> platform_pb2.QueryPlatformDataRequest:
    request = _data(probe, "data", None)
    request.order.platform_account.account_id = probe.fixture.unknown_platform_account
    return request


PLATFORM_CHECKS: tuple[Check, ...] = blocking_checks(
    BlockingService(
        kind="platform",
        block_method="BlockAccount",
        warn_method="WarnUser",
        data_method="QueryPlatformData",
        block=_block,
        warn=_warn,
        data=_data,
        block_unknown=_block_unknown,
        data_unknown=_data_unknown,
        subject="account",
        lift_method="LiftRestriction",
        lift_request=platform_pb2.LiftRestrictionRequest,
    )
)
