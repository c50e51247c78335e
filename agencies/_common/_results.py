"""Building :class:`Result` messages: one spelling of every outcome for all agency systems.

``detail`` is read by people on the other side of the bus and lands in the ledger, so it is
always a fixed phrase chosen here or by a core, never a name, number or other personal data.
"""

from __future__ import annotations

import enum
import secrets
from datetime import datetime

from greenchannel.v1 import common_pb2, results_pb2

from broker.protocol import InvalidMessageError

__all__ = [
    "Reach",
    "describe_violations",
    "executed",
    "invalid_request",
    "money",
    "new_reference",
    "rejected",
    "warned",
]

_DETAIL_MAX = 1024


def new_reference(prefix: str, when: datetime) -> str:
    """An agency reference such as ``SP20260101A1B2C3D4E5``: kind, day, then 40 random bits."""
    return f"{prefix}{when:%Y%m%d}{secrets.token_hex(5).upper()}"


def money(currency: str, minor_units: int) -> common_pb2.Money:
    return common_pb2.Money(currency=currency, minor_units=minor_units)


def executed(detail: str = "") -> results_pb2.Result:
    return results_pb2.Result(outcome=common_pb2.REQUEST_STATE_EXECUTED, detail=detail)


class Reach(enum.StrEnum):
    """What a carrier or platform knows of reaching a person it is asked to warn (its own record of
    the line or account); without a record, a warning reaches them and they stop."""

    UNREACHABLE = "unreachable"
    """The line is powered off / the number or account is flagged unreachable: nobody answers."""
    CONTINUING = "continuing"
    """Reached before and told: they say they will pay all the same."""


_OUTCOMES = {
    None: results_pb2.WARNING_OUTCOME_DISSUADED,
    Reach.UNREACHABLE: results_pb2.WARNING_OUTCOME_UNREACHABLE,
    Reach.CONTINUING: results_pb2.WARNING_OUTCOME_CONTINUING,
}
_SAID = {
    None: "reached and dissuaded",
    Reach.UNREACHABLE: "not reached",
    Reach.CONTINUING: "reached, but continuing",
}


def warned(channel: str, reach: Reach | None) -> results_pb2.Result:
    """A warning's answer: EXECUTED with its outcome (``result.warning``) from the agency's record."""
    result = executed(f"warning sent by {channel}: {_SAID[reach]}")
    result.block.warned = reach is not Reach.UNREACHABLE
    result.warning = _OUTCOMES[reach]
    return result


def rejected(reason: results_pb2.ReasonCode.ValueType, detail: str) -> results_pb2.Result:
    return results_pb2.Result(outcome=common_pb2.REQUEST_STATE_REJECTED, reason=reason, detail=detail)


def invalid_request(detail: str) -> results_pb2.Result:
    return rejected(results_pb2.REASON_CODE_INVALID_REQUEST, _clip(detail))


def describe_violations(error: InvalidMessageError) -> str:
    """Field paths and rule descriptions, which name the rule broken but never echo the value."""
    listed = "; ".join(f"{v.field}: {v.description}" for v in error.violations)
    return _clip(f"invalid request: {listed}")


def _clip(text: str) -> str:
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 1] + "…"
