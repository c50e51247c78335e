"""Money trails in NATS KV: one entry per case, changed only by compare-and-set.

The key is a hash of the case owner and case number (case numbers are unique per police agency,
and KV keys allow a narrow alphabet). The value is a serialized ``trail_pb2.Trail``: amounts,
banks, hops, request ids and states in clear, accounts only as keyed digests and sealed to the
case owner. Replicas share it; a change that loses a race re-reads and re-applies.

A hot case (many requests of one case at once, each writing the trail at its outcome) must not
race itself. Inside one broker the changes of a case queue up in
a lane, and one writer applies everything queued, in arrival order, on one copy and stores it with
one compare-and-set: concurrent callers never conflict with each other, and a burst costs a few
writes instead of one per change. Only another replica can make a compare-and-set fail; the
writer then re-reads, re-applies the whole batch, and backs off a random while so two replicas
that collided do not collide again in step.

The store remembers the last trail it read or wrote per case and first tries the compare-and-set
on that revision: one round trip instead of two. A stale copy (another replica wrote since) only
fails the compare-and-set, and the changes are applied again on a fresh read.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
import structlog
from greenchannel.v1 import trail_pb2
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from ._errors import ConflictError, UnavailableError
from ._store import LazyBucket

__all__ = ["TRAILS_BUCKET", "StoredTrail", "TrailChange", "TrailStore", "trail_key"]

log = structlog.get_logger(__name__)

TRAILS_BUCKET = "gc_trails"
"""KV bucket of the money trails."""

# Only other replicas can make a batch's compare-and-set fail; with the random backoff below
# 32 attempts span seconds of another replica writing the same case without pause.
_CAS_ATTEMPTS = 32
_BACKOFF_FIRST = 0.005  # seconds; the ceiling of the random pause doubles per failed attempt
_BACKOFF_MAX = 0.25
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


@dataclass(eq=False)
class _Pending:
    """One caller's change, waiting in its case's lane."""

    change: TrailChange
    done: asyncio.Future[trail_pb2.Trail | None]


@dataclass(eq=False)
class _Lane:
    """The changes of one case waiting for its writer, and the writer while it runs."""

    case_number: str
    queue: list[_Pending] = field(default_factory=list)
    writer: asyncio.Task[None] | None = None


def _copy(trail: trail_pb2.Trail | None) -> trail_pb2.Trail | None:
    if trail is None:
        return None
    fresh = trail_pb2.Trail()
    fresh.CopyFrom(trail)
    return fresh


class TrailStore:
    """The ``gc_trails`` bucket, opened on first use (so the broker can wire it synchronously)."""

    def __init__(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        self._kv = LazyBucket(js, TRAILS_BUCKET, replicas=replicas)
        self._recent: OrderedDict[str, StoredTrail] = OrderedDict()
        self._lanes: dict[str, _Lane] = {}

    def _remember(self, key: str, stored: StoredTrail | None) -> None:
        if stored is None:
            self._recent.pop(key, None)
            return
        self._recent[key] = stored
        self._recent.move_to_end(key)
        while len(self._recent) > _REMEMBERED:
            self._recent.popitem(last=False)

    async def _bucket(self) -> KeyValue:
        return await self._kv.get()

    async def get(self, case_owner: str, case_number: str) -> StoredTrail | None:
        """The case's trail, or None when the case has none."""
        return await self._read(trail_key(case_owner, case_number))

    async def _read(self, key: str) -> StoredTrail | None:
        kv = await self._bucket()
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
        """Apply ``change`` with compare-and-set (creating the entry if it has none); the trail
        right after this change (later changes of other callers may follow in the same write).

        ``change`` may run several times; it must depend only on the trail it is given. Changes
        to one case made concurrently in this process are applied one after the other in the
        order they came, and stored together.
        """
        key = trail_key(case_owner, case_number)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(case_number=case_number)
        pending = _Pending(change, asyncio.get_running_loop().create_future())
        lane.queue.append(pending)
        if lane.writer is None:
            lane.writer = asyncio.create_task(self._write_lane(key, lane), name=f"trail-writer-{key[:12]}")
        # A caller that gives up (cancelled) cancels its future; a change not yet taken into a
        # batch is then dropped, one already taken may still be stored, as any cancelled write.
        return await pending.done

    async def _write_lane(self, key: str, lane: _Lane) -> None:
        """Commit what the lane holds, batch after batch, until it is empty."""
        try:
            while lane.queue:
                batch = [p for p in lane.queue if not p.done.done()]
                lane.queue = []
                if batch:
                    await self._commit(key, lane.case_number, batch)
        except BaseException as exc:
            # Only cancellation (the loop is closing) or a bug gets here: no caller may hang.
            for pending in lane.queue:
                _settle(pending, exc)
            lane.queue = []
            raise
        finally:
            lane.writer = None
            if self._lanes.get(key) is lane:
                del self._lanes[key]

    async def _commit(self, key: str, case_number: str, batch: list[_Pending]) -> None:
        """Apply ``batch`` in order on one copy and store it with one compare-and-set."""
        try:
            kv = await self._bucket()
        except BaseException as exc:
            for pending in batch:
                _settle(pending, exc)
            if isinstance(exc, Exception):
                return  # handed to every caller; the lane goes on with what queued meanwhile
            raise
        remembered = self._recent.get(key)
        for attempt in range(_CAS_ATTEMPTS):
            try:
                current = remembered if remembered is not None else await self._read(key)
            except BaseException as exc:
                for pending in batch:
                    _settle(pending, exc)
                if isinstance(exc, Exception):
                    return
                raise
            stale = remembered is not None
            remembered = None
            applied = _apply(current, batch, judged_on_copy=stale)
            if applied is None:
                continue  # judged on a copy that may be stale: judge again on a fresh one
            trail, outcomes = applied
            if trail is None:  # nothing to store: every change left the trail as it is
                for pending, outcome in outcomes:
                    _settle(pending, outcome)
                return
            data = trail.SerializeToString()
            try:
                if current is None:
                    revision = await kv.create(key, data)
                else:
                    revision = await kv.update(key, data, last=current.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                # Another replica wrote this case since: read it again after a random pause.
                self._remember(key, None)
                log.debug("trail_store.cas_retry", case=case_number, attempt=attempt + 1, batch=len(batch))
                await asyncio.sleep(random.uniform(0, min(_BACKOFF_MAX, _BACKOFF_FIRST * 2**attempt)))  # noqa: S311 -- jitter, not a secret
                continue
            except nats.errors.Error as exc:
                self._remember(key, None)
                error = UnavailableError(f"cannot store the money trail: {exc}")
                error.__cause__ = exc
                for pending in batch:
                    _settle(pending, error)
                return
            except BaseException as exc:  # cancelled mid-write: it may or may not have landed
                self._remember(key, None)
                for pending in batch:
                    _settle(pending, exc)
                raise
            self._remember(key, StoredTrail(trail, revision))  # nobody else holds this copy
            for pending, outcome in outcomes:
                _settle(pending, outcome)
            return
        log.warning("trail_store.cas_exhausted", case=case_number, batch=len(batch))
        conflict = ConflictError(
            f"the money trail of case {case_number} kept changing under concurrent updates"
        )
        for pending in batch:
            _settle(pending, conflict)


_Outcome = trail_pb2.Trail | None | BaseException


def _apply(
    current: StoredTrail | None, batch: list[_Pending], *, judged_on_copy: bool
) -> tuple[trail_pb2.Trail | None, list[tuple[_Pending, _Outcome]]] | None:
    """Run the batch's changes in order, each on a fresh copy of the trail so far.

    Returns the trail to store (None when no change changed anything) and each caller's outcome:
    the trail right after its change, or what it raised. Returns None when the trail was a
    remembered copy and a change raised or nothing changed: that must be judged on the stored
    trail, not on a copy that may be stale.
    """
    trail = current.trail if current is not None else None
    outcomes: list[tuple[_Pending, _Outcome]] = []
    changed = False
    for pending in batch:
        try:
            updated = pending.change(_copy(trail))
        except Exception as exc:
            if judged_on_copy:
                return None
            outcomes.append((pending, exc))
            continue
        if updated is None:
            outcomes.append((pending, _copy(trail)))
        else:
            trail, changed = updated, True
            outcomes.append((pending, updated))
    if not changed:
        return None if judged_on_copy else (None, outcomes)
    # Each caller keeps the object its own change returned; the store keeps a copy of the last.
    return _copy(trail), outcomes


def _settle(pending: _Pending, outcome: _Outcome) -> None:
    if pending.done.done():  # the caller gave up (cancelled)
        return
    if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
        pending.done.cancel()  # the writer itself was cancelled: the loop is going away
    elif isinstance(outcome, BaseException):
        pending.done.set_exception(outcome)
    else:
        pending.done.set_result(outcome)
