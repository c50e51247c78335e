"""The platform's rules for each order, run inside the journalled transaction of :class:`PlatformCore`."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from types import MappingProxyType

from greenchannel.v1 import agency_pb2, common_pb2, platform_pb2, requests_pb2, results_pb2

from agencies._common import (
    executed,
    from_timestamp,
    invalid_request,
    new_reference,
    rejected,
    rfc3339,
    warned,
)

from . import _store as store
from ._config import PlatformConfig
from ._model import PlatformAccount, PlatformAccountStatus, Restriction, SentWarning, restricted_features

__all__ = ["block_account", "lift_restriction", "query_platform_data", "warn_user"]

# A platform reaches its users in its app, or by the app's own voice call.
_CHANNELS = MappingProxyType(
    {requests_pb2.WARNING_CHANNEL_IN_APP: "in_app", requests_pb2.WARNING_CHANNEL_CALL: "call"}
)


def block_account(
    config: PlatformConfig,
    conn: sqlite3.Connection,
    now: datetime,
    ctx: agency_pb2.OrderContext,
    order: requests_pb2.AccountBlock,
) -> platform_pb2.BlockAccountResponse:
    acct = _checked_account(config, conn, order.account, must_be_active=not order.unblock)
    if isinstance(acct, results_pb2.Result):
        return platform_pb2.BlockAccountResponse(result=acct)
    asked = Restriction(order.level)
    current = acct.restriction
    if order.unblock:
        # Lifting a level lifts it and everything above it; what lies below stays.
        target = min(current, Restriction(asked - 1))
        affected = tuple(f for f in restricted_features(current) if f not in restricted_features(target))
    else:
        target = max(current, asked)
        affected = restricted_features(target)
    store.insert_restriction_action(conn, ctx.request_id, acct, target, now)
    store.set_restriction(conn, acct.platform, acct.account_id, target)
    result = executed("restriction lifted" if order.unblock else "account restricted")
    result.block.blocked.extend(affected)
    result.agency_reference = new_reference("AB", now)
    if target == current:
        result.reason = results_pb2.REASON_CODE_ALREADY_DONE
        result.detail = (
            "no such restriction in place" if order.unblock else "already restricted at that level"
        )
    return platform_pb2.BlockAccountResponse(result=result)


def lift_restriction(
    conn: sqlite3.Connection, now: datetime, ctx: agency_pb2.OrderContext, order: requests_pb2.Release
) -> platform_pb2.LiftRestrictionResponse:
    """Restore the account the order ``order.target_request_id`` restricted (an appeal lifted).

    Back to the level before that order, unless the account stands elsewhere now (another order
    restricted it further, or it was lifted already): that is left as it is.
    """
    action = store.restriction_action(conn, order.target_request_id)
    if action is None:
        return platform_pb2.LiftRestrictionResponse(
            result=rejected(results_pb2.REASON_CODE_NOT_FOUND, "no restriction made by that request")
        )
    platform, account_id, before, after = action
    acct = store.account(conn, platform, account_id)
    if acct is None:
        return platform_pb2.LiftRestrictionResponse(
            result=rejected(results_pb2.REASON_CODE_NOT_FOUND, "no such account")
        )
    target = before if acct.restriction == after and before < after else acct.restriction
    lifted = tuple(f for f in restricted_features(acct.restriction) if f not in restricted_features(target))
    store.insert_restriction_action(conn, ctx.request_id, acct, target, now)
    store.set_restriction(conn, platform, account_id, target)
    result = executed("restriction lifted")
    result.block.blocked.extend(lifted)
    result.agency_reference = new_reference("LR", now)
    if target == acct.restriction:
        result.reason = results_pb2.REASON_CODE_ALREADY_DONE
        result.detail = "no such restriction in place"
    return platform_pb2.LiftRestrictionResponse(result=result)


def warn_user(
    config: PlatformConfig,
    conn: sqlite3.Connection,
    now: datetime,
    ctx: agency_pb2.OrderContext,
    order: requests_pb2.Warning,
) -> platform_pb2.WarnUserResponse:
    if order.WhichOneof("target") != "platform_account":
        return platform_pb2.WarnUserResponse(result=invalid_request("a platform warns its users"))
    channel = _CHANNELS.get(order.channel)
    if channel is None:
        return platform_pb2.WarnUserResponse(
            result=invalid_request("a platform warns in the app or by app call")
        )
    acct = _checked_account(config, conn, order.platform_account, must_be_active=True)
    if isinstance(acct, results_pb2.Result):
        return platform_pb2.WarnUserResponse(result=acct)
    store.insert_warning(
        conn,
        SentWarning(
            request_id=ctx.request_id,
            platform=acct.platform,
            account_id=acct.account_id,
            channel=channel,
            template_id=order.template_id,
            at=now,
        ),
    )
    # How it ended, from the platform's own record of the user; no record: reached and dissuaded.
    result = warned(channel.replace("_", "-"), store.reach(conn, acct.platform, acct.account_id))
    result.agency_reference = new_reference("WN", now)
    return platform_pb2.WarnUserResponse(result=result)


def query_platform_data(
    config: PlatformConfig,
    conn: sqlite3.Connection,
    now: datetime,
    ctx: agency_pb2.OrderContext,
    order: requests_pb2.DataRequest,
) -> platform_pb2.QueryPlatformDataResponse:
    if order.WhichOneof("subject") != "platform_account":
        return platform_pb2.QueryPlatformDataResponse(
            result=invalid_request("a platform answers about its accounts")
        )
    category = order.category
    if category not in (requests_pb2.DATA_CATEGORY_PLATFORM_ACCOUNT, requests_pb2.DATA_CATEGORY_LOGIN_IPS):
        return platform_pb2.QueryPlatformDataResponse(
            result=invalid_request("a platform answers PLATFORM_ACCOUNT and LOGIN_IPS requests")
        )
    if category == requests_pb2.DATA_CATEGORY_LOGIN_IPS and not order.HasField("period"):
        return platform_pb2.QueryPlatformDataResponse(result=invalid_request("LOGIN_IPS needs a period"))
    acct = _checked_account(config, conn, order.platform_account, must_be_active=False)
    if isinstance(acct, results_pb2.Result):
        return platform_pb2.QueryPlatformDataResponse(result=acct)
    answer = results_pb2.DataAnswer()
    if category == requests_pb2.DATA_CATEGORY_PLATFORM_ACCOUNT:
        answer.holder.update(
            {
                "platform": acct.platform,
                "account_id": acct.account_id,
                "display_name": acct.display_name,
                "real_name": acct.real_name,
                "id_number": acct.id_number,
                "registered_phone": acct.registered_phone,
                "registered_at": rfc3339(acct.registered_at),
                "account_status": acct.status.value,
                "restriction": acct.restriction.name.lower(),
            }
        )
    else:
        start, end = from_timestamp(order.period.start), from_timestamp(order.period.end)
        for login in store.logins_between(conn, acct.platform, acct.account_id, start, end):
            answer.records.add().fields.update(
                {"ip": login.ip, "at": rfc3339(login.at), "device": login.device}
            )
    return platform_pb2.QueryPlatformDataResponse(result=executed(), answer=answer)


def _checked_account(
    config: PlatformConfig,
    conn: sqlite3.Connection,
    ref: common_pb2.PlatformAccountRef,
    *,
    must_be_active: bool,
) -> PlatformAccount | results_pb2.Result:
    if ref.platform not in config.platform_codes:
        return rejected(results_pb2.REASON_CODE_NOT_FOUND, "platform code not served here")
    acct = store.account(conn, ref.platform, ref.account_id)
    if acct is None:
        return rejected(results_pb2.REASON_CODE_NOT_FOUND, "no such account")
    # The display name is not checked: scammers change it at will, the account id is what counts.
    if must_be_active and acct.status is PlatformAccountStatus.DEREGISTERED:
        return rejected(results_pb2.REASON_CODE_ACCOUNT_CLOSED, "the account is deregistered")
    return acct
