"""Which cases touched an identifier: indexes from a keyed digest to cases.

Two indexes share this shape, each in its own KV bucket:

- ``gc_account_cases`` (:class:`AccountCases`): the cases holding money on an account. A
  RETURN_FUNDS order, and ``GetAllocation``, need every case holding the account, without scanning
  every trail. One ``create`` per (account, case), when the first hold of that case on the account
  is recorded with money held (:meth:`broker.hub._trail.TrailChaser.after_outcome`); none for
  every later hold of the same case on the same account (a merge, a top-up, a conversion).
- ``gc_identifier_cases`` (:data:`IDENTIFIER_CASES_BUCKET`): the cases whose requests, fraud
  reports or marks named an identifier, for case linkage (:mod:`broker.hub._linkage`). Its value
  says how the case first touched it (an ``IndexedCase``, no personal data).

Keys are ``<digest>.<case owner>.<case number>``, records of
:class:`~broker.hub._key_records.KeyRecords` (written once, listed by prefix): case numbers and
agency ids fit the KV key alphabet, and the digest is the trail's keyed node id
(:mod:`broker.hub._identifiers`), so an index holds no personal data. The first value stays: when
the case first touched the identifier.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js.client import JetStreamContext

from ._key_records import KeyRecords

__all__ = ["ACCOUNT_CASES_BUCKET", "IDENTIFIER_CASES_BUCKET", "AccountCases", "CaseIndex", "CaseKey"]

ACCOUNT_CASES_BUCKET = "gc_account_cases"
"""KV bucket of the account -> cases (holding money) index."""

IDENTIFIER_CASES_BUCKET = "gc_identifier_cases"
"""KV bucket of the identifier -> cases (that named it) index of case linkage."""


@dataclass(frozen=True, order=True)
class CaseKey:
    """A case: the police agency owning it and its number."""

    issuing_agency: str
    case_number: str


class CaseIndex:
    """One digest -> cases index bucket, opened on first use."""

    def __init__(self, js: JetStreamContext, bucket: str, *, replicas: int = 1) -> None:
        self._records = KeyRecords(js, bucket, replicas=replicas)

    @staticmethod
    def _key(digest: str, case: CaseKey) -> str:
        return f"{digest}.{case.issuing_agency}.{case.case_number}"

    async def add(self, digest: str, case: CaseKey, value: bytes = b"") -> bool:
        """Index ``case`` under ``digest``; idempotent. True when this call made the entry."""
        return await self._records.create(self._key(digest, case), value)

    async def cases(self, digest: str) -> list[CaseKey]:
        """Every case indexed under ``digest``, sorted."""
        found: set[CaseKey] = set()
        for key in await self._records.keys(f"{digest}."):
            parts = key.split(".")
            if len(parts) == 3:  # <digest>.<owner>.<case>
                found.add(CaseKey(issuing_agency=parts[1], case_number=parts[2]))
        return sorted(found)

    async def value(self, digest: str, case: CaseKey) -> bytes | None:
        """What the entry of ``case`` under ``digest`` says; None when there is none."""
        return await self._records.value(self._key(digest, case))


class AccountCases(CaseIndex):
    """The ``gc_account_cases`` bucket: cases holding money on an account (by its node id)."""

    def __init__(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        super().__init__(js, ACCOUNT_CASES_BUCKET, replicas=replicas)
