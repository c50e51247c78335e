"""A batch NUMBER_BLOCK's answer from its items' states: one spelling for carriers and the broker.

Items by index (never a number), the four totals, and the outcome: EXECUTED when every item is
blocked or already blocked (reason ALREADY_DONE when none needed blocking now), REJECTED when
none is, PARTIALLY_EXECUTED otherwise (reason NOT_FOUND). The caller adds the detail.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from greenchannel.v1 import common_pb2, results_pb2

__all__ = ["block_items_result"]

_State: TypeAlias = results_pb2.BlockItemState.ValueType
_TOTAL_OF: dict[_State, str] = {
    results_pb2.BLOCK_ITEM_STATE_BLOCKED: "blocked",
    results_pb2.BLOCK_ITEM_STATE_ALREADY_BLOCKED: "already_blocked",
    results_pb2.BLOCK_ITEM_STATE_NOT_OURS: "not_ours",
}


def block_items_result(states: Sequence[_State]) -> results_pb2.Result:
    """Items, totals and outcome of a batch whose item ``i`` ended in ``states[i]`` (an unknown
    state counts as NOT_FOUND, so the totals always add up to the items)."""
    result = results_pb2.Result()
    counts = dict.fromkeys(("blocked", "already_blocked", "not_ours", "not_found"), 0)
    for index, state in enumerate(states):
        result.block.items.add(index=index, state=state)
        counts[_TOTAL_OF.get(state, "not_found")] += 1
    result.block.totals.CopyFrom(results_pb2.BlockTotals(**counts))
    done = counts["blocked"] + counts["already_blocked"]
    if states and done == len(states):
        result.outcome = common_pb2.REQUEST_STATE_EXECUTED
        if not counts["blocked"]:
            result.reason = results_pb2.REASON_CODE_ALREADY_DONE
    else:
        result.outcome = (
            common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED if done else common_pb2.REQUEST_STATE_REJECTED
        )
        result.reason = results_pb2.REASON_CODE_NOT_FOUND
    return result
