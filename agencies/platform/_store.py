"""SQL over the platform's tables. Every function runs inside the caller's transaction."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from agencies._common import Reach, from_us, to_us

from ._model import Login, PlatformAccount, PlatformAccountStatus, Restriction, SentWarning

__all__ = [
    "account",
    "insert_account",
    "insert_login",
    "insert_restriction_action",
    "insert_warning",
    "logins_between",
    "reach",
    "restriction_action",
    "set_reach",
    "set_restriction",
    "set_status",
    "warnings_to",
]

_ACCOUNT_COLUMNS = (
    "platform, account_id, display_name, real_name, id_number, registered_phone, status, restriction_level,"
    " registered_at_us"
)


def account(conn: sqlite3.Connection, platform: str, account_id: str) -> PlatformAccount | None:
    row = conn.execute(
        f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE platform = ? AND account_id = ?",  # noqa: S608
        (platform, account_id),
    ).fetchone()
    if row is None:
        return None
    return PlatformAccount(
        platform=row["platform"],
        account_id=row["account_id"],
        display_name=row["display_name"],
        real_name=row["real_name"],
        id_number=row["id_number"],
        registered_phone=row["registered_phone"],
        status=PlatformAccountStatus(row["status"]),
        restriction=Restriction(row["restriction_level"]),
        registered_at=from_us(row["registered_at_us"]),
    )


def insert_account(conn: sqlite3.Connection, acct: PlatformAccount) -> None:
    conn.execute(
        f"INSERT INTO accounts ({_ACCOUNT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        (
            acct.platform,
            acct.account_id,
            acct.display_name,
            acct.real_name,
            acct.id_number,
            acct.registered_phone,
            acct.status.value,
            int(acct.restriction),
            to_us(acct.registered_at),
        ),
    )


def set_restriction(conn: sqlite3.Connection, platform: str, account_id: str, level: Restriction) -> None:
    conn.execute(
        "UPDATE accounts SET restriction_level = ? WHERE platform = ? AND account_id = ?",
        (int(level), platform, account_id),
    )


def set_status(
    conn: sqlite3.Connection, platform: str, account_id: str, status: PlatformAccountStatus
) -> None:
    conn.execute(
        "UPDATE accounts SET status = ? WHERE platform = ? AND account_id = ?",
        (status.value, platform, account_id),
    )


def insert_restriction_action(
    conn: sqlite3.Connection,
    request_id: str,
    acct: PlatformAccount,
    level_to: Restriction,
    at: datetime,
) -> None:
    conn.execute(
        "INSERT INTO restriction_actions (request_id, platform, account_id, level_from, level_to, at_us)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (request_id, acct.platform, acct.account_id, int(acct.restriction), int(level_to), to_us(at)),
    )


def insert_login(conn: sqlite3.Connection, platform: str, account_id: str, login: Login) -> None:
    conn.execute(
        "INSERT INTO logins (platform, account_id, ip, at_us, device) VALUES (?, ?, ?, ?, ?)",
        (platform, account_id, login.ip, to_us(login.at), login.device),
    )


def logins_between(
    conn: sqlite3.Connection, platform: str, account_id: str, start: datetime, end: datetime
) -> list[Login]:
    """Logins in ``[start, end)``, oldest first."""
    rows = conn.execute(
        "SELECT ip, at_us, device FROM logins WHERE platform = ? AND account_id = ?"
        " AND at_us >= ? AND at_us < ? ORDER BY at_us, login_id",
        (platform, account_id, to_us(start), to_us(end)),
    ).fetchall()
    return [Login(ip=row["ip"], at=from_us(row["at_us"]), device=row["device"]) for row in rows]


def insert_warning(conn: sqlite3.Connection, warning: SentWarning) -> None:
    conn.execute(
        "INSERT INTO warnings (request_id, platform, account_id, channel, template_id, at_us)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            warning.request_id,
            warning.platform,
            warning.account_id,
            warning.channel,
            warning.template_id,
            to_us(warning.at),
        ),
    )


def warnings_to(conn: sqlite3.Connection, platform: str, account_id: str) -> list[SentWarning]:
    rows = conn.execute(
        "SELECT request_id, platform, account_id, channel, template_id, at_us FROM warnings"
        " WHERE platform = ? AND account_id = ? ORDER BY at_us",
        (platform, account_id),
    ).fetchall()
    return [
        SentWarning(
            request_id=row["request_id"],
            platform=row["platform"],
            account_id=row["account_id"],
            channel=row["channel"],
            template_id=row["template_id"],
            at=from_us(row["at_us"]),
        )
        for row in rows
    ]


def restriction_action(
    conn: sqlite3.Connection, request_id: str
) -> tuple[str, str, Restriction, Restriction] | None:
    """What the order ``request_id`` did: ``(platform, account id, level before, level after)``."""
    row = conn.execute(
        "SELECT platform, account_id, level_from, level_to FROM restriction_actions WHERE request_id = ?",
        (request_id,),
    ).fetchone()
    if row is None:
        return None
    return row["platform"], row["account_id"], Restriction(row["level_from"]), Restriction(row["level_to"])


def reach(conn: sqlite3.Connection, platform: str, account_id: str) -> Reach | None:
    """The platform's record of reaching the account's user; None: reached."""
    row = conn.execute(
        "SELECT reach FROM reachability WHERE platform = ? AND account_id = ?", (platform, account_id)
    ).fetchone()
    return None if row is None else Reach(row["reach"])


def set_reach(conn: sqlite3.Connection, platform: str, account_id: str, reach: Reach | None) -> None:
    conn.execute("DELETE FROM reachability WHERE platform = ? AND account_id = ?", (platform, account_id))
    if reach is not None:
        conn.execute(
            "INSERT INTO reachability (platform, account_id, reach) VALUES (?, ?, ?)",
            (platform, account_id, reach.value),
        )
