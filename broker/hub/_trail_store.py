"""Money trails in NATS KV: one entry per case, changed only by compare-and-set.

The key is a hash of the case owner and case number (case numbers are unique per police agency,
and KV keys allow a narrow alphabet). The value is a serialized ``trail_pb2.Trail``: amounts,
banks, hops, request ids and states in clear, accounts only as keyed digests and sealed to the
case owner. Replicas share it; a change that loses a race re-reads and re-applies.

A chase writes its case's trail several times per hop, so the store remembers the last trail it
read or wrote per case and first tries the compare-and-set on that revision: one round trip
instead of two. A stale copy (another replica wrote since) only fails the compare-and-set, and
the change is applied again on a fresh read.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
import structlog
from greenchannel.v1 import trail_pb2
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from ._errors import ConflictError, UnavailableError
from ._store import open_bucket

__all__ = ["TRAILS_BUCKET", "StoredTrail", "TrailChange", "TrailStore", "trail_key"]

log = structlog.get_logger(__name__)

TRAILS_BUCKET = "gc_trails"
"""KV bucket of the money trails."""

_CAS_ATTEMPTS = 32  # a case's branches are chased concurrently: more contention than one request
_REMEMBERED = 512  # cases whose last trail is kept in memory for the next compare-and-set

TrailChange = Callable[[trail_pb2.Trail | None], trail_pb2.Trail | None]
"""Gets a fresh copy of the stored trail (None: there is none yet); returns the new trail, or None
to leave the entry as it is."""


def trail_key(case_owner: str, case_number: str) -> str:
    """The KV key of a case's trail."""
    return hashlib.sha256(f"{case_owner}\0{case_number}".encode()).hexdigest()


@dataclass(frozen=True)
class StoredTrail:
    """A trail and the KV revision it was read at."""

    trail: trail_pb2.Trail
    revision: int


class TrailStore:
    """The ``gc_trails`` bucket, opened on first use (so the broker can wire it synchronously)."""

    def __init__(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        self._js = js
        self._replicas = replicas
        self._kv: KeyValue | None = None
        self._opening = asyncio.Lock()
        self._recent: OrderedDict[str, StoredTrail] = OrderedDict()

    def _remember(self, key: str, stored: StoredTrail | None) -> None:
        if stored is None:
            self._recent.pop(key, None)
            return
        self._recent[key] = stored
        self._recent.move_to_end(key)
        while len(self._recent) > _REMEMBERED:
            self._recent.popitem(last=False)

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            async with self._opening:
                if self._kv is None:
                    self._kv = await open_bucket(self._js, TRAILS_BUCKET, replicas=self._replicas)
        return self._kv

    async def get(self, case_owner: str, case_number: str) -> StoredTrail | None:
        """The case's trail, or None when the case has none."""
        kv = await self._bucket()
        key = trail_key(case_owner, case_number)
        try:
            entry = await kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            self._remember(key, None)
            return None
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot read the money trail: {exc}") from exc
        stored = StoredTrail(trail_pb2.Trail.FromString(entry.value or b""), entry.revision or 0)
        self._remember(key, stored)
        return stored

    async def update(self, case_owner: str, case_number: str, change: TrailChange) -> trail_pb2.Trail | None:
        """Apply ``change`` with compare-and-set (creating the entry if it has none); the trail after.

        ``change`` may run several times; it must depend only on the trail it is given.
        """
        kv = await self._bucket()
        key = trail_key(case_owner, case_number)
        remembered = self._recent.get(key)
        for _ in range(_CAS_ATTEMPTS):
            current = remembered or await self.get(case_owner, case_number)
            fresh = trail_pb2.Trail()
            if current is not None:
                fresh.CopyFrom(current.trail)
            try:
                updated = change(fresh if current is not None else None)
            except Exception:
                if remembered is None:
                    raise
                remembered = None  # judged on a copy that may be stale: judge again on a fresh one
                continue
            if updated is None:
                if remembered is not None:
                    remembered = None  # "nothing to do" must be true of the stored trail, not a copy
                    continue
                return current.trail if current is not None else None
            remembered = None
            data = updated.SerializeToString()
            try:
                if current is None:
                    revision = await kv.create(key, data)
                else:
                    revision = await kv.update(key, data, last=current.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                self._remember(key, None)
                log.debug("trail_store.cas_retry", case=case_number)
                continue
            except nats.errors.Error as exc:
                self._remember(key, None)
                raise UnavailableError(f"cannot store the money trail: {exc}") from exc
            self._remember(key, StoredTrail(trail_pb2.Trail.FromString(data), revision))
            return updated
        raise ConflictError(f"the money trail of case {case_number} kept changing under concurrent updates")
