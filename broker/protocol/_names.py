"""Names of the contract's enum values as people, subjects and files spell them.

``STOP_PAYMENT`` (logs, tables), ``stop_payment`` (subjects, policy and SLA files); an unknown
number (a newer peer's value) stays a number rather than raising in a log line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

from greenchannel.v1 import common_pb2, results_pb2

__all__ = [
    "REQUEST_TYPES_BY_SLUG",
    "phase_slug",
    "reason_name",
    "request_type_name",
    "request_type_slug",
    "state_name",
]

_RequestType: TypeAlias = common_pb2.RequestType.ValueType


def request_type_name(value: _RequestType) -> str:
    """``STOP_PAYMENT`` for REQUEST_TYPE_STOP_PAYMENT."""
    try:
        return common_pb2.RequestType.Name(value).removeprefix("REQUEST_TYPE_")
    except ValueError:
        return str(int(value))


def request_type_slug(value: _RequestType) -> str:
    """``stop_payment`` for REQUEST_TYPE_STOP_PAYMENT: the spelling of subjects and policy files."""
    return request_type_name(value).lower()


def state_name(value: common_pb2.RequestState.ValueType) -> str:
    """``EXECUTED`` for REQUEST_STATE_EXECUTED."""
    try:
        return common_pb2.RequestState.Name(value).removeprefix("REQUEST_STATE_")
    except ValueError:
        return str(int(value))


def reason_name(value: results_pb2.ReasonCode.ValueType) -> str:
    """``SIGNATURE_INVALID`` for REASON_CODE_SIGNATURE_INVALID."""
    try:
        return results_pb2.ReasonCode.Name(value).removeprefix("REASON_CODE_")
    except ValueError:
        return str(int(value))


def phase_slug(value: common_pb2.Phase.ValueType) -> str:
    """``deliver`` for PHASE_DELIVER: the spelling of reports and SLA files."""
    try:
        return common_pb2.Phase.Name(value).removeprefix("PHASE_").lower()
    except ValueError:
        return str(int(value))


REQUEST_TYPES_BY_SLUG: Mapping[str, _RequestType] = {
    request_type_slug(value): value
    for value in common_pb2.RequestType.values()
    if value != common_pb2.REQUEST_TYPE_UNSPECIFIED
}
"""Every request type by its slug (``stop_payment``), in the contract's order; UNSPECIFIED is none."""
