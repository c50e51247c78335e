"""LedgerService: the ledger's entries and checkpoints, served to agencies.

Every caller gets the links of every entry in range (seq, hash, prev_hash) and every signed
checkpoint, so any agency can check the whole chain. The entry itself, digests and metadata,
goes only to whom it concerns: its actor, the parties of its request, and regulators.
"""

from __future__ import annotations

import grpc
from greenchannel.v1 import ledger_pb2, ledger_pb2_grpc
from nats.js.client import JetStreamContext

from broker.protocol import Agency, AgencyKind, validate_message

from ._auth import Authenticator
from ._grpc_status import guard_unary, to_hub_error
from ._ledger import LedgerReader, StoredEntry
from ._refusals import RefusalSink

__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "LedgerServicer", "may_read_entry"]

DEFAULT_PAGE = 500
"""Entries (or checkpoints) a page holds when the request names no limit."""
MAX_PAGE = 5000
"""The most a page may hold (the contract caps ``limit`` at this)."""
_SCAN_PAGE = 1000


def may_read_entry(caller: Agency, entry: ledger_pb2.LedgerEntry) -> bool:
    """Regulators read every entry; an agency reads those it acted in or whose request it is party to."""
    return caller.kind is AgencyKind.REGULATOR or caller.id == entry.actor or caller.id in entry.parties


def _record(stored: StoredEntry, *, readable: bool) -> ledger_pb2.LedgerRecord:
    return ledger_pb2.LedgerRecord(
        seq=stored.seq,
        hash=stored.hash,
        prev_hash=stored.prev_hash,
        entry=stored.data if readable else b"",
    )


def _entry(stored: StoredEntry) -> ledger_pb2.LedgerEntry:
    entry = ledger_pb2.LedgerEntry()
    entry.CopyFrom(stored.entry)
    entry.hash = stored.hash
    return entry


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    """ListEntries and ListCheckpoints over GC_LEDGER, with per-agency visibility."""

    def __init__(
        self,
        *,
        auth: Authenticator,
        js: JetStreamContext,
        reader: LedgerReader | None = None,
        max_scan: int = 20_000,
        refusals: RefusalSink | None = None,
    ) -> None:
        """``max_scan`` bounds the entries one ListEntries filtered by request may read; the
        response's ``next_after_seq`` says where to go on."""
        self._auth = auth
        self.refusals = refusals
        """Where refused calls are reported (the guards read it)."""
        self._reader = reader or LedgerReader(js)
        self._max_scan = max_scan

    @guard_unary
    async def ListEntries(
        self, request: ledger_pb2.ListEntriesRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.ListEntriesResponse:
        caller = (await self._auth.authenticate(context)).agency
        _checked(request)
        limit = min(request.limit or DEFAULT_PAGE, MAX_PAGE)
        head = await self._reader.head_seq()
        response = ledger_pb2.ListEntriesResponse(head_seq=head)
        if not request.request_id:
            page = await self._reader.entries(after_seq=request.after_seq, limit=limit, head_seq=head)
            for stored in page:
                readable = may_read_entry(caller, stored.entry)
                response.records.append(_record(stored, readable=readable))
                if readable:
                    response.entries.append(_entry(stored))
            response.next_after_seq = page[-1].seq if page else max(request.after_seq, head)
            return response
        # Filtered: only the caller's readable entries of that request, scanning at most max_scan.
        after, scanned = request.after_seq, 0
        while len(response.entries) < limit and after < head and scanned < self._max_scan:
            page = await self._reader.entries(after_seq=after, limit=_SCAN_PAGE, head_seq=head)
            if not page:
                break
            for stored in page:
                after, scanned = stored.seq, scanned + 1
                if stored.entry.request_id == request.request_id and may_read_entry(caller, stored.entry):
                    response.records.append(_record(stored, readable=True))
                    response.entries.append(_entry(stored))
                    if len(response.entries) >= limit:
                        break
        response.next_after_seq = max(after, request.after_seq)
        return response

    @guard_unary
    async def ListCheckpoints(
        self, request: ledger_pb2.ListCheckpointsRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.ListCheckpointsResponse:
        await self._auth.authenticate(context)
        _checked(request)
        limit = min(request.limit or DEFAULT_PAGE, MAX_PAGE)
        checkpoints = await self._reader.checkpoints(after_seq=request.after_seq, limit=limit)
        return ledger_pb2.ListCheckpointsResponse(checkpoints=checkpoints)


def _checked(message: ledger_pb2.ListEntriesRequest | ledger_pb2.ListCheckpointsRequest) -> None:
    try:
        validate_message(message)
    except Exception as exc:
        raise to_hub_error(exc) from exc
