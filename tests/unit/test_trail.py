"""The money trail's decisions, without NATS: traced amounts, cycles, merges, bounds, idempotency.

Besides hand-made outcomes, a simulator runs the decisions against real reference bank cores
(SQLite in memory) on generated money graphs: what the broker would do, minus the bus.
"""

from __future__ import annotations

import argparse
import itertools
import uuid
from collections import Counter, deque
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import (
    agency_pb2,
    bank_pb2,
    common_pb2,
    envelope_pb2,
    lifecycle_pb2,
    requests_pb2,
    results_pb2,
    trail_pb2,
)

from agencies.bank import BankConfig, BankCore
from broker.cli._trail import add_parser as add_trail_parser
from broker.cli._trail import render_trail
from broker.cli._trail import run as run_trail
from broker.client import open_account
from broker.hub import PolicyError
from broker.hub._policy import DEFAULT_CHASE, ChasePolicy, load_policy
from broker.hub._trail import bank_of, child_request
from broker.hub._trail_accounts import BrokerAccountBook
from broker.hub._trail_rules import (
    ChaseContext,
    UnboundChildError,
    bounds_of,
    child_key,
    narrow_bounds,
    new_trail,
    planned_children,
    reconsider,
    reconsiderable_parents,
    record_outcome,
    record_submission,
    seeded_status,
    settled,
    trail_seed,
)
from broker.protocol import (
    BROKER_ID,
    ManualClock,
    Registry,
    SystemClock,
    ensure_agency_keys,
    generate_signing_key,
    load_agency_encryption_key,
    load_directory,
)
from tests.integration.trail_world import (
    BANKS,
    POLICE,
    MoneyGraph,
    chain_graph,
    check_trail,
    fan_graph,
    random_graph,
    root_request,
    seed_graph,
)

ROOT = Path(__file__).resolve().parents[2]
DIRECTORY = ROOT / "agencies" / "directory.toml"
SAMPLE_POLICY = ROOT / "agencies" / "policy.toml"
L = trail_pb2
S = common_pb2
CASE = common_pb2.CaseRef(
    case_number="SH-PD-2026-0042",
    issuing_agency=POLICE,
    legal_instrument_id="NOTICE-42",
    legal_instrument_type=S.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
)
NOW = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_directory(DIRECTORY)


class Book:
    """Readable node ids, and a record of each account for the checks; seals nothing."""

    def __init__(self) -> None:
        self.accounts: dict[str, common_pb2.BankAccountRef] = {}

    def node_id(self, bank: str, account_number: str) -> str:
        node_id = f"{bank}|{account_number}"
        self.accounts.setdefault(node_id, common_pb2.BankAccountRef(account_number=account_number, bank=bank))
        return node_id

    def seal(
        self, case_ref: common_pb2.CaseRef, node_id: str, account: common_pb2.BankAccountRef
    ) -> results_pb2.EncryptedPayload | None:
        return None


def ctx_for(registry: Registry, book: Book | None = None, now: datetime = NOW) -> ChaseContext:
    return ChaseContext(book=book or Book(), bank_of=lambda t: bank_of(registry, t), now=now)


