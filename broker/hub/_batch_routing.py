"""Where a batch or selector NUMBER_BLOCK goes: its lines grouped by carrier (by number segment).

A selector names no line: the carrier finds them, so the order must name the carrier. A batch
whose lines all route to one carrier goes to it; a batch naming its carrier must hold no line of
another carrier. Errors name the field that decided and never echo a number.
"""

from __future__ import annotations

from dataclasses import dataclass

from greenchannel.v1 import requests_pb2

from broker.protocol import Agency, Registry

from ._errors import UnroutableError

__all__ = ["BatchRoute", "batch_recipient", "route_batch"]


@dataclass(frozen=True, kw_only=True)
class BatchRoute:
    """A batch's lines by the carrier serving them."""

    parts: dict[str, tuple[int, ...]]
    """Carrier id -> indexes into ``NumberBlock.phones``, ascending."""
    unrouted: tuple[int, ...]
    """Indexes of lines no carrier in the directory serves."""


def route_batch(order: requests_pb2.NumberBlock, registry: Registry) -> BatchRoute:
    """Group ``order.phones`` by the carrier of each number (ported numbers first, then segments)."""
    parts: dict[str, list[int]] = {}
    unrouted: list[int] = []
    for index, phone in enumerate(order.phones):
        carrier = registry.carrier_for_number(phone.e164)
        if carrier is None:
            unrouted.append(index)
        else:
            parts.setdefault(carrier.id, []).append(index)
    return BatchRoute(parts={k: tuple(v) for k, v in parts.items()}, unrouted=tuple(unrouted))


def batch_recipient(request: requests_pb2.Request, registry: Registry, named: Agency | None) -> Agency:
    """The one carrier receiving a batch or selector; raise :class:`UnroutableError` otherwise.

    Reasons: ``RECIPIENT_REQUIRED`` (a selector without a named carrier), ``NOT_OURS`` (the named
    carrier serves none of the batch's lines, other carriers do), ``RECIPIENT_MISMATCH`` (some lines
    are another carrier's), ``NO_ROUTE`` (no carrier serves any line), ``SPANS_CARRIERS`` (several
    carriers, or lines no carrier serves: the broker splits such a batch, see ``_batch_split``).
    """
    order = request.number_block
    if order.HasField("selector"):
        if named is None:
            raise UnroutableError(
                "a selector names no line: the carrier resolves it from its own records, so name the "
                "carrier as the recipient",
                subject="request.recipient",
                reason="RECIPIENT_REQUIRED",
            )
        return named
    route = route_batch(order, registry)
    if named is not None:
        others = [
            index for carrier, indexes in route.parts.items() if carrier != named.id for index in indexes
        ]
        if others and named.id not in route.parts:
            raise UnroutableError(
                f"request.recipient is {named.id!r} but every line of the batch that the directory routes"
                " belongs to another carrier",
                subject="request.number_block.phones",
                reason="NOT_OURS",
            )
        if others:
            raise UnroutableError(
                f"request.recipient is {named.id!r} but request.number_block.phones[{min(others)}] belongs "
                "to another carrier; name no recipient to have the broker split the batch by carrier",
                subject=f"request.number_block.phones[{min(others)}].e164",
                reason="RECIPIENT_MISMATCH",
            )
        return named
    if not route.parts:
        raise UnroutableError(
            "no carrier in the directory serves any line of the batch; name the carrier as the recipient",
            subject="request.number_block.phones",
            reason="NO_ROUTE",
        )
    if len(route.parts) > 1 or route.unrouted:
        raise UnroutableError(
            f"the batch spans {len(route.parts)} carriers"
            + (" and lines no carrier serves" if route.unrouted else ""),
            subject="request.number_block.phones",
            reason="SPANS_CARRIERS",
        )
    (carrier_id,) = route.parts
    return registry.get(carrier_id)
