"""Execution is idempotent by request id: a local SQLite record of what was started and answered.

One row per request id::

    started   the agency system was (or is about to be) called; a crash leaves the row here,
              and the next delivery calls again with the same request id, which the agency
              system's own idempotency absorbs (that is the contract of every agency service)
    terminal  the signed terminal event, exactly the bytes published; a redelivery or a duplicate
              re-publishes these bytes and never calls the agency system again

Each row also keeps the digest of the request body it belongs to, so a request id that comes
back with another body is refused rather than answered with someone else's result.

The database lives in the adapter's state directory, next to the agency it serves; it holds
signed events (whose data answers are sealed), never a clear answer. Calls are short and
synchronous. The runtime goes through :class:`GroupCommitJournal`: reads on the event loop from
a connection of their own (WAL readers never wait for the writer), and the writes of every
message in flight gathered into one transaction, committed (and fsynced) once, in a worker thread.

Durability (WAL, ``synchronous=FULL``: a commit returns only once the WAL is fsynced):

* ``started`` is committed before the agency system is called. It is what tells a later delivery
  that a call may already have happened (the agency's own journal then absorbs the second call,
  and ``starts`` says it was a resumption); not yet on disk when the call went out, a power loss
  would leave no trace of it here.
* ``terminal`` is committed before its event is published. It is the record that keeps every later
  delivery from calling the agency system again: any copy of the request that comes back, however
  late, republishes these bytes instead. Were it published first and lost in a crash, the next
  delivery would call again and answer with another signature.

Group commit changes none of this: each caller's write is answered only after the transaction
holding it committed, so a message waits for the same fsync it always waited for, and shares it
with every other message that reached the same step meanwhile.
"""

from __future__ import annotations

import asyncio
import enum
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self, TypeAlias

from broker.protocol import Clock

from ._errors import AdapterError, IdempotencyConflictError

__all__ = [
    "DATABASE_FILE",
    "ExecutionRecord",
    "ExecutionState",
    "GroupCommitJournal",
    "IdempotencyStore",
    "StartOp",
    "TerminalOp",
]