def stamp(when: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(when)
    return out


def money(units: int) -> common_pb2.Money:
    return common_pb2.Money(currency="CNY", minor_units=units)


def onward(
    transfer_id: str,
    account: str,
    units: int,
    *,
    bank: str = "bank-ccb",
    code: str = "",
    name: str = "王某某",
) -> results_pb2.OnwardTransfer:
    return results_pb2.OnwardTransfer(
        to_account=account,
        to_bank=bank,
        amount=money(units),
        at=stamp(NOW - timedelta(minutes=5)),
        transfer_id=transfer_id,
        to_bank_code=code,
        to_holder_name=name,
    )


def stop(account: str, units: int, *, bank: str = "", hop: int = 0, parent: str = "") -> requests_pb2.Request:
    return requests_pb2.Request(
        case_ref=CASE,
        priority=S.PRIORITY_GREEN,
        parent_id=parent,
        hop=hop,
        stop_payment=requests_pb2.StopPayment(
            account=common_pb2.BankAccountRef(account_number=account, holder_name="李某", bank=bank),
            amount=money(units),
        ),
    )


def outcome_status(
    request_id: str,
    *,
    recipient: str,
    held: int,
    transfers: list[results_pb2.OnwardTransfer] = (),  # type: ignore[assignment]
    state: common_pb2.RequestState.ValueType = S.REQUEST_STATE_PARTIALLY_EXECUTED,
    reason: results_pb2.ReasonCode.ValueType = results_pb2.REASON_CODE_INSUFFICIENT_FUNDS,
    sender: str = POLICE,
    hop: int = 0,
    parent: str = "",
) -> lifecycle_pb2.RequestStatus:
    event = lifecycle_pb2.LifecycleEvent(
        event_id=str(uuid.uuid4()), request_id=request_id, state=state, reason=reason
    )
    result = results_pb2.Result(
        outcome=state, reason=reason, amount_held=money(held), onward_transfers=transfers
    )
    return lifecycle_pb2.RequestStatus(
        id=request_id,
        type=S.REQUEST_TYPE_STOP_PAYMENT,
        sender=sender,
        recipient=recipient,
        case_ref=CASE,
        hop=hop,
        parent_id=parent,
        state=state,
        reason=reason,
        result=result,
        events=[
            lifecycle_pb2.RecordedEvent(
                event=envelope_pb2.SignedMessage(payload=event.SerializeToString()),
                recorded_at=stamp(NOW),
                seq=2,
            )
        ],
    )


def started(
    registry: Registry, units: int = 5_000_000, *, policy: ChasePolicy = DEFAULT_CHASE
) -> tuple[trail_pb2.Trail, ChaseContext, str]:
    trail = new_trail(CASE, policy, NOW)
    ctx = ctx_for(registry)
    root = str(uuid.uuid4())
    assert record_submission(
        trail,
        request_id=root,
        request=stop("6222020200001234567", units),
        sender=POLICE,
        recipient="bank-icbc",
        ctx=ctx,
    )
    return trail, ctx, root


def chases(trail: trail_pb2.Trail) -> list[trail_pb2.TrailRequest]:
    return [r for n in trail.nodes for r in n.requests if r.role == L.TRAIL_ROLE_CHASE]


def bind_all(trail: trail_pb2.Trail, parent: str, ctx: ChaseContext) -> dict[str, str]:
    """Play intake for the broker's planned stop-payments of ``parent``: transfer id -> request id."""
    ids: dict[str, str] = {}
    for _, child in planned_children(trail, parent):
        request_id = str(uuid.uuid4())
        request = stop("6217000010087654321", child.asked.minor_units, hop=child.hop, parent=parent)
        request.stop_payment.fraud_transfer_id = child.transfer_id
        record_submission(
            trail, request_id=request_id, request=request, sender=BROKER_ID, recipient="x", ctx=ctx
        )
        ids[child.transfer_id] = request_id
    return ids


# -- decisions on hand-made outcomes ------------------------------------------------------------------


def test_a_police_stop_payment_is_the_root_at_hop_zero(registry: Registry) -> None:
    trail, _ctx, root = started(registry)
    (node,) = trail.nodes
    assert node.node_id == "bank-icbc|6222020200001234567"
    assert node.bank == "bank-icbc"
    assert node.depth == 0
    (request,) = node.requests
    assert (request.request_id, request.role, request.hop) == (root, L.TRAIL_ROLE_POLICE, 0)
    assert node.traced.minor_units == 5_000_000
    assert node.held.minor_units == 0
    assert trail.chasing
    assert trail.bounds.max_depth == 8
    assert not settled(trail)


def test_traced_amount_is_what_the_parent_did_not_find_capped_by_the_transfer(registry: Registry) -> None:
    trail, ctx, root = started(registry, 5_000_000)
    status = outcome_status(
        root,
        recipient="bank-icbc",
        held=1_500_000,
        transfers=[
            onward("T1", "6228480018812345670", 1_500_000, bank="bank-abc"),
            onward("T2", "6217000010087654321", 4_000_000),
        ],
    )
    assert record_outcome(trail, status, list(status.result.onward_transfers), ctx=ctx)
    asked = {r.transfer_id: r.asked.minor_units for r in chases(trail)}
    # 3,500,000 left the account: T1 can have carried all of its 1,500,000, T2 at most 3,500,000.
    assert asked == {"T1": 1_500_000, "T2": 3_500_000}
    assert all(r.hop == 1 and r.parent_id == root and not r.request_id for r in chases(trail))
    assert {n.depth for n in trail.nodes[1:]} == {1}
    assert trail.nodes[0].held.minor_units == 1_500_000


def test_an_outcome_recorded_twice_decides_once(registry: Registry) -> None:
    trail, ctx, root = started(registry)
    status = outcome_status(
        root,
        recipient="bank-icbc",
        held=0,
        transfers=[onward("T1", "6217000010087654321", 900_000)],
        state=S.REQUEST_STATE_REJECTED,
    )
    assert record_outcome(trail, status, list(status.result.onward_transfers), ctx=ctx)
    before = trail.SerializeToString()
    assert not record_outcome(trail, status, list(status.result.onward_transfers), ctx=ctx)
    assert trail.SerializeToString() == before
    assert len(chases(trail)) == 1


def test_rejected_for_another_reason_chases_nothing(registry: Registry) -> None:
    trail, ctx, root = started(registry)
    status = outcome_status(
        root,
        recipient="bank-icbc",
        held=0,
        transfers=[onward("T1", "6217000010087654321", 900_000)],
        state=S.REQUEST_STATE_REJECTED,
        reason=results_pb2.REASON_CODE_MISMATCH,
    )
    assert record_outcome(trail, status, list(status.result.onward_transfers), ctx=ctx)
    assert not chases(trail)
    assert not trail.leads
    assert trail.nodes[0].requests[0].reason == results_pb2.REASON_CODE_MISMATCH
    assert settled(trail)


def test_outside_directory_incomplete_below_minimum_are_leads(registry: Registry) -> None:
    trail, ctx, root = started(registry)
    status = outcome_status(
        root,
        recipient="bank-icbc",
        held=0,
        state=S.REQUEST_STATE_REJECTED,
        transfers=[
            onward("OUT", "6230580000123456789", 1_000_000, bank="", code="307584007998"),
            onward("UNKNOWN", "6230580000123456788", 1_000_000, bank="bank-nowhere"),
            onward("NONAME", "6217000010087654321", 1_000_000, name=""),
            onward("SMALL", "6217000010087654322", 99_999),
            onward("ROUTED", "6228480018812345671", 1_000_000, bank=""),
        ],
    )
    record_outcome(trail, status, list(status.result.onward_transfers), ctx=ctx)
    reasons = {lead.transfer_id: lead.reason for lead in trail.leads}
    assert reasons == {
        "OUT": L.LEAD_REASON_OUTSIDE_DIRECTORY,
        "UNKNOWN": L.LEAD_REASON_OUTSIDE_DIRECTORY,
        "NONAME": L.LEAD_REASON_INCOMPLETE,
        "SMALL": L.LEAD_REASON_BELOW_MINIMUM,
    }
    # No bank named, no clearing code: the account's prefix routes it to bank-abc.
    (routed,) = chases(trail)
    assert routed.transfer_id == "ROUTED"
    assert trail.nodes[-1].bank == "bank-abc"
    out = next(lead for lead in trail.leads if lead.transfer_id == "OUT")
    assert out.to_bank_code == "307584007998"
    assert out.amount.minor_units == 1_000_000
    assert out.hop == 1


def test_cycle_back_to_an_account_on_the_path_is_a_lead(registry: Registry) -> None:
    trail, ctx, root = started(registry, 5_000_000)
    first = outcome_status(
        root,
        recipient="bank-icbc",
        held=0,
        state=S.REQUEST_STATE_REJECTED,
        transfers=[onward("AB", "6217000010087654321", 3_000_000)],
    )
    record_outcome(trail, first, list(first.result.onward_transfers), ctx=ctx)
    child = bind_all(trail, root, ctx)["AB"]
    back = outcome_status(
        child,
        recipient="bank-ccb",
        held=500_000,
        sender=BROKER_ID,
        hop=1,
        parent=root,
        transfers=[onward("BA", "6222020200001234567", 2_000_000, bank="bank-icbc")],
    )
    record_outcome(trail, back, list(back.result.onward_transfers), ctx=ctx)
    (lead,) = trail.leads
    assert lead.reason == L.LEAD_REASON_CYCLE
    assert lead.node_id == trail.nodes[0].node_id
    assert lead.amount.minor_units == 2_000_000
    assert lead.hop == 2
    assert len(trail.nodes) == 2


def test_a_merge_is_one_node_whose_traced_amount_adds_up(registry: Registry) -> None:
    trail, ctx, root = started(registry, 5_000_000)
    first = outcome_status(
        root,
        recipient="bank-icbc",
        held=0,
        state=S.REQUEST_STATE_REJECTED,
        transfers=[
            onward("RA", "6217000010087654321", 2_000_000),
            onward("RB", "6228480018812345670", 3_000_000, bank="bank-abc"),
        ],
    )
    record_outcome(trail, first, list(first.result.onward_transfers), ctx=ctx)
    ids = bind_all(trail, root, ctx)
    merged = "6225880000000001"
    for transfer_id, (bank, sent) in {"RA": ("bank-ccb", 1_500_000), "RB": ("bank-abc", 2_500_000)}.items():
        outcome = outcome_status(
            ids[transfer_id],
            recipient=bank,
            held=0,
            sender=BROKER_ID,
            hop=1,
            parent=root,
            state=S.REQUEST_STATE_REJECTED,
            transfers=[onward(f"{transfer_id}-C", merged, sent, bank="bank-cmb")],
        )
        record_outcome(trail, outcome, list(outcome.result.onward_transfers), ctx=ctx)
    node = next(n for n in trail.nodes if n.node_id == f"bank-cmb|{merged}")
    assert [r.asked.minor_units for r in node.requests] == [1_500_000, 2_500_000]
    assert node.traced.minor_units == 4_000_000
    assert node.depth == 2
    assert len({(r.parent_id, r.transfer_id) for r in node.requests}) == 2
    assert len(trail.nodes) == 4


def test_a_transfer_is_traced_at_most_once_in_full_over_all_paths(registry: Registry) -> None:
    """A top-up at a merged account lists the same onward transfer again; it adds only what the
    transfer can still carry."""
    trail, ctx, root = started(registry, 5_000_000)
    first = outcome_status(
        root,
        recipient="bank-icbc",
        held=0,
        state=S.REQUEST_STATE_REJECTED,
        transfers=[onward("RM", "6217000010087654321", 1_000_000)],
    )
    record_outcome(trail, first, list(first.result.onward_transfers), ctx=ctx)
    m = bind_all(trail, root, ctx)["RM"]
    second = str(uuid.uuid4())  # the police also stop the merged account by hand (another path)
    record_submission(
        trail,
        request_id=second,
        request=stop("6217000010087654321", 800_000, bank="bank-ccb"),
        sender=POLICE,
        recipient="bank-ccb",
        ctx=ctx,
    )
    out = onward("MX", "6228480018812345670", 1_500_000, bank="bank-abc")
    for request_id, sender, hop in ((m, BROKER_ID, 1), (second, POLICE, 0)):
        outcome = outcome_status(
            request_id,
            recipient="bank-ccb",
            held=0,
            sender=sender,
            hop=hop,
            state=S.REQUEST_STATE_REJECTED,
            transfers=[out],
        )
        record_outcome(trail, outcome, [out], ctx=ctx)
    through = [r.asked.minor_units for r in chases(trail) if r.transfer_id == "MX"]
    assert through == [1_000_000, 500_000]
    assert sum(through) == out.amount.minor_units


def test_depth_account_and_request_budgets(registry: Registry) -> None:
    policy = ChasePolicy(max_depth=1, max_accounts=3, max_requests=2)
    trail, ctx, root = started(registry, policy=policy)
    transfers = [onward(f"T{i}", f"621700001008765432{i}", 1_000_000) for i in range(4)]
    first = outcome_status(
        root, recipient="bank-icbc", held=0, state=S.REQUEST_STATE_REJECTED, transfers=transfers
    )
    record_outcome(trail, first, transfers, ctx=ctx)
    assert [r.transfer_id for r in chases(trail)] == ["T0", "T1"]
    assert [(lead.transfer_id, lead.reason) for lead in trail.leads] == [
        ("T2", L.LEAD_REASON_ACCOUNT_LIMIT),
        ("T3", L.LEAD_REASON_ACCOUNT_LIMIT),
    ]
    ids = bind_all(trail, root, ctx)
    deeper = outcome_status(
        ids["T0"],
        recipient="bank-ccb",
        held=0,
        sender=BROKER_ID,
        hop=1,
        parent=root,
        state=S.REQUEST_STATE_REJECTED,
        transfers=[onward("D", "6228480018812345670", 500_000, bank="bank-abc")],
    )
    record_outcome(trail, deeper, list(deeper.result.onward_transfers), ctx=ctx)
    assert trail.leads[-1].reason == L.LEAD_REASON_DEPTH
    assert trail.leads[-1].hop == 2

    requests = ChasePolicy(max_requests=1)
    trail, ctx, root = started(registry, policy=requests)
    record_outcome(trail, first, transfers[:2], ctx=ctx)
    assert len(chases(trail)) == 1
    assert trail.leads[0].reason == L.LEAD_REASON_REQUEST_LIMIT


def test_chasing_off_leaves_leads_that_switching_on_chases(registry: Registry) -> None:
    trail, ctx, root = started(registry)
    trail.chasing = False
    transfers = [
        onward("T1", "6217000010087654321", 1_000_000),
        onward("OUT", "6230580000123456789", 1_000_000, bank="", code="1"),
    ]
    status = outcome_status(
        root, recipient="bank-icbc", held=0, state=S.REQUEST_STATE_REJECTED, transfers=transfers
    )
    record_outcome(trail, status, transfers, ctx=ctx)
    assert not chases(trail)
    assert reconsiderable_parents(trail) == [root]
    trail.chasing = True
    assert reconsider(trail, root, transfers, ctx=ctx)
    assert [r.transfer_id for r in chases(trail)] == ["T1"]
    assert [lead.reason for lead in trail.leads] == [L.LEAD_REASON_OUTSIDE_DIRECTORY]
    assert not reconsider(trail, root, transfers, ctx=ctx)


def test_an_outcome_before_its_child_is_bound_waits(registry: Registry) -> None:
    trail, ctx, _root = started(registry)
    status = outcome_status(str(uuid.uuid4()), recipient="bank-ccb", held=0, sender=BROKER_ID, hop=1)
    with pytest.raises(UnboundChildError):
        record_outcome(trail, status, [], ctx=ctx)


def test_a_child_outcome_binds_the_child_from_its_seed_in_the_same_change(registry: Registry) -> None:
    trail, ctx, root = started(registry)
    transfers = [onward("T1", "6217000010087654321", 1_000_000)]
    record_outcome(
        trail, outcome_status(root, recipient="bank-icbc", held=0, transfers=transfers), transfers, ctx=ctx
    )
    ((node, planned),) = planned_children(trail, root)
    request = child_request(
        outcome_status(root, recipient="bank-icbc", held=0), node.bank, planned, transfers[0]
    )
    child_id = str(uuid.uuid4())
    status = outcome_status(
        child_id,
        recipient="bank-ccb",
        held=1_000_000,
        sender=BROKER_ID,
        hop=1,
        parent=root,
        state=S.REQUEST_STATE_EXECUTED,
        reason=results_pb2.REASON_CODE_UNSPECIFIED,
    )
    status.trail_seed.CopyFrom(
        seeded_status(child_id, request, sender=BROKER_ID, recipient="bank-ccb", ctx=ctx).trail_seed
    )
    assert not status.trail_seed.node_id, "the child's node exists: its seed only binds it"
    assert record_outcome(trail, status, [], ctx=ctx)
    (child,) = chases(trail)
    assert (child.request_id, child.parent_id, child.state) == (child_id, root, S.REQUEST_STATE_EXECUTED)
    assert child.held.minor_units == 1_000_000
    assert not planned_children(trail, root)
    assert not record_outcome(trail, status, [], ctx=ctx), "decided once"


def test_a_seed_holds_no_account_in_clear_and_opens_for_the_case_owner(tmp_path: Path) -> None:
    overlay = ensure_agency_keys(DIRECTORY, tmp_path, clock=SystemClock())
    registry = load_directory(DIRECTORY, key_overlays=[overlay])
    book = BrokerAccountBook(broker_key=generate_signing_key(), registry=registry, clock=SystemClock())
    request = stop("6222020200001234567", 700_000)
    request.stop_payment.fraud_transfer_id = "T-VICTIM"
    seed = trail_seed(request, sender=POLICE, recipient="bank-icbc", book=book)
    assert seed is not None
    wire = seed.SerializeToString()
    assert b"6222020200001234567" not in wire
    assert "李某".encode() not in wire
    assert seed.node_id == book.node_id("bank-icbc", "6222020200001234567")
    assert (seed.bank, seed.amount.minor_units, seed.transfer_id) == ("bank-icbc", 700_000, "T-VICTIM")
    opened = open_account(
        seed.account, load_agency_encryption_key(tmp_path, POLICE), case_ref=CASE, node_id=seed.node_id
    )
    assert (opened.account_number, opened.holder_name, opened.bank) == (
        "6222020200001234567",
        "李某",
        "bank-icbc",
    )
    data = requests_pb2.Request(case_ref=CASE, data_request=requests_pb2.DataRequest())
    assert trail_seed(data, sender=POLICE, recipient="bank-icbc", book=book) is None


def test_a_police_hold_missed_at_intake_is_recorded_from_its_outcome(registry: Registry) -> None:
    trail = new_trail(CASE, DEFAULT_CHASE, NOW)
    ctx = ctx_for(registry)
    transfers = [onward("T1", "6217000010087654321", 1_000_000)]
    status = outcome_status(
        str(uuid.uuid4()), recipient="bank-icbc", held=0, state=S.REQUEST_STATE_REJECTED, transfers=transfers
    )
    assert record_outcome(trail, status, transfers, ctx=ctx)
    assert [r.asked.minor_units for r in chases(trail)] == [1_000_000]  # traced in full: amount unknown


def test_conversion_freeze_moves_the_hold(registry: Registry) -> None:
    trail, ctx, root = started(registry, 1_000_000)
    record_outcome(
        trail,
        outcome_status(
            root,
            recipient="bank-icbc",
            held=1_000_000,
            state=S.REQUEST_STATE_EXECUTED,
            reason=results_pb2.REASON_CODE_UNSPECIFIED,
        ),
        [],
        ctx=ctx,
    )
    freeze_id = str(uuid.uuid4())
    freeze = requests_pb2.Request(
        case_ref=CASE,
        priority=S.PRIORITY_GREEN,
        freeze=requests_pb2.Freeze(
            account=common_pb2.BankAccountRef(account_number="6222020200001234567", holder_name="李某"),
            amount=money(1_000_000),
            converts_request_id=root,
        ),
    )
    assert record_submission(
        trail, request_id=freeze_id, request=freeze, sender=POLICE, recipient="bank-icbc", ctx=ctx
    )
    frozen = outcome_status(
        freeze_id,
        recipient="bank-icbc",
        held=0,
        state=S.REQUEST_STATE_EXECUTED,
        reason=results_pb2.REASON_CODE_UNSPECIFIED,
    )
    frozen.type = S.REQUEST_TYPE_FREEZE
    frozen.target_id = root
    frozen.result.amount_frozen.CopyFrom(money(1_000_000))
    record_outcome(trail, frozen, [], ctx=ctx)
    (node,) = trail.nodes
    assert node.held.minor_units == 1_000_000
    assert node.traced.minor_units == 1_000_000
    assert [r.state for r in node.requests] == [S.REQUEST_STATE_RELEASED, S.REQUEST_STATE_EXECUTED]


def test_child_request_and_key(registry: Registry) -> None:
    parent = outcome_status("0192f2a4-0000-7000-8000-000000000001", recipient="bank-icbc", held=0, hop=2)
    child = trail_pb2.TrailRequest(hop=3, asked=money(700_000), transfer_id="T/9 é")
    transfer = onward("T/9 é", "6217000010087654321", 900_000)
    request = child_request(parent, "bank-ccb", child, transfer)
    assert request.recipient == "bank-ccb"
    assert request.parent_id == parent.id
    assert request.hop == 3
    assert request.priority == S.PRIORITY_GREEN
    assert request.case_ref == CASE
    assert request.stop_payment.amount.minor_units == 700_000
    assert request.stop_payment.fraud_transfer_id == "T/9 é"
    assert request.stop_payment.account.holder_name == "王某某"
    key = child_key(parent.id, transfer.transfer_id)
    assert key == child_key(parent.id, transfer.transfer_id) != child_key(parent.id, "T/9")
    assert len(key) <= 128
    assert all(c.isalnum() or c in "_.:-" for c in key)


def test_narrowing_bounds_stays_within_the_policy() -> None:
    policy = DEFAULT_CHASE
    current = bounds_of(policy)
    narrowed, problems = narrow_bounds(
        current, trail_pb2.ChaseBounds(max_depth=3, min_amounts=[money(500_000)]), policy
    )
    assert not problems
    assert narrowed.max_depth == 3
    assert narrowed.max_accounts == 64
    assert [(m.currency, m.minor_units) for m in narrowed.min_amounts] == [("CNY", 500_000)]
    _, problems = narrow_bounds(
        current,
        trail_pb2.ChaseBounds(max_depth=9, max_accounts=0, max_requests=300, min_amounts=[money(10)]),
        policy,
    )
    assert [p.field for p in problems] == [
        "bounds.max_depth",
        "bounds.max_accounts",
        "bounds.max_requests",
        "bounds.min_amounts[0].minor_units",
    ]


def test_account_digests_are_keyed_and_sealed_accounts_open_for_the_case_owner(tmp_path: Path) -> None:
    overlay = ensure_agency_keys(DIRECTORY, tmp_path, clock=SystemClock())
    registry = load_directory(DIRECTORY, key_overlays=[overlay])
    key = generate_signing_key()
    book = BrokerAccountBook(broker_key=key, registry=registry, clock=SystemClock())
    other = BrokerAccountBook(broker_key=generate_signing_key(), registry=registry, clock=SystemClock())
    node_id = book.node_id("bank-icbc", "6222020200001234567")
    assert node_id == book.node_id("bank-icbc", "6222020200001234567")
    assert node_id != other.node_id("bank-icbc", "6222020200001234567")
    assert node_id != book.node_id("bank-icb", "c6222020200001234567")
    assert "6222020200001234567" not in node_id
    assert len(node_id) == 32
    account = common_pb2.BankAccountRef(
        account_number="6222020200001234567", holder_name="李某", bank="bank-icbc"
    )
    sealed = book.seal(CASE, node_id, account)
    assert sealed is not None
    assert "李某".encode() not in sealed.SerializeToString()
    police_key = load_agency_encryption_key(tmp_path, POLICE)
    assert open_account(sealed, police_key, case_ref=CASE, node_id=node_id) == account
    other_case = common_pb2.CaseRef(case_number="OTHER-0001", issuing_agency=POLICE)
    with pytest.raises(Exception, match="does not open"):
        open_account(sealed, police_key, case_ref=other_case, node_id=node_id)
    with pytest.raises(Exception, match="sealed to key"):
        open_account(
            sealed, load_agency_encryption_key(tmp_path, "police-440305"), case_ref=CASE, node_id=node_id
        )


# -- the [chase] section of the policy -----------------------------------------------------------------

HEADER = '[policy]\nversion = 1\n[[rule]]\nsenders = ["police"]\ntypes = ["freeze"]\nrecipients = ["bank"]\n'


def test_sample_policy_chase_bounds() -> None:
    chase = load_policy(SAMPLE_POLICY).chase
    assert chase == ChasePolicy(
        enabled=True, max_depth=8, min_amounts={"CNY": 100_000}, max_accounts=64, max_requests=256
    )
    assert chase.min_amount("CNY") == 100_000
    assert chase.min_amount("USD") == 0


def test_a_policy_without_chase_uses_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(HEADER)
    assert load_policy(path).chase == DEFAULT_CHASE


def test_chase_section_is_read(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        HEADER + "[chase]\nenabled = false\nmax_depth = 3\nmax_accounts = 10\nmax_requests = 0\n"
        '[chase.min_amount]\nCNY = "50"\nUSD = "0.01"\n'
    )
    chase = load_policy(path).chase
    assert (chase.enabled, chase.max_depth, chase.max_accounts, chase.max_requests) == (False, 3, 10, 0)
    assert dict(chase.min_amounts) == {"CNY": 5_000, "USD": 1}


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        pytest.param("[chase]\nmax_dept = 3\n", "chase.max_dept", "unknown field", id="typo"),
        pytest.param("chase = 3\n", "chase", "expected a table", id="not-a-table"),
        pytest.param("[chase]\nmax_depth = 65\n", "chase.max_depth", "between 0 and 64", id="too-deep"),
        pytest.param("[chase]\nmax_depth = true\n", "chase.max_depth", "an integer", id="bool-depth"),
        pytest.param("[chase]\nmax_accounts = 0\n", "chase.max_accounts", "between 1", id="no-accounts"),
        pytest.param('[chase]\nenabled = "yes"\n', "chase.enabled", "a boolean", id="enabled-string"),
        pytest.param('[chase]\nmin_amount = "1000"\n', "chase.min_amount", "a table", id="amount-no-table"),
        pytest.param(
            "[chase.min_amount]\nCNY = 1000.0\n", "chase.min_amount.CNY", "decimal string", id="float"
        ),
        pytest.param(
            '[chase.min_amount]\nCNY = "1,000"\n', "chase.min_amount.CNY", "at most two", id="comma"
        ),
        pytest.param(
            '[chase.min_amount]\nCNY = "0.001"\n', "chase.min_amount.CNY", "at most two", id="mills"
        ),
        pytest.param(
            '[chase.min_amount]\nCNY = "0"\n', "chase.min_amount.CNY", "greater than zero", id="zero"
        ),
        pytest.param('[chase.min_amount]\nyuan = "1"\n', "chase.min_amount.yuan", "ISO 4217", id="currency"),
    ],
)
def test_bad_chase_section(tmp_path: Path, text: str, field: str, words: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text + HEADER)  # top-level keys before the first table
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.field == field
    assert words in str(info.value)


