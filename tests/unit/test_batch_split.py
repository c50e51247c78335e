"""Batch NUMBER_BLOCK routing and the split: lines grouped by carrier, refusals, the parent's answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, results_pb2

from broker.hub import UnroutableError
from broker.hub._batch_routing import route_batch
from broker.hub._batch_split import batch_children, batch_split, child_key, parent_result
from broker.hub._routing import resolve_recipient
from broker.protocol import BROKER_ID, Registry, load_directory

DIRECTORY = Path(__file__).resolve().parents[2] / "agencies" / "directory.toml"
CMCC = "+8613912345678"
PORTED = "+8613812345678"  # a CMCC segment, ported to carrier-cucc
CTCC = "+8618912345678"
NOBODY = "+8617012345678"
BLOCKED = results_pb2.BLOCK_ITEM_STATE_BLOCKED
ALREADY = results_pb2.BLOCK_ITEM_STATE_ALREADY_BLOCKED
NOT_FOUND = results_pb2.BLOCK_ITEM_STATE_NOT_FOUND
NOT_OURS = results_pb2.BLOCK_ITEM_STATE_NOT_OURS


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_directory(DIRECTORY)


def batch(*numbers: str, recipient: str = "") -> requests_pb2.Request:
    return requests_pb2.Request(
        recipient=recipient,
        number_block=requests_pb2.NumberBlock(phones=[common_pb2.PhoneRef(e164=n) for n in numbers]),
    )


def test_lines_are_grouped_by_carrier_ported_numbers_first(registry: Registry) -> None:
    route = route_batch(batch(CMCC, CTCC, PORTED, NOBODY, CMCC).number_block, registry)
    assert route.parts == {"carrier-cmcc": (0, 4), "carrier-ctcc": (1,), "carrier-cucc": (2,)}
    assert route.unrouted == (3,)


def test_a_batch_of_one_carrier_goes_to_it(registry: Registry) -> None:
    assert resolve_recipient(batch(CMCC, CMCC), registry).id == "carrier-cmcc"
    assert resolve_recipient(batch(CMCC, NOBODY, recipient="carrier-cmcc"), registry).id == "carrier-cmcc"


@pytest.mark.parametrize(
    ("request_", "reason", "subject"),
    [
        pytest.param(batch(NOBODY), "NO_ROUTE", "request.number_block.phones", id="nobody-serves-it"),
        pytest.param(
            batch(CTCC, CTCC, recipient="carrier-cmcc"),
            "NOT_OURS",
            "request.number_block.phones",
            id="not-ours",
        ),
        pytest.param(
            batch(CMCC, CTCC, recipient="carrier-cmcc"),
            "RECIPIENT_MISMATCH",
            "request.number_block.phones[1].e164",
            id="some-not-ours",
        ),
        pytest.param(batch(CMCC, CTCC), "SPANS_CARRIERS", "request.number_block.phones", id="spans"),
        pytest.param(
            requests_pb2.Request(
                number_block=requests_pb2.NumberBlock(
                    selector=requests_pb2.NumberSelector(issuing_batch="B1")
                )
            ),
            "RECIPIENT_REQUIRED",
            "request.recipient",
            id="selector-unnamed",
        ),
        pytest.param(
            batch(CMCC, recipient="bank-icbc"), "WRONG_RECIPIENT_KIND", "request.recipient", id="bank"
        ),
    ],
)
def test_unroutable_batches(
    registry: Registry, request_: requests_pb2.Request, reason: str, subject: str
) -> None:
    with pytest.raises(UnroutableError) as info:
        resolve_recipient(request_, registry)
    assert info.value.reason == reason
    assert info.value.subject == subject
    assert "+86" not in str(info.value)


def parent(registry: Registry, *numbers: str) -> tuple[lifecycle_pb2.RequestStatus, requests_pb2.Request]:
    request = batch(*numbers)
    ids = iter(["child-a", "child-b"])
    split = batch_split(route_batch(request.number_block, registry), len(numbers), lambda: next(ids))
    status = lifecycle_pb2.RequestStatus(
        id="parent",
        recipient=BROKER_ID,
        hop=2,
        case_ref=common_pb2.CaseRef(case_number="C1"),
        batch_split=split,
    )
    return status, request


def test_children_carry_their_carriers_lines_one_hop_further(registry: Registry) -> None:
    status, request = parent(registry, CMCC, CTCC, NOBODY, CMCC)
    children = batch_children(status, request.number_block)
    assert [(part.carrier, part.child_id) for part, _ in children] == [
        ("carrier-cmcc", "child-a"),
        ("carrier-ctcc", "child-b"),
    ]
    first = children[0][1]
    assert [p.e164 for p in first.number_block.phones] == [CMCC, CMCC]
    assert (first.parent_id, first.hop, first.recipient, first.case_ref) == (
        "parent",
        3,
        "carrier-cmcc",
        status.case_ref,
    )
    assert child_key("parent", "carrier-cmcc") != child_key("parent", "carrier-ctcc")


def answered(*states: results_pb2.BlockItemState.ValueType) -> lifecycle_pb2.RequestStatus:
    child = lifecycle_pb2.RequestStatus(state=common_pb2.REQUEST_STATE_EXECUTED)
    child.result.block.items.extend(results_pb2.BlockItem(index=i, state=s) for i, s in enumerate(states))
    return child


def test_the_parent_answer_maps_items_back_and_sums_totals(registry: Registry) -> None:
    status, _ = parent(registry, CMCC, CTCC, NOBODY, CMCC)
    result = parent_result(
        status.batch_split, {"child-a": answered(BLOCKED, ALREADY), "child-b": answered(NOT_FOUND)}
    )
    assert [item.state for item in result.block.items] == [BLOCKED, NOT_FOUND, NOT_OURS, ALREADY]
    assert result.block.totals == results_pb2.BlockTotals(
        blocked=1, not_found=1, not_ours=1, already_blocked=1
    )
    assert result.outcome == common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED


def test_the_parent_is_executed_when_every_line_is_blocked(registry: Registry) -> None:
    status, _ = parent(registry, CMCC, CTCC)
    result = parent_result(status.batch_split, {"child-a": answered(ALREADY), "child-b": answered(BLOCKED)})
    assert result.outcome == common_pb2.REQUEST_STATE_EXECUTED


def test_a_child_without_items_counts_its_lines_not_found(registry: Registry) -> None:
    status, _ = parent(registry, CMCC, CTCC)
    failed = lifecycle_pb2.RequestStatus(state=common_pb2.REQUEST_STATE_FAILED)
    result = parent_result(status.batch_split, {"child-a": failed, "child-b": failed})
    assert result.outcome == common_pb2.REQUEST_STATE_REJECTED
    assert result.block.totals == results_pb2.BlockTotals(not_found=2)
