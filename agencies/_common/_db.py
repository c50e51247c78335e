"""One SQLite database per agency system: WAL, explicit transactions, nested as savepoints.

Every agency system keeps its whole state in one file (or ``":memory:"``) behind one connection.
The connection is shared by the gRPC worker threads, so a re-entrant lock serialises transactions;
an agency's orders are few and each takes well under a millisecond, so this costs nothing and
makes every order atomic without retry loops on ``SQLITE_BUSY``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from ._errors import StorageError

__all__ = ["MEMORY", "Database"]

MEMORY = ":memory:"
"""The path of a database that lives and dies with its connection (tests)."""

_log = structlog.get_logger(__name__)


class Database:
    """A SQLite connection with explicit transactions.

    :meth:`transaction` opens ``BEGIN IMMEDIATE`` (the write lock is taken up front, so two
    writers never deadlock on upgrade); a transaction opened inside another becomes a savepoint,
    so a core method can be called on its own or as part of a journalled order alike.
    """

    def __init__(self, path: str | Path, *, schema: str) -> None:
        """Open (creating if needed) the database at ``path`` and apply ``schema`` (idempotent DDL)."""
        self._path = str(path)
        self._lock = threading.RLock()
        self._depth = 0
        self._closed = False
        if self._path != MEMORY:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: the sqlite3 module must not open transactions behind our back.
            self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across application crashes in WAL mode; only a power cut can lose
            # the last transactions, which the adapter's redelivery then executes again.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.executescript(f"BEGIN IMMEDIATE;\n{schema}\nCOMMIT;")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the agency database: {exc}") from exc

    @property
    def path(self) -> str:
        return self._path

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block atomically: commit on success, roll back on any exception."""
        with self._lock:
            if self._closed:
                raise StorageError("the agency database is closed")
            depth = self._depth
            savepoint = f"sp{depth}"
            try:
                self._conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {savepoint}")
            except sqlite3.Error as exc:
                raise StorageError(f"cannot begin a transaction: {exc}") from exc
            self._depth += 1
            try:
                yield self._conn
            except sqlite3.Error as exc:
                self._depth -= 1
                self._undo(depth, savepoint)
                raise StorageError(f"agency database error: {exc}") from exc
            except BaseException:
                self._depth -= 1
                self._undo(depth, savepoint)
                raise
            self._depth -= 1
            try:
                self._conn.execute("COMMIT" if depth == 0 else f"RELEASE {savepoint}")
            except sqlite3.Error as exc:
                self._undo(depth, savepoint)
                raise StorageError(f"cannot commit: {exc}") from exc

    def _undo(self, depth: int, savepoint: str) -> None:
        try:
            if depth == 0:
                self._conn.execute("ROLLBACK")
            else:
                self._conn.execute(f"ROLLBACK TO {savepoint}")
                self._conn.execute(f"RELEASE {savepoint}")
        except sqlite3.Error:
            # The original exception is the one worth raising; SQLite already rolled back if it
            # could not keep the transaction open.
            _log.warning("agency_db.rollback_failed", depth=depth)

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
