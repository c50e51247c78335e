"""Which cases hold money on an account: an index from the trail's node id to cases.

A RETURN_FUNDS order, and ``GetAllocation``, need every case holding the account, without
scanning every trail. The index is a KV bucket (``gc_account_cases``) whose keys are
``<node id>.<case owner>.<case number>`` with an empty value: the key is the whole record. Case
numbers and agency ids fit the KV key alphabet, and the node id is the trail's keyed digest, so
the index holds no personal data.

**Writes.** One ``create`` per (account, case), when the first hold of that case on the account
is recorded with money held (:meth:`broker.hub._trail.TrailChaser.after_outcome`): at most one
write per hold, and none for every later hold of the same case on the same account (a merge, a
top-up, a conversion). The write is idempotent (an existing key is left as it is), so an outcome
processed again after a crash writes again harmlessly; this replica also remembers what it wrote
and skips the round trip.

**Reads.** The cases of an account are the subjects of the bucket's stream under
``$KV.gc_account_cases.<node id>.>``: one stream-info call, no value read (as
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

__all__ = ["ACCOUNT_CASES_BUCKET", "AccountCases", "CaseKey"]

ACCOUNT_CASES_BUCKET = "gc_account_cases"
"""KV bucket of the account -> cases index."""

_REMEMBERED = 4096  # (account, case) pairs this replica knows are indexed


@dataclass(frozen=True, order=True)
class CaseKey:
    """A case: the police agency owning it and its number."""

    issuing_agency: str
    case_number: str


class AccountCases:
    """The ``gc_account_cases`` bucket, opened on first use."""

    def __init__(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        self._js = js
        self._kv = LazyBucket(js, ACCOUNT_CASES_BUCKET, replicas=replicas)
        self._known: OrderedDict[str, None] = OrderedDict()

    async def _bucket(self) -> KeyValue:
        return await self._kv.get()

    async def add(self, node_id: str, case: CaseKey) -> None:
        """Index ``case`` as holding money on ``node_id``; idempotent."""
        key = f"{node_id}.{case.issuing_agency}.{case.case_number}"
        if key in self._known:
            return
        kv = await self._bucket()
        try:
            await kv.create(key, b"")
        except nats.js.errors.KeyWrongLastSequenceError:
            pass  # indexed before (another hold, another replica, or this outcome processed again)
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot index the account's case: {exc}") from exc
        self._known[key] = None
        while len(self._known) > _REMEMBERED:
            self._known.popitem(last=False)

    async def cases(self, node_id: str) -> list[CaseKey]:
        """Every case holding (or having held) money on ``node_id``, sorted."""
        await self._bucket()
        try:
            info = await self._js.stream_info(
                f"KV_{ACCOUNT_CASES_BUCKET}", subjects_filter=f"$KV.{ACCOUNT_CASES_BUCKET}.{node_id}.>"
            )
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"cannot read the account index: {exc}") from exc
        found: set[CaseKey] = set()
        for subject in info.state.subjects or {}:
            parts = subject.split(".")
            if len(parts) == 5:  # $KV.<bucket>.<node>.<owner>.<case>
                found.add(CaseKey(issuing_agency=parts[3], case_number=parts[4]))
        return sorted(found)
