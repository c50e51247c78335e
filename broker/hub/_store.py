"""Request state as the journal of its events: the broker's only record of a request.

Every accepted lifecycle event of a request is one message on GC_WATCH, on the request's subject
``gc.status.<request id>.<sender>.<recipient>.<case owner>.<case>``, holding the request's full
``RequestStatus`` after that event (the event itself is ``status.events[-1]``). That one durable
write is at once:

* the request's state: its current status is the last message on its subject;
* the Watch notification: watchers follow the stream with server-side subject filters;
* the ledger's source: the sequencers chain every record from this stream.

Changes are compare-and-set on the request's subject: a write carries
``Nats-Expected-Last-Subject-Sequence`` = the stream sequence of the record it was computed from
(0 for the first), so two broker replicas applying events to one request never overwrite each
other; the loser re-reads and re-applies its change on top. A write whose PubAck was lost and that
did land is found by the retry: its compare-and-set fails, the re-read shows the event applied,
and the change has nothing left to do.

The first record (SUBMITTED) also binds the client's idempotency key: its ``Nats-Msg-Id`` is
derived from (sender, key), so a retry within the stream's duplicate window (the idempotency
horizon) is answered "duplicate" with the sequence of the first request's record.

A replica remembers the statuses it wrote last, with their sequences, and tries its next change on
top of that copy first: most events of a request are applied by the replica that stored it, so the
read before the compare-and-set is usually waste. The copy is only ever a guess: a compare-and-set
on it fails if anyone wrote since, and a change that refuses or finds nothing to do on the copy is
decided again on a fresh read, since an older state may refuse what the current one allows.

After a crash nothing needs rebuilding: the stream is the state, and a replica's memory is a cache.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta

import nats.errors
import nats.js.errors
import structlog
from google.protobuf.message import DecodeError
from greenchannel.v1 import lifecycle_pb2
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from broker.protocol import (
    IDEMPOTENCY_BUCKET,
    WATCH_STREAM,
    status_filter,
    status_subject,
    validate_request_id,
)

from ._errors import ConflictError, NotFoundError, UnavailableError
from ._metrics import BrokerMetrics

__all__ = [
    "IN_FLIGHT_GRACE",
    "Created",
    "IdempotencyStore",
    "LazyBucket",
    "RequestStore",
    "StoredStatus",
    "idempotency_msg_id",
    "never_stored",
    "open_bucket",
]

log = structlog.get_logger(__name__)

_CAS_ATTEMPTS = 16
# Statuses (a few KiB each) a replica remembers for its next compare-and-set.
_REMEMBERED = 2048
# JetStream's answer to a failed Nats-Expected-Last-Subject-Sequence check.
_WRONG_LAST_SEQUENCE = 10071
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_CONTENT = "Gc-Content-Digest"


async def open_bucket(
    js: JetStreamContext, name: str, *, history: int = 1, ttl: timedelta | None = None, replicas: int = 1
) -> KeyValue:
    """Bind to a KV bucket, creating it on first use. Safe when several replicas race to create it."""
    try:
        return await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        pass
    except nats.errors.Error as exc:
        raise UnavailableError(f"cannot open KV bucket {name}: {exc}") from exc
    config = KeyValueConfig(
        bucket=name,
        history=history,
        ttl=ttl.total_seconds() if ttl else None,
        storage=StorageType.FILE,
        replicas=replicas,
    )
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError:
        # Another replica created it between our look-up and create, with its own config.
        return await js.key_value(name)
    except nats.errors.Error as exc:
        raise UnavailableError(f"cannot create KV bucket {name}: {exc}") from exc


IN_FLIGHT_GRACE = timedelta(seconds=60)
"""How long a reservation made for a request about to be stored (a return's payouts, a partial
release, an open appeal) is taken to be in flight when the journal does not have the request: after
that, it was never stored (intake failed or the broker died) and no longer counts."""


async def never_stored(requests: RequestStore, request_id: str) -> bool:
    """Whether the journal says it has no such request (False when it cannot say): a reservation
    made for it is freed only then."""
    try:
        await requests.get(request_id)
    except NotFoundError:
        return True
    except Exception:
        return False
    return False


class LazyBucket:
    """A KV bucket opened (and created if need be) on first use, so components that keep one can
    be wired synchronously; concurrent first uses open it once."""

    def __init__(self, js: JetStreamContext, name: str, *, replicas: int = 1) -> None:
        self._js = js
        self._name = name
        self._replicas = replicas
        self._kv: KeyValue | None = None
        self._opening = asyncio.Lock()

    async def get(self) -> KeyValue:
        if self._kv is None:
            async with self._opening:
                if self._kv is None:
                    self._kv = await open_bucket(self._js, self._name, replicas=self._replicas)
        return self._kv


@dataclass(frozen=True)
class StoredStatus:
    """A request's status and the stream sequence of the record it was read from."""

    status: lifecycle_pb2.RequestStatus
    revision: int