# -- the decisions against real bank cores, on generated graphs ------------------------------------------


class Simulation:
    """The broker's chase without the bus: intake, the bank's core and outcomes, in order."""

    def __init__(
        self, graph: MoneyGraph, registry: Registry, policy: ChasePolicy, *, at_outcome: bool = False
    ) -> None:
        # True: each hold is recorded at its outcome from its status's seed, as the broker does;
        # False: at intake, as the broker did before (what the seed must reproduce).
        self.at_outcome = at_outcome
        self.seeds: dict[str, lifecycle_pb2.RequestStatus] = {}
        self._ids = itertools.count(1)
        self.clock = ManualClock(NOW)
        self.cores = {bank: BankCore(BankConfig(agency_id=bank), clock=self.clock) for bank in BANKS}
        seed_graph(self.cores, graph, anchor=NOW - timedelta(minutes=1))
        self.graph = graph
        self.book = Book()
        self.ctx = ChaseContext(book=self.book, bank_of=lambda t: bank_of(registry, t), now=NOW)
        self.case = common_pb2.CaseRef()
        self.trail = trail_pb2.Trail()
        self.policy = policy
        self.statuses: dict[str, lifecycle_pb2.RequestStatus] = {}

    def close(self) -> None:
        for core in self.cores.values():
            core.close()

    def execute(
        self, request_id: str, request: requests_pb2.Request, bank: str, sender: str
    ) -> lifecycle_pb2.RequestStatus:
        order = agency_pb2.OrderContext(
            request_id=request_id,
            sender=sender,
            case_ref=request.case_ref,
            parent_id=request.parent_id,
            hop=request.hop,
        )
        result = (
            self.cores[bank]
            .stop_payment(bank_pb2.StopPaymentRequest(context=order, order=request.stop_payment))
            .result
        )
        event = lifecycle_pb2.LifecycleEvent(
            request_id=request_id, state=result.outcome, reason=result.reason
        )
        status = lifecycle_pb2.RequestStatus(
            id=request_id,
            type=S.REQUEST_TYPE_STOP_PAYMENT,
            sender=sender,
            recipient=bank,
            case_ref=request.case_ref,
            hop=request.hop,
            parent_id=request.parent_id,
            state=result.outcome,
            reason=result.reason,
            result=result,
            events=[
                lifecycle_pb2.RecordedEvent(
                    event=envelope_pb2.SignedMessage(payload=event.SerializeToString()),
                    recorded_at=stamp(self.clock.now()),
                )
            ],
        )
        seeded = self.seeds.get(request_id)
        if seeded is not None:
            status.trail_seed.CopyFrom(seeded.trail_seed)
            status.submitted_at.CopyFrom(seeded.submitted_at)
        self.statuses[request_id] = status
        return status

    def submit(self, request: requests_pb2.Request, bank: str, sender: str) -> str:
        """Intake: the request's id; the hold recorded now, or seeded into its status."""
        request_id = str(uuid.UUID(int=next(self._ids)))
        if self.at_outcome:
            self.seeds[request_id] = seeded_status(
                request_id, request, sender=sender, recipient=bank, ctx=self.ctx
            )
        else:
            record_submission(
                self.trail,
                request_id=request_id,
                request=request,
                sender=sender,
                recipient=bank,
                ctx=self.ctx,
            )
        return request_id

    def run(self, case_number: str) -> trail_pb2.Trail:
        root = root_request(self.graph, case_number)
        self.trail = new_trail(root.case_ref, self.policy, NOW)
        root_id = self.submit(root, self.graph.root.bank, POLICE)
        queue = deque([(root_id, root, self.graph.root.bank, POLICE)])
        while queue:
            request_id, request, bank, sender = queue.popleft()
            status = self.execute(request_id, request, bank, sender)
            transfers = list(status.result.onward_transfers)
            record_outcome(self.trail, status, transfers, ctx=self.ctx)
            by_id = {t.transfer_id: t for t in transfers}
            for node, child in planned_children(self.trail, request_id):
                child_request_ = child_request(status, node.bank, child, by_id[child.transfer_id])
                child_id = self.submit(child_request_, node.bank, BROKER_ID)
                queue.append((child_id, child_request_, node.bank, BROKER_ID))
        self.trail.settled = settled(self.trail)
        return self.trail

    def check(self) -> None:
        accounts = {node.node_id: self.book.accounts[node.node_id] for node in self.trail.nodes}
        check_trail(self.trail, graph=self.graph, cores=self.cores, statuses=self.statuses, accounts=accounts)
        # Processing every outcome again changes nothing.
        before = self.trail.SerializeToString()
        for status in self.statuses.values():
            assert not record_outcome(self.trail, status, list(status.result.onward_transfers), ctx=self.ctx)
        assert self.trail.SerializeToString() == before


