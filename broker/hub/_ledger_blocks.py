"""How GC_LEDGER stores the chain: blocks of consecutive entries, and ordered reads of the stream.

One message on ``gc.ledger.entry`` is one block: the entries one sequencer round chained, each
exactly the bytes that are hashed (a block adds nothing to the chain; verification stays entry
by entry). Its header ``Gc-Ledger-First-Seq`` names the seq of its first entry, so a reader finds
the block holding an entry with a few direct gets, without unpacking. A message without that
header is a single bare :class:`LedgerEntry`, as the ledger was written before blocks: it reads
as a block of one, so a stream that holds both kinds reads and verifies as one chain.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType

import nats.errors
from google.protobuf.message import DecodeError
from greenchannel.v1 import ledger_pb2
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from broker.protocol import LEDGER_STREAM, NatsError, fetch_batch, nats_error

__all__ = [
    "FIRST_SEQ_HEADER",
    "LedgerScan",
    "StoredBlock",
    "block_msg_id",
    "block_size",
    "entry_msg_id",
    "first_seq_of",
    "pack_block",
    "parse_block",
    "parse_entry",
]

FIRST_SEQ_HEADER = "Gc-Ledger-First-Seq"
"""Header of a block message: the seq of its first entry."""

_ENTRY_MSG_ID_PREFIX = "entry:"
# Wire overhead of one entry and its record id inside a LedgerBlock (tags, lengths), generously.
_PER_ENTRY_OVERHEAD = 16


def entry_msg_id(record_id: str) -> str:
    """``Nats-Msg-Id`` of a block of one record (and of every append before blocks)."""
    return f"{_ENTRY_MSG_ID_PREFIX}{record_id}"


def block_msg_id(record_ids: Sequence[str]) -> str:
    """``Nats-Msg-Id`` of a block: the same for the same records in the same order, by any replica.

    "Duplicate" then means exactly these records are stored, so every one of them may be acked.
    A block of one keeps the id appends had before blocks.
    """
    if len(record_ids) == 1:
        return entry_msg_id(record_ids[0])
    digest = hashlib.sha256("\n".join(record_ids).encode()).digest()
    return "block:" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def block_size(record: bytes, record_id: str) -> int:
    """Bytes one record adds to a block once linked (seq and prev_hash included)."""
    return len(record) + len(record_id) + 64 + _PER_ENTRY_OVERHEAD


def pack_block(entries: Sequence[bytes], record_ids: Sequence[str], chained_to: Mapping[str, int]) -> bytes:
    """The message body of a block of linked ``entries``, chained from ``record_ids``; ``chained_to``
    is the highest stream sequence per source stream of any record chained up to this block."""
    if not entries or len(entries) != len(record_ids):
        raise ValueError("a block holds one record id per entry, and at least one entry")
    block = ledger_pb2.LedgerBlock(entries=entries, record_ids=record_ids, chained_to=dict(chained_to))
    return block.SerializeToString(deterministic=True)


def parse_entry(data: bytes) -> ledger_pb2.LedgerEntry:
    try:
        return ledger_pb2.LedgerEntry.FromString(data)
    except DecodeError as exc:
        raise NatsError("the ledger holds an entry that does not parse") from exc


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name.lower():
            return value
    return None


@dataclass(frozen=True, kw_only=True)
class StoredBlock:
    """One message of ``gc.ledger.entry``, unpacked."""

    position: int
    """Its stream sequence."""
    first_seq: int
    """Seq of its first entry."""
    entries: tuple[bytes, ...]
    """The entries, in chain order, exactly as stored."""
    record_ids: tuple[str, ...]
    """The records they were chained from (empty where a message written before blocks has no id)."""
    chained_to: Mapping[str, int] = field(default_factory=dict)
    """Per source stream, the highest stream sequence of a record chained so far (empty for a
    message written before blocks: unknown)."""

    @property
    def last(self) -> ledger_pb2.LedgerEntry:
        return parse_entry(self.entries[-1])


def parse_block(data: bytes, headers: Mapping[str, str] | None, position: int) -> StoredBlock:
    """Unpack a message of ``gc.ledger.entry``; a bare entry (no first-seq header) is a block of one."""
    first = _header(headers, FIRST_SEQ_HEADER)
    if first is None:
        msg_id = _header(headers, "Nats-Msg-Id") or ""
        record_ids = (
            (msg_id.removeprefix(_ENTRY_MSG_ID_PREFIX),) if msg_id.startswith(_ENTRY_MSG_ID_PREFIX) else ()
        )
        return StoredBlock(
            position=position, first_seq=int(parse_entry(data).seq), entries=(data,), record_ids=record_ids
        )
    try:
        block = ledger_pb2.LedgerBlock.FromString(data)
        first_seq = int(first)
    except (DecodeError, ValueError) as exc:
        raise NatsError("the ledger holds a block that does not parse") from exc
    if not block.entries:
        raise NatsError("the ledger holds an empty block")
    return StoredBlock(
        position=position,
        first_seq=first_seq,
        entries=tuple(block.entries),
        record_ids=tuple(block.record_ids),
        chained_to=dict(block.chained_to),
    )


def first_seq_of(data: bytes, headers: Mapping[str, str] | None) -> int:
    """Seq of the first entry a message holds, from its header when it has one (no unpacking)."""
    first = _header(headers, FIRST_SEQ_HEADER)
    if first is not None and first.isdigit():
        return int(first)
    return int(parse_entry(data).seq)


class LedgerScan:
    """An ordered read of one subject of GC_LEDGER, from a stream sequence or a time on, up to
    what the stream held when the scan began.

    ``async with LedgerScan(js, subject, start_seq=...) as scan: await scan.fetch(n)``; an
    ephemeral consumer in memory that is deleted on exit (and expires by itself if it is not).
    """

    def __init__(
        self,
        js: JetStreamContext,
        subject: str,
        *,
        start_seq: int | None = None,
        start_time: datetime | None = None,
        fetch_timeout: float,
    ) -> None:
        if (start_seq is None) == (start_time is None):
            raise ValueError("LedgerScan starts at a stream sequence or at a time")
        self._js = js
        self._subject = subject
        self._name = f"ledger-read-{uuid.uuid4().hex[:16]}"
        self._config = ConsumerConfig(
            name=self._name,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE
            if start_seq is not None
            else DeliverPolicy.BY_START_TIME,
            opt_start_seq=start_seq,
            opt_start_time=start_time,
            filter_subject=subject,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        self._fetch_timeout = fetch_timeout
        self._sub: JetStreamContext.PullSubscription | None = None
        self.remaining = 0
        """Messages left to read of those the stream held when the scan began."""

    async def __aenter__(self) -> LedgerScan:
        try:
            info = await self._js.add_consumer(LEDGER_STREAM, config=self._config)
            self.remaining = int(info.num_pending or 0)
            self._sub = await self._js.pull_subscribe_bind(name=self._name, stream=LEDGER_STREAM)
        except (nats.errors.Error, TimeoutError) as exc:
            await self._close()
            raise nats_error(exc, f"read {self._subject}") from exc
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def fetch(self, count: int) -> list[Msg]:
        """The next ``count`` messages at most (fewer at the end, ``[]`` once it is reached)."""
        want = min(count, self.remaining, 1000)
        if want < 1 or self._sub is None:
            return []
        try:
            got = await fetch_batch(self._sub, want, self._fetch_timeout)
        except (nats.errors.Error, TimeoutError) as exc:
            raise nats_error(exc, f"read {self._subject}") from exc
        self.remaining = 0 if not got else self.remaining - len(got)
        return got

    async def _close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error, ValueError):
                await sub.unsubscribe()
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._js.delete_consumer(LEDGER_STREAM, self._name)