@dataclass(frozen=True)
class Created:
    """What :meth:`RequestStore.create` did.

    ``stored``: the record is ours. Otherwise ``bound`` is the request that holds the idempotency
    key (with the content digest it was first submitted with, None if unknown), or None when a
    request with this id already exists.
    """

    stored: bool
    bound: StoredStatus | None = None
    bound_content: str | None = None


def idempotency_msg_id(sender: str, idempotency_key: str) -> str:
    """The ``Nats-Msg-Id`` of a SUBMITTED record: one per (sender, key), whatever the key holds.

    Hashed: client keys may hold characters headers should not; the sender is part of it so two
    agencies choosing the same key never collide.
    """
    return "idem-" + hashlib.sha256(f"{sender}\0{idempotency_key}".encode()).hexdigest()


def _subject(status: lifecycle_pb2.RequestStatus) -> str:
    return status_subject(
        sender=status.sender,
        recipient=status.recipient,
        case_owner=status.case_ref.issuing_agency,
        case_number=status.case_ref.case_number,
        request_id=status.id,
    )


def _wrong_last_sequence(exc: nats.errors.Error) -> bool:
    return isinstance(exc, nats.js.errors.APIError) and exc.err_code == _WRONG_LAST_SEQUENCE


class RequestStore:
    """Request statuses as the last record of each request's subject on GC_WATCH."""

    def __init__(
        self, js: JetStreamContext, *, stream: str = WATCH_STREAM, metrics: BrokerMetrics | None = None
    ) -> None:
        self._js = js
        self._stream = stream
        # Every state a request enters is written here, once: the one place that counts them.
        self._metrics = metrics or BrokerMetrics()
        self._written: OrderedDict[str, StoredStatus] = OrderedDict()

    def _remember(self, status: lifecycle_pb2.RequestStatus, revision: int) -> None:
        self._written[status.id] = StoredStatus(status=status, revision=revision)
        self._written.move_to_end(status.id)
        if len(self._written) > _REMEMBERED:
            self._written.popitem(last=False)

    def _remembered(self, request_id: str) -> StoredStatus | None:
        known = self._written.pop(request_id, None)
        if known is None:
            return None
        copy = lifecycle_pb2.RequestStatus()
        copy.CopyFrom(known.status)  # ``change`` may modify what it gets
        return StoredStatus(status=copy, revision=known.revision)

    async def create(self, status: lifecycle_pb2.RequestStatus, *, msg_id: str, content: str = "") -> Created:
        """Store a new request's first record (its SUBMITTED event).

        ``msg_id`` binds the idempotency key (:func:`idempotency_msg_id`); ``content`` is the
        digest of what the request asks, kept with the record so a reused key with another body
        is told apart from a retry.
        """
        headers = {"Nats-Msg-Id": msg_id, _EXPECTED_LAST: "0"}
        if content:
            headers[_CONTENT] = content
        try:
            ack = await self._js.publish(_subject(status), status.SerializeToString(), headers=headers)
        except nats.errors.Error as exc:
            if _wrong_last_sequence(exc):
                return Created(stored=False)
            raise UnavailableError(f"cannot store request: {exc}") from exc
        if ack.duplicate:
            bound, bound_content = await self._at(ack.seq)
            return Created(stored=False, bound=bound, bound_content=bound_content)
        self._remember(status, ack.seq)
        self._metrics.status_written(None, status)
        return Created(stored=True)

    async def _at(self, seq: int) -> tuple[StoredStatus, str | None]:
        """The record at stream sequence ``seq`` and its content digest header."""
        try:
            msg = await self._js.get_msg(self._stream, seq)
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot read request record {seq}: {exc}") from exc
        status = lifecycle_pb2.RequestStatus.FromString(msg.data or b"")
        content = (msg.headers or {}).get(_CONTENT)
        return StoredStatus(status=status, revision=seq), content or None

    async def get(self, request_id: str) -> StoredStatus:
        """The current status: the last record on the request's subject."""
        try:
            subject = status_filter(request_id=validate_request_id(request_id))
        except ValueError as exc:
            raise NotFoundError(f"no request {request_id}") from exc
        try:
            msg = await self._js.get_last_msg(self._stream, subject)
        except nats.js.errors.NotFoundError as exc:
            raise NotFoundError(f"no request {request_id}") from exc
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot read request: {exc}") from exc
        try:
            status = lifecycle_pb2.RequestStatus.FromString(msg.data or b"")
        except DecodeError as exc:
            raise UnavailableError(f"request {request_id} has a record that does not parse") from exc
        return StoredStatus(status=status, revision=msg.seq or 0)

    async def update(
        self,
        request_id: str,
        change: Callable[[lifecycle_pb2.RequestStatus], lifecycle_pb2.RequestStatus | None],
    ) -> lifecycle_pb2.RequestStatus:
        """Apply ``change`` with compare-and-set, re-reading and re-applying on conflict.

        ``change`` gets a fresh copy each attempt and returns the new status (with the event it
        adds last in ``events``), or None to leave the request as it is (e.g. the event was
        already applied). It may raise to refuse.
        """
        metrics = self._metrics
        guess = self._remembered(request_id)
        if guess is not None:
            before = metrics.before(guess.status)
            try:
                updated = change(guess.status)
            except Exception:  # decided again below, on the current state
                updated = None
            if updated is not None and await self._write(updated, guess.revision):
                metrics.status_written(before, updated)
                return updated
        for _ in range(_CAS_ATTEMPTS):
            current = await self.get(request_id)
            before = metrics.before(current.status)
            updated = change(current.status)
            if updated is None:
                self._remember(current.status, current.revision)
                return current.status
            if await self._write(updated, current.revision):
                metrics.status_written(before, updated)
                return updated
        raise ConflictError(f"request {request_id} kept changing under concurrent updates")

    async def _write(self, updated: lifecycle_pb2.RequestStatus, last: int) -> bool:
        """Compare-and-set; False when someone else wrote since ``last``."""
        try:
            ack = await self._js.publish(
                _subject(updated), updated.SerializeToString(), headers={_EXPECTED_LAST: str(last)}
            )
        except nats.errors.Error as exc:
            if _wrong_last_sequence(exc):
                log.debug("request_store.cas_retry", request_id=updated.id)
                return False
            raise UnavailableError(f"cannot update request: {exc}") from exc
        self._remember(updated, ack.seq)
        return True

    async def scan(self) -> AsyncIterator[lifecycle_pb2.RequestStatus]:
        """Every stored request. A full scan: fine for the reference deployment's List."""
        # One subject per request; the server lists them in one reply.
        try:
            info = await self._js.stream_info(self._stream, subjects_filter=status_filter())
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot list requests: {exc}") from exc
        # Sorted by request id: the subject starts with it.
        for subject in sorted(info.state.subjects or {}):
            try:
                msg = await self._js.get_last_msg(self._stream, subject)
            except nats.js.errors.NotFoundError:
                continue
            except nats.errors.Error as exc:
                raise UnavailableError(f"cannot list requests: {exc}") from exc
            yield lifecycle_pb2.RequestStatus.FromString(msg.data or b"")