def test_generated_graphs(registry: Registry) -> None:
    """40 seeded graphs over the four banks and banks outside, some with tight bounds; together
    they must show every shape: splits, merges, cycles, leads of each kind, deep paths."""
    seen: Counter[str] = Counter()
    for seed in range(40):
        graph = random_graph(seed, salt=seed, hops=6 if seed % 4 else 9, max_split=3)
        policy = ChasePolicy(max_depth=8 if seed % 3 else 3, max_accounts=64 if seed % 5 else 5)
        sim = Simulation(graph, registry, policy)
        try:
            trail = sim.run(f"SIM-{seed:04d}")
            sim.check()
        finally:
            sim.close()
        assert trail.nodes[0].node_id == f"{graph.root.bank}|{graph.root.number}"
        seen["accounts"] += len(trail.nodes)
        seen["merges"] += sum(1 for n in trail.nodes if len(n.requests) > 1)
        seen["splits"] += sum(
            1
            for n in trail.nodes
            for r in n.requests
            if sum(1 for c in chases(trail) if c.parent_id == r.request_id) > 1
        )
        seen["deepest"] = max(seen["deepest"], *(n.depth for n in trail.nodes))
        seen.update(L.LeadReason.Name(lead.reason) for lead in trail.leads)
    assert seen["accounts"] > 100, seen
    assert seen["merges"] > 5, seen
    assert seen["splits"] > 10, seen
    assert seen["deepest"] >= 6, seen
    for reason in ("OUTSIDE_DIRECTORY", "CYCLE", "BELOW_MINIMUM", "DEPTH", "ACCOUNT_LIMIT"):
        assert seen[f"LEAD_REASON_{reason}"] > 0, seen


