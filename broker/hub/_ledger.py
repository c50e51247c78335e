"""The tamper-evident ledger on JetStream: intake, sequencer, checkpoints, and reading it back.

Request and event handlers never wait for the chain. :class:`LedgerWriter` publishes an
unlinked entry (digests and metadata, never personal data) to the ``GC_LEDGER_INTAKE`` work
queue, with ``Nats-Msg-Id`` = the caller's stable record id, so a retried record is stored once.

Every broker replica runs a :class:`LedgerSequencer`; they share one durable pull consumer on the
intake. A sequencer gives each record its ``seq`` and ``prev_hash`` and appends it to
``GC_LEDGER`` (``deny_delete``, ``deny_purge``) with optimistic concurrency, so two replicas can
never fork the chain:

* every append carries ``Nats-Expected-Last-Subject-Sequence`` = the stream sequence of the
  last entry the sequencer knows for certain (from the PubAck of its own last append, or read
  back). The server stores it only while that entry is still the last one on
  ``gc.ledger.entry``, so its ``prev_hash`` is always the real head. Checkpoints, on their own
  subject, never get in the way of an append;
* ``Nats-Msg-Id`` of an append is derived from the record id: a sequencer that dies between
  appending and acking the intake leaves the record to be redelivered, and its second append is
  answered "duplicate" (within GC_LEDGER's duplicate window).

A refusal, a timeout or a duplicate ends the sequencer's certainty: it reads the head back from
the stream and retries what is left. The broker signs a checkpoint of the head at a fixed
interval when the head moved, and on shutdown; a checkpoint only ever names an entry that is
already in the stream, so it is true wherever it lands.

:class:`LedgerReader` reads entries and checkpoints back for the LedgerService.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType

import nats.errors
import nats.js.errors
import structlog
from google.protobuf.message import DecodeError
from greenchannel.v1 import common_pb2, envelope_pb2, ledger_pb2, lifecycle_pb2
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext

from broker.protocol import (
    BROKER_ID,
    LEDGER_CHECKPOINT_SUBJECT,
    LEDGER_ENTRY_SUBJECT,
    LEDGER_INTAKE_STREAM,
    LEDGER_INTAKE_SUBJECT,
    LEDGER_SEQUENCER_CONSUMER,
    LEDGER_STREAM,
    LEDGER_TIMELINE_CONSUMER,
    WATCH_STREAM,
    Clock,
    ConsumerLoop,
    ConsumerSpec,
    Lane,
    LaneOrder,
    NatsError,
    SigningKey,
    body_digest,
    build_entry,
    entry_hash,
    fetch_batch,
    link_entry,
    nats_error,
    parse_status_subject,
    parse_unlinked,
    sign_checkpoint,
    status_filter,
    validate_request_id,
)

from ._errors import UnavailableError

__all__ = [
    "LedgerConfig",
    "LedgerReader",
    "LedgerSequencer",
    "LedgerWriter",
    "StoredEntry",
    "ensure_ledger_streams",
    "timeline_record",
]

log = structlog.get_logger(__name__)

# JetStream error codes of a refused optimistic-concurrency check: wrong last sequence, and (on
# a cluster) another append to the subject still in flight / the check not ready yet.
_CONFLICTS = frozenset({10071, 10163, 10164})
_STREAM_NAME_IN_USE = 10058
# Failures a sequencer round survives by pausing and reading the head back.
_TRANSIENT = (NatsError, nats.errors.Error, TimeoutError)

# Record ids become Nats-Msg-Id headers: printable ASCII without spaces, bounded.
_RECORD_ID = re.compile(r"[!-~]{1,200}")
_INTAKE_DUPLICATE_WINDOW = timedelta(minutes=10)


@dataclass(frozen=True, kw_only=True)
class LedgerConfig:
    """How the sequencer runs; the defaults suit production, tests shorten the times."""

    checkpoint_interval: timedelta = timedelta(seconds=10)
    """How often the head is signed, when it moved since the last checkpoint."""

    batch: int = 256
    """Intake records taken per pull; each is then appended and acked in turn."""

    fetch_timeout: float = 1.0
    """Seconds an idle sequencer waits for intake records; also how often it checks the interval."""

    ack_wait: timedelta = timedelta(seconds=30)
    """How long a record taken by a sequencer that died stays invisible to the others."""

    publish_timeout: float = 5.0
    """Seconds to wait for the PubAck of an append or a checkpoint before reading the head back."""

    retry_delay: float = 0.2
    """First pause after NATS failed; doubles up to ``max_retry_delay`` while it keeps failing."""

    max_retry_delay: float = 5.0
    """Longest pause between attempts while NATS is unavailable."""

    shutdown_timeout: float = 5.0
    """Seconds the round in hand and the final checkpoint get on shutdown."""

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError("LedgerConfig.batch must be >= 1")
        if self.checkpoint_interval <= timedelta(0) or self.ack_wait <= timedelta(0):
            raise ValueError("LedgerConfig: checkpoint_interval and ack_wait must be positive")
        if min(self.fetch_timeout, self.publish_timeout, self.retry_delay, self.shutdown_timeout) <= 0:
            raise ValueError("LedgerConfig: timeouts and delays must be positive")


def _entry_msg_id(record_id: str) -> str:
    """``Nats-Msg-Id`` of a record's append: the same for every attempt, by any replica."""
    return f"entry:{record_id}"


