"""The tamper-evident ledger on JetStream: intake, sequencer, checkpoints, and reading it back.

Request and event handlers never wait for the chain. :class:`LedgerWriter` publishes an
unlinked entry (digests and metadata, never personal data) to the ``GC_LEDGER_INTAKE`` work
queue, with ``Nats-Msg-Id`` = the caller's stable record id, so a retried record is stored once.

Every broker replica runs a :class:`LedgerSequencer`; they share one durable pull consumer on the
intake (and one on the watch log, whose events it chains too). A sequencer gives each record its
``seq`` and ``prev_hash`` and appends the records of a round to ``GC_LEDGER`` (``deny_delete``,
``deny_purge``) as one message, a block (see ``_ledger_blocks``), lingering briefly under low load
to fill it: the ledger costs a fraction of a write per record. Each entry keeps its own seq,
prev_hash and hash, so the chain and its verification are unchanged. Optimistic concurrency means
two replicas can never fork the chain:

* every append carries ``Nats-Expected-Last-Subject-Sequence`` = the stream sequence of the
  block holding the last entry the sequencer knows for certain (from the PubAck of its own last
  append, or read back). The server stores it only while that block is still the last one on
  ``gc.ledger.entry``, so its first ``prev_hash`` is always the real head. Checkpoints, on their
  own subject, never get in the way of an append;
* ``Nats-Msg-Id`` of an append is derived from the record ids of the block, so retrying the same
  block is answered "duplicate". A block also names the record each entry came from and, per
  source stream, the highest sequence of any record chained so far. A record stored at its
  source beyond that mark cannot be in the chain (the usual case: nothing to look up); one at
  or below it (delivered again after its sequencer died or stalled between appending and
  acking, regrouped, or delivered as new by a NATS server that lost its consumer's ack state)
  is looked for by record id in the blocks where it could be, before it is chained.

A refusal, a timeout or a duplicate ends the sequencer's certainty: it reads the head back from
the stream and retries what is left. The broker signs a checkpoint of the head at a fixed
interval when the head moved, and on shutdown; a checkpoint only ever names an entry that is
already in the stream, so it is true wherever it lands.

:class:`LedgerReader` reads entries and checkpoints back for the LedgerService.
"""

from __future__ import annotations

import asyncio
import enum
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
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
    ConsumerObserver,
    ConsumerSpec,
    Lane,
    LaneOrder,
    NatsError,
    SigningKey,
    body_digest,
    build_entry,
    entry_hash,
    link_entry,
    nats_error,
    parse_status_subject,
    parse_unlinked,
    sign_checkpoint,
    status_filter,
    validate_request_id,
)

from ._errors import UnavailableError
from ._ledger_blocks import (
    FIRST_SEQ_HEADER,
    LedgerScan,
    block_msg_id,
    block_size,
    entry_msg_id,
    first_seq_of,
    pack_block,
    parse_block,
    parse_entry,
)

