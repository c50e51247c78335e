"""RETURN_FUNDS decisions without NATS: victims in the trail, claims and frozen money from trails
and holds, the checks of an order's payouts, the per-account reservation record and its
settlement, and the payouts sealed to the requester only."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, results_pb2, trail_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.hub import allocation_message
from broker.hub._allocation import Allocation, Claim, allocate
from broker.hub._errors import AlreadyExistsError, HubError
from broker.hub._policy import DEFAULT_CHASE, load_policy
from broker.hub._returns_rules import (
    HoldView,
    Payout,
    check_order,
    claims_on,
    first_hold_at,
    frozen_on,
    release,
    reserve,
    settle,
    share_out,
    stale_entries,
    taken,
)
from broker.hub._trail_rules import new_trail, planned_children, record_outcome, record_submission
from broker.protocol import (
    KeyUse,
    PublicKey,
    Registry,
    SealingError,
    load_directory,
    open_details,
    seal_result_details,
    to_timestamp,
)
from tests.integration.trail_world import POLICE
from tests.unit.test_trail import CASE, NOW, ctx_for, money, onward, outcome_status

ROOT = Path(__file__).resolve().parents[2]
DIRECTORY = ROOT / "agencies" / "directory.toml"
R = trail_pb2
S = common_pb2
OTHER = common_pb2.CaseRef(case_number="GD-SZ-2026-0007", issuing_agency="police-440300")
MULE = "6222020200001234567"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_directory(DIRECTORY)


def claim_request(
    request_id: str, units: int, *, victim: str, at: datetime | None, role: int = R.TRAIL_ROLE_POLICE
) -> trail_pb2.TrailRequest:
    return trail_pb2.TrailRequest(
        request_id=request_id,
        role=role,  # type: ignore[arg-type]
        asked=money(units),
        held=money(units),
        victim_id=victim,
        arrived_at=to_timestamp(at) if at is not None else None,
        outcome_at=to_timestamp(NOW),
        state=S.REQUEST_STATE_EXECUTED,
    )


def trail_of(case: common_pb2.CaseRef, *requests: trail_pb2.TrailRequest) -> trail_pb2.Trail:
    trail = trail_pb2.Trail(case_ref=case)
    trail.nodes.add(node_id="mule", bank="bank-icbc", requests=requests)
    trail.nodes.add(
        node_id="elsewhere", bank="bank-ccb", requests=[claim_request("z", 9, victim="v9", at=NOW)]
    )
    return trail


# -- victims in the trail --------------------------------------------------------------------------


def test_a_hold_naming_its_victim_carries_it_to_the_trail_and_along_the_chase(registry: Registry) -> None:
    ctx = ctx_for(registry)
    trail = new_trail(CASE, DEFAULT_CHASE, NOW)
    deposited = NOW - timedelta(hours=2)
    request = requests_pb2.Request(
        case_ref=CASE,
        stop_payment=requests_pb2.StopPayment(
            account=common_pb2.BankAccountRef(account_number=MULE, holder_name="李某"),
            amount=money(5_000_000),
            victim_account=common_pb2.BankAccountRef(account_number="6217000000001111", bank="bank-ccb"),
            deposited_at=to_timestamp(deposited),
        ),
    )
    root = str(uuid.uuid4())
    assert record_submission(
        trail, request_id=root, request=request, sender=POLICE, recipient="bank-icbc", ctx=ctx
    )
    (entry,) = trail.nodes[0].requests
    assert entry.victim_id == "bank-ccb|6217000000001111"  # the keyed digest, as node ids are
    assert entry.arrived_at.ToDatetime(tzinfo=UTC) == deposited
    transfer = onward("T-1", "6217000010087654321", 2_000_000)
    outcome = outcome_status(root, recipient="bank-icbc", held=3_000_000, transfers=[transfer])
    assert record_outcome(trail, outcome, [transfer], ctx=ctx)
    ((_, child),) = planned_children(trail, root)
    assert child.victim_id == entry.victim_id
    assert child.arrived_at == transfer.at


# -- claims and frozen money ------------------------------------------------------------------------


def test_claims_are_the_requests_on_the_node_of_every_case_conversions_excluded() -> None:
    a = trail_of(
        CASE,
        claim_request("a1", 600, victim="va", at=NOW - timedelta(hours=3)),
        claim_request("a2", 600, victim="va", at=None, role=R.TRAIL_ROLE_CONVERSION),
    )
    b = trail_of(OTHER, claim_request("b1", 300, victim="vb", at=None, role=R.TRAIL_ROLE_CHASE))
    claims = {c.claim_id: c for c in claims_on([a, b], "mule")}
    assert set(claims) == {"a1", "b1"}
    assert (claims["a1"].issuing_agency, claims["a1"].victim_id, claims["a1"].claimed) == (POLICE, "va", 600)
    assert claims["a1"].deposited_at == NOW - timedelta(hours=3)
    assert claims["b1"].deposited_at is None
    assert claims["b1"].case_number == OTHER.case_number


def test_frozen_is_what_still_holding_holds_held_less_partial_releases() -> None:
    holds = [
        HoldView(request_id="h1", held=600, state=S.REQUEST_STATE_EXECUTED, released=100, outcome_at=NOW),
        HoldView(
            request_id="h2",
            held=100,
            state=S.REQUEST_STATE_EXTENDED,
            released=0,
            outcome_at=NOW - timedelta(days=2),
        ),
        HoldView(request_id="h3", held=900, state=S.REQUEST_STATE_RELEASED, released=0, outcome_at=NOW),
        HoldView(request_id="h4", held=0, state=S.REQUEST_STATE_REJECTED, released=0, outcome_at=NOW),
    ]
    assert frozen_on(holds) == 600
    assert first_hold_at(holds) == NOW - timedelta(days=2)


# -- checking an order ------------------------------------------------------------------------------


def _allocation(frozen: int = 700) -> Allocation:
    a = trail_of(CASE, claim_request("a1", 600, victim="va", at=NOW - timedelta(hours=3)))
    b = trail_of(OTHER, claim_request("b1", 300, victim="vb", at=NOW - timedelta(hours=1)))
    c = trail_of(OTHER, claim_request("b2", 500, victim="vc", at=None))
    return allocate(frozen, claims_on([a, b, c], "mule"), notice_ends_at=NOW + timedelta(days=30))


def _check(
    payouts: list[Payout],
    entries: Sequence[trail_pb2.ReturnEntry] = (),
    *,
    case: common_pb2.CaseRef = CASE,
    now: datetime = NOW,
    key: str = "k",
) -> None:
    allocation = _allocation()
    check_order(
        allocation,
        entries,
        case=(case.issuing_agency, case.case_number),
        payouts=payouts,
        currency="CNY",
        now=now,
        order_key=key,
    )


def _payout(victim: str, units: int, index: int = 0, currency: str = "CNY") -> Payout:
    return Payout(index=index, victim_id=victim, amount=units, currency=currency)


@pytest.mark.parametrize(
    ("case", "payouts", "reason"),
    [
        (CASE, [_payout("va", 1, currency="USD")], "CURRENCY_MISMATCH"),
        (CASE, [_payout("va", 1), _payout("va", 1, 1)], "DUPLICATE_PAYEE"),
        (CASE, [_payout("vb", 1)], "NOT_A_VICTIM"),  # another case's victim
        (CASE, [_payout("nobody", 1)], "NOT_A_VICTIM"),
        (CASE, [_payout("va", 401)], "EXCEEDS_SHARE"),  # B's later deposit takes 300 of the 700 first
        (CASE, [_payout("va", 10_000)], "EXCEEDS_SHARE"),  # more than frozen
    ],
)
def test_each_wrong_payout_has_its_reason(
    case: common_pb2.CaseRef, payouts: list[Payout], reason: str
) -> None:
    with pytest.raises(HubError) as refused:
        _check(payouts, case=case)
    assert refused.value.reason == reason


def test_the_shares_are_payable_and_pro_rata_after_the_notice_period() -> None:
    _check([_payout("va", 400)])
    _check([_payout("vb", 300)], case=OTHER)
    # Nothing is left for the untraced claim here: 700 went to the traced ones.
    with pytest.raises(HubError) as refused:
        _check([_payout("vc", 1)], case=OTHER, now=NOW + timedelta(days=31))
    assert refused.value.reason == "EXCEEDS_SHARE"
    allocation = _allocation(frozen=1_000)
    check_order(
        allocation,
        [],
        case=(OTHER.issuing_agency, OTHER.case_number),
        payouts=[_payout("vc", 100)],
        currency="CNY",
        now=NOW + timedelta(days=31),
        order_key="k",
    )


# -- the reservation record --------------------------------------------------------------------------


def _reserve(
    record: trail_pb2.AccountReturns, request_id: str, key: str, units: int, content: str = "c"
) -> bool:
    return reserve(
        record,
        request_id=request_id,
        order_key=key,
        content=content,
        case=(POLICE, CASE.case_number),
        payouts=[_payout("va", units)],
        now=NOW,
    )


def test_a_second_order_is_checked_against_the_first_ones_reservation() -> None:
    record = trail_pb2.AccountReturns(node_id="mule")
    _check([_payout("va", 300)], list(record.entries), key="first")
    assert _reserve(record, "r1", "first", 300)
    # Serialized by the record's compare-and-set: the second order sees the first's 300.
    with pytest.raises(HubError) as refused:
        _check([_payout("va", 101)], list(record.entries), key="second")
    assert refused.value.reason == "EXCEEDS_SHARE"
    _check([_payout("va", 100)], list(record.entries), key="second")
    # A retry of the first order is not counted against itself, and reserves nothing twice.
    _check([_payout("va", 300)], list(record.entries), key="first")
    assert not _reserve(record, "r-retry", "first", 300)
    assert [e.request_id for e in record.entries] == ["r1"]
    with pytest.raises(AlreadyExistsError):
        _reserve(record, "r-other", "first", 300, content="another body")


def _ended(request_id: str, state: int, *returns: tuple[int, int]) -> lifecycle_pb2.RequestStatus:
    return lifecycle_pb2.RequestStatus(
        id=request_id,
        type=S.REQUEST_TYPE_RETURN_FUNDS,
        state=state,  # type: ignore[arg-type]
        result=results_pb2.Result(
            outcome=state,  # type: ignore[arg-type]
            returns=[results_pb2.ReturnedPayout(payout_index=i, amount=money(units)) for i, units in returns],
        ),
    )


def test_an_outcome_settles_the_reservation_once() -> None:
    record = trail_pb2.AccountReturns(node_id="mule")
    _reserve(record, "paid", "k1", 300)
    _reserve(record, "refused", "k2", 100)
    assert stale_entries(record) == ["paid", "refused"]
    executed = _ended("paid", S.REQUEST_STATE_PARTIALLY_EXECUTED, (0, 250))
    assert settle(record, executed)
    assert not settle(record, executed)  # redelivered: nothing left to do
    assert settle(record, _ended("refused", S.REQUEST_STATE_REJECTED))
    states = {e.request_id: (e.state, e.returned.minor_units) for e in record.entries}
    assert states == {"paid": (R.RETURN_STATE_RETURNED, 250), "refused": (R.RETURN_STATE_RELEASED, 0)}
    assert stale_entries(record) == []
    # Only what was paid counts against the share: 400 - 250 may still be ordered.
    _check([_payout("va", 150)], list(record.entries), key="k3")
    # A cancelled order the bank executed after all is still counted as returned.
    _reserve(record, "late", "k4", 100)
    assert settle(record, _ended("late", S.REQUEST_STATE_CANCELLED))
    assert settle(record, _ended("late", S.REQUEST_STATE_EXECUTED, (0, 100)))
    assert not release(record, "late")


def _claims() -> list[Claim]:
    a = trail_of(CASE, claim_request("a1", 600, victim="va", at=NOW - timedelta(hours=3)))
    b = trail_of(OTHER, claim_request("b1", 300, victim="vb", at=NOW - timedelta(hours=1)))
    c = trail_of(OTHER, claim_request("b2", 500, victim="vc", at=None))
    return claims_on([a, b, c], "mule")


def test_the_wire_form_spreads_a_victims_returns_over_its_claims() -> None:
    record = trail_pb2.AccountReturns(node_id="mule")
    _reserve(record, "paid", "k1", 300)
    settle(record, _ended("paid", S.REQUEST_STATE_EXECUTED, (0, 300)))
    _reserve(record, "open", "k2", 50)
    shared = share_out(700, _claims(), record.entries, notice_ends_at=NOW + timedelta(days=30))
    # Within the shares, the record changes no share.
    assert shared.allocation == _allocation()
    assert (dict(shared.returned), dict(shared.reserved)) == ({"a1": 300}, {"a1": 50})
    message = allocation_message(
        shared.allocation,
        node_id="mule",
        bank="bank-icbc",
        currency="CNY",
        returned=shared.returned,
        reserved=shared.reserved,
        computed_at=NOW,
    )
    by_claim = {c.claim_id: c for c in message.claims}
    assert [c.claim_id for c in message.claims] == ["b1", "a1", "b2"]  # latest deposit first
    assert (by_claim["a1"].share.minor_units, by_claim["a1"].returned.minor_units) == (400, 300)
    assert by_claim["a1"].reserved.minor_units == 50
    assert (by_claim["b1"].returned.minor_units, by_claim["b1"].reserved.minor_units) == (0, 0)
    assert by_claim["b2"].rule == R.ALLOCATION_RULE_PRO_RATA
    assert by_claim["b2"].HasField("payable_after")
    assert message.frozen.minor_units == 700


def test_money_returned_stays_with_its_claim_and_a_later_claim_gets_only_the_rest() -> None:
    """Victim A's 600 went back; then case B finds the account with a LATER deposit of 500. By
    deposit order alone B would come first (500 of the 1,000) and A get 500 of the 600 already
    paid: 1,100 ordered from 1,000. What was paid stays A's; B is shared the 400 left."""
    a = trail_of(CASE, claim_request("a1", 600, victim="va", at=NOW - timedelta(hours=3)))
    b = trail_of(OTHER, claim_request("b1", 500, victim="vb", at=NOW - timedelta(hours=1)))
    claims = claims_on([a, b], "mule")
    record = trail_pb2.AccountReturns(node_id="mule")
    _reserve(record, "paid", "k1", 600)
    settle(record, _ended("paid", S.REQUEST_STATE_EXECUTED, (0, 600)))
    notice = NOW + timedelta(days=30)
    shared = share_out(1_000, claims, record.entries, notice_ends_at=notice)
    assert {s.claim.claim_id: s.amount for s in shared.allocation.shares} == {"a1": 600, "b1": 400}
    assert dict(shared.returned) == {"a1": 600}

    def order(units: int, entries: Sequence[trail_pb2.ReturnEntry], key: str = "kb") -> None:
        check_order(
            share_out(1_000, claims, entries, notice_ends_at=notice).allocation,
            entries,
            case=(OTHER.issuing_agency, OTHER.case_number),
            payouts=[_payout("vb", units)],
            currency="CNY",
            now=NOW,
            order_key=key,
        )

    with pytest.raises(HubError) as refused:
        order(401, record.entries)
    assert refused.value.reason == "EXCEEDS_SHARE"
    order(400, record.entries)
    # A reservation counts as much as a return: while A's 600 is only reserved, B gets 400 too.
    reserved_only = trail_pb2.AccountReturns(node_id="mule")
    _reserve(reserved_only, "open", "k1", 600)
    with pytest.raises(HubError):
        order(401, reserved_only.entries)
    # Never more ordered than frozen, whatever was paid: A's 600 and B's 400 are the 1,000.
    reserve(
        record,
        request_id="b-open",
        order_key="kb",
        content="c",
        case=(OTHER.issuing_agency, OTHER.case_number),
        payouts=[_payout("vb", 400)],
        now=NOW,
    )
    with pytest.raises(HubError):
        order(1, record.entries, key="kb2")
    final = share_out(1_000, claims, record.entries, notice_ends_at=notice)
    assert sum(s.amount for s in final.allocation.shares) == 1_000
    # A hold released after the return shrinks what is frozen below what left: nothing is refused
    # as inconsistent, and nothing more is payable.
    shrunk = share_out(300, claims, record.entries, notice_ends_at=notice)
    assert {s.claim.claim_id: s.amount for s in shrunk.allocation.shares} == {"a1": 600, "b1": 400}
    assert shrunk.allocation.unallocated == 0


