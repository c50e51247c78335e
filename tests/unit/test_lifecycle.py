"""The request state machine: the full state x event matrix for hold and non-hold types, and actors."""

from __future__ import annotations

import itertools
from typing import TypeAlias

import pytest
from greenchannel.v1 import common_pb2

from broker.hub import IllegalTransitionError
from broker.hub._lifecycle import is_final, is_outcome, next_state
from broker.protocol import BROKER_ID

State: TypeAlias = common_pb2.RequestState.ValueType
RequestType: TypeAlias = common_pb2.RequestType.ValueType

T = common_pb2
UNSPEC = T.REQUEST_STATE_UNSPECIFIED
SUB, DEL, ACK = T.REQUEST_STATE_SUBMITTED, T.REQUEST_STATE_DELIVERED, T.REQUEST_STATE_ACKNOWLEDGED
EXE, PEX, REJ, FAI = (
    T.REQUEST_STATE_EXECUTED,
    T.REQUEST_STATE_PARTIALLY_EXECUTED,
    T.REQUEST_STATE_REJECTED,
    T.REQUEST_STATE_FAILED,
)
CAN, EXT, REL, EXP, ESC, REM = (
    T.REQUEST_STATE_CANCELLED,
    T.REQUEST_STATE_EXTENDED,
    T.REQUEST_STATE_RELEASED,
    T.REQUEST_STATE_EXPIRED,
    T.REQUEST_STATE_ESCALATED,
    T.REQUEST_STATE_REMINDED,
)
EVENTS = [SUB, DEL, ACK, EXE, PEX, REJ, FAI, CAN, EXT, REL, EXP, ESC, REM]
STORED = [UNSPEC, SUB, DEL, ACK, EXE, PEX, REJ, FAI, CAN, EXT, REL, EXP]

SENDER, RECIPIENT, STRANGER = "police-310115", "bank-icbc", "bank-ccb"
HOLD_TYPES = [T.REQUEST_TYPE_STOP_PAYMENT, T.REQUEST_TYPE_FREEZE]
PLAIN_TYPES = [
    T.REQUEST_TYPE_RELEASE,
    T.REQUEST_TYPE_EXTEND,
    T.REQUEST_TYPE_NUMBER_BLOCK,
    T.REQUEST_TYPE_ACCOUNT_BLOCK,
    T.REQUEST_TYPE_DATA_REQUEST,
    T.REQUEST_TYPE_ASSISTANCE,
    T.REQUEST_TYPE_WARNING,
    T.REQUEST_TYPE_FRAUD_REPORT,
]

# Who records each event: "r" the recipient, "b" the broker, "rb" either.
ACTORS: dict[State, str] = {
    SUB: "b",
    DEL: "r",
    ACK: "r",
    EXE: "r",
    PEX: "r",
    REJ: "r",
    FAI: "rb",
    CAN: "b",
    EXT: "b",
    REL: "b",
    EXP: "b",
    ESC: "b",
    REM: "b",
}

# Every legal (current, event) -> stored state, for any request type.
LEGAL_ANY: dict[tuple[State, State], State] = {
    (UNSPEC, SUB): SUB,
    **{(SUB, e): e for e in (DEL, ACK, EXE, PEX, REJ, FAI, CAN)},
    (SUB, ESC): SUB,
    (SUB, REM): SUB,
    **{(DEL, e): e for e in (ACK, EXE, PEX, REJ, FAI, CAN)},
    (DEL, ESC): DEL,
    (DEL, REM): DEL,
    **{(ACK, e): e for e in (EXE, PEX, REJ, FAI)},
    (ACK, ESC): ACK,
    (ACK, REM): ACK,
    # The recipient acted before the cancellation reached it: its outcome stands.
    **{(CAN, e): e for e in (EXE, PEX, REJ, FAI)},
}
# And in addition for stop-payments and freezes: the life of the hold.
LEGAL_HOLD: dict[tuple[State, State], State] = {
    **{(s, e): e for s in (EXE, PEX, EXT) for e in (EXT, REL, EXP)},
    **{(s, ESC): s for s in (EXE, PEX, EXT)},
    **{(s, REM): s for s in (EXE, PEX, EXT)},
}
# Stragglers: at or behind the current progress, on a state that can still change.
OUT_OF_ORDER_ANY = {(SUB, SUB), (DEL, SUB), (DEL, DEL), (ACK, SUB), (ACK, DEL), (ACK, ACK)}
OUT_OF_ORDER_HOLD = {(s, e) for s in (EXE, PEX, EXT) for e in (SUB, DEL, ACK)}


def short(state: State) -> str:
    return T.RequestState.Name(state).removeprefix("REQUEST_STATE_")


def actor_for(event: State) -> str:
    return RECIPIENT if ACTORS[event].startswith("r") else BROKER_ID


