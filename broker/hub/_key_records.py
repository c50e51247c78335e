"""A KV bucket of records whose key is the whole record: written once, listed by key prefix.

The indexes of the hub that answer "which X are under Y" (the cases holding an account, the
cases naming an identifier, the identifiers linking a case) are such buckets. A record is written
with ``create``: the first value stays, and a write repeated after a crash, or by another
replica, changes nothing; this replica also remembers what it wrote and skips the round trip.
The records under a prefix are the subjects of the bucket's stream: one stream-info call, no
value read (as :meth:`broker.hub._watchlog.WatchLog.request_ids` reads a case's requests).
"""

from __future__ import annotations

from collections import OrderedDict

import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext

from ._errors import UnavailableError
from ._store import LazyBucket

__all__ = ["KeyRecords"]

_REMEMBERED = 4096  # keys this replica knows are written


class KeyRecords:
    """One such bucket, opened on first use."""

    def __init__(self, js: JetStreamContext, bucket: str, *, replicas: int = 1) -> None:
        self._js = js
        self._name = bucket
        self._kv = LazyBucket(js, bucket, replicas=replicas)
        self._known: OrderedDict[str, None] = OrderedDict()

    async def create(self, key: str, value: bytes = b"") -> bool:
        """Write the record once; True when this call wrote it."""
        if key in self._known:
            return False
        kv = await self._kv.get()
        made = True
        try:
            await kv.create(key, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            made = False  # written before (another request, another replica, or processed again)
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot write to {self._name}: {exc}") from exc
        self._known[key] = None
        while len(self._known) > _REMEMBERED:
            self._known.popitem(last=False)
        return made

    async def keys(self, prefix: str) -> list[str]:
        """The keys starting with ``prefix`` (which ends with a dot), in no particular order."""
        await self._kv.get()
        subjects_prefix = f"$KV.{self._name}."
        try:
            info = await self._js.stream_info(
                f"KV_{self._name}", subjects_filter=f"{subjects_prefix}{prefix}>"
            )
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"cannot read {self._name}: {exc}") from exc
        return [subject.removeprefix(subjects_prefix) for subject in info.state.subjects or {}]

    async def value(self, key: str) -> bytes | None:
        """The record's value; None when there is none."""
        kv = await self._kv.get()
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot read {self._name}: {exc}") from exc
        return entry.value or b""
