"""Request state and idempotency keys in NATS KV: the broker's only state, so replicas share it.

Every change is a compare-and-set on the entry's revision (``update(last=rev)``): two broker
replicas applying events to one request never overwrite each other; the loser re-reads and
re-applies its change on top.

A replica remembers the statuses it wrote last, with their revisions, and tries its next change
on top of that copy first: most events of a request are applied by the replica that stored it,
so the read before the compare-and-set is usually waste. The copy is only ever a guess. A
compare-and-set on it fails if anyone wrote since, and a change that refuses or finds nothing to
do on the copy is decided again on a fresh read, since an older state may refuse what the
current one allows.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta

import nats.errors
import nats.js.errors
import structlog
from greenchannel.v1 import lifecycle_pb2
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from broker.protocol import IDEMPOTENCY_BUCKET, REQUESTS_BUCKET

from ._errors import ConflictError, NotFoundError, UnavailableError

__all__ = ["IdempotencyStore", "RequestStore", "StoredStatus", "open_bucket"]

log = structlog.get_logger(__name__)

_CAS_ATTEMPTS = 16
# Statuses (a few KiB each) a replica remembers for its next compare-and-set.
_REMEMBERED = 2048


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


@dataclass(frozen=True)
class StoredStatus:
    """A request's status and the KV revision it was read at."""

    status: lifecycle_pb2.RequestStatus
    revision: int


class RequestStore:
    """One KV entry per request (key: request id), holding a RequestStatus without personal data."""

    def __init__(self, kv: KeyValue, js: JetStreamContext, bucket: str = REQUESTS_BUCKET) -> None:
        self._kv = kv
        self._js = js
        self._bucket = bucket
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

    @classmethod
    async def open(cls, js: JetStreamContext, *, replicas: int = 1) -> RequestStore:
        return cls(await open_bucket(js, REQUESTS_BUCKET, replicas=replicas), js)

    async def create(self, status: lifecycle_pb2.RequestStatus) -> bool:
        """Store a new request; False if a request with this id already exists."""
        try:
            revision = await self._kv.create(status.id, status.SerializeToString())
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot store request: {exc}") from exc
        self._remember(status, revision)
        return True

    async def get(self, request_id: str) -> StoredStatus:
        try:
            entry = await self._kv.get(request_id)
        except (
            nats.js.errors.KeyNotFoundError,
            nats.js.errors.KeyDeletedError,
            nats.js.errors.InvalidKeyError,
        ) as exc:
            raise NotFoundError(f"no request {request_id}") from exc
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot read request: {exc}") from exc
        status = lifecycle_pb2.RequestStatus.FromString(entry.value or b"")
        return StoredStatus(status=status, revision=entry.revision or 0)

    async def update(
        self,
        request_id: str,
        change: Callable[[lifecycle_pb2.RequestStatus], lifecycle_pb2.RequestStatus | None],
    ) -> lifecycle_pb2.RequestStatus:
        """Apply ``change`` with compare-and-set, re-reading and re-applying on conflict.

        ``change`` gets a fresh copy each attempt and returns the new status, or None to leave
        the entry as it is (e.g. the event was already applied). It may raise to refuse.
        """
        guess = self._remembered(request_id)
        if guess is not None:
            try:
                updated = change(guess.status)
            except Exception:  # decided again below, on the current state
                updated = None
            if updated is not None:
                written = await self._write(request_id, updated, guess.revision)
                if written:
                    return updated
        for _ in range(_CAS_ATTEMPTS):
            current = await self.get(request_id)
            updated = change(current.status)
            if updated is None:
                return current.status
            if await self._write(request_id, updated, current.revision):
                return updated
        raise ConflictError(f"request {request_id} kept changing under concurrent updates")

    async def _write(self, request_id: str, updated: lifecycle_pb2.RequestStatus, last: int) -> bool:
        """Compare-and-set; False when someone else wrote since ``last``."""
        try:
            revision = await self._kv.update(request_id, updated.SerializeToString(), last=last)
        except nats.js.errors.KeyWrongLastSequenceError:
            log.debug("request_store.cas_retry", request_id=request_id)
            return False
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot update request: {exc}") from exc
        self._remember(updated, revision)
        return True

    async def scan(self) -> AsyncIterator[lifecycle_pb2.RequestStatus]:
        """Every stored request. A full scan: fine for the reference deployment's List."""
        # Keys come from the bucket stream's per-subject state, answered by the server in one
        # reply: nats-py's kv.keys() runs a watcher that can race itself and report no keys.
        prefix = f"$KV.{self._bucket}."
        try:
            info = await self._js.stream_info(f"KV_{self._bucket}", subjects_filter=prefix + ">")
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot list requests: {exc}") from exc
        keys = sorted(subject.removeprefix(prefix) for subject in (info.state.subjects or {}))
        for key in keys:
            try:
                yield (await self.get(key)).status
            except NotFoundError:
                continue  # deleted between listing and reading


class IdempotencyStore:
    """Client idempotency keys: (sender, key) -> the request id first submitted with them."""

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
