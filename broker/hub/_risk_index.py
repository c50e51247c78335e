"""The check's fast path: an in-memory map from identifier digest to its active marks.

Fed by watching the ``gc_risk_marks`` bucket (an ordered consumer: every replica sees every mark,
whichever replica wrote it), and by this replica's own writes at once (so a mark is checkable the
moment Mark answers). A Check reads only this map: no NATS round trip per call. Expiry is decided
against the clock at check time, so an expired mark stops being returned the instant it expires,
whether or not its record says EXPIRED yet.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

import nats.errors
import structlog
from greenchannel.v1 import risk_pb2

from broker.protocol import from_timestamp

from ._risk_marks import MarkRecord, MarkStore

__all__ = ["ActiveMark", "MarkIndex", "stop_task"]

log = structlog.get_logger(__name__)

_RETRY = 1.0


@dataclass(frozen=True)
class ActiveMark:
    """What a check needs of one active mark."""

    mark_id: str
    grade: risk_pb2.RiskGrade.ValueType
    reason: risk_pb2.RiskReason.ValueType
    expires_at: datetime


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel a background loop and wait until it has stopped (None: nothing runs)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class MarkIndex:
    """digest -> active marks, kept current by a watch on the marks bucket. An async context
    manager: entering starts the watch and waits (bounded) for the bucket's current content."""

    def __init__(self, store: MarkStore, *, initial_wait: float = 10.0) -> None:
        self._store = store
        self._by_digest: dict[str, dict[str, ActiveMark]] = {}
        self._digest_of: dict[str, str] = {}
        self._revision: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._initial_wait = initial_wait

    async def __aenter__(self) -> MarkIndex:
        self._task = asyncio.create_task(self._follow(), name="risk-mark-index")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), self._initial_wait)
        if not self._ready.is_set():
            log.warning("risk.index_not_ready", waited=self._initial_wait)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await stop_task(self._task)
        self._task = None

    @property
    def size(self) -> int:
        return len(self._digest_of)

    def apply(self, record: MarkRecord, revision: int) -> None:
        """Take a mark as stored at ``revision`` (older revisions than one seen are ignored)."""
        status = record.status
        if revision < self._revision.get(status.mark_id, 0):
            return
        self._revision[status.mark_id] = revision
        self._drop(status.mark_id)
        if status.state != risk_pb2.MARK_STATE_ACTIVE or not status.HasField("expires_at"):
            return
        self._digest_of[status.mark_id] = status.identifier_digest
        self._by_digest.setdefault(status.identifier_digest, {})[status.mark_id] = ActiveMark(
            mark_id=status.mark_id,
            grade=status.grade,
            reason=status.reason,
            expires_at=from_timestamp(status.expires_at),
        )

    def _drop(self, mark_id: str) -> None:
        digest = self._digest_of.pop(mark_id, None)
        if digest is None:
            return
        marks = self._by_digest.get(digest)
        if marks is not None:
            marks.pop(mark_id, None)
            if not marks:
                del self._by_digest[digest]

    def verdict(self, digest: str, now: datetime) -> ActiveMark | None:
        """The highest-graded mark of ``digest`` in force at ``now`` (the latest-expiring of equals)."""
        marks = self._by_digest.get(digest)
        if not marks:
            return None
        best: ActiveMark | None = None
        for mark in marks.values():
            if mark.expires_at <= now:
                continue
            if best is None or (mark.grade, mark.expires_at) > (best.grade, best.expires_at):
                best = mark
        return best

    async def _follow(self) -> None:
        """Watch the bucket for ever; after a failure, watch again from the start (re-applying is
        harmless: revisions order the records)."""
        while True:
            try:
                kv = await self._store.kv()
                watcher = await kv.watchall()
                try:
                    async for entry in watcher:
                        if entry is None:
                            self._ready.set()
                            continue
                        if entry.value and entry.revision is not None:
                            try:
                                self.apply(MarkRecord.decode(entry.value), entry.revision)
                            except (ValueError, KeyError) as exc:
                                log.error("risk.bad_mark_record", key=entry.key, error=str(exc))
                        if entry.delta == 0:
                            self._ready.set()
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except (nats.errors.Error, TimeoutError, Exception) as exc:
                log.warning("risk.index_watch_failed", error=str(exc))
            await asyncio.sleep(_RETRY)
