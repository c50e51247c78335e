"""Field rules of the contract, enforced at every boundary.

The rules are the protovalidate annotations in ``proto/greenchannel/v1``; this module only runs
them and turns violations into :class:`InvalidMessageError` with one :class:`FieldViolation` per
broken rule, so the broker can answer INVALID_ARGUMENT with google.rpc.BadRequest details.
"""

from __future__ import annotations

from typing import TypeVar

import protovalidate
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError, Message

from ._errors import FieldViolation, InvalidMessageError

__all__ = ["decode_message", "parse_and_validate", "validate_message"]

_validator = protovalidate.Validator()
M = TypeVar("M", bound=Message)


def _field_path(violation: protovalidate.Violation) -> str:
    path = violation.proto.field
    if path is None:
        return ""
    parts: list[str] = []
    for element in path.elements:
        name = element.field_name
        # Subscripts for repeated and map fields: `accounts[2]`, `holder['name']`.
        subscript = element.subscript
        if subscript is not None:
            name += f"[{subscript.value}]" if subscript.field == "index" else f"[{subscript.value!r}]"
        parts.append(name)
    return ".".join(parts)


def validate_message(message: Message, *, prefix: str = "") -> None:
    """Raise :class:`InvalidMessageError` listing every broken rule of ``message``."""
    violations = _validator.collect_violations(message)
    if not violations:
        return
    found = tuple(
        FieldViolation(
            field=_qualified(prefix, _field_path(v)), rule=v.proto.rule_id, description=v.proto.message
        )
        for v in violations
    )
    raise InvalidMessageError(f"invalid {message.DESCRIPTOR.name}", found)


def _qualified(prefix: str, path: str) -> str:
    if path:
        return prefix + path
    return prefix.rstrip(".") or "(message)"


def parse_and_validate(message_type: type[M], data: bytes, *, prefix: str = "") -> M:
    """Parse bytes into ``message_type`` and validate it; any failure is an InvalidMessageError."""
    message = decode_message(message_type, data, prefix=prefix)
    validate_message(message, prefix=prefix)
    return message


def decode_message(message_type: type[M], data: bytes, *, prefix: str = "") -> M:
    """Parse bytes into ``message_type``, refusing undecodable bytes and unknown fields.

    Unknown fields are refused: a field this version of the contract does not know would be
    signed and passed on without anyone having checked it.
    """
    message = message_type()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        violation = FieldViolation(
            field=_qualified(prefix, ""),
            rule="wire.decode",
            description=f"not a valid {message_type.DESCRIPTOR.name}",
        )
        raise InvalidMessageError("undecodable message", (violation,)) from exc
    if _has_unknown_fields(message):
        violation = FieldViolation(
            field=_qualified(prefix, ""),
            rule="wire.unknown_fields",
            description="fields or enum values unknown to this contract version",
        )
        raise InvalidMessageError("unknown fields", (violation,))
    return message


def _has_unknown_fields(message: Message) -> bool:
    if len(unknown_fields.UnknownFieldSet(message)):
        return True
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            values = list(value.values())
        elif field.is_repeated:
            values = list(value)
        else:
            values = [value]
        if any(isinstance(v, Message) and _has_unknown_fields(v) for v in values):
            return True
    return False