def _checkpoint_msg_id(seq: int, head_hash: str) -> str:
    return f"checkpoint:{seq}:{head_hash}"


# -- streams ------------------------------------------------------------------------------------


async def ensure_ledger_streams(
    js: JetStreamContext, *, replicas: int = 1, duplicate_window: timedelta = _INTAKE_DUPLICATE_WINDOW
) -> None:
    """Create the intake work queue (GC_LEDGER itself comes with ``stream_specs``).

    A work queue deletes a record once a sequencer acked it, so recreating the sequencers'
    consumer can never chain old records a second time. Safe when replicas start together.
    """
    want = StreamConfig(
        name=LEDGER_INTAKE_STREAM,
        description="Ledger records waiting to be hash-chained (work queue for the sequencers).",
        subjects=[LEDGER_INTAKE_SUBJECT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=duplicate_window.total_seconds(),
    )
    action = f"ensure stream {LEDGER_INTAKE_STREAM}"
    try:
        try:
            info = await js.stream_info(LEDGER_INTAKE_STREAM)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(want)
            except nats.js.errors.APIError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise
            else:
                log.info("ledger.intake_created", stream=LEDGER_INTAKE_STREAM)
            return
        have = info.config
        # nats-py leaves enums read back from the server as plain strings.
        if str(getattr(have.retention, "value", have.retention)) != RetentionPolicy.WORK_QUEUE.value:
            raise NatsError(f"{action}: it exists with retention {have.retention}, not workqueue")
        if (have.num_replicas or 1) != replicas or abs(
            (have.duplicate_window or 0.0) - duplicate_window.total_seconds()
        ) > 1e-6:
            await js.update_stream(
                have.evolve(num_replicas=replicas, duplicate_window=duplicate_window.total_seconds())
            )
    except (nats.errors.Error, TimeoutError) as exc:
        raise nats_error(exc, action) from exc


# -- the timeline: what the watch log already holds -----------------------------------------------


def timeline_record(subject: str, data: bytes) -> tuple[str, bytes]:
    """``(record id, unlinked entry)`` for one record of the request journal (GC_WATCH).

    A record is the request's status after one event, which is its last. Every event the broker
    accepts into a request's timeline is published there once, durably, and the subject names the
    parties and the case: the sequencers chain it from there, instead of every handler writing it
    a second time to the intake. SUBMITTED records the request (actor: its sender; digest: the
    body the broker notarized, which is what the SUBMITTED event is bound to), ESCALATED a
    deadline breach, anything else a
    lifecycle event (the digest of the signed event). Raises ValueError for anything else.
    """
    parsed = parse_status_subject(subject)
    if parsed is None:
        raise ValueError(f"not a watch log subject: {subject!r}")
    request_id, sender, recipient, case_owner, case_number = parsed
    try:
        status = lifecycle_pb2.RequestStatus.FromString(data)
        record = status.events[-1]
        event = lifecycle_pb2.LifecycleEvent.FromString(record.event.payload)
    except (DecodeError, IndexError) as exc:
        raise ValueError("a watch log record that does not parse") from exc
    if not event.event_id or event.request_id != request_id or status.id != request_id:
        raise ValueError("a watch log record for another request than its subject names")
    actor = event.actor
    if event.state == common_pb2.REQUEST_STATE_SUBMITTED:
        kind = ledger_pb2.LEDGER_ENTRY_KIND_REQUEST
        actor = sender  # who asked; the broker only accepted
        digest = event.request_digest
    else:
        breach = event.state == common_pb2.REQUEST_STATE_ESCALATED
        kind = ledger_pb2.LEDGER_ENTRY_KIND_BREACH if breach else ledger_pb2.LEDGER_ENTRY_KIND_EVENT
        digest = body_digest(record.event.payload)
    entry = build_entry(
        kind=kind,
        actor=actor,
        at=record.recorded_at.ToDatetime(tzinfo=UTC),
        request_id=request_id,
        case_number=case_number,
        parties=list(dict.fromkeys((sender, recipient, case_owner))),
        state=event.state,
        subject_digest=digest,
    )
    return f"event:{event.event_id}", entry


# -- writer -------------------------------------------------------------------------------------


class LedgerWriter:
    """What handlers call: one durable publish to the intake, never a wait for the chain."""

    def __init__(self, js: JetStreamContext, *, timeout: float = 2.0, attempts: int = 3) -> None:
        self._js = js
        self._timeout = timeout
        self._attempts = attempts

    async def record(
        self,
        *,
        record_id: str,
        kind: ledger_pb2.LedgerEntryKind.ValueType,
        actor: str,
        request_id: str,
        case_number: str,
        parties: Sequence[str],
        state: common_pb2.RequestState.ValueType,
        subject_digest: str,
        at: datetime,
    ) -> None:
        """Queue one ledger entry. ``record_id`` is stable for what is recorded (say
        ``"event:<event id>"``): recording it again, after a retry or a redelivery, adds nothing.

        ``at`` is when the recorded thing happened by the broker's clock; it is part of the entry,
        so it must be the same on every retry. Raises :class:`~broker.hub.UnavailableError` when
        the intake does not answer after ``attempts`` tries.
        """
        data = build_entry(
            kind=kind,
            actor=actor,
            at=at,
            request_id=request_id,
            case_number=case_number,
            parties=parties,
            state=state,
            subject_digest=subject_digest,
        )
        await self._publish(record_id, data)

    async def record_refusal(
        self, *, record_id: str, caller: str | None, refusal: ledger_pb2.Refusal, at: datetime
    ) -> None:
        """Record refused API calls (one, or a summary of many: ``refusal.count``).

        ``caller`` is the authenticated agency, None when the call was refused before it was
        known (a bad bearer token): then the broker is the actor and only regulators read it.
        """
        data = build_entry(
            kind=ledger_pb2.LEDGER_ENTRY_KIND_REJECTION,
            actor=caller or BROKER_ID,
            at=at,
            parties=[caller] if caller else [],
            refusal=refusal,
        )
        await self._publish(record_id, data)

    async def _publish(self, record_id: str, data: bytes) -> None:
        if not isinstance(record_id, str) or _RECORD_ID.fullmatch(record_id) is None:
            raise ValueError("record_id must be 1-200 printable ASCII characters without spaces")
        failure: BaseException | None = None
        for attempt in range(1, self._attempts + 1):
            try:
                await self._js.publish(
                    LEDGER_INTAKE_SUBJECT,
                    data,
                    timeout=self._timeout,
                    stream=LEDGER_INTAKE_STREAM,
                    headers={"Nats-Msg-Id": record_id},
                )
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError) as exc:
                # The same Nats-Msg-Id again: if the first try was stored, this one is a duplicate.
                failure = exc
                await asyncio.sleep(0.05 * attempt)
                continue
            except nats.errors.Error as exc:
                raise UnavailableError(
                    f"ledger intake refused the record: {nats_error(exc, 'publish')}"
                ) from exc
            return
        log.warning("ledger.record_failed", record_id=record_id, attempts=self._attempts)
        raise UnavailableError("the ledger intake did not answer; retry shortly") from failure

    async def record_rejection(
        self, *, record_id: str, actor: str, request_id: str, refused: bytes, at: datetime
    ) -> None:
        """Record a message the broker refused (a forged or unverifiable event, an illegal step).

        ``refused`` is the refused message as it travelled; only its digest is kept. A
        ``request_id`` that is not a canonical UUID (the sender chose it) is left out.
        """
        try:
            request_id = validate_request_id(request_id) if request_id else ""
        except ValueError:
            request_id = ""
        await self.record(
            record_id=record_id,
            kind=ledger_pb2.LEDGER_ENTRY_KIND_REJECTION,
            actor=actor or BROKER_ID,
            request_id=request_id,
            case_number="",
            parties=[actor] if actor else [],
            state=common_pb2.REQUEST_STATE_UNSPECIFIED,
            subject_digest=body_digest(refused),
            at=at,
        )


