"""The platform's tables: accounts, their logins, warnings sent (and whether a warning reaches the
user), and restriction orders applied."""

from __future__ import annotations

from agencies._common import JOURNAL_SCHEMA

__all__ = ["PLATFORM_SCHEMA"]

PLATFORM_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS accounts (
    platform          TEXT NOT NULL,
    account_id        TEXT NOT NULL,
    display_name      TEXT NOT NULL DEFAULT '',
    real_name         TEXT NOT NULL DEFAULT '',
    id_number         TEXT NOT NULL DEFAULT '',
    registered_phone  TEXT NOT NULL DEFAULT '',
    status            TEXT NOT NULL CHECK (status IN ('active', 'deregistered')),
    restriction_level INTEGER NOT NULL DEFAULT 0 CHECK (restriction_level BETWEEN 0 AND 3),
    registered_at_us  INTEGER NOT NULL,
    PRIMARY KEY (platform, account_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS logins (
    login_id   INTEGER PRIMARY KEY,
    platform   TEXT NOT NULL,
    account_id TEXT NOT NULL,
    ip         TEXT NOT NULL,
    at_us      INTEGER NOT NULL,
    device     TEXT NOT NULL DEFAULT '',
    FOREIGN KEY (platform, account_id) REFERENCES accounts (platform, account_id)
);
CREATE INDEX IF NOT EXISTS logins_by_account ON logins (platform, account_id, at_us);

CREATE TABLE IF NOT EXISTS warnings (
    request_id  TEXT PRIMARY KEY,
    platform    TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    channel     TEXT NOT NULL,
    template_id TEXT NOT NULL,
    at_us       INTEGER NOT NULL
) WITHOUT ROWID;

-- What the platform knows of reaching a user it is asked to warn: an account flagged unreachable
-- (no session for long, notifications off), or a user who said they would pay all the same. No
-- row: reached and dissuaded.
CREATE TABLE IF NOT EXISTS reachability (
    platform   TEXT NOT NULL,
    account_id TEXT NOT NULL,
    reach      TEXT NOT NULL CHECK (reach IN ('unreachable', 'continuing')),
    PRIMARY KEY (platform, account_id),
    FOREIGN KEY (platform, account_id) REFERENCES accounts (platform, account_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS restriction_actions (
    request_id TEXT PRIMARY KEY,
    platform   TEXT NOT NULL,
    account_id TEXT NOT NULL,
    level_from INTEGER NOT NULL,
    level_to   INTEGER NOT NULL,
    at_us      INTEGER NOT NULL
) WITHOUT ROWID;
"""
    + JOURNAL_SCHEMA
)
