"""What the commands that close a case print: an account's allocation, the returns paid, an appeal's
lifting orders. Aligned tables for people, JSON for programs (as ``_render``).

Victims appear only as the broker's keyed digest of their account, shortened for people; their
accounts stay sealed to the case owner (``status --decrypt`` opens them).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import common_pb2, lifecycle_pb2, results_pb2, trail_pb2

from broker.protocol import request_type_name, state_name

from ._render import mask_account, money, short_reason, table

__all__ = [
    "ORDERED_ALLOCATION",
    "allocation_document",
    "allocation_lines",
    "appeal_decision",
    "lifting_document",
    "lifting_lines",
    "payable_now",
    "returns_document",
    "returns_lines",
    "short_digest",
]

_NONE = "-"


def short_digest(digest: str) -> str:
    """The head of a keyed digest: enough to tell victims apart in a table."""
    return digest[:12] if digest else _NONE


def _rule(rule: trail_pb2.AllocationRule.ValueType) -> str:
    return trail_pb2.AllocationRule.Name(rule).removeprefix("ALLOCATION_RULE_")


def _at(ts: Timestamp) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if ts.seconds or ts.nanos else None


def _local(ts: Timestamp) -> str:
    when = _at(ts)
    return when.astimezone().strftime("%Y-%m-%d %H:%M") if when is not None else _NONE


def payable_now(claim: trail_pb2.ClaimShare, now: datetime) -> int:
    """Minor units of the claim's share that may be ordered now: not returned, not reserved, and
    (a pro rata share) past its notice period."""
    after = _at(claim.payable_after)
    if after is not None and now < after:
        return 0
    return max(0, claim.share.minor_units - claim.returned.minor_units - claim.reserved.minor_units)


def _in(currency: str, minor_units: int) -> common_pb2.Money:
    return common_pb2.Money(currency=currency, minor_units=minor_units)


ORDERED_ALLOCATION = "as when the order was accepted (what it reserved); `return plan` shows it now"
"""What a RETURN_FUNDS status's allocation is: the broker's at intake, not refreshed by the outcome."""


def allocation_lines(allocation: trail_pb2.Allocation, *, now: datetime, note: str = "") -> list[str]:
    """The allocation: the account's frozen money, then one row per claim (``note``: when it was
    computed, for people)."""
    currency = allocation.frozen.currency
    head = [
        f"allocation of account {short_digest(allocation.node_id)} at {allocation.bank or _NONE}"
        + (f", {note}" if note else ""),
        f"  frozen {money(allocation.frozen)}, unallocated {money(allocation.unallocated)}"
        f", notice period ends {_local(allocation.notice_ends_at)}"
        f", computed {_local(allocation.computed_at)}",
    ]
    if not allocation.claims:
        return [*head, "  no claims"]
    rows = [
        (
            claim.case_number,
            short_digest(claim.victim_id),
            _rule(claim.rule),
            money(claim.claimed),
            money(claim.share),
            money(claim.returned),
            money(claim.reserved),
            money(_in(currency, payable_now(claim, now))),
            _local(claim.payable_after),
        )
        for claim in allocation.claims
    ]
    header = ("case", "victim", "rule", "claimed", "share", "returned", "reserved", "payable now", "after")
    return [*head, *table(header, rows, indent="  ")]


def allocation_document(allocation: trail_pb2.Allocation, *, now: datetime) -> dict[str, object]:
    """The allocation as the bus returned it, plus each claim's amount payable now."""
    return {
        "allocation": MessageToDict(allocation, preserving_proto_field_name=True),
        "claims": [
            {
                "case_number": claim.case_number,
                "issuing_agency": claim.issuing_agency,
                "claim_id": claim.claim_id,
                "victim_id": claim.victim_id,
                "rule": _rule(claim.rule),
                "claimed": claim.claimed.minor_units,
                "share": claim.share.minor_units,
                "returned": claim.returned.minor_units,
                "reserved": claim.reserved.minor_units,
                "payable_now": payable_now(claim, now),
                "payable_after": claim.payable_after.ToJsonString() if _at(claim.payable_after) else None,
                "currency": claim.share.currency or allocation.frozen.currency,
            }
            for claim in allocation.claims
        ],
    }


def returns_lines(result: results_pb2.Result, details: results_pb2.ResultDetails | None) -> list[str]:
    """What each victim got (the redacted payouts; accounts only from the opened details)."""
    paid = details.returns if details is not None and details.returns else result.returns
    if not paid:
        return []
    rows = [
        (
            payout.payout_index,
            mask_account(payout.victim_account.account_number)
            if payout.victim_account.account_number
            else "sealed",
            money(payout.amount),
            payout.transfer_id or _NONE,
        )
        for payout in paid
    ]
    total = (
        f"  returned {money(result.amount_returned)}" if result.HasField("amount_returned") else "  returns"
    )
    return [total, *table(("payout", "victim account", "amount", "transfer"), rows, indent="    ")]


def returns_document(result: results_pb2.Result) -> dict[str, object]:
    return {
        "amount_returned": result.amount_returned.minor_units,
        "currency": result.amount_returned.currency,
        "returns": [
            {
                "payout_index": payout.payout_index,
                "amount": payout.amount.minor_units,
                "currency": payout.amount.currency,
                "transfer_id": payout.transfer_id,
            }
            for payout in result.returns
        ],
    }


def appeal_decision(result: results_pb2.Result) -> str:
    """``UPHELD`` / ``LIFTED``; empty while undecided."""
    if not result.appeal:
        return ""
    return results_pb2.AppealDecision.Name(result.appeal).removeprefix("APPEAL_DECISION_")


def lifting_lines(
    appeal: lifecycle_pb2.RequestStatus, lifting: Sequence[lifecycle_pb2.RequestStatus] | None
) -> list[str]:
    """The decision and the lifting orders the broker sent for it (``None``: they could not be read)."""
    decision = appeal_decision(appeal.result) or "not decided yet"
    lines = [f"appeal decision  {decision}"]
    if appeal.appealed_mark_id:
        # A mark is lifted in the registry by the broker itself: no order goes out.
        done = "lifted by the broker" if decision == "LIFTED" else "stays"
        return [*lines, f"  risk mark {appeal.appealed_mark_id}: {done}"]
    if lifting is None:
        return [*lines, "  lifting orders: not readable by this agency"]
    if not lifting:
        none = "none (the restriction stays)" if decision != "LIFTED" else "none seen yet"
        return [*lines, f"  lifting orders: {none}"]
    rows = [
        (
            order.id,
            request_type_name(order.type),
            order.recipient,
            order.target_id or _NONE,
            state_name(order.state) + (f" ({short_reason(order.reason)})" if order.reason else ""),
        )
        for order in lifting
    ]
    return [
        *lines,
        "  lifting orders",
        *table(("request", "type", "to", "lifts", "state"), rows, indent="    "),
    ]


def lifting_document(
    appeal: lifecycle_pb2.RequestStatus, lifting: Sequence[lifecycle_pb2.RequestStatus] | None
) -> dict[str, object]:
    return {
        "decision": appeal_decision(appeal.result) or None,
        "mark_id": appeal.appealed_mark_id or None,
        "lifting": None
        if lifting is None
        else [
            {
                "id": order.id,
                "type": request_type_name(order.type),
                "recipient": order.recipient,
                "target_id": order.target_id,
                "state": state_name(order.state),
                "reason": short_reason(order.reason),
            }
            for order in lifting
        ],
    }