# -- sequencer ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Head:
    """What the sequencer knows for certain: the chain head and where it stands in the stream."""

    seq: int
    """Seq of the last entry (0: empty ledger)."""
    hash: str
    """Its hash ("" for an empty ledger)."""
    position: int
    """Stream sequence of that entry (0: none)."""


@dataclass
class _Pending:
    msg: Msg
    record: bytes
    msg_id: str


class _Outcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # already chained by an earlier append: done
    RETRY = "retry"  # refused by the concurrency check, or no answer: chain it again


class LedgerSequencer:
    """Chains intake records into GC_LEDGER and signs checkpoints. Run one per broker replica.

    ``async with LedgerSequencer(js, broker_key, clock, config):`` starts it; leaving the block
    finishes the round in hand, signs a last checkpoint if the head moved, and stops.
    """

    def __init__(
        self,
        js: JetStreamContext,
        broker_key: SigningKey,
        clock: Clock,
        config: LedgerConfig | None = None,
    ) -> None:
        self._js = js
        self._key = broker_key
        self._clock = clock
        self._config = config or LedgerConfig()
        self._head: _Head | None = None
        self._checkpointed = 0
        self._last_checkpoint_at = clock.now()
        self._loop = ConsumerLoop(js, self._loop_spec(), batch_handler=self._round)
        self._delay = self._config.retry_delay
        self._closed = False
        self.appended = 0
        """Entries this sequencer appended (for metrics and tests)."""

    @property
    def head(self) -> tuple[int, str] | None:
        """``(seq, hash)`` of the chain head as last known, or None while unknown."""
        return None if self._head is None else (self._head.seq, self._head.hash)

    def _loop_spec(self) -> ConsumerSpec:
        """Both sources in one strict chain: one batch at a time, a pull always waiting on each,
        so a quiet intake never delays the timeline."""
        config = self._config

        def lane(durable: str, stream: str, subject: str, label: str) -> Lane:
            return Lane(
                durable=durable,
                stream=stream,
                filter_subject=subject,
                batch=config.batch,
                label=label,
                max_ack_pending=-1,
            )

        return ConsumerSpec(
            name="ledger-sequencer",
            lanes=(
                lane(LEDGER_SEQUENCER_CONSUMER, LEDGER_INTAKE_STREAM, LEDGER_INTAKE_SUBJECT, "intake"),
                lane(LEDGER_TIMELINE_CONSUMER, WATCH_STREAM, status_filter(), "timeline"),
            ),
            order=LaneOrder.FAIR,
            fetch_timeout=config.fetch_timeout,
            ack_wait=config.ack_wait.total_seconds(),
            shutdown_grace=config.shutdown_timeout,
        )

    async def __aenter__(self) -> LedgerSequencer:
        try:
            self._head = await self._resync()
            self._checkpointed = await self._last_checkpointed()
            self._last_checkpoint_at = self._clock.now()
            await self._loop.start()
        except (nats.errors.Error, TimeoutError) as exc:
            raise nats_error(exc, "start the ledger sequencer") from exc
        log.info("ledger.sequencer_started", head_seq=self._head.seq)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish the round in hand, sign the head if it moved, stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._loop.drain()
        try:
            await asyncio.wait_for(self._final_checkpoint(), timeout=self._config.shutdown_timeout)
        except _TRANSIENT as exc:
            # The head is signed by the next checkpoint of any replica; only say so when it is news.
            closed = isinstance(exc.__cause__ or exc, nats.errors.ConnectionClosedError)
            (log.info if closed else log.warning)(
                "ledger.final_checkpoint_failed", error=str(exc) or type(exc).__name__
            )
        await self._loop.aclose()
        log.info("ledger.sequencer_stopped", head_seq=self._head.seq if self._head else None)

    async def _round(self, lane: Lane, msgs: list[Msg]) -> None:
        """One pull of one source (empty when idle): chain it, sign the head when it is time."""
        source = self._from_intake if lane.durable == LEDGER_SEQUENCER_CONSUMER else self._from_timeline
        try:
            if self._head is None:
                self._head = await self._resync()
            if msgs:
                await self._chain([item for msg in msgs if (item := await source(msg))])
            await self._maybe_checkpoint(force=False)
        except _TRANSIENT as exc:
            if self._loop.stopping:
                return  # stopping, maybe with NATS closed: what is not acked is redelivered
            # NATS is away or the stream refused: what is not acked is redelivered; read the head
            # back before the next append.
            log.warning("ledger.sequencer_retry", error=str(exc) or type(exc).__name__, delay=self._delay)
            self._head = None
            await self._loop.wait_stopping(self._delay)
            self._delay = min(self._delay * 2, self._config.max_retry_delay)
        else:
            self._delay = self._config.retry_delay

    # -- chaining -------------------------------------------------------------------------------

    async def _from_intake(self, msg: Msg) -> _Pending | None:
        try:
            parse_unlinked(msg.data)
        except ValueError as exc:
            # Only a broken or foreign publisher writes this; chaining it would put garbage in
            # an append-only ledger. Dropped for good, and said so.
            log.error("ledger.intake_refused", stream_seq=msg.metadata.sequence.stream, error=str(exc))
            await msg.term()
            return None
        record_id = (msg.headers or {}).get("Nats-Msg-Id") or f"intake-{msg.metadata.sequence.stream}"
        return _Pending(msg=msg, record=msg.data, msg_id=_entry_msg_id(record_id))

    async def _from_timeline(self, msg: Msg) -> _Pending | None:
        try:
            record_id, record = timeline_record(msg.subject, msg.data)
        except ValueError as exc:
            # Only the broker publishes the watch log; this cannot be a timeline event.
            log.error("ledger.timeline_refused", stream_seq=msg.metadata.sequence.stream, error=str(exc))
            await msg.term()
            return None
        return _Pending(msg=msg, record=record, msg_id=_entry_msg_id(record_id))

    async def _chain(self, pending: list[_Pending]) -> None:
        collisions = 0
        while pending:
            if self._head is None:
                self._head = await self._resync()
            outcomes = await self._append(pending, self._head)
            retry: list[_Pending] = []
            for item, outcome in zip(pending, outcomes, strict=True):
                if outcome is _Outcome.RETRY:
                    retry.append(item)
                else:
                    await self._ack(item.msg)
            pending = retry
            if pending:
                # No pause: a refused append means another replica's append went in, so the
                # chain grows either way, and the head is read back at once.
                collisions += 1
                if self._loop.stopping and collisions > 3:
                    return  # left unacked: redelivered to a replica that keeps running

    async def _append(self, items: list[_Pending], head: _Head) -> list[_Outcome]:
        """Append ``items`` one after the other, each right after the state known before it.

        One PubAck per entry, never pipelined. Pipelined appends would have to name positions
        they predict (and the msg id they expect before them); a replica racing on a redelivered
        record can store that very record id in the predicted slot on top of another prefix,
        and the next pipelined entry would pass its check pointing at a hash that is not in the
        chain. With one append in flight, every accepted entry follows an entry the sequencer
        read or was acked, and little throughput is lost: each append waits on the server's
        fsync either way (see tests/bench/bench_ledger.py).
        """
        outcomes: list[_Outcome] = []
        for index, item in enumerate(items):
            entry = link_entry(item.record, seq=head.seq + 1, prev_hash=head.hash)
            try:
                ack = await self._js.publish(
                    LEDGER_ENTRY_SUBJECT,
                    entry,
                    timeout=self._config.publish_timeout,
                    stream=LEDGER_STREAM,
                    headers={
                        "Nats-Msg-Id": item.msg_id,
                        "Nats-Expected-Last-Subject-Sequence": str(head.position),
                    },
                )
            except nats.js.errors.APIError as exc:
                if exc.err_code not in _CONFLICTS:
                    raise nats_error(exc, "append to the ledger") from exc
                outcome = _Outcome.RETRY  # another replica appended: read the head back
            except (nats.errors.TimeoutError, TimeoutError):
                outcome = _Outcome.RETRY  # unknown: the retry is answered "duplicate" if it landed
            else:
                outcome = _Outcome.DUPLICATE if ack.duplicate else _Outcome.STORED
            outcomes.append(outcome)
            if outcome is not _Outcome.STORED:
                # Not appended after the known head: where the head is now must be read back.
                self._head = None
                return outcomes + [_Outcome.RETRY] * (len(items) - index - 1)
            self.appended += 1
            head = self._head = _Head(seq=head.seq + 1, hash=entry_hash(entry), position=ack.seq)
        return outcomes

    async def _ack(self, msg: Msg) -> None:
        try:
            await msg.ack()
        except nats.errors.Error as exc:
            # The record is chained; its redelivery will be answered "duplicate" and acked then.
            log.warning("ledger.intake_ack_failed", error=str(exc))

    async def _resync(self) -> _Head:
        """Read the head back: the last entry of the stream."""
        try:
            message = await self._js.get_last_msg(LEDGER_STREAM, LEDGER_ENTRY_SUBJECT)
        except nats.js.errors.NotFoundError:
            return _Head(seq=0, hash="", position=0)
        except (nats.errors.Error, TimeoutError) as exc:
            raise nats_error(exc, "read the ledger head") from exc
        data = message.data or b""
        return _Head(seq=_parse_entry(data).seq, hash=entry_hash(data), position=int(message.seq or 0))

    async def _last_checkpointed(self) -> int:
        """Seq the newest checkpoint covers, so a restarted replica does not sign the same head again."""
        try:
            message = await self._js.get_last_msg(LEDGER_STREAM, LEDGER_CHECKPOINT_SUBJECT)
        except nats.js.errors.NotFoundError:
            return 0
        except (nats.errors.Error, TimeoutError) as exc:
            raise nats_error(exc, "read the last ledger checkpoint") from exc
        return _checkpoint_seq(message.data or b"")

    # -- checkpoints ----------------------------------------------------------------------------

    async def _maybe_checkpoint(self, *, force: bool) -> None:
        now = self._clock.now()
        if not force and now - self._last_checkpoint_at < self._config.checkpoint_interval:
            return
        # The head as the stream has it now (another replica may have appended since this one
        # last did), unless someone signed it already.
        head = self._head = await self._resync()
        self._checkpointed = max(self._checkpointed, await self._last_checkpointed())
        self._last_checkpoint_at = now
        if head.seq <= self._checkpointed:
            return
        signed = sign_checkpoint(seq=head.seq, head_hash=head.hash, key=self._key, clock=self._clock)
        try:
            # Another replica signing the same head at the same time is answered "duplicate".
            ack = await self._js.publish(
                LEDGER_CHECKPOINT_SUBJECT,
                signed.SerializeToString(),
                timeout=self._config.publish_timeout,
                stream=LEDGER_STREAM,
                headers={"Nats-Msg-Id": _checkpoint_msg_id(head.seq, head.hash)},
            )
        except (nats.errors.Error, TimeoutError) as exc:
            raise nats_error(exc, "publish a ledger checkpoint") from exc
        self._checkpointed = head.seq
        log.info("ledger.checkpoint", seq=head.seq, duplicate=bool(ack.duplicate))

    async def _final_checkpoint(self) -> None:
        await self._maybe_checkpoint(force=True)


