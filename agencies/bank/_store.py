"""SQL over the bank's tables. Every function runs inside the caller's transaction."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from agencies._common import from_us, to_us

from ._model import Account, AccountStatus, Hold, HoldKind, HoldStatus, Transfer

__all__ = [
    "account",
    "adjust_balance",
    "available",
    "expire_due",
    "hold_by_request",
    "hold_case",
    "holds_on",
    "insert_account",
    "insert_hold",
    "insert_hold_case",
    "insert_transfer",
    "outgoing",
    "reduce_hold",
    "release_part",
    "set_account_status",
    "set_hold_expiry",
    "set_hold_released",
    "set_hold_status",
    "transfer",
    "transfers_between",
    "upgrade",
]

_HOLD_COLUMNS = (
    "hold_id, request_id, account_number, amount, kind, created_at_us, expires_at_us, status, converted_from,"
    " released"
)
_TRANSFER_COLUMNS = (
    "transfer_id, from_account, from_bank, to_account, to_bank, to_bank_code, to_holder,"
    " amount, currency, at_us"
)


def upgrade(conn: sqlite3.Connection) -> None:
    """Bring a database made by an earlier release up to the schema (``CREATE ... IF NOT EXISTS``
    adds no column to a table that exists): holds gained ``released`` with partial releases."""
    columns = {row["name"] for row in conn.execute("PRAGMA table_info(holds)")}
    if "released" not in columns:
        conn.execute("ALTER TABLE holds ADD COLUMN released INTEGER NOT NULL DEFAULT 0 CHECK (released >= 0)")


def account(conn: sqlite3.Connection, number: str) -> Account | None:
    row = conn.execute(
        "SELECT account_number, holder_name, currency, balance, status, id_type, id_number, phone,"
        " opened_at_us FROM accounts WHERE account_number = ?",
        (number,),
    ).fetchone()
    if row is None:
        return None
    return Account(
        account_number=row["account_number"],
        holder_name=row["holder_name"],
        currency=row["currency"],
        balance=row["balance"],
        status=AccountStatus(row["status"]),
        id_type=row["id_type"],
        id_number=row["id_number"],
        phone=row["phone"],
        opened_at=from_us(row["opened_at_us"]),
    )


def insert_account(conn: sqlite3.Connection, acct: Account) -> None:
    conn.execute(
        "INSERT INTO accounts (account_number, holder_name, currency, balance, status, id_type, id_number,"
        " phone, opened_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            acct.account_number,
            acct.holder_name,
            acct.currency,
            acct.balance,
            acct.status.value,
            acct.id_type,
            acct.id_number,
            acct.phone,
            to_us(acct.opened_at),
        ),
    )


def set_account_status(conn: sqlite3.Connection, number: str, status: AccountStatus) -> None:
    conn.execute("UPDATE accounts SET status = ? WHERE account_number = ?", (status.value, number))


def adjust_balance(conn: sqlite3.Connection, number: str, delta: int) -> None:
    conn.execute("UPDATE accounts SET balance = balance + ? WHERE account_number = ?", (delta, number))


def available(conn: sqlite3.Connection, number: str, now: datetime) -> int:
    """Balance minus the holds still in force at ``now``; a hold past its end no longer counts."""
    row = conn.execute(
        "SELECT a.balance - COALESCE((SELECT SUM(h.amount) FROM holds h WHERE h.account_number ="
        " a.account_number AND h.status = 'active' AND h.expires_at_us > ?), 0) FROM accounts a"
        " WHERE a.account_number = ?",
        (to_us(now), number),
    ).fetchone()
    return max(0, int(row[0])) if row is not None else 0


def insert_transfer(conn: sqlite3.Connection, t: Transfer) -> None:
    conn.execute(
        f"INSERT INTO transfers ({_TRANSFER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        (
            t.transfer_id,
            t.from_account,
            t.from_bank,
            t.to_account,
            t.to_bank,
            t.to_bank_code,
            t.to_holder,
            t.amount,
            t.currency,
            to_us(t.at),
        ),
    )


def transfer(conn: sqlite3.Connection, transfer_id: str) -> Transfer | None:
    row = conn.execute(
        f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE transfer_id = ?",  # noqa: S608
        (transfer_id,),
    ).fetchone()
    return _transfer(row) if row is not None else None


def outgoing(conn: sqlite3.Connection, number: str, since: datetime, until: datetime) -> list[Transfer]:
    """Transfers out of ``number`` in ``[since, until]``, most recent first."""
    rows = conn.execute(
        f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE from_account = ? AND at_us >= ? AND at_us <= ?"  # noqa: S608
        " ORDER BY at_us DESC, transfer_id DESC",
        (number, to_us(since), to_us(until)),
    ).fetchall()
    return [_transfer(row) for row in rows]


def transfers_between(
    conn: sqlite3.Connection, number: str, start: datetime, end: datetime
) -> list[Transfer]:
    """Transfers into or out of ``number`` in ``[start, end)``, oldest first."""
    rows = conn.execute(
        f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE (from_account = ? OR to_account = ?)"  # noqa: S608
        " AND at_us >= ? AND at_us < ? ORDER BY at_us, transfer_id",
        (number, number, to_us(start), to_us(end)),
    ).fetchall()
    return [_transfer(row) for row in rows]


def _transfer(row: sqlite3.Row) -> Transfer:
    return Transfer(
        transfer_id=row["transfer_id"],
        from_account=row["from_account"],
        from_bank=row["from_bank"],
        to_account=row["to_account"],
        to_bank=row["to_bank"],
        to_bank_code=row["to_bank_code"],
        to_holder=row["to_holder"],
        amount=row["amount"],
        currency=row["currency"],
        at=from_us(row["at_us"]),
    )


def insert_hold(conn: sqlite3.Connection, hold: Hold) -> None:
    conn.execute(
        f"INSERT INTO holds ({_HOLD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        (
            hold.hold_id,
            hold.request_id,
            hold.account_number,
            hold.amount,
            hold.kind.value,
            to_us(hold.created_at),
            to_us(hold.expires_at),
            hold.status.value,
            hold.converted_from,
            hold.released,
        ),
    )


def hold_by_request(conn: sqlite3.Connection, request_id: str, now: datetime) -> Hold | None:
    row = conn.execute(
        f"SELECT {_HOLD_COLUMNS} FROM holds WHERE request_id = ?",  # noqa: S608
        (request_id,),
    ).fetchone()
    return _hold(row, now) if row is not None else None


def holds_on(conn: sqlite3.Connection, number: str, now: datetime) -> list[Hold]:
    rows = conn.execute(
        f"SELECT {_HOLD_COLUMNS} FROM holds WHERE account_number = ? ORDER BY created_at_us, hold_id",  # noqa: S608
        (number,),
    ).fetchall()
    return [_hold(row, now) for row in rows]


def _hold(row: sqlite3.Row, now: datetime) -> Hold:
    status = HoldStatus(row["status"])
    expires_at = from_us(row["expires_at_us"])
    if status is HoldStatus.ACTIVE and expires_at <= now:
        status = HoldStatus.EXPIRED
    return Hold(
        hold_id=row["hold_id"],
        request_id=row["request_id"],
        account_number=row["account_number"],
        amount=row["amount"],
        kind=HoldKind(row["kind"]),
        created_at=from_us(row["created_at_us"]),
        expires_at=expires_at,
        status=status,
        converted_from=row["converted_from"],
        released=row["released"],
    )


def set_hold_status(conn: sqlite3.Connection, hold_id: str, status: HoldStatus, at: datetime) -> None:
    conn.execute(
        "UPDATE holds SET status = ?, ended_at_us = ? WHERE hold_id = ?", (status.value, to_us(at), hold_id)
    )


def release_part(conn: sqlite3.Connection, hold_id: str, amount: int) -> None:
    """Lift ``amount`` (less than the hold holds) from an active hold, which stays active with the rest."""
    conn.execute(
        "UPDATE holds SET amount = amount - ?, released = released + ? WHERE hold_id = ?",
        (amount, amount, hold_id),
    )


def set_hold_released(conn: sqlite3.Connection, hold_id: str, at: datetime) -> None:
    """Lift all that is left of a hold: it ends RELEASED, and ``released`` counts it too."""
    conn.execute(
        "UPDATE holds SET status = 'released', ended_at_us = ?, released = released + amount"
        " WHERE hold_id = ?",
        (to_us(at), hold_id),
    )


def set_hold_expiry(conn: sqlite3.Connection, hold_id: str, expires_at: datetime) -> None:
    conn.execute("UPDATE holds SET expires_at_us = ? WHERE hold_id = ?", (to_us(expires_at), hold_id))


def expire_due(conn: sqlite3.Connection, now: datetime) -> list[str]:
    """Mark active holds whose end has passed as expired; their request ids, oldest first."""
    rows = conn.execute(
        "UPDATE holds SET status = 'expired', ended_at_us = expires_at_us"
        " WHERE status = 'active' AND expires_at_us <= ? RETURNING request_id, expires_at_us",
        (to_us(now),),
    ).fetchall()
    return [row["request_id"] for row in sorted(rows, key=lambda r: (r["expires_at_us"], r["request_id"]))]


def insert_hold_case(conn: sqlite3.Connection, hold_id: str, case_owner: str, case_number: str) -> None:
    conn.execute(
        "INSERT INTO hold_cases (hold_id, case_owner, case_number) VALUES (?, ?, ?)",
        (hold_id, case_owner, case_number),
    )


def hold_case(conn: sqlite3.Connection, hold_id: str) -> tuple[str, str] | None:
    """The (case owner, case number) a hold was placed under; None for holds placed before it was kept."""
    row = conn.execute(
        "SELECT case_owner, case_number FROM hold_cases WHERE hold_id = ?", (hold_id,)
    ).fetchone()
    return (row["case_owner"], row["case_number"]) if row is not None else None


def reduce_hold(conn: sqlite3.Connection, hold_id: str, by: int, at: datetime) -> None:
    """Hold ``by`` minor units less; a hold reduced to nothing is released (its row keeps the last amount)."""
    row = conn.execute("SELECT amount FROM holds WHERE hold_id = ?", (hold_id,)).fetchone()
    if row is None or by <= 0:
        return
    if by >= row["amount"]:
        set_hold_status(conn, hold_id, HoldStatus.RELEASED, at)
    else:
        conn.execute("UPDATE holds SET amount = amount - ? WHERE hold_id = ?", (by, hold_id))
