"""What every reference agency core shares: its database, its journal, and its lifecycle."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from google.protobuf.message import Message
from greenchannel.v1 import agency_pb2

from broker.protocol import Clock, SystemClock

from ._db import Database
from ._journal import Execution, ExecutionJournal

__all__ = ["AgencyCore", "Rule"]

R = TypeVar("R", bound=Message)

Rule = Callable[[sqlite3.Connection, datetime, agency_pb2.OrderContext, Any], R]
"""One order's business rule: ``(connection, now, context, order) -> response``."""


class AgencyCore:
    """Base of the reference cores: one SQLite database, an execution journal, a clock.

    Thread-safe (the database serialises transactions). Close it, or use it as a context manager.
    """

    def __init__(self, *, agency_id: str, database: str | Path, schema: str, clock: Clock | None) -> None:
        self._agency_id = agency_id
        self._clock: Clock = clock or SystemClock()
        self._db = Database(database, schema=schema)
        self._journal = ExecutionJournal(self._db, self._clock, agency_id=agency_id)

    @property
    def agency_id(self) -> str:
        return self._agency_id

    @property
    def clock(self) -> Clock:
        return self._clock

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group direct calls into one transaction: all of them happen, or none (seeding)."""
        with self._db.transaction():
            yield

    def _run(
        self, method: str, request: Message, response_type: type[R], rule: Rule[R], *, body: str = "order"
    ) -> R:
        """Validate, replay or execute ``rule`` once for the request id, journalling the answer."""
        order = getattr(request, body)

        def act(ctx: agency_pb2.OrderContext) -> R:
            with self._db.transaction() as conn:
                return rule(conn, self._clock.now(), ctx, order)

        return self._journal.once(method, request, response_type, act, body=body)

    def execution(self, request_id: str) -> Execution | None:
        """The journalled answer to ``request_id``: method, exact response bytes, time."""
        return self._journal.get(request_id)

    def execution_count(self, request_id: str) -> int:
        """Journal rows for ``request_id``: 1 once executed, however often it was delivered."""
        return self._journal.count(request_id)

    def close(self) -> None:
        """Close the database; safe to call twice."""
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
