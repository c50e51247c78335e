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
synchronous; the runtime runs them in a worker thread.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from broker.protocol._clock import Clock

from ._errors import AdapterError, IdempotencyConflictError

__all__ = ["DATABASE_FILE", "ExecutionRecord", "ExecutionState", "IdempotencyStore"]

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

    def mark_started(self, request_id: str, request_digest: str) -> ExecutionRecord:
        """Record that the agency system is about to be called for ``request_id``.

        A terminal record is returned unchanged (the caller must replay it, not call again).
        Raises :class:`IdempotencyConflictError` if the id was recorded with another digest.
        """
        with self._transaction() as db:
            current = self._get(db, request_id)
            if current is None:
                now = self._now()
                db.execute(
                    "INSERT INTO executions (request_id, request_digest, state, starts, created_at,"
                    " updated_at) VALUES (?, ?, 'started', 1, ?, ?)",
                    (request_id, request_digest, now, now),
                )
            else:
                _check_digest(current, request_digest)
                if current.state is ExecutionState.STARTED:
                    db.execute(
                        "UPDATE executions SET starts = starts + 1, updated_at = ? WHERE request_id = ?",
                        (self._now(), request_id),
                    )
            record = self._get(db, request_id)
        assert record is not None
        return record

    def record_terminal(
        self, request_id: str, request_digest: str, *, event_id: str, signed_event: bytes
    ) -> ExecutionRecord:
        """Record the signed terminal event of ``request_id``; the first one recorded stays.

        Returns the record now stored: if another terminal event was recorded first, that one,
        and the caller publishes it instead of its own.
        """
        with self._transaction() as db:
            current = self._get(db, request_id)
            now = self._now()
            if current is None:
                db.execute(
                    "INSERT INTO executions (request_id, request_digest, state, starts, event_id,"
                    " terminal_event, created_at, updated_at) VALUES (?, ?, 'terminal', 0, ?, ?, ?, ?)",
                    (request_id, request_digest, event_id, signed_event, now, now),
                )
            else:
                _check_digest(current, request_digest)
                if current.state is ExecutionState.STARTED:
                    db.execute(
                        "UPDATE executions SET state = 'terminal', event_id = ?, terminal_event = ?,"
                        " updated_at = ? WHERE request_id = ?",
                        (event_id, signed_event, now, request_id),
                    )
            record = self._get(db, request_id)
        assert record is not None
        return record

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


def _check_digest(record: ExecutionRecord, request_digest: str) -> None:
    if record.request_digest != request_digest:
        raise IdempotencyConflictError(
            f"request {record.request_id} was recorded with another body ({record.request_digest})"
        )


def _iso(when: datetime) -> str:
    return when.isoformat()
