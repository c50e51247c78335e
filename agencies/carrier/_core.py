"""The reference carrier core: lines, SIMs, handsets, call records and warnings in SQLite."""

from __future__ import annotations

from datetime import datetime

from greenchannel.v1 import carrier_pb2

from agencies._common import AgencyCore, CarrierError, Reach
from broker.protocol import Clock

from . import _cells as cells
from . import _orders as orders
from . import _store as store
from ._config import CarrierConfig
from ._model import CallRecord, Cell, LastSeen, Line, LineStatus, SentWarning
from ._schema import CARRIER_SCHEMA

__all__ = ["CarrierCore"]


class CarrierCore(AgencyCore):
    """One carrier's number registry. Thread-safe; close it (or use it as a context manager)."""

    def __init__(self, config: CarrierConfig, *, clock: Clock | None = None) -> None:
        super().__init__(
            agency_id=config.agency_id, database=config.database, schema=CARRIER_SCHEMA, clock=clock
        )
        self._config = config
        with self._db.transaction() as conn:
            store.upgrade(conn)

    @property
    def config(self) -> CarrierConfig:
        return self._config

    # -- CarrierService ---------------------------------------------------------------------------

    def block_number(self, request: carrier_pb2.BlockNumberRequest) -> carrier_pb2.BlockNumberResponse:
        """Block or unblock the number, SIM and/or handset of a line."""
        return self._run(
            "CarrierService.BlockNumber", request, carrier_pb2.BlockNumberResponse, orders.block_number
        )

    def lift_block(self, request: carrier_pb2.LiftBlockRequest) -> carrier_pb2.LiftBlockResponse:
        """Lift the block an earlier request made (the broker's lifting order after an appeal)."""
        return self._run(
            "CarrierService.LiftBlock", request, carrier_pb2.LiftBlockResponse, orders.lift_block
        )

    def warn_subscriber(
        self, request: carrier_pb2.WarnSubscriberRequest
    ) -> carrier_pb2.WarnSubscriberResponse:
        """预警劝阻: call or text the subscriber with an approved template, now."""
        return self._run(
            "CarrierService.WarnSubscriber",
            request,
            carrier_pb2.WarnSubscriberResponse,
            orders.warn_subscriber,
        )

    def query_subscriber_data(
        self, request: carrier_pb2.QuerySubscriberDataRequest
    ) -> carrier_pb2.QuerySubscriberDataResponse:
        """Subscriber identity, call records in a period or the line's last known location, in clear
        (the adapter seals them)."""
        return self._run(
            "CarrierService.QuerySubscriberData",
            request,
            carrier_pb2.QuerySubscriberDataResponse,
            orders.query_subscriber_data,
        )

    # -- the carrier's own business ---------------------------------------------------------------

    def register_line(
        self,
        e164: str,
        *,
        iccid: str,
        imsi: str,
        subscriber_name: str,
        imei: str = "",
        id_type: str = "",
        id_number: str = "",
        activated_at: datetime | None = None,
        issuing_batch: str = "",
    ) -> Line:
        """Activate a line under real-name registration (``issuing_batch``: its SIM's batch)."""
        ln = Line(
            e164=e164,
            iccid=iccid,
            imsi=imsi,
            imei=imei,
            subscriber_name=subscriber_name,
            id_type=id_type,
            id_number=id_number,
            status=LineStatus.ACTIVE,
            activated_at=activated_at or self._clock.now(),
            number_blocked=False,
            sim_blocked=False,
            imei_blocked=False,
            issuing_batch=issuing_batch,
        )
        with self._db.transaction() as conn:
            if store.line(conn, e164) is not None:
                raise CarrierError("the number is already registered")
            store.insert_line(conn, ln)
        return ln

    def cancel_line(self, e164: str) -> None:
        with self._db.transaction() as conn:
            if store.line(conn, e164) is None:
                raise CarrierError("no such number")
            conn.execute("UPDATE numbers SET status = 'cancelled' WHERE e164 = ?", (e164,))

    def record_call(
        self,
        e164: str,
        other_party: str,
        *,
        direction: str = "out",
        started_at: datetime,
        duration_s: int,
        cell_id: str = "",
    ) -> None:
        """Add a call detail record to one of this carrier's lines."""
        if direction not in ("out", "in"):
            raise ValueError("direction is 'out' or 'in'")
        with self._db.transaction() as conn:
            if store.line(conn, e164) is None:
                raise CarrierError("no such number")
            store.insert_call(
                conn,
                CallRecord(
                    e164=e164,
                    direction=direction,
                    other_party=other_party,
                    started_at=started_at,
                    duration_s=duration_s,
                    cell_id=cell_id,
                ),
            )

    def add_cell(self, c: Cell) -> None:
        """Add a cell of the network, or correct what is known about it."""
        with self._db.transaction() as conn:
            cells.upsert_cell(conn, c)

    def record_last_seen(self, e164: str, cell_id: str, at: datetime) -> None:
        """The network saw the line active on ``cell_id`` at ``at`` (kept unless seen later already)."""
        with self._db.transaction() as conn:
            if store.line(conn, e164) is None:
                raise CarrierError("no such number")
            if cells.cell(conn, cell_id) is None:
                raise CarrierError("no such cell")
            cells.upsert_last_seen(conn, e164, cell_id, at)

    def last_seen(self, e164: str) -> LastSeen | None:
        with self._db.transaction() as conn:
            return cells.last_seen(conn, e164)

    def line(self, e164: str) -> Line | None:
        with self._db.transaction() as conn:
            return store.line(conn, e164)

    def calls_of(self, e164: str, start: datetime, end: datetime) -> tuple[CallRecord, ...]:
        with self._db.transaction() as conn:
            return tuple(store.calls_between(conn, e164, start, end))

    def set_reach(self, e164: str, reach: Reach | None) -> None:
        """Record how a warning to the line ends: UNREACHABLE (powered off, flagged), CONTINUING (the
        subscriber said they would pay all the same), or None: reached and dissuaded."""
        with self._db.transaction() as conn:
            if store.line(conn, e164) is None:
                raise CarrierError("no such number")
            store.set_reach(conn, e164, reach)

    def reach(self, e164: str) -> Reach | None:
        """The carrier's record of reaching the line's subscriber (None: reached)."""
        with self._db.transaction() as conn:
            return store.reach(conn, e164)

    def warnings_to(self, e164: str) -> tuple[SentWarning, ...]:
        """Warnings delivered to the line, oldest first."""
        with self._db.transaction() as conn:
            return tuple(store.warnings_to(conn, e164))
