"""Checks counted per agency, and the per-agency check rate.

Counting must cost a Check nothing: each replica counts in memory and adds what it counted to the
agency's record in KV (bucket ``gc_risk_counts``, key = agency id) every ``flush_interval`` and at
shutdown, by compare-and-set, so replicas add up and counts survive restarts. A replica killed
without its shutdown loses at most one interval of its counts.

The rate is a token bucket per agency in each replica (``check_rate`` identifiers per second,
``check_burst`` deep): with N replicas behind a balancer an agency may get up to N times the rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

import nats.errors
import nats.js.errors
import structlog
from greenchannel.v1 import risk_pb2
from nats.js.kv import KeyValue

from broker.protocol import Clock, to_timestamp

from ._risk_index import stop_task
from ._store import LazyBucket

__all__ = ["RISK_COUNTS_BUCKET", "CheckCounter", "RateLimiter"]

log = structlog.get_logger(__name__)

RISK_COUNTS_BUCKET = "gc_risk_counts"
"""KV bucket of check counts, keyed by agency id."""

_CAS_ATTEMPTS = 8


class RateLimiter:
    """A token bucket per agency: ``rate`` per second, ``burst`` deep."""

    def __init__(self, *, rate: int, burst: int) -> None:
        self._rate = float(rate)
        self._burst = float(max(burst, 1))
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, agency: str, n: int) -> float | None:
        """Take ``n`` tokens; None when granted, else the seconds until they would be there."""
        # A call asking more than the bucket holds costs the whole bucket: it can still pass.
        n = min(n, int(self._burst))
        now = time.monotonic()
        tokens, last = self._buckets.get(agency, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens >= n:
            self._buckets[agency] = (tokens - n, now)
            return None
        self._buckets[agency] = (tokens, now)
        return (n - tokens) / self._rate


@dataclass
class _Tally:
    checked: int = 0
    marked: int = 0
    throttled: int = 0

    def empty(self) -> bool:
        return not (self.checked or self.marked or self.throttled)


class CheckCounter:
    """Counts per agency in memory, flushed to KV. An async context manager (flushes on exit)."""

    def __init__(self, bucket: LazyBucket, *, clock: Clock, flush_interval: float = 5.0) -> None:
        self._bucket = bucket
        self._clock = clock
        self._interval = flush_interval
        self._pending: dict[str, _Tally] = {}
        self._since: dict[str, datetime] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> CheckCounter:
        self._task = asyncio.create_task(self._flush_loop(), name="risk-check-counts")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await stop_task(self._task)
        self._task = None
        with contextlib.suppress(Exception):
            await self.flush()

    def count(self, agency: str, *, checked: int, marked: int) -> None:
        tally = self._tally(agency)
        tally.checked += checked
        tally.marked += marked

    def throttle(self, agency: str) -> None:
        self._tally(agency).throttled += 1

    def _tally(self, agency: str) -> _Tally:
        tally = self._pending.get(agency)
        if tally is None:
            tally = self._pending[agency] = _Tally()
            self._since.setdefault(agency, self._clock.now())
        return tally

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception as exc:  # the loop must outlive any one flush; the counts are kept
                log.warning("risk.counts_flush_failed", error=type(exc).__name__)

    async def flush(self) -> None:
        """Add what this replica counted since the last flush to each agency's KV record."""
        async with self._lock:
            kv = await self._bucket.get()
            pending, self._pending = self._pending, {}
            left = list(pending.items())
            try:
                while left:
                    agency, tally = left[0]
                    if not tally.empty():
                        await self._add(kv, agency, tally)
                    left.pop(0)
            finally:
                # What was not written (this agency's and every later one's) is kept for the next
                # flush, added to whatever was counted meanwhile.
                for agency, tally in left:
                    again = self._tally(agency)
                    again.checked += tally.checked
                    again.marked += tally.marked
                    again.throttled += tally.throttled

    async def _add(self, kv: KeyValue, agency: str, tally: _Tally) -> None:
        for _ in range(_CAS_ATTEMPTS):
            try:
                entry = await kv.get(agency)
                record = json.loads(entry.value or b"{}")
                revision = entry.revision
            except nats.js.errors.KeyNotFoundError:
                record, revision = {}, None
            record["checked"] = int(record.get("checked", 0)) + tally.checked
            record["marked"] = int(record.get("marked", 0)) + tally.marked
            record["throttled"] = int(record.get("throttled", 0)) + tally.throttled
            record.setdefault("since", self._since.get(agency, self._clock.now()).isoformat())
            data = json.dumps(record, sort_keys=True).encode("ascii")
            try:
                if revision is None:
                    await kv.create(agency, data)
                else:
                    await kv.update(agency, data, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            return
        raise nats.errors.Error(f"check counts of {agency!r}: compare-and-set kept failing")

    async def counts(self, agency: str | None) -> list[risk_pb2.AgencyCheckCount]:
        """One agency's counts, or every agency's (None): stored plus not yet flushed here."""
        kv = await self._bucket.get()
        stored: dict[str, dict[str, object]] = {}
        if agency is not None:
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                entry = await kv.get(agency)
                stored[agency] = json.loads(entry.value or b"{}")
        else:
            with contextlib.suppress(nats.js.errors.NoKeysError):
                for key in await kv.keys():
                    with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                        entry = await kv.get(key)
                        stored[key] = json.loads(entry.value or b"{}")
        names = {agency} if agency is not None else set(stored) | set(self._pending)
        found = []
        for name in sorted(names):
            record = stored.get(name, {})
            tally = self._pending.get(name, _Tally())
            since_text = record.get("since")
            since = (
                datetime.fromisoformat(str(since_text))
                if since_text
                else self._since.get(name, self._clock.now())
            )
            found.append(
                risk_pb2.AgencyCheckCount(
                    agency=name,
                    checked=int(str(record.get("checked", 0))) + tally.checked,
                    marked=int(str(record.get("marked", 0))) + tally.marked,
                    throttled=int(str(record.get("throttled", 0))) + tally.throttled,
                    since=to_timestamp(since),
                )
            )
        return found
