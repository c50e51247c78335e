"""The bank core's tables. Money is integer minor units; instants are integer microseconds (UTC)."""

from __future__ import annotations

from agencies._common import JOURNAL_SCHEMA

__all__ = ["BANK_SCHEMA"]

BANK_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS accounts (
    account_number TEXT PRIMARY KEY,
    holder_name    TEXT NOT NULL,
    currency       TEXT NOT NULL,
    balance        INTEGER NOT NULL CHECK (balance >= 0),
    status         TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    id_type        TEXT NOT NULL DEFAULT '',
    id_number      TEXT NOT NULL DEFAULT '',
    phone          TEXT NOT NULL DEFAULT '',
    opened_at_us   INTEGER NOT NULL
) WITHOUT ROWID;

-- One row per transfer touching an account of this bank: outgoing, incoming or internal.
CREATE TABLE IF NOT EXISTS transfers (
    transfer_id  TEXT PRIMARY KEY,
    from_account TEXT NOT NULL,
    from_bank    TEXT NOT NULL DEFAULT '',
    to_account   TEXT NOT NULL,
    to_bank      TEXT NOT NULL DEFAULT '',
    to_bank_code TEXT NOT NULL DEFAULT '',
    to_holder    TEXT NOT NULL DEFAULT '',
    amount       INTEGER NOT NULL CHECK (amount > 0),
    currency     TEXT NOT NULL,
    at_us        INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS transfers_out ON transfers (from_account, at_us);
CREATE INDEX IF NOT EXISTS transfers_in ON transfers (to_account, at_us);

-- Stop-payment holds and freezes. A row exists only where money was actually held.
CREATE TABLE IF NOT EXISTS holds (
    hold_id        TEXT PRIMARY KEY,
    request_id     TEXT NOT NULL UNIQUE,
    account_number TEXT NOT NULL REFERENCES accounts (account_number),
    amount         INTEGER NOT NULL CHECK (amount > 0),
    kind           TEXT NOT NULL CHECK (kind IN ('stop_payment', 'freeze')),
    created_at_us  INTEGER NOT NULL,
    expires_at_us  INTEGER NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('active', 'released', 'expired', 'converted')),
    converted_from TEXT REFERENCES holds (hold_id),
    ended_at_us    INTEGER,
    -- Lifted by releases so far; a partial release lowers amount by as much (amount stays > 0).
    released       INTEGER NOT NULL DEFAULT 0 CHECK (released >= 0)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS holds_by_account ON holds (account_number, status, expires_at_us);

-- The case each hold was placed under (RETURN_FUNDS lifts the paying case's own holds first).
CREATE TABLE IF NOT EXISTS hold_cases (
    hold_id     TEXT PRIMARY KEY REFERENCES holds (hold_id),
    case_owner  TEXT NOT NULL,
    case_number TEXT NOT NULL
) WITHOUT ROWID;
"""
    + JOURNAL_SCHEMA
)