def test_a_hold_recorded_at_its_outcome_from_its_seed_is_recorded_as_at_intake(registry: Registry) -> None:
    """The same graphs, each hold recorded at intake or only at its outcome from its seed: the
    same trail (nodes, requests, bindings, amounts, leads), except when it was last changed."""
    for seed in (1, 5, 12, 33, 49, 51):
        graph = random_graph(seed, salt=seed, hops=6, max_split=3)
        policy = ChasePolicy(max_depth=8 if seed % 3 else 3, max_accounts=64 if seed % 5 else 5)
        trails = []
        for at_outcome in (False, True):
            sim = Simulation(graph, registry, policy, at_outcome=at_outcome)
            try:
                trail = sim.run(f"SIM-SEED-{seed:04d}")
                sim.check()
            finally:
                sim.close()
            trail.ClearField("updated_at")
            trails.append(trail)
        at_intake, at_outcome_ = trails
        assert at_outcome_ == at_intake, seed
        assert all(r.request_id for n in at_outcome_.nodes for r in n.requests), "every child is bound"


def test_a_chain_beyond_the_depth_stops_at_hop_eight(registry: Registry) -> None:
    graph = chain_graph(salt=900, hops=11)
    sim = Simulation(graph, registry, DEFAULT_CHASE)
    try:
        trail = sim.run("SIM-CHAIN")
        sim.check()
        assert sorted(n.depth for n in trail.nodes) == list(range(9))
        assert all(n.held.minor_units == 100_000 for n in trail.nodes)
        (lead,) = trail.leads
        assert lead.reason == L.LEAD_REASON_DEPTH
        assert lead.hop == 9
    finally:
        sim.close()


