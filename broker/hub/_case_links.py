"""Which identifiers link each case to another: the case side of case linkage (串并).

``RiskService.ListLinks`` (``greenchannel cases linked <case>``) needs a case's links without
scanning the identifier index. A KV bucket (``gc_case_links``) whose keys are ``<case owner>.<case
number>.<kind>.<identifier digest>`` with an empty value
(:class:`~broker.hub._key_records.KeyRecords`: written once per (case, linked identifier)). What a
link holds now (every case, the coordinator) is read from the identifier index when asked
(:meth:`broker.hub._linkage.CaseLinker.links_of`), so a new case joining a ring of 64 writes one
key here, not 64 copies of the link.

Case numbers and agency ids fit the KV key alphabet, and the digest is the broker's keyed digest:
nothing here is personal data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from greenchannel.v1 import requests_pb2
from nats.js.client import JetStreamContext

from ._account_cases import CaseKey
from ._identifiers import Identifier
from ._key_records import KeyRecords

__all__ = ["CASE_LINKS_BUCKET", "CaseLinks", "LinkReader"]

CASE_LINKS_BUCKET = "gc_case_links"
"""KV bucket of the identifiers linking each case."""


class LinkReader(Protocol):
    """What ListLinks reads: a case's links as they stand."""

    async def links_of(self, case: CaseKey) -> Sequence[requests_pb2.LinkageNotice]: ...


class CaseLinks:
    """The ``gc_case_links`` bucket, opened on first use."""

    def __init__(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        self._records = KeyRecords(js, CASE_LINKS_BUCKET, replicas=replicas)

    async def add(self, case: CaseKey, identifier: Identifier) -> None:
        """Record that ``identifier`` links ``case`` to another case; idempotent."""
        await self._records.create(
            f"{case.issuing_agency}.{case.case_number}.{int(identifier.kind)}.{identifier.digest}"
        )

    async def identifiers(self, case: CaseKey) -> list[Identifier]:
        """The identifiers linking ``case`` to other cases, sorted."""
        prefix = f"{case.issuing_agency}.{case.case_number}."
        found: set[Identifier] = set()
        for key in await self._records.keys(prefix):
            kind, _, digest = key.removeprefix(prefix).partition(".")
            if kind.isdigit() and digest:
                found.add(Identifier(requests_pb2.IdentifierKind.ValueType(int(kind)), digest))
        return sorted(found)
