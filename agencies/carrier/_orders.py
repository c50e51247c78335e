"""The carrier's rules for each order, run inside the journalled transaction of :class:`CarrierCore`.

Identifiers the order gives (ICCID, IMSI, IMEI) must belong to the number, or nothing is done:
MISMATCH. ``detail`` never says which identifier was wrong or what the right one is.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from types import MappingProxyType

from greenchannel.v1 import agency_pb2, carrier_pb2, common_pb2, requests_pb2, results_pb2

from agencies._common import (
    executed,
    from_timestamp,
    invalid_request,
    new_reference,
    rejected,
    rfc3339,
    warned,
)

from . import _cells as cells
from . import _store as store
from ._batch import block_many, lift_item
from ._model import Line, LineStatus, SentWarning

__all__ = ["block_number", "lift_block", "query_subscriber_data", "warn_subscriber"]

_SCOPE_KINDS = MappingProxyType(
    {
        requests_pb2.BLOCK_SCOPE_NUMBER: ("number",),
        requests_pb2.BLOCK_SCOPE_SIM: ("sim",),
        requests_pb2.BLOCK_SCOPE_IMEI: ("imei",),
        requests_pb2.BLOCK_SCOPE_ALL: ("number", "sim", "imei"),
    }
)
# A carrier reaches people through its network; in-app notices are the platforms' channel.
_CATEGORIES = frozenset(
    {
        requests_pb2.DATA_CATEGORY_SUBSCRIBER,
        requests_pb2.DATA_CATEGORY_CALL_RECORDS,
        requests_pb2.DATA_CATEGORY_LOCATION,
    }
)
_CHANNELS = MappingProxyType(
    {requests_pb2.WARNING_CHANNEL_CALL: "call", requests_pb2.WARNING_CHANNEL_SMS: "sms"}
)


def block_number(
    conn: sqlite3.Connection, now: datetime, ctx: agency_pb2.OrderContext, order: requests_pb2.NumberBlock
) -> carrier_pb2.BlockNumberResponse:
    if order.phones or order.HasField("selector"):
        return carrier_pb2.BlockNumberResponse(
            result=block_many(conn, now, ctx, order, _SCOPE_KINDS[order.scope])
        )
    ln = _checked_line(conn, order.phone, must_be_active=not order.unblock)
    if isinstance(ln, results_pb2.Result):
        return carrier_pb2.BlockNumberResponse(result=ln)
    kinds = _SCOPE_KINDS[order.scope]
    no_handset = "imei" in kinds and not ln.imei
    if no_handset:
        kinds = tuple(kind for kind in kinds if kind != "imei")
        if not kinds:
            return carrier_pb2.BlockNumberResponse(
                result=rejected(results_pb2.REASON_CODE_NOT_FOUND, "no handset known for the number")
            )
    blocking = not order.unblock
    current = set(ln.blocked_kinds())
    changing = tuple(kind for kind in kinds if (kind in current) != blocking)
    store.set_flags(conn, ln.e164, changing, blocking)
    store.insert_block_action(conn, ctx.request_id, ln.e164, changing, order.unblock, now)
    verb = "blocked" if blocking else "unblocked"
    result = executed(verb)
    result.block.blocked.extend(kinds)
    result.agency_reference = new_reference("NB", now)
    if no_handset:
        result.outcome = common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED
        result.reason = results_pb2.REASON_CODE_NOT_FOUND
        result.detail = f"{verb} {' and '.join(kinds)}; no handset known for the number"
    elif not changing:
        result.reason = results_pb2.REASON_CODE_ALREADY_DONE
        result.detail = f"already {verb}"
    return carrier_pb2.BlockNumberResponse(result=result)


def lift_block(
    conn: sqlite3.Connection, now: datetime, ctx: agency_pb2.OrderContext, order: requests_pb2.Release
) -> carrier_pb2.LiftBlockResponse:
    """Lift the block made by ``order.target_request_id`` (an appeal lifted): what it blocked; with
    ``order.item_index``, only that item of a batch."""
    if order.HasField("item_index"):
        return carrier_pb2.LiftBlockResponse(result=lift_item(conn, now, ctx, order))
    action = store.block_action(conn, order.target_request_id)
    if action is None or action[2]:
        return carrier_pb2.LiftBlockResponse(
            result=rejected(results_pb2.REASON_CODE_NOT_FOUND, "no block made by that request")
        )
    e164, kinds, _ = action
    ln = store.line(conn, e164)
    if ln is None:
        return carrier_pb2.LiftBlockResponse(
            result=rejected(results_pb2.REASON_CODE_NOT_FOUND, "no such number")
        )
    current = set(ln.blocked_kinds())
    changing = tuple(kind for kind in kinds if kind in current)
    store.set_flags(conn, e164, changing, False)
    store.insert_block_action(conn, ctx.request_id, e164, changing, True, now)
    result = executed("block lifted")
    result.block.blocked.extend(kinds)
    result.agency_reference = new_reference("LB", now)
    if not changing:
        result.reason = results_pb2.REASON_CODE_ALREADY_DONE
        result.detail = "already unblocked"
    return carrier_pb2.LiftBlockResponse(result=result)


def warn_subscriber(
    conn: sqlite3.Connection, now: datetime, ctx: agency_pb2.OrderContext, order: requests_pb2.Warning
) -> carrier_pb2.WarnSubscriberResponse:
    if order.WhichOneof("target") != "phone":
        return carrier_pb2.WarnSubscriberResponse(result=invalid_request("a carrier warns phone subscribers"))
    channel = _CHANNELS.get(order.channel)
    if channel is None:
        return carrier_pb2.WarnSubscriberResponse(result=invalid_request("a carrier warns by call or SMS"))
    ln = _checked_line(conn, order.phone, must_be_active=True)
    if isinstance(ln, results_pb2.Result):
        return carrier_pb2.WarnSubscriberResponse(result=ln)
    store.insert_warning(
        conn,
        SentWarning(
            request_id=ctx.request_id, e164=ln.e164, channel=channel, template_id=order.template_id, at=now
        ),
    )
    # How it ended, from the carrier's own record of the line (powered off, a subscriber who said
    # they would pay all the same); no record: reached and dissuaded.
    result = warned(channel, store.reach(conn, ln.e164))
    result.agency_reference = new_reference("WN", now)
    return carrier_pb2.WarnSubscriberResponse(result=result)


def query_subscriber_data(
    conn: sqlite3.Connection, now: datetime, ctx: agency_pb2.OrderContext, order: requests_pb2.DataRequest
) -> carrier_pb2.QuerySubscriberDataResponse:
    if order.WhichOneof("subject") != "phone":
        return carrier_pb2.QuerySubscriberDataResponse(
            result=invalid_request("a carrier answers about phone lines")
        )
    category = order.category
    if category not in _CATEGORIES:
        return carrier_pb2.QuerySubscriberDataResponse(
            result=invalid_request("a carrier answers SUBSCRIBER, CALL_RECORDS and LOCATION requests")
        )
    if category == requests_pb2.DATA_CATEGORY_CALL_RECORDS and not order.HasField("period"):
        return carrier_pb2.QuerySubscriberDataResponse(result=invalid_request("CALL_RECORDS needs a period"))
    ln = _checked_line(conn, order.phone, must_be_active=False)
    if isinstance(ln, results_pb2.Result):
        return carrier_pb2.QuerySubscriberDataResponse(result=ln)
    if category == requests_pb2.DATA_CATEGORY_LOCATION:
        return _location(conn, ln)
    answer = results_pb2.DataAnswer()
    if category == requests_pb2.DATA_CATEGORY_SUBSCRIBER:
        answer.holder.update(
            {
                "name": ln.subscriber_name,
                "id_type": ln.id_type,
                "id_number": ln.id_number,
                "e164": ln.e164,
                "iccid": ln.iccid,
                "imsi": ln.imsi,
                "imei": ln.imei,
                "line_status": ln.status.value,
                "activated_at": rfc3339(ln.activated_at),
                "blocked": ",".join(ln.blocked_kinds()),
            }
        )
    else:
        start, end = from_timestamp(order.period.start), from_timestamp(order.period.end)
        for call in store.calls_between(conn, ln.e164, start, end):
            answer.records.add().fields.update(
                {
                    "direction": call.direction,
                    "caller": ln.e164 if call.direction == "out" else call.other_party,
                    "callee": call.other_party if call.direction == "out" else ln.e164,
                    "started_at": rfc3339(call.started_at),
                    "duration_s": str(call.duration_s),
                    "cell_id": call.cell_id,
                }
            )
    return carrier_pb2.QuerySubscriberDataResponse(result=executed(), answer=answer)


def _location(conn: sqlite3.Connection, ln: Line) -> carrier_pb2.QuerySubscriberDataResponse:
    """Where the network last saw the line: its serving cell then, and when."""
    seen = cells.last_seen(conn, ln.e164)
    if seen is None:
        return carrier_pb2.QuerySubscriberDataResponse(
            result=rejected(results_pb2.REASON_CODE_NOT_FOUND, "no location known for the line")
        )
    answer = results_pb2.DataAnswer()
    answer.holder["e164"] = ln.e164
    answer.records.add().fields.update(
        {
            "source": "last_seen",
            "cell_id": seen.cell.cell_id,
            "base_station_id": seen.cell.base_station_id,
            "location_area": seen.cell.location_area,
            "latitude": f"{seen.cell.latitude:.6f}",
            "longitude": f"{seen.cell.longitude:.6f}",
            "accuracy_m": str(seen.cell.accuracy_m),
            "last_activity_at": rfc3339(seen.at),
            "imsi": ln.imsi,
            "imei": ln.imei,
        }
    )
    return carrier_pb2.QuerySubscriberDataResponse(result=executed(), answer=answer)


def _checked_line(
    conn: sqlite3.Connection, ref: common_pb2.PhoneRef, *, must_be_active: bool
) -> Line | results_pb2.Result:
    ln = store.line(conn, ref.e164)
    if ln is None:
        return rejected(results_pb2.REASON_CODE_NOT_FOUND, "no such number")
    given = ((ref.iccid, ln.iccid), (ref.imsi, ln.imsi), (ref.imei, ln.imei))
    if any(value and value != recorded for value, recorded in given):
        return rejected(
            results_pb2.REASON_CODE_MISMATCH, "SIM or handset identifiers do not belong to the number"
        )
    if must_be_active and ln.status is LineStatus.CANCELLED:
        return rejected(results_pb2.REASON_CODE_ACCOUNT_CLOSED, "the line is cancelled")
    return ln