def test_the_fan_graph_by_hand(registry: Registry) -> None:
    graph = fan_graph(salt=901)
    sim = Simulation(graph, registry, DEFAULT_CHASE)
    try:
        trail = sim.run("SIM-FAN")
        sim.check()
        numbers = {a.number: i for i, a in enumerate(graph.accounts)}
        held = {numbers[sim.book.accounts[n.node_id].account_number]: n.held.minor_units for n in trail.nodes}
        traced = {
            numbers[sim.book.accounts[n.node_id].account_number]: n.traced.minor_units for n in trail.nodes
        }
        # accounts: 0 victim, 1 R, 2 A, 3 B, 4 S, 5 D, 6 C, 7 X (outside), 8 E
        assert held == {1: 1_500_000, 2: 200_000, 3: 100_000, 5: 50_000, 6: 2_300_000, 8: 900_000}
        merged = next(
            n for n in trail.nodes if sim.book.accounts[n.node_id].account_number == graph.accounts[6].number
        )
        assert traced[6] == 2_300_000
        assert [r.asked.minor_units for r in merged.requests] == [
            1_400_000,
            900_000,
        ]
        reasons = sorted((lead.reason, lead.amount.minor_units) for lead in trail.leads)
        assert reasons == [
            (L.LEAD_REASON_OUTSIDE_DIRECTORY, 900_000),
            (L.LEAD_REASON_BELOW_MINIMUM, 50_000),
            (L.LEAD_REASON_CYCLE, 1_000_000),
        ]
    finally:
        sim.close()


