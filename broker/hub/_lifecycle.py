"""The request state machine: which event may move a request from which state, and by whom.

Progress runs SUBMITTED < DELIVERED < ACKNOWLEDGED < outcome (EXECUTED, PARTIALLY_EXECUTED,
REJECTED, FAILED). Forward jumps are legal because adapters' events travel independently and
one may be lost or overtaken (ACKNOWLEDGED straight from SUBMITTED is fine); an event at or
behind the current progress is refused as ``OUT_OF_ORDER`` so the caller can drop a straggler
(``broker.hub._events.apply_event`` still records, without moving the state, a recipient's
DELIVERED or ACKNOWLEDGED that was merely overtaken and is not yet in the timeline).

A cancellation is final except against the recipient's own outcome, which records what the agency
did although the bus had cancelled the request meanwhile.

Holds (STOP_PAYMENT, FREEZE) live on after execution: the broker may then record EXTENDED
(repeatedly), RELEASED or EXPIRED. A number or account block (NUMBER_BLOCK, ACCOUNT_BLOCK) that an
appeal lifted is RELEASED by the broker once its lifting order executed. ESCALATED and REMINDED
annotate any non-final state without changing it.

An APPEAL's outcome is the police's decision, recorded by the broker from their signed ruling
(``BusService.DecideAppeal``): EXECUTED on an appeal is the broker's to record, never the
adapter's (the police adapter records the filing as ACKNOWLEDGED; it may still refuse or fail it).
A FRAUD_REPORT likewise: its outcome is the police's feedback (``BusService.GiveFeedback``).

Checks run in a fixed order, so one event gets one answer: the actor first (an event from the
wrong party is refused whatever the state), then final states, then order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

from greenchannel.v1 import common_pb2

from broker.protocol import (
    BROKER_ID,
    CANCELLABLE_STATES,
    EXECUTED_STATES,
    HOLD_TYPES,
    HOLDING_STATES,
    OUTCOME_STATES,
    request_type_name,
    state_name,
)

from ._errors import IllegalTransitionError

__all__ = ["is_final", "is_outcome", "next_state"]

_State: TypeAlias = common_pb2.RequestState.ValueType
_RequestType: TypeAlias = common_pb2.RequestType.ValueType

_S = common_pb2
_ALWAYS_FINAL = frozenset(
    {
        _S.REQUEST_STATE_REJECTED,
        _S.REQUEST_STATE_FAILED,
        _S.REQUEST_STATE_CANCELLED,
        _S.REQUEST_STATE_RELEASED,
        _S.REQUEST_STATE_EXPIRED,
    }
)
_HOLD_EVENTS = frozenset({_S.REQUEST_STATE_EXTENDED, _S.REQUEST_STATE_RELEASED, _S.REQUEST_STATE_EXPIRED})
# Restrictions that are not holds but can be lifted (by an appeal's lifting order).
_LIFTABLE = frozenset({_S.REQUEST_TYPE_NUMBER_BLOCK, _S.REQUEST_TYPE_ACCOUNT_BLOCK})
# Outcomes the broker records from the police's signed decision through the Bus API; the police
# adapter records the filing (ACKNOWLEDGED).
_DECIDED_BY_BROKER = frozenset({_S.REQUEST_TYPE_APPEAL, _S.REQUEST_TYPE_FRAUD_REPORT})

_OUTCOME_RANK = 4
_RANK: Mapping[_State, int] = {
    _S.REQUEST_STATE_SUBMITTED: 1,
    _S.REQUEST_STATE_DELIVERED: 2,
    _S.REQUEST_STATE_ACKNOWLEDGED: 3,
    **dict.fromkeys(OUTCOME_STATES, _OUTCOME_RANK),
    # After an outcome, as far as adapters' progress events are concerned.
    **dict.fromkeys(_HOLD_EVENTS, _OUTCOME_RANK + 1),
}

# Who may record each event: the recipient's adapter, the broker, or either.
_RECIPIENT = "recipient"
_BROKER = "broker"
_EITHER = "recipient or broker"
_ACTORS: Mapping[_State, str] = {
    _S.REQUEST_STATE_SUBMITTED: _BROKER,
    _S.REQUEST_STATE_DELIVERED: _RECIPIENT,
    _S.REQUEST_STATE_ACKNOWLEDGED: _RECIPIENT,
    _S.REQUEST_STATE_EXECUTED: _RECIPIENT,
    _S.REQUEST_STATE_PARTIALLY_EXECUTED: _RECIPIENT,
    _S.REQUEST_STATE_REJECTED: _RECIPIENT,
    _S.REQUEST_STATE_FAILED: _EITHER,
    _S.REQUEST_STATE_CANCELLED: _BROKER,
    _S.REQUEST_STATE_EXTENDED: _BROKER,
    _S.REQUEST_STATE_RELEASED: _BROKER,
    _S.REQUEST_STATE_EXPIRED: _BROKER,
    _S.REQUEST_STATE_ESCALATED: _BROKER,
    _S.REQUEST_STATE_REMINDED: _BROKER,
}


def is_outcome(state: _State) -> bool:
    """EXECUTED, PARTIALLY_EXECUTED, REJECTED or FAILED: the agency's (or the broker's) answer."""
    return state in OUTCOME_STATES


def is_final(state: _State, request_type: _RequestType | None = None) -> bool:
    """No further event can change the state (ESCALATED aside).

    EXECUTED and PARTIALLY_EXECUTED are final only for types that hold nothing; without
    ``request_type`` they count as not final, the safe answer for a watcher deciding to stop.
    """
    if state in _ALWAYS_FINAL:
        return True
    return state in EXECUTED_STATES and request_type is not None and request_type not in HOLD_TYPES


def next_state(
    current: _State,
    event: _State,
    *,
    actor: str,
    sender: str,
    recipient: str,
    request_type: _RequestType,
) -> _State:
    """The state to store after ``event`` recorded by ``actor``; raise :class:`IllegalTransitionError`.

    ``current`` is REQUEST_STATE_UNSPECIFIED for a request not yet stored. ``sender`` never acts
    on the lifecycle itself: its cancellations, extensions and releases are recorded by the
    broker, so an event signed by the sender is ``WRONG_ACTOR`` unless it is also the broker.
    Reasons: ``WRONG_ACTOR``, ``ILLEGAL_TRANSITION``, ``OUT_OF_ORDER``.
    """
    _check_actor(event, actor, recipient, request_type)
    kind = request_type_name(request_type)
    what = f"{state_name(event)} on a {kind} request in state {state_name(current)}"
    if current == _S.REQUEST_STATE_UNSPECIFIED:
        if event != _S.REQUEST_STATE_SUBMITTED:
            raise _illegal(what, "a request starts as SUBMITTED")
        return event
    if current == _S.REQUEST_STATE_CANCELLED and event in OUTCOME_STATES and actor == recipient:
        # A cancellation reaches the bus, never the agency: a recipient that had taken the request
        # before telling the bus so (its ACKNOWLEDGED waits while a quick answer is expected, or
        # its adapter was offline with the request in hand) acted on it all the same. What it did
        # stands, so the sender learns of a hold it must release rather than believe none exists.
        return event
    if event == _S.REQUEST_STATE_RELEASED and request_type in _LIFTABLE and current in EXECUTED_STATES:
        # The block was applied; the broker's lifting order (an appeal lifted) took it off.
        return event
    if is_final(current, request_type):
        raise _illegal(what, f"{state_name(current)} is final")
    if current not in _RANK:
        raise _illegal(what, f"{state_name(current)} is not a stored state")
    if event in (_S.REQUEST_STATE_ESCALATED, _S.REQUEST_STATE_REMINDED):
        # Annotations of the timeline (deadline reminders and breaches), not steps of it.
        return current
    if event == _S.REQUEST_STATE_CANCELLED:
        if current not in CANCELLABLE_STATES:
            raise _illegal(what, "once acknowledged, the agency has taken it; it can no longer be cancelled")
        return event
    if event in _HOLD_EVENTS:
        if request_type not in HOLD_TYPES:
            raise _illegal(what, "only STOP_PAYMENT and FREEZE requests place a hold")
        # A hold that was executed (and maybe extended) can be extended, released or expire.
        if current not in HOLDING_STATES:
            raise _illegal(what, "there is a hold only once the request is executed")
        return event
    rank = _RANK.get(event)
    if rank is None:
        raise _illegal(what, "not a lifecycle event")
    if rank <= _RANK[current]:
        if rank == _OUTCOME_RANK:
            # A second outcome contradicts the first; it is not a straggler to drop.
            raise _illegal(what, "the request already has its outcome")
        raise IllegalTransitionError(f"{what}: the request is already past that", reason="OUT_OF_ORDER")
    return event


def _illegal(what: str, why: str) -> IllegalTransitionError:
    return IllegalTransitionError(f"{what}: {why}", reason="ILLEGAL_TRANSITION")


def _check_actor(event: _State, actor: str, recipient: str, request_type: _RequestType) -> None:
    allowed = _ACTORS.get(event)
    if request_type in _DECIDED_BY_BROKER and event in EXECUTED_STATES:
        # The decision, from the police's signed ruling (DecideAppeal) or feedback (GiveFeedback).
        allowed = _BROKER
    if allowed is None:
        return  # not an event at all; the state checks refuse it with a better message
    ok = (allowed != _BROKER and actor == recipient) or (allowed != _RECIPIENT and actor == BROKER_ID)
    if not ok:
        expected = {_RECIPIENT: f"the recipient {recipient!r}", _BROKER: "the broker"}.get(
            allowed, f"the recipient {recipient!r} or the broker"
        )
        raise IllegalTransitionError(
            f"{state_name(event)} recorded by {actor!r}: only {expected} may record it", reason="WRONG_ACTOR"
        )
