"""Sets of request states and types that every side reasons with, defined once.

The lifecycle (``SUBMITTED -> DELIVERED -> ACKNOWLEDGED -> outcome``, then hold events) is the
contract's; these sets name its stages so the broker, the adapters, the client and the agencies
cannot drift apart on, say, whether PARTIALLY_EXECUTED placed a hold.
"""

from __future__ import annotations

from typing import TypeAlias

from greenchannel.v1 import common_pb2

__all__ = ["EXECUTED_STATES", "FINAL_STATES", "HOLDING_STATES", "HOLD_TYPES", "OUTCOME_STATES"]

_State: TypeAlias = common_pb2.RequestState.ValueType
_RequestType: TypeAlias = common_pb2.RequestType.ValueType
_S = common_pb2

HOLD_TYPES: frozenset[_RequestType] = frozenset({_S.REQUEST_TYPE_STOP_PAYMENT, _S.REQUEST_TYPE_FREEZE})
"""Request types that place a hold on money (which then lasts, may be extended, released, lapse)."""

EXECUTED_STATES: frozenset[_State] = frozenset(
    {_S.REQUEST_STATE_EXECUTED, _S.REQUEST_STATE_PARTIALLY_EXECUTED}
)
"""The agency acted (in full or in part): for a hold type, the hold is placed."""

OUTCOME_STATES: frozenset[_State] = EXECUTED_STATES | {_S.REQUEST_STATE_REJECTED, _S.REQUEST_STATE_FAILED}
"""The agency's (or the broker's) answer to a request."""

HOLDING_STATES: frozenset[_State] = EXECUTED_STATES | {_S.REQUEST_STATE_EXTENDED}
"""States in which a request's hold is in force."""

CANCELLABLE_STATES: frozenset[_State] = frozenset({_S.REQUEST_STATE_SUBMITTED, _S.REQUEST_STATE_DELIVERED})
"""States from which the sender may still cancel: once acknowledged, the agency has taken it."""

FINAL_STATES: frozenset[_State] = OUTCOME_STATES | {_S.REQUEST_STATE_CANCELLED}
"""The answer, or a cancellation: where a caller waiting for a request stops. (A hold may still be
extended, released or expire later; those are new events, not answers.)"""
