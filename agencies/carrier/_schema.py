"""The carrier's tables: its lines (with their SIM issuing batch), their call records, warnings sent
and whether a warning reaches the subscriber,
block orders applied (single, and item by item for batches and selectors), cells and where each
line was last seen."""

from __future__ import annotations

from agencies._common import JOURNAL_SCHEMA

from ._cells import CELLS_SCHEMA

__all__ = ["CARRIER_SCHEMA"]

CARRIER_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS numbers (
    e164            TEXT PRIMARY KEY,
    iccid           TEXT NOT NULL,
    imsi            TEXT NOT NULL,
    imei            TEXT NOT NULL DEFAULT '',
    subscriber_name TEXT NOT NULL,
    id_type         TEXT NOT NULL DEFAULT '',
    id_number       TEXT NOT NULL DEFAULT '',
    status          TEXT NOT NULL CHECK (status IN ('active', 'cancelled')),
    activated_at_us INTEGER NOT NULL,
    number_blocked  INTEGER NOT NULL DEFAULT 0 CHECK (number_blocked IN (0, 1)),
    sim_blocked     INTEGER NOT NULL DEFAULT 0 CHECK (sim_blocked IN (0, 1)),
    imei_blocked    INTEGER NOT NULL DEFAULT 0 CHECK (imei_blocked IN (0, 1)),
    issuing_batch   TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS call_records (
    record_id     INTEGER PRIMARY KEY,
    e164          TEXT NOT NULL REFERENCES numbers (e164),
    direction     TEXT NOT NULL CHECK (direction IN ('out', 'in')),
    other_party   TEXT NOT NULL,
    started_at_us INTEGER NOT NULL,
    duration_s    INTEGER NOT NULL CHECK (duration_s >= 0),
    cell_id       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS call_records_by_line ON call_records (e164, started_at_us);
CREATE INDEX IF NOT EXISTS call_records_by_cell ON call_records (cell_id, started_at_us);

CREATE TABLE IF NOT EXISTS warnings (
    request_id  TEXT PRIMARY KEY,
    e164        TEXT NOT NULL REFERENCES numbers (e164),
    channel     TEXT NOT NULL,
    template_id TEXT NOT NULL,
    at_us       INTEGER NOT NULL
) WITHOUT ROWID;

-- What the carrier knows of reaching a subscriber it is asked to warn: a line powered off or
-- flagged unreachable, or a subscriber who said they would pay all the same. No row: reached and
-- dissuaded.
CREATE TABLE IF NOT EXISTS reachability (
    e164  TEXT PRIMARY KEY REFERENCES numbers (e164),
    reach TEXT NOT NULL CHECK (reach IN ('unreachable', 'continuing'))
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS block_actions (
    request_id TEXT PRIMARY KEY,
    e164       TEXT NOT NULL REFERENCES numbers (e164),
    kinds      TEXT NOT NULL,
    unblock    INTEGER NOT NULL CHECK (unblock IN (0, 1)),
    at_us      INTEGER NOT NULL
) WITHOUT ROWID;

-- What each item of a batch or selector block order did (``item``: its index in the order).
CREATE TABLE IF NOT EXISTS block_items (
    request_id TEXT NOT NULL,
    item       INTEGER NOT NULL,
    e164       TEXT NOT NULL REFERENCES numbers (e164),
    kinds      TEXT NOT NULL,
    unblock    INTEGER NOT NULL CHECK (unblock IN (0, 1)),
    at_us      INTEGER NOT NULL,
    PRIMARY KEY (request_id, item)
) WITHOUT ROWID;
"""
    + CELLS_SCHEMA
    + JOURNAL_SCHEMA
)