Victim = tuple[str, str, str]  # police, case, victim digest
_victims = st.sampled_from([("p1", "C1", "va"), ("p1", "C1", "vb"), ("p2", "C2", "va"), ("p2", "C2", "vc")])
_claim_specs = st.lists(
    st.tuples(_victims, st.integers(1, 500), st.one_of(st.none(), st.integers(0, 4))), min_size=1, max_size=7
)


def _passes(
    allocation: Allocation, entries: Sequence[trail_pb2.ReturnEntry], who: Victim, units: int, at: datetime
) -> bool:
    try:
        check_order(
            allocation,
            entries,
            case=(who[0], who[1]),
            payouts=[_payout(who[2], units)],
            currency="CNY",
            now=at,
            order_key=f"k{len(entries)}",
        )
    except HubError:
        return False
    return True


@given(
    specs=_claim_specs,
    frozen=st.integers(0, 2_000),
    early=st.integers(0, 7),
    paid=st.lists(st.integers(0, 4), min_size=14, max_size=14),
)
@settings(max_examples=80, deadline=None)
def test_whatever_is_paid_before_later_claims_arrive_no_more_than_frozen_is_ever_paid(
    specs: list[tuple[Victim, int, int | None]], frozen: int, early: int, paid: list[int]
) -> None:
    """Claims arrive in two waves (a second case, later deposits); after each, every victim is paid
    part or all of what the check lets through. What the check lets through is exactly what the
    victim's shares leave, and the total paid never exceeds what is frozen."""
    notice = NOW + timedelta(days=30)
    after = notice + timedelta(days=1)
    claims = [
        Claim(
            claim_id=f"c{i}",
            issuing_agency=agency,
            case_number=case,
            victim_id=victim,
            claimed=units,
            deposited_at=None if minute is None else NOW + timedelta(minutes=minute),
        )
        for i, ((agency, case, victim), units, minute) in enumerate(specs)
    ]
    entries: list[trail_pb2.ReturnEntry] = []
    fractions = iter(paid)
    for wave in (claims[:early], claims):
        for who in sorted({(c.issuing_agency, c.case_number, c.victim_id) for c in wave}):
            allocation = share_out(frozen, wave, entries, notice_ends_at=notice).allocation
            due = sum(
                s.amount
                for s in allocation.shares
                if (s.claim.issuing_agency, s.claim.case_number, s.claim.victim_id) == who
            )
            used = sum(taken(e) for e in entries if (e.issuing_agency, e.case_number, e.victim_id) == who)
            left = max(0, due - used)
            assert not _passes(allocation, entries, who, left + 1, after)
            pay = left * next(fractions) // 4
            if pay:
                assert _passes(allocation, entries, who, pay, after)
                entries.append(
                    trail_pb2.ReturnEntry(
                        request_id=f"r{len(entries)}",
                        order_key=f"k{len(entries)}",
                        issuing_agency=who[0],
                        case_number=who[1],
                        victim_id=who[2],
                        amount=money(pay),
                        returned=money(pay),
                        state=R.RETURN_STATE_RETURNED,
                    )
                )
            assert sum(taken(e) for e in entries) <= frozen


