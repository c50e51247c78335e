"""The desk's tables: assistance requests taken, fraud reports and appeals filed, victim follow-ups, in-person
dissuasions."""

from __future__ import annotations

from agencies._common import JOURNAL_SCHEMA

__all__ = ["POLICE_SCHEMA"]

POLICE_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS assistance_cases (
    request_id  TEXT PRIMARY KEY,
    reference   TEXT NOT NULL UNIQUE,
    sender      TEXT NOT NULL,
    case_number TEXT NOT NULL,
    kind        TEXT NOT NULL,
    region      TEXT NOT NULL,
    task        TEXT NOT NULL,
    decision    TEXT NOT NULL CHECK (decision IN ('completed', 'declined')),
    at_us       INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS fraud_reports (
    request_id        TEXT PRIMARY KEY,
    reference         TEXT NOT NULL UNIQUE,
    sender            TEXT NOT NULL,
    kind              TEXT NOT NULL,
    summary           TEXT NOT NULL,
    accounts          INTEGER NOT NULL,
    phones            INTEGER NOT NULL,
    platform_accounts INTEGER NOT NULL,
    amount            INTEGER,
    currency          TEXT NOT NULL DEFAULT '',
    observed_at_us    INTEGER,
    region            TEXT NOT NULL DEFAULT '',
    received_at_us    INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS appeals (
    request_id             TEXT PRIMARY KEY,
    reference              TEXT NOT NULL UNIQUE,
    sender                 TEXT NOT NULL,
    case_number            TEXT NOT NULL,
    ticket                 TEXT NOT NULL,
    restriction_request_id TEXT NOT NULL,
    ground                 TEXT NOT NULL,
    statement              TEXT NOT NULL,
    documents              INTEGER NOT NULL,
    received_at_us         INTEGER NOT NULL,
    mark_id                TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS follow_ups (
    request_id        TEXT PRIMARY KEY,
    reference         TEXT NOT NULL UNIQUE,
    case_number       TEXT NOT NULL,
    return_request_id TEXT NOT NULL,
    payout_index      INTEGER NOT NULL,
    victim_id         TEXT NOT NULL,
    returned          INTEGER NOT NULL,
    currency          TEXT NOT NULL,
    outcome           TEXT NOT NULL CHECK (outcome IN ('REACHED', 'NOT_REACHED')),
    advice            TEXT NOT NULL,
    at_us             INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS linkage_notices (
    request_id   TEXT PRIMARY KEY,
    reference    TEXT NOT NULL UNIQUE,
    case_number  TEXT NOT NULL,
    link_id      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    digest       TEXT NOT NULL,
    cases        TEXT NOT NULL,
    cross_region INTEGER NOT NULL CHECK (cross_region IN (0, 1)),
    coordinator  TEXT NOT NULL,
    at_us        INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS dissuasions (
    request_id         TEXT PRIMARY KEY,
    reference          TEXT NOT NULL UNIQUE,
    case_number        TEXT NOT NULL,
    warning_request_id TEXT NOT NULL,
    warning_outcome    TEXT NOT NULL CHECK (warning_outcome IN ('DISSUADED', 'CONTINUING', 'UNREACHABLE')),
    region             TEXT NOT NULL,
    target             TEXT NOT NULL,
    outcome            TEXT NOT NULL CHECK (outcome IN ('DISSUADED', 'CONTINUING', 'UNREACHABLE')),
    at_us              INTEGER NOT NULL
) WITHOUT ROWID;
"""
    + JOURNAL_SCHEMA
)
