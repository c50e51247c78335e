"""The links of each case, as the last linkage notice about each shared identifier said.

``RiskService.ListLinks`` (``greenchannel cases linked <case>``) reads them. A KV bucket
(``gc_case_links``) whose keys are ``<case owner>.<case number>.<identifier digest>`` and whose
values are the ``LinkageNotice`` the broker signed: digests, case numbers, owners and regions,
never anybody's personal data. One ``put`` per linked case each time a link grows (a new case
touches the identifier), nothing per request otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import nats.errors
import nats.js.errors
from greenchannel.v1 import requests_pb2
from nats.js.client import JetStreamContext

from ._account_cases import CaseKey
from ._errors import UnavailableError
from ._store import LazyBucket

__all__ = ["CASE_LINKS_BUCKET", "CaseLinks"]

CASE_LINKS_BUCKET = "gc_case_links"
"""KV bucket of each case's links."""


class CaseLinks:
    """The ``gc_case_links`` bucket, opened on first use."""

    def __init__(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        self._js = js
        self._kv = LazyBucket(js, CASE_LINKS_BUCKET, replicas=replicas)

    async def save(self, notice: requests_pb2.LinkageNotice, cases: Iterable[CaseKey]) -> None:
        """Record ``notice`` as the current state of its link for each of ``cases``."""
        kv = await self._kv.get()
        value = notice.SerializeToString(deterministic=True)
        try:
            await asyncio.gather(
                *(
                    kv.put(f"{case.issuing_agency}.{case.case_number}.{notice.identifier_digest}", value)
                    for case in cases
                )
            )
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot record the case's links: {exc}") from exc

    async def of_case(self, case: CaseKey) -> list[requests_pb2.LinkageNotice]:
        """The case's links, most recently linked first."""
        kv = await self._kv.get()
        prefix = f"$KV.{CASE_LINKS_BUCKET}.{case.issuing_agency}.{case.case_number}."
        try:
            info = await self._js.stream_info(f"KV_{CASE_LINKS_BUCKET}", subjects_filter=prefix + "*")
            subjects = info.state.subjects or {}
            keys = [subject.removeprefix(f"$KV.{CASE_LINKS_BUCKET}.") for subject in subjects]
            entries = await asyncio.gather(*(kv.get(key) for key in keys), return_exceptions=True)
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"cannot read the case's links: {exc}") from exc
        links = []
        for entry in entries:
            if isinstance(entry, nats.js.errors.KeyNotFoundError):
                continue  # removed between the listing and the read
            if isinstance(entry, BaseException):
                raise UnavailableError(f"cannot read the case's links: {entry}") from entry
            links.append(requests_pb2.LinkageNotice.FromString(entry.value or b""))
        return sorted(links, key=lambda link: link.linked_at.ToNanoseconds(), reverse=True)