# -- the payouts sealed to the requester only ---------------------------------------------------------


def test_payouts_are_redacted_and_sealed_to_the_requester_only() -> None:
    requester = x25519.X25519PrivateKey.generate()
    broker = x25519.X25519PrivateKey.generate()
    victim = common_pb2.BankAccountRef(account_number="6217000000001111", holder_name="张某", bank="bank-ccb")
    result = results_pb2.Result(
        outcome=S.REQUEST_STATE_EXECUTED,
        amount_returned=money(400),
        returns=[
            results_pb2.ReturnedPayout(
                payout_index=0, amount=money(400), transfer_id="RT1", victim_account=victim
            )
        ],
    )
    binding = {"request_id": str(uuid.uuid4()), "sender": "bank-icbc", "recipient": POLICE}
    sealed = seal_result_details(
        result,
        requester_key=PublicKey.from_raw(requester.public_key().public_bytes_raw(), use=KeyUse.ENC),
        broker_key=PublicKey.from_raw(broker.public_key().public_bytes_raw(), use=KeyUse.ENC),
        **binding,
    )
    assert not sealed.returns[0].HasField("victim_account")
    assert not sealed.HasField("broker_details")  # the broker chases transfers, not victims
    assert b"6217000000001111" not in sealed.SerializeToString()
    details = open_details(
        sealed,
        sealed.sealed_details,
        requester,
        request_id=binding["request_id"],
        sender="bank-icbc",
        recipient=POLICE,
    )
    assert details.returns[0].victim_account == victim
    tampered = results_pb2.Result()
    tampered.CopyFrom(sealed)
    tampered.returns[0].amount.minor_units = 1
    with pytest.raises(SealingError):
        open_details(
            tampered,
            tampered.sealed_details,
            requester,
            request_id=binding["request_id"],
            sender="bank-icbc",
            recipient=POLICE,
        )


# -- the policy ----------------------------------------------------------------------------------------


def test_the_notice_period_is_policy_data(tmp_path: Path) -> None:
    sample = load_policy(ROOT / "agencies" / "policy.toml")
    assert sample.returns.notice_period == timedelta(days=30)
    text = (ROOT / "agencies" / "policy.toml").read_text(encoding="utf-8")
    path = tmp_path / "policy.toml"
    path.write_text(text.replace('notice_period = "30d"', 'notice_period = "7d"'), encoding="utf-8")
    assert load_policy(path).returns.notice_period == timedelta(days=7)
    path.write_text(text.replace('notice_period = "30d"', 'notice_period = "thirty days"'), encoding="utf-8")
    with pytest.raises(HubError, match=r"return\.notice_period"):
        load_policy(path)
    path.write_text(text.split("\n[return]\n")[0], encoding="utf-8")
    assert load_policy(path).returns.notice_period == timedelta(days=30)
