"""The watch log: every accepted lifecycle event, in order, on the GC_WATCH stream.

The records are the request journal's (``_store.RequestStore`` writes them: each holds the
request's status after one event), so watching costs no write of its own. Watch streams read it
through an ordered push consumer of their own; the stream sequence is the resume cursor, so a
client that reconnects with its last cursor gets exactly the events after it, none twice.
Subjects carry sender, recipient, case owner and case, so each watcher's filter is applied by the
server.

Why not nats-py's ``ordered_consumer=True``: it notices a lost consumer only when two whole
heartbeat periods pass without one (10 to 20 s at its 5 s default), and a re-creation that fails
(JetStream still recovering after a restart) is reported to the error callback and not tried again
until the next such period. A watcher then sat silent for 12 to 17 s after every nats-server
restart. :class:`_Follower` re-creates its consumer as soon as the connection has reconnected, or
heartbeats stop, or the consumer sequence skips, and keeps retrying with a short backoff; it always
resumes at the stream sequence after the last record it yielded, so nothing is lost or repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import nats.errors
import structlog
from greenchannel.v1 import bus_pb2, lifecycle_pb2
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from broker.protocol import WATCH_STREAM, StatusSubject, parse_status_subject, status_filter

from ._errors import UnavailableError

__all__ = ["WatchConfig", "WatchLog", "WatchPosition", "watch_record"]

log = structlog.get_logger(__name__)

# JetStream status headers (nats-py keeps them as plain header values).
_STATUS = "Status"
_CONTROL = "100"  # an idle heartbeat, or a flow control request when it has a reply subject
_LAST_CONSUMER = "Nats-Last-Consumer"
_STALLED = "Nats-Consumer-Stalled"


def watch_record(status: lifecycle_pb2.RequestStatus, cursor: int) -> bus_pb2.WatchResponse:
    """What a watcher is sent for a journal record: the event it added and the state after it."""
    record = bus_pb2.WatchResponse(request_id=status.id, state=status.state, cursor=cursor)
    if status.events:  # the broker never writes a record without its event
        record.event.CopyFrom(status.events[-1])
    return record


@dataclass(frozen=True, kw_only=True)
class WatchPosition:
    """Where a watch starts."""

    after_cursor: int = 0
    """Resume after this stream sequence; 0 starts at the beginning (or now, with only_new)."""
    only_new: bool = False
    """Only events from now on."""


@dataclass(frozen=True, kw_only=True)
class WatchConfig:
    """How a watch follows GC_WATCH and how fast it recovers its consumer."""

    idle_heartbeat: float = 1.0
    """Seconds between the server's heartbeats on an idle watch. They are how a consumer lost
    without a reconnect (its cluster node died) is noticed; one small message per watcher."""
    missed_heartbeats: int = 3
    """Heartbeat periods without any message before the consumer is presumed gone and re-created."""
    poll: float = 0.5
    """Seconds between looks at the connection while the watch is idle: a reconnect is noticed
    within this, so a watcher resumes about as soon as NATS is back."""
    retry_initial: float = 0.1
    """First pause after a failed consumer (re-)creation; doubled per failure up to retry_max."""
    retry_max: float = 1.0
    """Longest pause between (re-)creation attempts."""
    give_up_after: float = 60.0
    """Seconds of failed re-creations before the watch ends with UNAVAILABLE (the client resumes
    from its cursor); the first creation fails at once instead."""
    inactive_threshold: float = 5.0
    """Seconds after which the server removes a consumer nobody listens to (a watch that ended or
    a broker that was killed); re-creation also leaves the old one to this."""
    request_timeout: float = 2.0
    """Seconds one consumer creation (or stream info) request may take."""

    def __post_init__(self) -> None:
        if self.idle_heartbeat <= 0 or self.missed_heartbeats < 1 or self.poll <= 0:
            raise ValueError("WatchConfig: idle_heartbeat and poll must be > 0, missed_heartbeats >= 1")
        if self.retry_initial <= 0 or self.retry_max < self.retry_initial:
            raise ValueError("WatchConfig: need 0 < retry_initial <= retry_max")


class WatchLog:
    def __init__(
        self,
        js: JetStreamContext,
        *,
        config: WatchConfig | None = None,
    ) -> None:
        self._js = js
        self._config = config or WatchConfig()

    async def _case_subjects(
        self, case_number: str, case_owner: str = "*", *, sender: str = "*", recipient: str = "*"
    ) -> list[StatusSubject]:
        """The subjects the watch log holds for a case: one per request, naming its id and parties.

        One stream-info call; no record is read.
        """
        try:
            case = status_filter(
                case_owner=case_owner, case_number=case_number, sender=sender, recipient=recipient
            )
            info = await self._js.stream_info(WATCH_STREAM, subjects_filter=case)
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"cannot read the watch log: {exc}") from exc
        parsed = (parse_status_subject(subject) for subject in info.state.subjects or {})
        return [subject for subject in parsed if subject is not None]

    async def case_parties(self, case_number: str) -> set[str]:
        """Every agency that is sender, recipient or owner of a request of ``case_number``.
        Empty: the case has no request yet."""
        return {
            party
            for subject in await self._case_subjects(case_number)
            for party in (subject.sender, subject.recipient, subject.case_owner)
        }

    async def request_ids(
        self, case_owner: str, case_number: str, *, sender: str = "*", recipient: str = "*"
    ) -> list[str]:
        """The ids of the case's requests, oldest first (UUIDv7 ids sort by submission time: a
        conversion comes after the hold it converts). The money trail shows pending holds by them;
        ``sender`` and ``recipient`` narrow the list to one pair of parties."""
        subjects = await self._case_subjects(case_number, case_owner, sender=sender, recipient=recipient)
        return sorted({subject.request_id for subject in subjects})

    async def follow(
        self,
        filters: Sequence[str],
        position: WatchPosition,
        *,
        admit: Callable[[str], bool] | None = None,
    ) -> AsyncIterator[bus_pb2.WatchResponse]:
        """Yield matching records with their cursor set, until the caller stops iterating.

        ``admit`` sees each record's subject first (it names the parties and the case): records
        it refuses are skipped unread.

        Raises UnavailableError when the watch cannot be started, or when NATS stays away for
        longer than ``give_up_after``.
        """
        follower = _Follower(self._js, list(filters), self._config)
        try:
            await follower.start(position)
            while True:
                msg = await follower.next()
                if admit is not None and not admit(msg.subject):
                    continue
                status = lifecycle_pb2.RequestStatus.FromString(msg.data)
                yield watch_record(status, msg.metadata.sequence.stream)
        finally:
            await asyncio.shield(follower.close())


class _Follower:
    """One watcher's ordered consumer on GC_WATCH, re-created from its last stream sequence."""

    def __init__(self, js: JetStreamContext, filters: list[str], config: WatchConfig) -> None:
        self._js = js
        # The consumer's deliver subject is an inbox of this connection: JetStreamContext keeps it.
        self._nc: Client = js._nc
        self._filters = filters
        self._config = config
        self._sub: Subscription | None = None
        self._last_seq = 0
        """Stream sequence of the last record handed out (or of the start, for only_new)."""
        self._next_dseq = 1
        """Consumer sequence the next record must carry; anything else means a gap."""
        self._reconnects = 0
        self._last_heard = 0.0

    async def start(self, position: WatchPosition) -> None:
        if position.after_cursor:
            self._last_seq = position.after_cursor
        elif position.only_new:
            # Fixed as a sequence now, so a re-created consumer starts at the same place.
            try:
                info = await asyncio.wait_for(
                    self._js.stream_info(WATCH_STREAM), self._config.request_timeout
                )
            except (nats.errors.Error, TimeoutError) as exc:
                raise UnavailableError(f"cannot watch: {exc}") from exc
            self._last_seq = info.state.last_seq
        try:
            await self._open()
        except (nats.errors.Error, TimeoutError) as exc:
            await self.close()
            raise UnavailableError(f"cannot watch: {exc}") from exc

    async def _open(self) -> None:
        """Subscribe a fresh inbox and create a consumer delivering to it after ``_last_seq``."""
        await self._drop_subscription()
        self._reconnects = self._nc.stats["reconnects"]
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        self._sub = sub
        config = ConsumerConfig(
            filter_subjects=self._filters,
            deliver_subject=inbox,
            ack_policy=AckPolicy.NONE,
            max_deliver=1,
            flow_control=True,
            idle_heartbeat=self._config.idle_heartbeat,
            inactive_threshold=self._config.inactive_threshold,
            num_replicas=1,
            mem_storage=True,
        )
        if self._last_seq:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = self._last_seq + 1
        else:
            config.deliver_policy = DeliverPolicy.ALL
        await self._js.add_consumer(WATCH_STREAM, config, timeout=self._config.request_timeout)
        self._next_dseq = 1
        self._last_heard = time.monotonic()

    async def _reopen(self, why: str) -> None:
        """Re-create the consumer after ``_last_seq``, retrying until it works or time runs out."""
        config = self._config
        self._check_open()
        log.info("watch.consumer_reopening", reason=why, after_seq=self._last_seq)
        pause = config.retry_initial
        give_up_at = time.monotonic() + config.give_up_after
        attempts = 0
        while True:
            self._check_open()
            attempts += 1
            if self._nc.is_connected:
                try:
                    await self._open()
                except (nats.errors.Error, TimeoutError) as exc:
                    log.debug("watch.consumer_reopen_failed", error_type=type(exc).__name__, attempt=attempts)
                else:
                    log.info(
                        "watch.consumer_reopened", reason=why, after_seq=self._last_seq, attempts=attempts
                    )
                    return
            if time.monotonic() >= give_up_at:
                raise UnavailableError(
                    f"cannot watch: no consumer on {WATCH_STREAM} for {config.give_up_after}s"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, config.retry_max)

    def _check_open(self) -> None:
        # Closing or draining (the broker stops): no consumer will come back on this connection.
        if self._nc.is_closed or self._nc.is_draining:
            raise UnavailableError("cannot watch: the NATS connection is closing")

    async def next(self) -> Msg:
        """The next record (in stream order, none twice), re-creating the consumer as needed."""
        config = self._config
        stall_after = config.idle_heartbeat * config.missed_heartbeats
        while True:
            sub = self._sub
            if sub is None:
                await self._reopen("unsubscribed")
                continue
            try:
                msg: Msg | None = await sub.next_msg(timeout=config.poll)
            except TimeoutError:
                msg = None
            except nats.errors.Error as exc:  # the subscription went away under us
                await self._reopen(type(exc).__name__)
                continue
            if self._nc.stats["reconnects"] != self._reconnects:
                # A restarted server forgot the (memory, R1) consumer; on a mere blip it still
                # exists, but a fresh one after the last record costs one request and is safe.
                await self._reopen("reconnected")
                continue
            now = time.monotonic()
            if msg is None:
                if self._nc.is_connected and now - self._last_heard > stall_after:
                    await self._reopen("heartbeats_missed")
                elif not self._nc.is_connected:
                    self._last_heard = now  # silence while disconnected is not the consumer's fault
                continue
            self._last_heard = now
            status = msg.headers.get(_STATUS) if msg.headers else None
            if status is None:
                if msg.metadata.sequence.consumer != self._next_dseq:
                    # A record was dropped (slow consumer) or the server restarted the sequence.
                    await self._reopen("sequence_gap")
                    continue
                self._next_dseq += 1
                self._last_seq = msg.metadata.sequence.stream
                return msg
            if status != _CONTROL:
                await self._reopen(f"status_{status}")  # e.g. 409: the consumer was deleted
                continue
            await self._control(msg)

    async def _control(self, msg: Msg) -> None:
        """Answer flow control, check a heartbeat's idea of what we were sent."""
        headers = msg.headers or {}
        # A lost answer only pauses delivery: the next heartbeat names the stall, or the
        # reconnect that lost it makes a new consumer.
        with contextlib.suppress(nats.errors.Error):
            if msg.reply:
                # A flow control request: every record before it has been handed out already.
                await self._nc.publish(msg.reply)
                return
            stalled = headers.get(_STALLED)
            if stalled:
                await self._nc.publish(stalled)
        last = headers.get(_LAST_CONSUMER)
        if last is not None and last.isdigit() and int(last) != self._next_dseq - 1:
            await self._reopen("heartbeat_gap")

    async def _drop_subscription(self) -> None:
        sub, self._sub = self._sub, None
        if sub is None:
            return
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()

    async def close(self) -> None:
        """Stop listening; the server removes the consumer after ``inactive_threshold``."""
        try:
            await self._drop_subscription()
        except asyncio.CancelledError:
            log.debug("watch.unsubscribe_cancelled")
