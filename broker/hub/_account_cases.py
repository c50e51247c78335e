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

Keys are ``<digest>.<case owner>.<case number>``: case numbers and agency ids fit the KV key
alphabet, and the digest is the trail's keyed node id (:mod:`broker.hub._identifiers`), so an
index holds no personal data. A write is a ``create``: the first value stays (when the case first
touched the identifier), and a write repeated after a crash, or by another replica, changes
nothing. This replica also remembers what it wrote and skips the round trip.

**Reads.** The cases of a digest are the subjects of the bucket's stream under
``$KV.<bucket>.<digest>.>``: one stream-info call, no value read (as
:meth:`broker.hub._watchlog.WatchLog.request_ids` reads a case's requests).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from ._errors import UnavailableError
from ._store import LazyBucket

__all__ = ["ACCOUNT_CASES_BUCKET", "IDENTIFIER_CASES_BUCKET", "AccountCases", "CaseIndex", "CaseKey"]

ACCOUNT_CASES_BUCKET = "gc_account_cases"
"""KV bucket of the account -> cases (holding money) index."""

IDENTIFIER_CASES_BUCKET = "gc_identifier_cases"
"""KV bucket of the identifier -> cases (that named it) index of case linkage."""

_REMEMBERED = 4096  # (digest, case) pairs this replica knows are indexed


@dataclass(frozen=True, order=True)
class CaseKey:
    """A case: the police agency owning it and its number."""

    issuing_agency: str
    case_number: str


class CaseIndex:
    """One digest -> cases index bucket, opened on first use."""

    def __init__(self, js: JetStreamContext, bucket: str, *, replicas: int = 1) -> None:
        self._js = js
        self._name = bucket
        self._kv = LazyBucket(js, bucket, replicas=replicas)
        self._known: OrderedDict[str, None] = OrderedDict()

    async def _bucket(self) -> KeyValue:
        return await self._kv.get()

    @staticmethod
    def _key(digest: str, case: CaseKey) -> str:
        return f"{digest}.{case.issuing_agency}.{case.case_number}"

    async def add(self, digest: str, case: CaseKey, value: bytes = b"") -> bool:
        """Index ``case`` under ``digest``; idempotent. True when this call made the entry."""
        key = self._key(digest, case)
        if key in self._known:
            return False
        kv = await self._bucket()
        made = True
        try:
            await kv.create(key, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            made = False  # indexed before (another request, another replica, or processed again)
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot index the case under {self._name}: {exc}") from exc
        self._known[key] = None
        while len(self._known) > _REMEMBERED:
            self._known.popitem(last=False)
        return made

    async def cases(self, digest: str) -> list[CaseKey]:
        """Every case indexed under ``digest``, sorted."""
        await self._bucket()
        try:
            info = await self._js.stream_info(
                f"KV_{self._name}", subjects_filter=f"$KV.{self._name}.{digest}.>"
            )
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"cannot read the index {self._name}: {exc}") from exc
        found: set[CaseKey] = set()
        for subject in info.state.subjects or {}:
            parts = subject.split(".")
            if len(parts) == 5:  # $KV.<bucket>.<digest>.<owner>.<case>
                found.add(CaseKey(issuing_agency=parts[3], case_number=parts[4]))
        return sorted(found)

    async def value(self, digest: str, case: CaseKey) -> bytes | None:
        """What the entry of ``case`` under ``digest`` says; None when there is none."""
        kv = await self._bucket()
        try:
            entry = await kv.get(self._key(digest, case))
        except nats.js.errors.KeyNotFoundError:
            return None
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot read the index {self._name}: {exc}") from exc
        return entry.value or b""


class AccountCases(CaseIndex):
    """The ``gc_account_cases`` bucket: cases holding money on an account (by its node id)."""

    def __init__(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        super().__init__(js, ACCOUNT_CASES_BUCKET, replicas=replicas)
