"""The watch log: every accepted lifecycle event, in order, on the GC_WATCH stream.

Watch streams read it with an ordered consumer; the stream sequence is the resume cursor, so a
client that reconnects with its last cursor gets exactly the events after it, none twice.
Subjects carry sender, recipient, case owner and case, so each watcher's filter is applied by
the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import nats.errors
import structlog
from greenchannel.v1 import bus_pb2, lifecycle_pb2
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from broker.protocol._subjects import WATCH_STREAM, status_subject

from ._errors import UnavailableError
from ._ledger import LedgerWriter

__all__ = ["WatchLog", "WatchPosition"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class WatchPosition:
    """Where a watch starts."""

    after_cursor: int = 0
    """Resume after this stream sequence; 0 starts at the beginning (or now, with only_new)."""
    only_new: bool = False
    """Only events from now on."""


class WatchLog:
    def __init__(self, js: JetStreamContext, *, ledger: LedgerWriter | None = None) -> None:
        self._js = js
        self._ledger = ledger

    async def append(
        self, status: lifecycle_pb2.RequestStatus, recorded: lifecycle_pb2.RecordedEvent, *, event_id: str
    ) -> None:
        """Publish one accepted event; Nats-Msg-Id = event id, so a retried append is stored once."""
        record = bus_pb2.WatchResponse(request_id=status.id, event=recorded, state=status.state)
        subject = status_subject(
            sender=status.sender,
            recipient=status.recipient,
            case_owner=status.case_ref.issuing_agency,
            case_number=status.case_ref.case_number,
            request_id=status.id,
        )
        # Every accepted request, event and breach passes here once: the ledger records it too.
        # Both writes are idempotent and independent, so they share one round trip.
        writes = [self._publish(subject, record, event_id)]
        if self._ledger is not None:
            writes.append(self._ledger.record_event(status, recorded, event_id=event_id))
        await asyncio.gather(*writes)

    async def _publish(self, subject: str, record: bus_pb2.WatchResponse, event_id: str) -> None:
        try:
            await self._js.publish(subject, record.SerializeToString(), headers={"Nats-Msg-Id": event_id})
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot publish status change: {exc}") from exc

    async def follow(
        self, filters: Sequence[str], position: WatchPosition, *, idle_heartbeat: float = 5.0
    ) -> AsyncIterator[bus_pb2.WatchResponse]:
        """Yield matching records with their cursor set, until the caller stops iterating."""
        config = ConsumerConfig(filter_subjects=list(filters))
        if position.after_cursor:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = position.after_cursor + 1
        elif position.only_new:
            config.deliver_policy = DeliverPolicy.NEW
        else:
            config.deliver_policy = DeliverPolicy.ALL
        try:
            sub = await self._js.subscribe(
                filters[0],
                stream=WATCH_STREAM,
                config=config,
                ordered_consumer=True,
                idle_heartbeat=idle_heartbeat,
            )
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot watch: {exc}") from exc
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=3600)
                except nats.errors.TimeoutError:
                    continue
                record = bus_pb2.WatchResponse.FromString(msg.data)
                record.cursor = msg.metadata.sequence.stream
                yield record
        finally:
            try:
                await asyncio.shield(sub.unsubscribe())
            except (nats.errors.Error, asyncio.CancelledError):
                log.debug("watch.unsubscribe_failed")
