"""At most one open appeal per restriction, made atomic by one KV key per restriction.

Counting the open appeals in the journal cannot keep two appeals filed at the same instant apart
(neither is stored when the other is counted). So intake claims the restriction's key (KV
``gc_open_appeals``, key = the restriction's request id, value = the appeal's request id, its
idempotency binding and when it was claimed) BEFORE the appeal is stored, by ``create`` or by
compare-and-set over the key's last revision: of two appeals at once, one writes and the other
finds the key naming an appeal still open, and is refused ``APPEAL_PENDING``, nothing stored.

**Why a key cannot block for good.** It is never trusted alone: the appeal it names is looked up in
the journal. It blocks only while that appeal is open (submitted, delivered, acknowledged: not yet
decided), or while it is not in the journal yet but was claimed less than a grace period ago (an
appeal on its way to the journal, maybe on another replica). An appeal that was decided, rejected,
failed or cancelled, or that never reached the journal (intake failed, the broker died), does not
block: the next appeal against the restriction supersedes the key with its own, in the same one
write. Intake also deletes the key at once when it could not store the appeal. Nothing clears the
key when an appeal is decided: superseding it costs nothing extra.

**Retries.** The key carries the appeal's idempotency binding (sender and key, hashed, as the
journal's ``Nats-Msg-Id``): a retry of the same appeal finds it, is not refused as pending, and is
stored under the request id the key names, so intake answers it as the duplicate it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import nats.errors
import nats.js.errors
from greenchannel.v1 import common_pb2
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from broker.protocol import Clock

from ._errors import ConflictError, IllegalTransitionError, NotFoundError, UnavailableError
from ._store import IN_FLIGHT_GRACE, LazyBucket, RequestStore, never_stored

__all__ = ["OPEN_APPEALS_BUCKET", "OPEN_APPEAL_STATES", "OpenAppeal", "OpenAppeals"]

OPEN_APPEALS_BUCKET = "gc_open_appeals"
"""KV bucket of the restrictions' open appeals (key = the restriction's request id)."""

_CAS_ATTEMPTS = 16
_S = common_pb2
OPEN_APPEAL_STATES = frozenset(
    {_S.REQUEST_STATE_SUBMITTED, _S.REQUEST_STATE_DELIVERED, _S.REQUEST_STATE_ACKNOWLEDGED}
)
"""An appeal in these states is not decided yet."""


@dataclass(frozen=True, kw_only=True)
class OpenAppeal:
    """What a restriction's key says."""

    request_id: str
    """The appeal's request id."""
    order_key: str
    """Its idempotency binding (hashed; no space in it)."""
    claimed_at: datetime
    """When intake claimed the key, just before storing the appeal."""

    def encode(self) -> bytes:
        return f"{self.request_id} {self.order_key} {self.claimed_at.isoformat()}".encode()

    @classmethod
    def decode(cls, data: bytes) -> OpenAppeal:
        request_id, order_key, claimed_at = data.decode().split(" ")
        return cls(request_id=request_id, order_key=order_key, claimed_at=datetime.fromisoformat(claimed_at))


class OpenAppeals:
    """The restrictions' open-appeal keys, checked against the journal."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        requests: RequestStore,
        clock: Clock,
        replicas: int = 1,
        grace: timedelta = IN_FLIGHT_GRACE,
    ) -> None:
        self._kv = LazyBucket(js, OPEN_APPEALS_BUCKET, replicas=replicas)
        self._requests = requests
        self._clock = clock
        self._grace = grace

    async def _bucket(self) -> KeyValue:
        return await self._kv.get()

    async def current(self, restriction_id: str) -> tuple[OpenAppeal | None, int | None]:
        """The appeal the key names (None when none) and the key's revision (None when none)."""
        kv = await self._bucket()
        try:
            entry = await kv.get(restriction_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None, None
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot read the restriction's open appeal: {exc}") from exc
        return OpenAppeal.decode(entry.value or b""), entry.revision

    async def refuse_if_open(self, restriction_id: str, *, order_key: str) -> None:
        """Raise ``APPEAL_PENDING`` when another appeal against the restriction is open (read only:
        the early check; :meth:`claim` decides again as it writes)."""
        named, _ = await self.current(restriction_id)
        if named is not None and named.order_key != order_key and await self._blocks(named):
            raise _pending(named)

    async def claim(self, restriction_id: str, *, request_id: str, order_key: str) -> str:
        """Name ``request_id`` as the restriction's open appeal, unless another open one is named
        (``APPEAL_PENDING``); the request id to store the appeal under (a retry's first id)."""
        kv = await self._bucket()
        for _ in range(_CAS_ATTEMPTS):
            named, revision = await self.current(restriction_id)
            if named is not None:
                if named.order_key == order_key:
                    return named.request_id
                if await self._blocks(named):
                    raise _pending(named)
            value = OpenAppeal(
                request_id=request_id, order_key=order_key, claimed_at=self._clock.now()
            ).encode()
            try:
                if revision is None:
                    await kv.create(restriction_id, value)
                else:
                    await kv.update(restriction_id, value, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another appeal claimed it since: look at that one
            except nats.errors.Error as exc:
                raise UnavailableError(f"cannot claim the restriction's open appeal: {exc}") from exc
            return request_id
        raise ConflictError("the restriction's open appeal kept changing under concurrent appeals")

    async def abandon(self, restriction_id: str, request_id: str) -> None:
        """Intake could not store the appeal: free the key unless the journal has it (best effort;
        a key left behind stops blocking after the grace period anyway)."""
        if not await never_stored(self._requests, request_id):
            return
        try:
            named, revision = await self.current(restriction_id)
            if named is not None and named.request_id == request_id:
                await (await self._bucket()).delete(restriction_id, last=revision)
        except (nats.errors.Error, UnavailableError):
            pass

    async def _blocks(self, named: OpenAppeal) -> bool:
        """Whether the appeal a key names still keeps another out: open, or on its way to the journal."""
        try:
            status = (await self._requests.get(named.request_id)).status
        except NotFoundError:
            return self._clock.now() < named.claimed_at + self._grace
        return status.state in OPEN_APPEAL_STATES


def _pending(named: OpenAppeal) -> IllegalTransitionError:
    return IllegalTransitionError(
        f"appeal {named.request_id} against this restriction is still open; it is decided first",
        reason="APPEAL_PENDING",
    )