class IdempotencyStore:
    """The broker's own idempotency keys, kept for good: (sender, key) -> the request id.

    Clients' keys bind through the SUBMITTED record (:func:`idempotency_msg_id`, within the
    journal's duplicate window). The requests the broker originates itself (the child stop-payments
    of a money chase, the release of a lapsed hold) are re-derived from causes that may come back
    at any time (an outcome or a timer redelivered after a long outage), so their keys are claimed
    here, without expiry, before the request is stored: one more write, for those requests only."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, *, replicas: int = 1) -> IdempotencyStore:
        return cls(await open_bucket(js, IDEMPOTENCY_BUCKET, replicas=replicas))

    @staticmethod
    def _key(sender: str, idempotency_key: str) -> str:
        # Client keys may hold characters KV keys cannot; the sender is part of the key so
        # two agencies choosing the same key never collide.
        return hashlib.sha256(f"{sender}\0{idempotency_key}".encode()).hexdigest()

    async def claim(
        self, sender: str, idempotency_key: str, request_id: str, *, content: str = ""
    ) -> tuple[str, str | None]:
        """Atomically bind the key to ``request_id`` and the request's ``content`` digest.

        Returns ``(request id, content digest)`` the key is bound to: ours, or the earlier
        request's. The digest is None for a key bound before digests were kept (then any body
        counts as a retry, as it did).
        """
        key = self._key(sender, idempotency_key)
        value = f"{request_id} {content}" if content else request_id
        try:
            await self._kv.create(key, value.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            try:
                entry = await self._kv.get(key)
            except nats.errors.Error as exc:
                raise UnavailableError(f"cannot read idempotency key: {exc}") from exc
            bound, _, digest = (entry.value or b"").decode().partition(" ")
            return bound, digest or None
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot store idempotency key: {exc}") from exc
        return request_id, content or None
