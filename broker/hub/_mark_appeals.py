"""Intake's checks of an APPEAL against a risk mark: who may pass it on, and whether the mark is one
a holder can appeal (the rest of the appeal rules are :mod:`broker.hub._appeals`').

A mark names no agency that "applied" it, as a restriction does: the holder's agency is the one
serving the identifier (the bank its account routes to, the carrier its number routes to, the
platform serving its code). The appealing agency gives the identifier in clear; the broker checks
that the sender serves it **before it reads the mark**, then that it is the marked identifier
(keyed digests compared; the identifier is kept nowhere), so an agency learns nothing about marks
on identifiers it does not serve, nor whether an id it guessed names a mark on somebody else's.
"""

from __future__ import annotations

from datetime import datetime

from greenchannel.v1 import requests_pb2, risk_pb2

from broker.protocol import Agency, Clock, Registry

from ._errors import IllegalTransitionError, PermissionDeniedError
from ._identifiers import IdentifierDigests
from ._risk_marks import MarkStore, is_expired

__all__ = ["MarkAppealCheck", "serving_agency"]


def serving_agency(held: requests_pb2.HolderIdentifier, registry: Registry) -> Agency | None:
    """The agency serving a holder's identifier, as the directory routes it (None: nobody)."""
    match held.WhichOneof("id"):
        case "bank_account":
            return registry.bank_for_account(held.bank_account)
        case "phone":
            return registry.carrier_for_number(held.phone)
        case "platform_account":
            return registry.platform_for_code(held.platform_account.platform)
    return None


def appealable(status: risk_pb2.MarkStatus, now: datetime) -> bool:
    """Only a mark in force is appealed: proposed, refused, lifted or expired marks restrict nothing."""
    return status.state == risk_pb2.MARK_STATE_ACTIVE and not is_expired(status, now)


class MarkAppealCheck:
    """The mark an appeal names, once its sender proved it serves the marked identifier."""

    def __init__(
        self, *, marks: MarkStore, digests: IdentifierDigests, registry: Registry, clock: Clock
    ) -> None:
        self._marks = marks
        self._digests = digests
        self._registry = registry
        self._clock = clock

    async def check(self, sender: Agency, appeal: requests_pb2.Appeal) -> risk_pb2.MarkStatus:
        """The mark appealed, active; raise with a specific reason (nothing is stored either way)."""
        serving = serving_agency(appeal.identifier, self._registry)
        if serving is None or serving.id != sender.id:
            raise _not_holders_agency()
        # NOT_FOUND NO_SUCH_MARK, as RiskService answers: mark ids are UUIDs, so that says nothing
        # about anybody's identifier.
        status = (await self._marks.get(appeal.mark_id)).record.status
        held = self._digests.of(appeal.identifier)
        if (held.kind, held.digest) != (status.kind, status.identifier_digest):
            # The same answer as above: a mark on another identifier is none of the sender's business.
            raise _not_holders_agency()
        if not appealable(status, self._clock.now()):
            state = (
                "EXPIRED" if is_expired(status, self._clock.now()) else risk_pb2.MarkState.Name(status.state)
            )
            raise IllegalTransitionError(
                f"the mark is not in force (it is {state}): only an active mark is appealed",
                reason="NOT_MARKED",
            )
        return status


def _not_holders_agency() -> PermissionDeniedError:
    return PermissionDeniedError(
        "a mark is appealed through the agency serving the marked identifier (the bank its account"
        " routes to, the carrier of its number, the platform of its account), naming that identifier",
        reason="NOT_HOLDERS_AGENCY",
    )