__all__ = [
    "LedgerConfig",
    "LedgerFigures",
    "LedgerReader",
    "LedgerSequencer",
    "LedgerWriter",
    "StoredEntry",
    "ensure_ledger_streams",
    "read_ledger_figures",
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
# How far the clocks of the servers stamping a record and a block may disagree (a cluster
# places streams on different leaders): the ledger is searched for a record from this much
# earlier than its source stamped it.
_CLOCK_SKEW = timedelta(minutes=1)
# A block must fit NATS' default max payload (1 MiB) with room for the headers.
_MAX_BLOCK_BYTES = 900 * 1024


@dataclass(frozen=True, kw_only=True)
class LedgerConfig:
    """How the sequencer runs; the defaults suit production, tests shorten the times."""

    checkpoint_interval: timedelta = timedelta(seconds=10)
    """How often the head is signed, when it moved since the last checkpoint."""

    batch: int = 256
    """Records taken per pull (of each source); they join the block being built."""

    linger: float = 0.5
    """Seconds a block may wait, after its first record came, for more before it is appended
    (0: append every round at once); under half of ``ack_wait``. Nothing waits on the ledger:
    watchers read the watch log."""

    block_entries: int = 512
    """Most entries one GC_LEDGER message (a block) holds."""

    block_bytes: int = 256 * 1024
    """Most bytes of entries (and their record ids) one block holds; at most 900 KiB, so a block
    always fits NATS' max payload. A single record is appended alone, whatever its size."""

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
        if self.batch < 1 or self.block_entries < 1:
            raise ValueError("LedgerConfig: batch and block_entries must be >= 1")
        if not 1024 <= self.block_bytes <= _MAX_BLOCK_BYTES:
            raise ValueError(f"LedgerConfig.block_bytes must be within 1 KiB and {_MAX_BLOCK_BYTES} bytes")
        if self.linger < 0 or timedelta(seconds=self.linger * 2) >= self.ack_wait:
            raise ValueError("LedgerConfig.linger must be >= 0 and shorter than half of ack_wait")
        if self.checkpoint_interval <= timedelta(0) or self.ack_wait <= timedelta(0):
            raise ValueError("LedgerConfig: checkpoint_interval and ack_wait must be positive")
        if min(self.fetch_timeout, self.publish_timeout, self.retry_delay, self.shutdown_timeout) <= 0:
            raise ValueError("LedgerConfig: timeouts and delays must be positive")


def _entry_msg_id(record_id: str) -> str:
    """``Nats-Msg-Id`` of a block holding only this record: the same for every attempt, by any replica."""
    return entry_msg_id(record_id)


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

    async def record_mark(
        self,
        *,
        record_id: str,
        actor: str,
        mark_id: str,
        mark_step: str,
        case_number: str,
        parties: Sequence[str],
        subject_digest: str,
        at: datetime,
    ) -> None:
        """Queue one MARK entry: a risk mark made, proposed, confirmed, refused, lifted or expired.
        Holds the mark id, the case and the digest of the signed message, never the identifier."""
        data = build_entry(
            kind=ledger_pb2.LEDGER_ENTRY_KIND_MARK,
            actor=actor,
            at=at,
            case_number=case_number,
            parties=parties,
            subject_digest=subject_digest,
            mark_id=mark_id,
            mark_step=mark_step,
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
    """Stream sequence of the block holding that entry (0: none)."""
    chained_to: Mapping[str, int] = field(default_factory=dict)
    """Per source stream, the highest stream sequence of a record chained up to that entry."""


@dataclass
class _Pending:
    """A record waiting in the block being built."""

    msgs: list[Msg]
    """The deliveries it came in (more than one when it was delivered again while waiting)."""
    record: bytes
    record_id: str
    source: str
    """The stream it came from."""
    source_seq: int
    """Its sequence there."""
    since: datetime
    """When its source stored it: no block can hold it from before then."""
    suspect: bool
    """It may be chained already (delivered again, or its append's outcome is unknown)."""
    clear_to: int = 0
    """Stream sequence up to which the ledger is known not to hold it (0: from ``since`` on)."""


@dataclass
class _Seen:
    """The record ids a stretch of the ledger holds, as read for suspect records. Kept while
    suspects remain: records delivered again come over several rounds, and each round reads
    only the blocks appended since."""

    since: datetime | None
    """The time the stretch was read from (None: from a stream sequence)."""
    start: int
    """First stream sequence it covers."""
    end: int
    """Last stream sequence it covers."""
    ids: set[str]


class _Outcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # this very block was appended before: done
    RETRY = "retry"  # refused by the concurrency check, or no answer: chain it again


class LedgerSequencer:
    """Chains intake records into GC_LEDGER and signs checkpoints. Run one per broker replica.

    ``async with LedgerSequencer(js, broker_key, clock, config):`` starts it; leaving the block
    appends the records in hand, signs a last checkpoint if the head moved, and stops.
    """

    def __init__(
        self,
        js: JetStreamContext,
        broker_key: SigningKey,
        clock: Clock,
        config: LedgerConfig | None = None,
        *,
        observer: ConsumerObserver | None = None,
    ) -> None:
        self._js = js
        self._key = broker_key
        self._clock = clock
        self._config = config or LedgerConfig()
        self._head: _Head | None = None
        self._checkpointed = 0
        self._last_checkpoint_at = clock.now()
        self._loop = ConsumerLoop(js, self._loop_spec(), batch_handler=self._round, observer=observer)
        self._delay = self._config.retry_delay
        self._closed = False
        # The block being built: records taken, not yet appended, by record id.
        self._pending: dict[str, _Pending] = {}
        self._pending_bytes = 0
        self._pending_since = 0.0  # loop time the first of them came
        self._seen: _Seen | None = None
        self.appended = 0
        """Entries this sequencer appended (for metrics and tests)."""
        self.blocks = 0
        """Blocks (GC_LEDGER messages) this sequencer appended."""

    @property
    def consumer(self) -> ConsumerLoop:
        return self._loop

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

        # An idle pull ends within the linger too, so a lingering block is appended on time.
        fetch_timeout = (
            min(config.fetch_timeout, config.linger) if config.linger > 0 else config.fetch_timeout
        )
        return ConsumerSpec(
            name="ledger-sequencer",
            lanes=(
                lane(LEDGER_SEQUENCER_CONSUMER, LEDGER_INTAKE_STREAM, LEDGER_INTAKE_SUBJECT, "intake"),
                lane(LEDGER_TIMELINE_CONSUMER, WATCH_STREAM, status_filter(), "timeline"),
            ),
            order=LaneOrder.FAIR,
            fetch_timeout=fetch_timeout,
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
        """Finish the round in hand, append what waits, sign the head if it moved, stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._loop.drain()
        try:
            await asyncio.wait_for(self._final_round(), timeout=self._config.shutdown_timeout)
        except _TRANSIENT as exc:
            # What is not appended comes back to another replica; the head is signed by the next
            # checkpoint of any replica. Only say so when it is news.
            closed = isinstance(exc.__cause__ or exc, nats.errors.ConnectionClosedError)
            (log.info if closed else log.warning)(
                "ledger.final_checkpoint_failed", error=str(exc) or type(exc).__name__
            )
        await self._loop.aclose()
        log.info("ledger.sequencer_stopped", head_seq=self._head.seq if self._head else None)

    async def _final_round(self) -> None:
        if self._pending:
            if self._head is None:
                self._head = await self._resync()
            await self._chain()
        await self._maybe_checkpoint(force=True)

    async def _round(self, lane: Lane, msgs: list[Msg]) -> None:
        """One pull of one source (empty when idle): add it to the block, append the block when it
        is full or has waited its linger, sign the head when it is time."""
        source = self._from_intake if lane.durable == LEDGER_SEQUENCER_CONSUMER else self._from_timeline
        try:
            for msg in msgs:
                await source(msg)
            if self._pending and (self._block_due() or self._loop.stopping):
                if self._head is None:
                    self._head = await self._resync()
                await self._chain()
            await self._maybe_checkpoint(force=False)
        except _TRANSIENT as exc:
            # What is not acked is redelivered (marked as such, so it is looked for in the ledger
            # before it is chained again); the block in hand is let go rather than kept next to
            # its own redelivery.
            self._pending.clear()
            self._pending_bytes = 0
            if self._loop.stopping:
                return  # stopping, maybe with NATS closed
            # NATS is away or the stream refused: read the head back before the next append.
            log.warning("ledger.sequencer_retry", error=str(exc) or type(exc).__name__, delay=self._delay)
            self._head = None
            await self._loop.wait_stopping(self._delay)
            self._delay = min(self._delay * 2, self._config.max_retry_delay)
        else:
            self._delay = self._config.retry_delay

    def _block_due(self) -> bool:
        config = self._config
        if len(self._pending) >= config.block_entries or self._pending_bytes >= config.block_bytes:
            return True
        return asyncio.get_running_loop().time() - self._pending_since >= config.linger

    # -- taking records -------------------------------------------------------------------------

    async def _from_intake(self, msg: Msg) -> None:
        try:
            parse_unlinked(msg.data)
        except ValueError as exc:
            # Only a broken or foreign publisher writes this; chaining it would put garbage in
            # an append-only ledger. Dropped for good, and said so.
            log.error("ledger.intake_refused", stream_seq=msg.metadata.sequence.stream, error=str(exc))
            await msg.term()
            return
        record_id = (msg.headers or {}).get("Nats-Msg-Id") or f"intake-{msg.metadata.sequence.stream}"
        self._take(msg, record_id, msg.data)

    async def _from_timeline(self, msg: Msg) -> None:
        try:
            record_id, record = timeline_record(msg.subject, msg.data)
        except ValueError as exc:
            # Only the broker publishes the watch log; this cannot be a timeline event.
            log.error("ledger.timeline_refused", stream_seq=msg.metadata.sequence.stream, error=str(exc))
            await msg.term()
            return
        self._take(msg, record_id, record)

    def _take(self, msg: Msg, record_id: str, record: bytes) -> None:
        metadata = msg.metadata
        source, source_seq = str(metadata.stream), int(metadata.sequence.stream)
        known = self._pending.get(record_id)
        if known is not None:
            # Delivered again while it waits (or stored twice at its source): chained once, and
            # every delivery acked with it.
            known.msgs.append(msg)
            return
        if not self._pending:
            self._pending_since = asyncio.get_running_loop().time()
        suspect = metadata.num_delivered > 1
        head = self._head
        # Stored at its source after every record chained up to the head: not in the chain there.
        clear = head is not None and not suspect and source_seq > head.chained_to.get(source, 0)
        self._pending[record_id] = _Pending(
            msgs=[msg],
            record=record,
            record_id=record_id,
            source=source,
            source_seq=source_seq,
            since=metadata.timestamp,
            suspect=suspect,
            clear_to=head.position if clear and head is not None else 0,
        )
        self._pending_bytes += block_size(record, record_id)

    # -- chaining -------------------------------------------------------------------------------

    async def _chain(self) -> None:
        """Append what waits, a block at a time, each right after the head known for certain.

        One block in flight, never pipelined: every accepted block follows an entry the sequencer
        read or was acked, so two replicas never fork the chain (see :meth:`_append`).
        """
        collisions = 0
        while self._pending:
            if self._head is None:
                self._head = await self._resync()
            head = self._head
            await self._drop_chained(head)
            block = self._next_block()
            if not block:
                continue
            outcome = await self._append(block, head)
            if outcome is _Outcome.RETRY:
                for item in block:
                    # Its append may have landed after all (no answer), or another replica's
                    # append went in first, holding who knows what: look before chaining again.
                    item.suspect, item.clear_to = True, head.position
                # No pause: a refused append means another replica's append went in, so the
                # chain grows either way, and the head is read back at once.
                collisions += 1
                if self._loop.stopping and collisions > 3:
                    return  # left unacked: redelivered to a replica that keeps running
                continue
            for item in block:
                self._forget(item)
                await self._ack(item)

    def _next_block(self) -> list[_Pending]:
        """The records of the next block, in the order they came, within the block bounds."""
        config = self._config
        block: list[_Pending] = []
        size = 0
        for item in self._pending.values():
            cost = block_size(item.record, item.record_id)
            if block and (len(block) >= config.block_entries or size + cost > config.block_bytes):
                break
            block.append(item)
            size += cost
        return block

    def _forget(self, item: _Pending) -> None:
        if self._pending.pop(item.record_id, None) is not None:
            self._pending_bytes -= block_size(item.record, item.record_id)

    async def _drop_chained(self, head: _Head) -> None:
        """Ack and drop the records waiting here that the ledger holds already, up to ``head``.

        Every block states, per source stream, the highest sequence of any record chained so far
        (``chained_to``), so a record stored beyond that mark at its source is not in the chain,
        and needs no look: the usual case, a record taken in order by the only sequencer. The
        others are looked for by record id in the blocks where they could be: those after the
        position where each was last known absent, or else those from the time its source stored
        it. So are records delivered before (a sequencer took them and maybe appended them, then
        died or stalled before acking) and those whose own append got no answer or was refused.
        Redelivered records come back grouped differently, so a message id cannot recognise every
        such record; the record ids in the blocks can, whatever the ack state NATS kept. The
        append that follows is conditional on ``head``, so nothing slips in between.
        """
        suspects = []
        for item in self._pending.values():
            if item.clear_to >= head.position:
                continue  # known absent up to head
            if item.suspect or item.source_seq <= head.chained_to.get(item.source, 0):
                suspects.append(item)
            else:
                item.clear_to = head.position
        if not suspects:
            self._seen = None  # nothing left to look for: let the ids go
            return
        timed = [item.since for item in suspects if item.clear_to == 0]
        since = min(timed) - _CLOCK_SKEW if timed else None
        start = None if timed else min(item.clear_to for item in suspects) + 1
        seen = self._seen
        if seen is None or not (
            (since is not None and seen.since is not None and seen.since <= since)
            or (start is not None and seen.start <= start)
        ):
            seen = self._seen = await self._read_ids(head, since=since, start=start)
        elif seen.end < head.position:
            more = await self._read_ids(head, since=None, start=seen.end + 1)
            seen.ids |= more.ids
            seen.end = head.position
        for item in suspects:
            if item.record_id in seen.ids:
                self._forget(item)
                await self._ack(item)
            else:
                item.suspect, item.clear_to = False, head.position

    async def _read_ids(self, head: _Head, *, since: datetime | None, start: int | None) -> _Seen:
        """The record ids of the blocks from ``start`` (or from time ``since``) up to ``head``'s."""
        seen = _Seen(since=since, start=start or head.position + 1, end=head.position, ids=set())
        if start is not None and start > head.position:
            return seen
        async with LedgerScan(
            self._js,
            LEDGER_ENTRY_SUBJECT,
            start_seq=start,
            start_time=since,
            fetch_timeout=self._config.publish_timeout,
        ) as scan:
            while msgs := await scan.fetch(64):
                for message in msgs:
                    position = message.metadata.sequence.stream
                    if position > head.position:
                        return seen
                    seen.start = min(seen.start, position)
                    seen.ids.update(parse_block(message.data, message.headers, position).record_ids)
        return seen

    async def _append(self, block: list[_Pending], head: _Head) -> _Outcome:
        """Append ``block`` as one message right after ``head``.

        Never pipelined. Pipelined appends would have to name positions they predict (and the
        msg id they expect before them); a replica racing on a redelivered record can store that
        very record in the predicted slot on top of another prefix, and the next pipelined
        block would pass its check pointing at a hash that is not in the chain. With one append
        in flight, every accepted block follows an entry the sequencer read or was acked; a
        block per round is what makes that cheap (see tests/bench/bench_ledger.py).
        """
        entries: list[bytes] = []
        seq, prev = head.seq, head.hash
        chained_to = dict(head.chained_to)
        for item in block:
            chained_to[item.source] = max(chained_to.get(item.source, 0), item.source_seq)
            seq += 1
            entry = link_entry(item.record, seq=seq, prev_hash=prev)
            entries.append(entry)
            prev = entry_hash(entry)
        record_ids = [item.record_id for item in block]
        try:
            ack = await self._js.publish(
                LEDGER_ENTRY_SUBJECT,
                pack_block(entries, record_ids, chained_to),
                timeout=self._config.publish_timeout,
                stream=LEDGER_STREAM,
                headers={
                    "Nats-Msg-Id": block_msg_id(record_ids),
                    "Nats-Expected-Last-Subject-Sequence": str(head.position),
                    FIRST_SEQ_HEADER: str(head.seq + 1),
                },
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code not in _CONFLICTS:
                raise nats_error(exc, "append to the ledger") from exc
            self._head = None  # another replica appended: read the head back
            return _Outcome.RETRY
        except (nats.errors.TimeoutError, TimeoutError):
            self._head = None  # unknown: the records are looked for before they are chained again
            return _Outcome.RETRY
        if ack.duplicate:
            # Exactly these records were appended before (the message id says so): where the
            # head is now must be read back.
            self._head = None
            return _Outcome.DUPLICATE
        self.appended += len(entries)
        self.blocks += 1
        self._head = _Head(seq=seq, hash=prev, position=ack.seq, chained_to=chained_to)
        return _Outcome.STORED

    async def _ack(self, item: _Pending) -> None:
        for msg in item.msgs:
            try:
                await msg.ack()
            except nats.errors.Error as exc:
                # The record is chained; its redelivery is looked for in the ledger and acked then.
                log.warning("ledger.intake_ack_failed", error=str(exc))

    async def _resync(self) -> _Head:
        """Read the head back: the last entry of the last block of the stream."""
        try:
            message = await self._js.get_last_msg(LEDGER_STREAM, LEDGER_ENTRY_SUBJECT)
        except nats.js.errors.NotFoundError:
            return _Head(seq=0, hash="", position=0)
        except (nats.errors.Error, TimeoutError) as exc:
            raise nats_error(exc, "read the ledger head") from exc
        position = int(message.seq or 0)
        block = parse_block(message.data or b"", message.headers, position)
        return _Head(
            seq=int(block.last.seq),
            hash=entry_hash(block.entries[-1]),
            position=position,
            chained_to=block.chained_to,
        )

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


def _checkpoint_seq(data: bytes) -> int:
    try:
        signed = envelope_pb2.SignedMessage.FromString(data)
        return int(ledger_pb2.Checkpoint.FromString(signed.payload).seq)
    except DecodeError:
        return 0


@dataclass(frozen=True)
class LedgerFigures:
    """How long the chain is and how far its signed checkpoints reach (for metrics)."""

    entries: int
    checkpoint_seq: int
    checkpoint_at: datetime | None
    """When the last checkpoint was stored; None before the first."""


async def read_ledger_figures(js: JetStreamContext) -> LedgerFigures:
    """Two reads: the head's block and the last checkpoint."""
    entries = await LedgerReader(js).head_seq()
    try:
        message = await js.get_last_msg(LEDGER_STREAM, LEDGER_CHECKPOINT_SUBJECT)
    except nats.js.errors.NotFoundError:
        return LedgerFigures(entries=entries, checkpoint_seq=0, checkpoint_at=None)
    except (nats.errors.Error, TimeoutError) as exc:
        raise nats_error(exc, "read the last ledger checkpoint") from exc
    return LedgerFigures(
        entries=entries, checkpoint_seq=_checkpoint_seq(message.data or b""), checkpoint_at=message.time
    )


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
    """Reads entries and checkpoints back from GC_LEDGER, by chain seq, unpacking blocks."""

    def __init__(self, js: JetStreamContext, *, fetch_timeout: float = 2.0, cache_size: int = 4096) -> None:
        self._js = js
        self._fetch_timeout = fetch_timeout
        self._cache_size = cache_size
        # first entry seq of a block -> its stream sequence, for blocks seen: paging on needs no search.
        self._positions: OrderedDict[int, int] = OrderedDict()
        self._head_position = 0  # stream sequence of the head's block, as last read

    async def head_seq(self) -> int:
        """Seq of the last entry; 0 for an empty ledger."""
        try:
            message = await self._js.get_last_msg(LEDGER_STREAM, LEDGER_ENTRY_SUBJECT)
        except nats.js.errors.NotFoundError:
            return 0
        except (nats.errors.Error, TimeoutError) as exc:
            raise nats_error(exc, "read the ledger head") from exc
        block = parse_block(message.data or b"", message.headers, int(message.seq or 0))
        if message.seq is not None:
            self._remember(block.first_seq, message.seq)
            self._head_position = max(self._head_position, message.seq)
        return int(block.last.seq)

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
        async with LedgerScan(
            self._js, LEDGER_ENTRY_SUBJECT, start_seq=start, fetch_timeout=self._fetch_timeout
        ) as scan:
            # Blocks hold many entries or one (written before blocks): fetch about as many
            # messages as the entries still wanted need, judged by the blocks seen so far.
            count, seen_entries, seen_blocks = min(want, 4), 0, 0
            while len(result) < want and (msgs := await scan.fetch(count)):
                for message in msgs:
                    block = parse_block(message.data, message.headers, message.metadata.sequence.stream)
                    self._remember(block.first_seq, block.position)
                    seen_entries, seen_blocks = seen_entries + len(block.entries), seen_blocks + 1
                    for data in block.entries:
                        entry = parse_entry(data)
                        if entry.seq <= after_seq:
                            continue
                        result.append(
                            StoredEntry(
                                seq=entry.seq,
                                hash=entry_hash(data),
                                prev_hash=entry.prev_hash,
                                data=data,
                                entry=entry,
                            )
                        )
                        if len(result) >= want:
                            return result
                count = max(1, -(-(want - len(result)) * seen_blocks // seen_entries))
        return result

    async def checkpoints(self, *, after_seq: int, limit: int) -> list[envelope_pb2.SignedMessage]:
        """Up to ``limit`` checkpoints covering entries after ``after_seq``, oldest first."""
        head = await self.head_seq()
        if after_seq >= head or limit <= 0:
            return []
        # A checkpoint of entry k is appended after the block holding entry k: start reading at
        # the block of entry after_seq + 1.
        start = await self._position_of(after_seq + 1)
        if start is None:
            return []
        result: list[envelope_pb2.SignedMessage] = []
        async with LedgerScan(
            self._js, LEDGER_CHECKPOINT_SUBJECT, start_seq=start, fetch_timeout=self._fetch_timeout
        ) as scan:
            while len(result) < limit and (msgs := await scan.fetch(limit - len(result))):
                for message in msgs:
                    try:
                        signed = envelope_pb2.SignedMessage.FromString(message.data)
                    except DecodeError:
                        continue
                    if _checkpoint_seq(message.data) > after_seq:
                        result.append(signed)
                        if len(result) >= limit:
                            break
        return result

    def _remember(self, first_seq: int, position: int) -> None:
        self._positions[first_seq] = position
        self._positions.move_to_end(first_seq)
        while len(self._positions) > self._cache_size:
            self._positions.popitem(last=False)

    async def _first_from(self, position: int) -> tuple[int, int] | None:
        """``(stream sequence, first entry seq)`` of the first block at or after ``position``."""
        try:
            message = await self._js.get_msg(
                LEDGER_STREAM, seq=position, subject=LEDGER_ENTRY_SUBJECT, next=True
            )
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise nats_error(exc, "find a ledger entry") from exc
        found = int(message.seq or position)
        first = first_seq_of(message.data or b"", message.headers)
        self._remember(first, found)
        return found, first

    async def _position_of(self, seq: int) -> int | None:
        """Stream sequence of the block holding entry ``seq``; of a block before it or of the
        first block after it if the entry is absent; None for an empty ledger.

        A binary search over stream sequences, each step one get of the next block from there
        (only its first-seq header is read), narrowed by the blocks already seen; paging on from
        a block seen costs one step, to see whether the entry is in it or in the next block.
        """
        below = [(first, p) for first, p in self._positions.items() if first <= seq]
        above = [p for first, p in self._positions.items() if first > seq]
        low: int | None = max(below)[1] if below else None
        high = min(above) - 1 if above else None
        if low is None:
            first_block = await self._first_from(1)
            if first_block is None:
                return None
            low = first_block[0]
            if first_block[1] >= seq:
                return low
        if high is None and self._head_position:
            # Callers ask only for entries up to the head they read: none lies beyond its block.
            high = self._head_position
        if high is None:
            try:
                info = await self._js.stream_info(LEDGER_STREAM)
            except (nats.errors.Error, TimeoutError) as exc:
                raise nats_error(exc, "find a ledger entry") from exc
            high = int(info.state.last_seq)
        mid = low + 1  # first the block right after the best one known: paging on costs one step
        while low < high:
            found = await self._first_from(mid)
            if found is not None and found[0] <= high and found[1] <= seq:
                low = found[0]
            else:
                high = mid - 1  # no block from mid to high starts at or before seq
            mid = (low + high + 1) // 2
        return low
