"""Execution journal: every order is executed once, and every repeat gets the first answer's bytes.

The adapter redelivers an order whenever it cannot prove the answer was published (crash, network
cut, agency restart). So each agency system stores, in the same transaction as the order's effect,
``request_id -> (method, serialized response)``; a repeat reads that row instead of acting again.
The rows are also what tests count to prove "executed once".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import structlog
from google.protobuf.message import Message
from greenchannel.v1 import agency_pb2, common_pb2, results_pb2

from broker.protocol import Clock, InvalidMessageError, validate_message, validate_request_id

from ._db import Database
from ._results import describe_violations, invalid_request
from ._time import from_us, to_us

__all__ = ["JOURNAL_SCHEMA", "Execution", "ExecutionJournal"]

JOURNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    request_id TEXT PRIMARY KEY,
    method     TEXT NOT NULL,
    response   BLOB NOT NULL,
    at_us      INTEGER NOT NULL
) WITHOUT ROWID;
"""

_log = structlog.get_logger(__name__)


R = TypeVar("R", bound=Message)


@dataclass(frozen=True, kw_only=True)
class Execution:
    """One journalled answer."""

    request_id: str
    """The order's request id (OrderContext.request_id)."""
    method: str
    """The service method that answered, e.g. ``BankService.StopPayment``."""
    response: bytes
    """The serialized response, exactly as first answered (deterministic serialization)."""
    at: datetime
    """When the order was executed, by the agency's clock."""


class ExecutionJournal:
    """Runs orders through validation, the replay check and the journal, atomically."""

    def __init__(self, db: Database, clock: Clock, *, agency_id: str) -> None:
        self._db = db
        self._clock = clock
        self._agency_id = agency_id

    def once(
        self,
        method: str,
        request: Message,
        response_type: type[R],
        act: Callable[[agency_pb2.OrderContext], R],
        *,
        body: str = "order",
    ) -> R:
        """Answer ``request`` (a ``<Method>Request`` with ``context`` and ``body`` fields) once.

        Invalid requests are answered REJECTED / INVALID_REQUEST without acting and without a
        journal row: the same bytes would be refused the same way again. Everything ``act`` writes
        commits together with the journal row, or not at all.
        """
        context: agency_pb2.OrderContext = getattr(request, "context")  # noqa: B009
        refusal = self._refusal(request, body)
        if refusal is not None:
            # The id is logged only once it is known to be a UUID: anything else might be anything.
            self._log(method, _loggable(context.request_id), refusal, replayed=False)
            return _with_result(response_type, refusal)
        request_id = context.request_id
        with self._db.transaction() as conn:
            row = conn.execute(
                "SELECT method, response FROM executions WHERE request_id = ?", (request_id,)
            ).fetchone()
            if row is not None:
                if row["method"] != method:
                    reused = invalid_request("request id already used for another order")
                    self._log(method, request_id, reused, replayed=False)
                    return _with_result(response_type, reused)
                replay = response_type.FromString(row["response"])
                self._log(method, request_id, _result_of(replay), replayed=True)
                return replay
            response = act(context)
            conn.execute(
                "INSERT INTO executions (request_id, method, response, at_us) VALUES (?, ?, ?, ?)",
                (
                    request_id,
                    method,
                    response.SerializeToString(deterministic=True),
                    to_us(self._clock.now()),
                ),
            )
        self._log(method, request_id, _result_of(response), replayed=False)
        return response

    @staticmethod
    def _refusal(request: Message, body: str) -> results_pb2.Result | None:
        if not request.HasField("context"):
            return invalid_request("invalid request: context is required")
        try:
            validate_request_id(getattr(request, "context").request_id)  # noqa: B009
        except ValueError:
            return invalid_request("invalid request: context.request_id must be a canonical UUID")
        if not request.HasField(body):
            return invalid_request(f"invalid request: {body} is required")
        try:
            validate_message(request)
        except InvalidMessageError as exc:
            return invalid_request(describe_violations(exc))
        return None

    def get(self, request_id: str) -> Execution | None:
        """The journalled answer to ``request_id``, if it was executed."""
        with self._db.transaction() as conn:
            row = conn.execute(
                "SELECT request_id, method, response, at_us FROM executions WHERE request_id = ?",
                (request_id,),
            ).fetchone()
        if row is None:
            return None
        return Execution(
            request_id=row["request_id"],
            method=row["method"],
            response=row["response"],
            at=from_us(row["at_us"]),
        )

    def count(self, request_id: str) -> int:
        """How many answers are journalled for ``request_id``: 0 or 1, whatever was redelivered."""
        with self._db.transaction() as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM executions WHERE request_id = ?", (request_id,)
            ).fetchone()
        return int(row[0])

    def _log(self, method: str, request_id: str, result: results_pb2.Result, *, replayed: bool) -> None:
        _log.info(
            "agency.order_answered",
            agency=self._agency_id,
            method=method,
            request_id=request_id,
            outcome=common_pb2.RequestState.Name(result.outcome),
            reason=results_pb2.ReasonCode.Name(result.reason),
            replayed=replayed,
        )


def _loggable(request_id: str) -> str:
    try:
        return validate_request_id(request_id)
    except ValueError:
        return "(invalid)"


def _result_of(response: Message) -> results_pb2.Result:
    result: results_pb2.Result = getattr(response, "result")  # noqa: B009
    return result


def _with_result(response_type: type[R], result: results_pb2.Result) -> R:
    """``response_type(result=result)``; protobuf's stubs give ``Message.__init__`` no fields."""
    make: Callable[..., R] = response_type
    return make(result=result)