def test_trail_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="greenchannel")
    parser.add_argument("--state-dir", type=Path, default=Path(".greenchannel"))
    add_trail_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["trail", "SH-PD-2026-0001", "--as", POLICE])
    assert (args.command, args.case, args.agency, args.owner, args.chasing) == (
        "trail",
        "SH-PD-2026-0001",
        POLICE,
        None,
        None,
    )
    args = parser.parse_args(
        [
            "trail",
            "SH-PD-2026-0001",
            "--as",
            POLICE,
            "--chasing",
            "on",
            "--max-depth",
            "3",
            "--min-amount",
            "2000",
        ]
    )
    assert (args.max_depth, args.min_amount, args.currency) == (3, 200_000, "CNY")
    bounds_without_switch = parser.parse_args(
        ["trail", "SH-PD-2026-0001", "--as", POLICE, "--max-depth", "3"]
    )
    assert run_trail(bounds_without_switch) == 2
    assert "--chasing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["trail", "x", "--as", POLICE])


def test_leads_beyond_the_listed_most_are_counted(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("broker.hub._trail_rules.MAX_LISTED_LEADS", 2)
    trail, ctx, root = started(registry)
    transfers = [
        onward(f"OUT{i}", f"623058000012345678{i}", 100_000 + i, bank="", code="1") for i in range(5)
    ]
    status = outcome_status(
        root, recipient="bank-icbc", held=0, state=S.REQUEST_STATE_REJECTED, transfers=transfers
    )
    record_outcome(trail, status, transfers, ctx=ctx)
    assert [lead.transfer_id for lead in trail.leads] == ["OUT0", "OUT1"]
    assert trail.unlisted_leads == 3
    assert [(m.currency, m.minor_units) for m in trail.unlisted_lead_amounts] == [("CNY", 300_009)]
    lines = render_trail(trail, {})
    assert any("3 more leads the trail does not list: 3,000.09 CNY" in line for line in lines)