def step(current: State, event: State, actor: str, request_type: RequestType) -> State:
    return next_state(
        current, event, actor=actor, sender=SENDER, recipient=RECIPIENT, request_type=request_type
    )


def matrix() -> list[object]:
    cases: list[object] = []
    for request_type in (T.REQUEST_TYPE_FREEZE, T.REQUEST_TYPE_DATA_REQUEST):
        hold = request_type in HOLD_TYPES
        legal = LEGAL_ANY | LEGAL_HOLD if hold else LEGAL_ANY
        stale = OUT_OF_ORDER_ANY | OUT_OF_ORDER_HOLD if hold else OUT_OF_ORDER_ANY
        for current, event in itertools.product(STORED, EVENTS):
            if not hold and current in (EXT, REL, EXP):
                continue  # a plain request never gets there
            if (current, event) in legal:
                expected: State | str = legal[(current, event)]
            else:
                expected = "OUT_OF_ORDER" if (current, event) in stale else "ILLEGAL_TRANSITION"
            name = f"{T.RequestType.Name(request_type)[13:]}:{short(current)}+{short(event)}"
            cases.append(pytest.param(request_type, current, event, expected, id=name))
    return cases


@pytest.mark.parametrize(("request_type", "current", "event", "expected"), matrix())
def test_matrix(request_type: RequestType, current: State, event: State, expected: State | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(IllegalTransitionError) as info:
            step(current, event, actor_for(event), request_type)
        assert info.value.reason == expected
    else:
        assert step(current, event, actor_for(event), request_type) == expected


LIFTABLE_TYPES = [T.REQUEST_TYPE_NUMBER_BLOCK, T.REQUEST_TYPE_ACCOUNT_BLOCK]


@pytest.mark.parametrize("request_type", HOLD_TYPES + PLAIN_TYPES)
def test_hold_events_only_for_holds(request_type: RequestType) -> None:
    for current in (EXE, PEX):
        for event in (EXT, REL, EXP):
            if request_type in HOLD_TYPES:
                assert step(current, event, BROKER_ID, request_type) == event
            elif event == REL and request_type in LIFTABLE_TYPES:
                # A block an appeal lifted: the broker records RELEASED once its lifting order executed.
                assert step(current, event, BROKER_ID, request_type) == REL
            else:
                with pytest.raises(IllegalTransitionError) as info:
                    step(current, event, BROKER_ID, request_type)
                assert info.value.reason == "ILLEGAL_TRANSITION"


@pytest.mark.parametrize("request_type", PLAIN_TYPES)
def test_plain_outcomes_are_final(request_type: RequestType) -> None:
    for outcome in (EXE, PEX):
        with pytest.raises(IllegalTransitionError) as info:
            step(outcome, ESC, BROKER_ID, request_type)
        assert info.value.reason == "ILLEGAL_TRANSITION"


def test_a_whole_stop_payment_life() -> None:
    sp = T.REQUEST_TYPE_STOP_PAYMENT
    state = UNSPEC
    for event, actor in [
        (SUB, BROKER_ID),
        (ESC, BROKER_ID),
        (ACK, RECIPIENT),  # DELIVERED was lost
        (PEX, RECIPIENT),
        (EXT, BROKER_ID),
        (EXT, BROKER_ID),
        (ESC, BROKER_ID),
        (REL, BROKER_ID),
    ]:
        state = step(state, event, actor, sp)
    assert state == REL
    assert is_final(state, sp)


# -- actors ----------------------------------------------------------------------------------------


def actor_cases() -> list[object]:
    who = {"recipient": RECIPIENT, "broker": BROKER_ID, "sender": SENDER, "stranger": STRANGER}
    allowed = {"r": {"recipient"}, "b": {"broker"}, "rb": {"recipient", "broker"}}
    # A state from which each event is legal for a stop-payment, so only the actor can be wrong.
    legal_from = {SUB: UNSPEC, ESC: SUB, EXT: EXE, REL: EXE, EXP: EXT}
    cases: list[object] = []
    for event, role in itertools.product(EVENTS, who):
        ok = role in allowed[ACTORS[event]]
        current = legal_from.get(event, SUB)
        cases.append(pytest.param(current, event, who[role], ok, id=f"{short(event)}-by-{role}"))
    return cases


@pytest.mark.parametrize(("current", "event", "actor", "ok"), actor_cases())
def test_actors(current: State, event: State, actor: str, ok: bool) -> None:
    if ok:
        step(current, event, actor, T.REQUEST_TYPE_STOP_PAYMENT)
        return
    with pytest.raises(IllegalTransitionError) as info:
        step(current, event, actor, T.REQUEST_TYPE_STOP_PAYMENT)
    assert info.value.reason == "WRONG_ACTOR"
    assert repr(actor) in str(info.value)


def test_actor_is_checked_before_the_state() -> None:
    # Stale and from the wrong party: the party is what is wrong first.
    with pytest.raises(IllegalTransitionError) as info:
        step(ACK, DEL, STRANGER, T.REQUEST_TYPE_FREEZE)
    assert info.value.reason == "WRONG_ACTOR"
    with pytest.raises(IllegalTransitionError) as info:
        step(REJ, EXE, SENDER, T.REQUEST_TYPE_FREEZE)
    assert info.value.reason == "WRONG_ACTOR"


def test_the_sender_never_acts_directly() -> None:
    # Cancellation is the sender's wish, but the broker records it.
    with pytest.raises(IllegalTransitionError) as info:
        step(SUB, CAN, SENDER, T.REQUEST_TYPE_FREEZE)
    assert info.value.reason == "WRONG_ACTOR"
    assert step(SUB, CAN, BROKER_ID, T.REQUEST_TYPE_FREEZE) == CAN


@pytest.mark.parametrize(
    "bad", [UNSPEC, common_pb2.RequestState.ValueType(4), common_pb2.RequestState.ValueType(99)]
)
def test_not_an_event(bad: State) -> None:
    with pytest.raises(IllegalTransitionError) as info:
        step(SUB, bad, BROKER_ID, T.REQUEST_TYPE_FREEZE)
    assert info.value.reason == "ILLEGAL_TRANSITION"


def test_escalated_is_never_a_stored_state() -> None:
    with pytest.raises(IllegalTransitionError) as info:
        step(ESC, ACK, RECIPIENT, T.REQUEST_TYPE_FREEZE)
    assert info.value.reason == "ILLEGAL_TRANSITION"


def test_messages_name_event_type_and_state() -> None:
    with pytest.raises(IllegalTransitionError) as info:
        step(ACK, CAN, BROKER_ID, T.REQUEST_TYPE_FREEZE)
    assert "CANCELLED on a FREEZE request in state ACKNOWLEDGED" in str(info.value)


# -- is_final / is_outcome -------------------------------------------------------------------------

FINAL_ALWAYS = {REJ, FAI, CAN, REL, EXP}


@pytest.mark.parametrize("state", [*STORED, ESC])
def test_is_final(state: State) -> None:
    for request_type in HOLD_TYPES:
        assert is_final(state, request_type) is (state in FINAL_ALWAYS)
    for request_type in PLAIN_TYPES:
        assert is_final(state, request_type) is (state in FINAL_ALWAYS | {EXE, PEX})
    # Without a type, an execution may still be a live hold.
    assert is_final(state) is (state in FINAL_ALWAYS)


@pytest.mark.parametrize("state", [*STORED, ESC])
def test_is_outcome(state: State) -> None:
    assert is_outcome(state) is (state in {EXE, PEX, REJ, FAI})


def test_only_the_recipients_outcome_overrides_a_cancellation() -> None:
    for request_type in (T.REQUEST_TYPE_STOP_PAYMENT, T.REQUEST_TYPE_DATA_REQUEST):
        assert step(CAN, EXE, RECIPIENT, request_type) == EXE
        with pytest.raises(IllegalTransitionError) as info:
            step(CAN, FAI, BROKER_ID, request_type)  # the broker's own failure does not reopen it
        assert info.value.reason == "ILLEGAL_TRANSITION"
        with pytest.raises(IllegalTransitionError):
            step(CAN, ACK, RECIPIENT, request_type)  # progress without an outcome changes nothing


@pytest.mark.parametrize("appeal", [T.REQUEST_TYPE_APPEAL, T.REQUEST_TYPE_FRAUD_REPORT])
def test_an_appeal_is_decided_by_the_broker_only(appeal: RequestType) -> None:
    # A fraud report likewise: received by the police adapter, its feedback the broker's record.
    # The police adapter files it (ACKNOWLEDGED) and may refuse it; the decision is the broker's record.
    assert step(ACK, EXE, BROKER_ID, appeal) == EXE
    for outcome in (EXE, PEX):
        with pytest.raises(IllegalTransitionError) as info:
            step(ACK, outcome, RECIPIENT, appeal)
        assert info.value.reason == "WRONG_ACTOR"
    assert step(ACK, REJ, RECIPIENT, appeal) == REJ
    # Decided once.
    with pytest.raises(IllegalTransitionError) as info:
        step(EXE, EXE, BROKER_ID, appeal)
    assert info.value.reason == "ILLEGAL_TRANSITION"


def test_a_lifted_block_is_final() -> None:
    for request_type in LIFTABLE_TYPES:
        assert step(EXE, REL, BROKER_ID, request_type) == REL
        with pytest.raises(IllegalTransitionError):
            step(REL, REL, BROKER_ID, request_type)
        with pytest.raises(IllegalTransitionError) as info:
            step(EXE, REL, RECIPIENT, request_type)
        assert info.value.reason == "WRONG_ACTOR"
