"""Which identifiers link each case to another: the case side of case linkage (串并).

``RiskService.ListLinks`` (``greenchannel cases linked <case>``) needs a case's links without
scanning the identifier index. A KV bucket (``gc_case_links``) whose keys are
``<case owner>.<case number>.<kind>.<identifier digest>`` with an empty value: the key is the whole
record, written with ``create`` once per (case, linked identifier), and this replica remembers
what it wrote. What a link holds now (every case, the coordinator) is read from the identifier
index when asked (:meth:`broker.hub._linkage.CaseLinker.links_of`), so a new case joining a ring
of 64 writes one key here, not 64 copies of the link.

Case numbers and agency ids fit the KV key alphabet, and the digest is the broker's keyed digest:
nothing here is personal data.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import nats.errors
import nats.js.errors
from greenchannel.v1 import requests_pb2
from nats.js.client import JetStreamContext

from ._account_cases import CaseKey
from ._errors import UnavailableError
from ._identifiers import Identifier
from ._store import LazyBucket

__all__ = ["CASE_LINKS_BUCKET", "CaseLinks", "LinkReader"]

CASE_LINKS_BUCKET = "gc_case_links"
"""KV bucket of the identifiers linking each case."""

_REMEMBERED = 4096  # (case, identifier) pairs this replica knows are recorded


class LinkReader(Protocol):
    """What ListLinks reads: a case's links as they stand."""

    async def links_of(self, case: CaseKey) -> Sequence[requests_pb2.LinkageNotice]: ...


class CaseLinks:
    """The ``gc_case_links`` bucket, opened on first use."""

    def __init__(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        self._js = js
        self._kv = LazyBucket(js, CASE_LINKS_BUCKET, replicas=replicas)
        self._known: OrderedDict[str, None] = OrderedDict()

    async def add(self, case: CaseKey, identifier: Identifier) -> None:
        """Record that ``identifier`` links ``case`` to another case; idempotent."""
        key = f"{case.issuing_agency}.{case.case_number}.{int(identifier.kind)}.{identifier.digest}"
        if key in self._known:
            return
        kv = await self._kv.get()
        try:
            await kv.create(key, b"")
        except nats.js.errors.KeyWrongLastSequenceError:
            pass  # recorded before (another link of the case, another replica, processed again)
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot record the case's link: {exc}") from exc
        self._known[key] = None
        while len(self._known) > _REMEMBERED:
            self._known.popitem(last=False)

    async def identifiers(self, case: CaseKey) -> list[Identifier]:
        """The identifiers linking ``case`` to other cases, sorted."""
        await self._kv.get()
        prefix = f"$KV.{CASE_LINKS_BUCKET}.{case.issuing_agency}.{case.case_number}."
        try:
            info = await self._js.stream_info(f"KV_{CASE_LINKS_BUCKET}", subjects_filter=prefix + "*.*")
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"cannot read the case's links: {exc}") from exc
        found: set[Identifier] = set()
        for subject in info.state.subjects or {}:
            kind, _, digest = subject.removeprefix(prefix).partition(".")
            if kind.isdigit() and digest:
                found.add(Identifier(requests_pb2.IdentifierKind.ValueType(int(kind)), digest))
        return sorted(found)
