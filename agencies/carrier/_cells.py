"""The carrier's radio network as far as locating a line needs it: cells and where lines were last seen.

Every function runs inside the caller's transaction.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from agencies._common import from_us, to_us

from ._model import Cell, LastSeen

__all__ = ["CELLS_SCHEMA", "cell", "last_seen", "upsert_cell", "upsert_last_seen"]

CELLS_SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    cell_id          TEXT PRIMARY KEY,
    base_station_id  TEXT NOT NULL,
    location_area    TEXT NOT NULL,
    latitude         REAL NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude        REAL NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    accuracy_m       INTEGER NOT NULL CHECK (accuracy_m > 0)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS last_seen (
    e164             TEXT PRIMARY KEY REFERENCES numbers (e164),
    cell_id          TEXT NOT NULL REFERENCES cells (cell_id),
    at_us            INTEGER NOT NULL
) WITHOUT ROWID;
"""


def upsert_cell(conn: sqlite3.Connection, c: Cell) -> None:
    conn.execute(
        "INSERT INTO cells (cell_id, base_station_id, location_area, latitude, longitude, accuracy_m)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (cell_id) DO UPDATE SET"
        " base_station_id = excluded.base_station_id, location_area = excluded.location_area,"
        " latitude = excluded.latitude, longitude = excluded.longitude, accuracy_m = excluded.accuracy_m",
        (c.cell_id, c.base_station_id, c.location_area, c.latitude, c.longitude, c.accuracy_m),
    )


def cell(conn: sqlite3.Connection, cell_id: str) -> Cell | None:
    row = conn.execute(
        "SELECT cell_id, base_station_id, location_area, latitude, longitude, accuracy_m FROM cells"
        " WHERE cell_id = ?",
        (cell_id,),
    ).fetchone()
    if row is None:
        return None
    return Cell(
        cell_id=row["cell_id"],
        base_station_id=row["base_station_id"],
        location_area=row["location_area"],
        latitude=row["latitude"],
        longitude=row["longitude"],
        accuracy_m=row["accuracy_m"],
    )


def upsert_last_seen(conn: sqlite3.Connection, e164: str, cell_id: str, at: datetime) -> None:
    """Record the line on ``cell_id`` at ``at``, unless it was already seen later."""
    conn.execute(
        "INSERT INTO last_seen (e164, cell_id, at_us) VALUES (?, ?, ?) ON CONFLICT (e164) DO UPDATE SET"
        " cell_id = excluded.cell_id, at_us = excluded.at_us WHERE excluded.at_us >= last_seen.at_us",
        (e164, cell_id, to_us(at)),
    )


def last_seen(conn: sqlite3.Connection, e164: str) -> LastSeen | None:
    row = conn.execute("SELECT e164, cell_id, at_us FROM last_seen WHERE e164 = ?", (e164,)).fetchone()
    if row is None:
        return None
    found = cell(conn, row["cell_id"])
    if found is None:
        return None
    return LastSeen(e164=row["e164"], cell=found, at=from_us(row["at_us"]))