DATABASE_FILE = "idempotency.sqlite3"
_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    request_id      TEXT PRIMARY KEY,
    request_digest  TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('started', 'terminal')),
    starts          INTEGER NOT NULL,
    event_id        TEXT,
    terminal_event  BLOB,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    CHECK ((state = 'terminal') = (terminal_event IS NOT NULL AND event_id IS NOT NULL))
) WITHOUT ROWID
"""


class ExecutionState(enum.StrEnum):
    """How far a request got."""

    STARTED = "started"
    """The agency system was called, with no terminal event recorded yet."""
    TERMINAL = "terminal"
    """The terminal event is recorded; it is the answer for good."""


@dataclass(frozen=True, kw_only=True)
class ExecutionRecord:
    """What the store knows about one request id."""

    request_id: str
    """The request."""
    request_digest: str
    """``body_digest`` of the request body this record belongs to."""
    state: ExecutionState
    """Started or terminal."""
    starts: int
    """How many times execution started (more than one: it was resumed after a crash or shutdown)."""
    event_id: str | None
    """Id of the terminal event, when terminal."""
    terminal_event: bytes | None
    """The serialized signed terminal event (``SignedMessage``), when terminal."""


@dataclass(frozen=True, kw_only=True)
class StartOp:
    """:meth:`IdempotencyStore.mark_started` as one write of a batch."""

    request_id: str
    request_digest: str


@dataclass(frozen=True, kw_only=True)
class TerminalOp:
    """:meth:`IdempotencyStore.record_terminal` as one write of a batch."""

    request_id: str
    request_digest: str
    event_id: str
    signed_event: bytes


JournalOp: TypeAlias = StartOp | TerminalOp
OpOutcome: TypeAlias = ExecutionRecord | IdempotencyConflictError
"""The record a write left, or the conflict that refused it (the others in its batch still apply)."""


class IdempotencyStore:
    """The request-id -> execution record table in one SQLite file. Thread-safe; a context manager."""

    def __init__(self, path: Path, *, clock: Clock) -> None:
        """Open (creating if needed) the database at ``path``."""
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            # Created owner-only up front: sqlite3 would create it with the process umask.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            # Called from worker threads; every use is serialized by self._lock.
            self._db: sqlite3.Connection | None = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # A terminal record must be on disk before its event is published: FULL fsyncs each commit.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                raise AdapterError(f"{path}: idempotency schema version {version} is not supported")
            self._db.execute(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            # Reads of the event loop (peek): a connection of their own, so they never queue
            # behind a commit's fsync on the writer's lock; WAL gives them the last commit.
            self._reader: sqlite3.Connection | None = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None
            )
            self._reader.execute("PRAGMA query_only=ON")
            self._reader.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            raise AdapterError(f"{path}: cannot open the idempotency database: {exc}") from exc

    @classmethod
    def in_state_dir(cls, state_dir: Path, *, clock: Clock) -> IdempotencyStore:
        """The store at ``<state_dir>/idempotency.sqlite3``."""
        return cls(state_dir / DATABASE_FILE, clock=clock)

    @property
    def path(self) -> Path:
        return self._path

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the database; idempotent."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise AdapterError(f"{self._path}: the idempotency store is closed")
        return self._db

    def _now(self) -> str:
        return _iso(self._clock.now())

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; sqlite3 errors become :class:`AdapterError`."""
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                yield db
                db.execute("COMMIT")
            except BaseException as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise AdapterError(f"{self._path}: idempotency database error: {exc}") from exc
                raise

    def get(self, request_id: str) -> ExecutionRecord | None:
        """The record of ``request_id``, or ``None`` if it was never started."""
        with self._lock:
            try:
                return self._get(self._conn(), request_id)
            except sqlite3.Error as exc:
                raise AdapterError(f"{self._path}: idempotency database error: {exc}") from exc

    def peek(self, request_id: str) -> ExecutionRecord | None:
        """:meth:`get` for the event loop: never waits for a write in progress.

        It sees every committed write, so a caller that itself serializes the writes of one
        request id (as the runtime does) reads its own last write.
        """
        reader = self._reader
        if reader is None:
            raise AdapterError(f"{self._path}: the idempotency store is closed")
        try:
            return self._get(reader, request_id)
        except sqlite3.Error as exc:
            raise AdapterError(f"{self._path}: idempotency database error: {exc}") from exc

    def apply(self, ops: Sequence[JournalOp]) -> list[OpOutcome]:
        """Apply ``ops`` in order in ONE transaction (one commit, one fsync); an outcome per op.

        A conflicting digest refuses that op alone (its outcome is the error); any database
        error rolls the whole batch back and raises :class:`AdapterError`.
        """
        outcomes: list[OpOutcome] = []
        with self._transaction() as db:
            for op in ops:
                try:
                    if isinstance(op, StartOp):
                        outcomes.append(self._start(db, op.request_id, op.request_digest))
                    else:
                        outcomes.append(
                            self._terminal(
                                db,
                                op.request_id,
                                op.request_digest,
                                event_id=op.event_id,
                                signed_event=op.signed_event,
                            )
                        )
                except IdempotencyConflictError as exc:
                    outcomes.append(exc)
        return outcomes

    def mark_started(self, request_id: str, request_digest: str) -> ExecutionRecord:
        """Record that the agency system is about to be called for ``request_id``.

        A terminal record is returned unchanged (the caller must replay it, not call again).
        Raises :class:`IdempotencyConflictError` if the id was recorded with another digest.
        """
        with self._transaction() as db:
            return self._start(db, request_id, request_digest)

    def _start(self, db: sqlite3.Connection, request_id: str, request_digest: str) -> ExecutionRecord:
        current = self._get(db, request_id)
        if current is None:
            now = self._now()
            db.execute(
                "INSERT INTO executions (request_id, request_digest, state, starts, created_at,"
                " updated_at) VALUES (?, ?, 'started', 1, ?, ?)",
                (request_id, request_digest, now, now),
            )
            return ExecutionRecord(
                request_id=request_id,
                request_digest=request_digest,
                state=ExecutionState.STARTED,
                starts=1,
                event_id=None,
                terminal_event=None,
            )
        _check_digest(current, request_digest)
        if current.state is ExecutionState.TERMINAL:
            return current
        db.execute(
            "UPDATE executions SET starts = starts + 1, updated_at = ? WHERE request_id = ?",
            (self._now(), request_id),
        )
        return ExecutionRecord(
            request_id=request_id,
            request_digest=request_digest,
            state=ExecutionState.STARTED,
            starts=current.starts + 1,
            event_id=None,
            terminal_event=None,
        )

    def record_terminal(
        self, request_id: str, request_digest: str, *, event_id: str, signed_event: bytes
    ) -> ExecutionRecord:
        """Record the signed terminal event of ``request_id``; the first one recorded stays.

        Returns the record now stored: if another terminal event was recorded first, that one,
        and the caller publishes it instead of its own.
        """
        with self._transaction() as db:
            return self._terminal(
                db, request_id, request_digest, event_id=event_id, signed_event=signed_event
            )

    def _terminal(
        self,
        db: sqlite3.Connection,
        request_id: str,
        request_digest: str,
        *,
        event_id: str,
        signed_event: bytes,
    ) -> ExecutionRecord:
        current = self._get(db, request_id)
        now = self._now()
        if current is None:
            db.execute(
                "INSERT INTO executions (request_id, request_digest, state, starts, event_id,"
                " terminal_event, created_at, updated_at) VALUES (?, ?, 'terminal', 0, ?, ?, ?, ?)",
                (request_id, request_digest, event_id, signed_event, now, now),
            )
            starts = 0
        else:
            _check_digest(current, request_digest)
            if current.state is ExecutionState.TERMINAL:
                return current
            db.execute(
                "UPDATE executions SET state = 'terminal', event_id = ?, terminal_event = ?,"
                " updated_at = ? WHERE request_id = ?",
                (event_id, signed_event, now, request_id),
            )
            starts = current.starts
        return ExecutionRecord(
            request_id=request_id,
            request_digest=request_digest,
            state=ExecutionState.TERMINAL,
            starts=starts,
            event_id=event_id,
            terminal_event=signed_event,
        )

    @staticmethod
    def _get(db: sqlite3.Connection, request_id: str) -> ExecutionRecord | None:
        row = db.execute(
            "SELECT request_digest, state, starts, event_id, terminal_event FROM executions"
            " WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            return None
        digest, state, starts, event_id, terminal_event = row
        return ExecutionRecord(
            request_id=request_id,
            request_digest=digest,
            state=ExecutionState(state),
            starts=starts,
            event_id=event_id,
            terminal_event=terminal_event,
        )


class GroupCommitJournal:
    """The store for the asyncio runtime: reads on the loop, writes group-committed in a thread.

    Writes queued while a commit is running go into the next one, together: under load each
    commit (each fsync, each hop to a worker thread) serves every message that reached a write
    meanwhile, instead of one. Nothing waits on purpose to gather a batch: an idle adapter
    commits a lone write at once, as before. Each caller resumes only after its write committed.

    Not thread-safe: used from the event loop that created it. :meth:`aclose` waits for the
    commit in progress; the store itself is closed by its owner.
    """

    def __init__(self, store: IdempotencyStore) -> None:
        self._store = store
        self._queued: list[tuple[JournalOp, asyncio.Future[ExecutionRecord]]] = []
        self._committer: asyncio.Task[None] | None = None

    @property
    def store(self) -> IdempotencyStore:
        return self._store

    def peek(self, request_id: str) -> ExecutionRecord | None:
        """The committed record of ``request_id``; see :meth:`IdempotencyStore.peek`."""
        return self._store.peek(request_id)

    async def mark_started(self, request_id: str, request_digest: str) -> ExecutionRecord:
        """:meth:`IdempotencyStore.mark_started`, durable when it returns."""
        return await self._write(StartOp(request_id=request_id, request_digest=request_digest))

    async def record_terminal(
        self, request_id: str, request_digest: str, *, event_id: str, signed_event: bytes
    ) -> ExecutionRecord:
        """:meth:`IdempotencyStore.record_terminal`, durable when it returns."""
        return await self._write(
            TerminalOp(
                request_id=request_id,
                request_digest=request_digest,
                event_id=event_id,
                signed_event=signed_event,
            )
        )

    async def aclose(self) -> None:
        """Wait until the writes already queued are committed (or failed)."""
        committer = self._committer
        if committer is not None:
            await asyncio.wait({committer})

    async def _write(self, op: JournalOp) -> ExecutionRecord:
        future: asyncio.Future[ExecutionRecord] = asyncio.get_running_loop().create_future()
        self._queued.append((op, future))
        if self._committer is None or self._committer.done():
            # Not a child of the caller: a caller cancelled mid-commit must not cancel the
            # commit the other callers of its batch wait for.
            self._committer = asyncio.create_task(self._commit_queued(), name="adapter-journal-commit")
        # shield: the write may commit even if the caller is cancelled; it then finds it next time.
        return await asyncio.shield(future)

    async def _commit_queued(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                outcomes = await asyncio.to_thread(self._store.apply, [op for op, _ in batch])
            except asyncio.CancelledError:
                # Whether this batch committed is unknown: its callers retry (every write is
                # idempotent), and nobody waits forever for a commit that no longer comes.
                for _, future in [*batch, *self._queued]:
                    _fail(future, AdapterError("journal commit cancelled"))
                self._queued = []
                raise
            except Exception as exc:
                error = exc if isinstance(exc, AdapterError) else AdapterError(f"journal write failed: {exc}")
                for _, future in batch:
                    _fail(future, error)
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, IdempotencyConflictError):
                    _fail(future, outcome)
                elif not future.done():
                    future.set_result(outcome)


def _fail(future: asyncio.Future[ExecutionRecord], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


def _check_digest(record: ExecutionRecord, request_digest: str) -> None:
    if record.request_digest != request_digest:
        raise IdempotencyConflictError(
            f"request {record.request_id} was recorded with another body ({record.request_digest})"
        )


def _iso(when: datetime) -> str:
    return when.isoformat()
