"""A batch or selector NUMBER_BLOCK at the carrier: every item in one transaction, answered by index.

An appeal lifts one item of it (:func:`lift_item`): what the order changed on that line is undone,
the other items stay blocked.

Per item, nothing is done twice: an item whose scope is already blocked (by any earlier order) is
ALREADY_BLOCKED; the same request delivered again gets the journal's first answer (request-level
idempotency in :class:`AgencyCore`). The answer names no number: indexes and states only.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import TypeAlias

from greenchannel.v1 import agency_pb2, common_pb2, requests_pb2, results_pb2

from agencies._common import from_timestamp, new_reference, rejected
from broker.protocol import block_items_result

from . import _store as store
from ._model import LineStatus

__all__ = ["block_many", "lift_item"]

_State: TypeAlias = results_pb2.BlockItemState.ValueType


def block_many(
    conn: sqlite3.Connection,
    now: datetime,
    ctx: agency_pb2.OrderContext,
    order: requests_pb2.NumberBlock,
    kinds: tuple[str, ...],
) -> results_pb2.Result:
    """Block (or unblock) each item of ``order.phones`` or of the lines ``order.selector`` finds."""
    blocking = not order.unblock
    states: list[_State] = []
    changed: list[tuple[int, str, tuple[str, ...]]] = []
    flags: dict[str, list[tuple[int, str]]] = {kind: [] for kind in kinds}
    seen: set[str] = set()  # a line named twice in one order is changed once
    for index, ref in enumerate(_items(conn, order)):
        state, changing = _one(conn, ref, kinds, blocking=blocking)
        if changing and ref.e164 in seen:
            state, changing = results_pb2.BLOCK_ITEM_STATE_ALREADY_BLOCKED, ()
        states.append(state)
        if changing:
            seen.add(ref.e164)
            changed.append((index, ref.e164, changing))
            for kind in changing:
                flags[kind].append((int(blocking), ref.e164))
    for kind, rows in flags.items():
        if rows:
            store.set_flag_many(conn, kind, rows)
    store.insert_block_items(conn, ctx.request_id, changed, order.unblock, now)
    return _answer(states, now, verb="blocked" if blocking else "unblocked")


def lift_item(
    conn: sqlite3.Connection, now: datetime, ctx: agency_pb2.OrderContext, order: requests_pb2.Release
) -> results_pb2.Result:
    """Lift item ``order.item_index`` of the batch ``order.target_request_id``: answered for that item."""
    item = order.item_index
    action = store.block_item(conn, order.target_request_id, item)
    if action is None or action[2]:
        return rejected(results_pb2.REASON_CODE_NOT_FOUND, "no such item blocked by that request")
    e164, kinds, _ = action
    ln = store.line(conn, e164)
    current = set(() if ln is None else ln.blocked_kinds())
    changing = tuple(kind for kind in kinds if kind in current)
    if changing:
        store.set_flags(conn, e164, changing, False)
    store.insert_block_items(conn, ctx.request_id, [(item, e164, changing)], True, now)
    state = results_pb2.BLOCK_ITEM_STATE_BLOCKED if changing else results_pb2.BLOCK_ITEM_STATE_ALREADY_BLOCKED
    result = block_items_result([state])
    result.block.items[0].index = item
    result.block.blocked.extend(kinds)
    result.agency_reference = new_reference("LB", now)
    result.detail = "item unblocked" if changing else "item already unblocked"
    return result


def _items(conn: sqlite3.Connection, order: requests_pb2.NumberBlock) -> list[common_pb2.PhoneRef]:
    if order.phones:
        return list(order.phones)
    selector = order.selector
    if selector.WhichOneof("kind") == "issuing_batch":
        numbers = store.lines_in_issuing_batch(conn, selector.issuing_batch)
    else:
        window = selector.cell.window
        numbers = store.lines_seen_on_cell(
            conn, selector.cell.cell_id, from_timestamp(window.start), from_timestamp(window.end)
        )
    return [common_pb2.PhoneRef(e164=number) for number in numbers]


def _one(
    conn: sqlite3.Connection, ref: common_pb2.PhoneRef, kinds: tuple[str, ...], *, blocking: bool
) -> tuple[_State, tuple[str, ...]]:
    ln = store.line(conn, ref.e164)
    given = () if ln is None else ((ref.iccid, ln.iccid), (ref.imsi, ln.imsi), (ref.imei, ln.imei))
    if ln is None or any(value and value != recorded for value, recorded in given):
        # An unknown number, or identifiers that are not the line's: no such line here.
        return results_pb2.BLOCK_ITEM_STATE_NOT_FOUND, ()
    if blocking and ln.status is LineStatus.CANCELLED:
        return results_pb2.BLOCK_ITEM_STATE_NOT_FOUND, ()
    wanted = tuple(kind for kind in kinds if kind != "imei" or ln.imei)
    if not wanted:
        return results_pb2.BLOCK_ITEM_STATE_NOT_FOUND, ()
    current = set(ln.blocked_kinds())
    changing = tuple(kind for kind in wanted if (kind in current) != blocking)
    if not changing:
        return results_pb2.BLOCK_ITEM_STATE_ALREADY_BLOCKED, ()
    return results_pb2.BLOCK_ITEM_STATE_BLOCKED, changing


def _answer(states: list[_State], now: datetime, *, verb: str) -> results_pb2.Result:
    result = block_items_result(states)
    result.agency_reference = new_reference("NB", now)
    if result.outcome == common_pb2.REQUEST_STATE_EXECUTED:
        result.detail = f"every item already {verb}" if result.reason else f"{verb} every item"
    elif result.outcome == common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED:
        result.detail = f"{verb} some items; the others are not this carrier's lines"
    else:
        result.detail = "no item is a line of this carrier" if states else "the selector found no line"
    return result
