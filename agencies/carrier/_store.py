"""SQL over the carrier's tables. Every function runs inside the caller's transaction."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from agencies._common import Reach, from_us, to_us

from ._model import CallRecord, Line, LineStatus, SentWarning

__all__ = [
    "block_action",
    "block_item",
    "calls_between",
    "insert_block_action",
    "insert_block_items",
    "insert_call",
    "insert_line",
    "insert_warning",
    "line",
    "lines_in_issuing_batch",
    "lines_seen_on_cell",
    "reach",
    "set_flag_many",
    "set_flags",
    "set_reach",
    "upgrade",
    "warnings_to",
]

_LINE_COLUMNS = (
    "e164, iccid, imsi, imei, subscriber_name, id_type, id_number, status, activated_at_us,"
    " number_blocked, sim_blocked, imei_blocked, issuing_batch"
)
_FLAG_COLUMNS = {"number": "number_blocked", "sim": "sim_blocked", "imei": "imei_blocked"}


def upgrade(conn: sqlite3.Connection) -> None:
    """Bring a database made by an earlier release up to the schema (``CREATE ... IF NOT EXISTS``
    adds no column to a table that exists): lines gained ``issuing_batch`` with selector blocks."""
    columns = {row["name"] for row in conn.execute("PRAGMA table_info(numbers)")}
    if "issuing_batch" not in columns:
        conn.execute("ALTER TABLE numbers ADD COLUMN issuing_batch TEXT NOT NULL DEFAULT ''")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS numbers_by_issuing_batch ON numbers (issuing_batch)"
        " WHERE issuing_batch != ''"
    )


def line(conn: sqlite3.Connection, e164: str) -> Line | None:
    row = conn.execute(f"SELECT {_LINE_COLUMNS} FROM numbers WHERE e164 = ?", (e164,)).fetchone()  # noqa: S608
    if row is None:
        return None
    return Line(
        e164=row["e164"],
        iccid=row["iccid"],
        imsi=row["imsi"],
        imei=row["imei"],
        subscriber_name=row["subscriber_name"],
        id_type=row["id_type"],
        id_number=row["id_number"],
        status=LineStatus(row["status"]),
        activated_at=from_us(row["activated_at_us"]),
        number_blocked=bool(row["number_blocked"]),
        sim_blocked=bool(row["sim_blocked"]),
        imei_blocked=bool(row["imei_blocked"]),
        issuing_batch=row["issuing_batch"],
    )


def insert_line(conn: sqlite3.Connection, ln: Line) -> None:
    conn.execute(
        f"INSERT INTO numbers ({_LINE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        (
            ln.e164,
            ln.iccid,
            ln.imsi,
            ln.imei,
            ln.subscriber_name,
            ln.id_type,
            ln.id_number,
            ln.status.value,
            to_us(ln.activated_at),
            int(ln.number_blocked),
            int(ln.sim_blocked),
            int(ln.imei_blocked),
            ln.issuing_batch,
        ),
    )


def set_flags(conn: sqlite3.Connection, e164: str, kinds: tuple[str, ...], blocked: bool) -> None:
    for kind in kinds:
        column = _FLAG_COLUMNS[kind]  # a fixed column name, never caller text
        conn.execute(f"UPDATE numbers SET {column} = ? WHERE e164 = ?", (int(blocked), e164))  # noqa: S608


def set_flag_many(conn: sqlite3.Connection, kind: str, rows: list[tuple[int, str]]) -> None:
    """Set one flag on many lines: ``(blocked, number)`` rows."""
    column = _FLAG_COLUMNS[kind]  # a fixed column name, never caller text
    conn.executemany(f"UPDATE numbers SET {column} = ? WHERE e164 = ?", rows)  # noqa: S608


def insert_block_action(
    conn: sqlite3.Connection, request_id: str, e164: str, kinds: tuple[str, ...], unblock: bool, at: datetime
) -> None:
    conn.execute(
        "INSERT INTO block_actions (request_id, e164, kinds, unblock, at_us) VALUES (?, ?, ?, ?, ?)",
        (request_id, e164, ",".join(kinds), int(unblock), to_us(at)),
    )


def insert_call(conn: sqlite3.Connection, call: CallRecord) -> None:
    conn.execute(
        "INSERT INTO call_records (e164, direction, other_party, started_at_us, duration_s, cell_id)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (call.e164, call.direction, call.other_party, to_us(call.started_at), call.duration_s, call.cell_id),
    )


def calls_between(conn: sqlite3.Connection, e164: str, start: datetime, end: datetime) -> list[CallRecord]:
    """Calls of the line that started in ``[start, end)``, oldest first."""
    rows = conn.execute(
        "SELECT e164, direction, other_party, started_at_us, duration_s, cell_id FROM call_records"
        " WHERE e164 = ? AND started_at_us >= ? AND started_at_us < ? ORDER BY started_at_us, record_id",
        (e164, to_us(start), to_us(end)),
    ).fetchall()
    return [
        CallRecord(
            e164=row["e164"],
            direction=row["direction"],
            other_party=row["other_party"],
            started_at=from_us(row["started_at_us"]),
            duration_s=row["duration_s"],
            cell_id=row["cell_id"],
        )
        for row in rows
    ]


def reach(conn: sqlite3.Connection, e164: str) -> Reach | None:
    """The carrier's record of reaching the line's subscriber; None: reached."""
    row = conn.execute("SELECT reach FROM reachability WHERE e164 = ?", (e164,)).fetchone()
    return None if row is None else Reach(row["reach"])


def set_reach(conn: sqlite3.Connection, e164: str, reach: Reach | None) -> None:
    conn.execute("DELETE FROM reachability WHERE e164 = ?", (e164,))
    if reach is not None:
        conn.execute("INSERT INTO reachability (e164, reach) VALUES (?, ?)", (e164, reach.value))


def insert_warning(conn: sqlite3.Connection, warning: SentWarning) -> None:
    conn.execute(
        "INSERT INTO warnings (request_id, e164, channel, template_id, at_us) VALUES (?, ?, ?, ?, ?)",
        (warning.request_id, warning.e164, warning.channel, warning.template_id, to_us(warning.at)),
    )


def warnings_to(conn: sqlite3.Connection, e164: str) -> list[SentWarning]:
    rows = conn.execute(
        "SELECT request_id, e164, channel, template_id, at_us FROM warnings WHERE e164 = ? ORDER BY at_us",
        (e164,),
    ).fetchall()
    return [
        SentWarning(
            request_id=row["request_id"],
            e164=row["e164"],
            channel=row["channel"],
            template_id=row["template_id"],
            at=from_us(row["at_us"]),
        )
        for row in rows
    ]


def block_action(conn: sqlite3.Connection, request_id: str) -> tuple[str, tuple[str, ...], bool] | None:
    """What the block order ``request_id`` did: ``(number, kinds changed, unblock)``; None if none."""
    row = conn.execute(
        "SELECT e164, kinds, unblock FROM block_actions WHERE request_id = ?", (request_id,)
    ).fetchone()
    if row is None:
        return None
    kinds = tuple(kind for kind in str(row["kinds"]).split(",") if kind)
    return row["e164"], kinds, bool(row["unblock"])


def block_item(
    conn: sqlite3.Connection, request_id: str, item: int
) -> tuple[str, tuple[str, ...], bool] | None:
    """What item ``item`` of the batch order ``request_id`` changed: ``(number, kinds, unblock)``;
    None if it changed nothing."""
    row = conn.execute(
        "SELECT e164, kinds, unblock FROM block_items WHERE request_id = ? AND item = ?", (request_id, item)
    ).fetchone()
    if row is None:
        return None
    kinds = tuple(kind for kind in str(row["kinds"]).split(",") if kind)
    return row["e164"], kinds, bool(row["unblock"])


def insert_block_items(
    conn: sqlite3.Connection,
    request_id: str,
    items: list[tuple[int, str, tuple[str, ...]]],
    unblock: bool,
    at: datetime,
) -> None:
    """Record what each item of a batch order changed: ``(index, number, kinds changed)``."""
    conn.executemany(
        "INSERT INTO block_items (request_id, item, e164, kinds, unblock, at_us) VALUES (?, ?, ?, ?, ?, ?)",
        [(request_id, index, e164, ",".join(kinds), int(unblock), to_us(at)) for index, e164, kinds in items],
    )


def lines_in_issuing_batch(conn: sqlite3.Connection, batch: str) -> list[str]:
    """Numbers whose SIM came from the issuing batch, in number order."""
    rows = conn.execute("SELECT e164 FROM numbers WHERE issuing_batch = ? ORDER BY e164", (batch,))
    return [row["e164"] for row in rows]


def lines_seen_on_cell(conn: sqlite3.Connection, cell_id: str, start: datetime, end: datetime) -> list[str]:
    """Numbers with a call record on the cell that started in ``[start, end)``, in number order."""
    rows = conn.execute(
        "SELECT DISTINCT e164 FROM call_records"
        " WHERE cell_id = ? AND started_at_us >= ? AND started_at_us < ? ORDER BY e164",
        (cell_id, to_us(start), to_us(end)),
    )
    return [row["e164"] for row in rows]