def _parse_entry(data: bytes) -> ledger_pb2.LedgerEntry:
    try:
        return ledger_pb2.LedgerEntry.FromString(data)
    except DecodeError as exc:
        raise NatsError("the ledger holds an entry that does not parse") from exc


def _checkpoint_seq(data: bytes) -> int:
    try:
        signed = envelope_pb2.SignedMessage.FromString(data)
        return int(ledger_pb2.Checkpoint.FromString(signed.payload).seq)
    except DecodeError:
        return 0


# -- reader -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StoredEntry:
    """One entry as the ledger stream holds it."""

    seq: int
    """Its position in the chain."""
    hash: str
    """Hash of ``data``."""
    prev_hash: str
    """The previous entry's hash."""
    data: bytes
    """The stored bytes, exactly."""
    entry: ledger_pb2.LedgerEntry = field(repr=False)
    """``data`` parsed."""


class LedgerReader:
    """Reads entries and checkpoints back from GC_LEDGER, by chain seq."""

    def __init__(self, js: JetStreamContext, *, fetch_timeout: float = 2.0, cache_size: int = 4096) -> None:
        self._js = js
        self._fetch_timeout = fetch_timeout
        self._cache_size = cache_size
        # chain seq -> stream sequence, for entries seen: paging on needs no search.
        self._positions: OrderedDict[int, int] = OrderedDict()

    async def head_seq(self) -> int:
        """Seq of the last entry; 0 for an empty ledger."""
        try:
            message = await self._js.get_last_msg(LEDGER_STREAM, LEDGER_ENTRY_SUBJECT)
        except nats.js.errors.NotFoundError:
            return 0
        except (nats.errors.Error, TimeoutError) as exc:
            raise nats_error(exc, "read the ledger head") from exc
        entry = _parse_entry(message.data or b"")
        if message.seq is not None:
            self._remember(entry.seq, message.seq)
        return int(entry.seq)

    async def entries(self, *, after_seq: int, limit: int, head_seq: int | None = None) -> list[StoredEntry]:
        """Up to ``limit`` entries from ``after_seq + 1`` on, in chain order."""
        head = await self.head_seq() if head_seq is None else head_seq
        want = min(limit, head - after_seq)
        if want <= 0:
            return []
        start = await self._position_of(after_seq + 1)
        if start is None:
            return []
        result: list[StoredEntry] = []
        for message in await self._read(LEDGER_ENTRY_SUBJECT, start, want):
            entry = _parse_entry(message.data)
            self._remember(entry.seq, message.metadata.sequence.stream)
            if entry.seq <= after_seq:
                continue
            result.append(
                StoredEntry(
                    seq=entry.seq,
                    hash=entry_hash(message.data),
                    prev_hash=entry.prev_hash,
                    data=message.data,
                    entry=entry,
                )
            )
        return result

    async def checkpoints(self, *, after_seq: int, limit: int) -> list[envelope_pb2.SignedMessage]:
        """Up to ``limit`` checkpoints covering entries after ``after_seq``, oldest first."""
        head = await self.head_seq()
        if after_seq >= head or limit <= 0:
            return []
        # A checkpoint of entry k is appended after entry k: start reading at entry after_seq + 1.
        start = await self._position_of(after_seq + 1)
        if start is None:
            return []
        result: list[envelope_pb2.SignedMessage] = []
        for message in await self._read(LEDGER_CHECKPOINT_SUBJECT, start, limit):
            try:
                signed = envelope_pb2.SignedMessage.FromString(message.data)
            except DecodeError:
                continue
            if _checkpoint_seq(message.data) > after_seq:
                result.append(signed)
                if len(result) >= limit:
                    break
        return result

    def _remember(self, seq: int, position: int) -> None:
        self._positions[seq] = position
        self._positions.move_to_end(seq)
        while len(self._positions) > self._cache_size:
            self._positions.popitem(last=False)

    async def _position_of(self, seq: int) -> int | None:
        """Stream sequence of entry ``seq``, or of the first entry after it if it is absent.

        Entry k stands at stream sequence k + (checkpoints before it), so ``k`` - or a known
        entry j at p plus ``k - j`` - is a lower bound; each look-up of the next entry from
        the bound raises the bound by what lies between, and pins the entry in a few steps.
        """
        known = self._positions.get(seq)
        if known is not None:
            return known
        below = [(k, p) for k, p in self._positions.items() if k < seq]
        lower = max((p + (seq - k) for k, p in below), default=seq)
        try:
            while True:
                try:
                    message = await self._js.get_msg(
                        LEDGER_STREAM, seq=lower, subject=LEDGER_ENTRY_SUBJECT, next=True
                    )
                except nats.js.errors.NotFoundError:
                    return None
                entry = _parse_entry(message.data or b"")
                position = int(message.seq or lower)
                self._remember(entry.seq, position)
                if entry.seq >= seq:
                    return position
                lower = position + (seq - entry.seq)
        except (nats.errors.Error, TimeoutError) as exc:
            raise nats_error(exc, "find a ledger entry") from exc

    async def _read(self, subject: str, start: int, count: int | None) -> list[Msg]:
        """Messages on ``subject`` from stream sequence ``start`` on: ``count`` of them, or all."""
        name = f"ledger-read-{uuid.uuid4().hex[:16]}"
        config = ConsumerConfig(
            name=name,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            filter_subject=subject,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        try:
            info = await self._js.add_consumer(LEDGER_STREAM, config=config)
            total = int(info.num_pending or 0) if count is None else min(count, int(info.num_pending or 0))
            sub = await self._js.pull_subscribe_bind(name=name, stream=LEDGER_STREAM)
            messages: list[Msg] = []
            try:
                while len(messages) < total:
                    got = await fetch_batch(sub, min(total - len(messages), 1000), self._fetch_timeout)
                    if not got:
                        break
                    messages.extend(got)
            finally:
                with contextlib.suppress(nats.errors.Error, ValueError):
                    await sub.unsubscribe()
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await self._js.delete_consumer(LEDGER_STREAM, name)
        except (nats.errors.Error, TimeoutError) as exc:
            raise nats_error(exc, f"read {subject}") from exc
        return messages
