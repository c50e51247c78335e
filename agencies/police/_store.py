"""SQL over the desk's tables. Every function runs inside the caller's transaction."""

from __future__ import annotations

import sqlite3

from agencies._common import from_us, to_us

from ._model import (
    AssistanceCase,
    FiledAppeal,
    FiledReport,
    InPersonDissuasion,
    LinkageRecord,
    VictimFollowUp,
)

__all__ = [
    "appeals",
    "assistance_cases",
    "dissuasions",
    "follow_ups",
    "fraud_reports",
    "insert_appeal",
    "insert_assistance",
    "insert_dissuasion",
    "insert_follow_up",
    "insert_linkage",
    "insert_report",
    "linkage_notices",
    "upgrade",
]

_CASE_COLUMNS = "request_id, reference, sender, case_number, kind, region, task, decision, at_us"
_REPORT_COLUMNS = (
    "request_id, reference, sender, kind, summary, accounts, phones, platform_accounts, amount, currency,"
    " observed_at_us, region, received_at_us"
)


def insert_assistance(conn: sqlite3.Connection, case: AssistanceCase) -> None:
    conn.execute(
        f"INSERT INTO assistance_cases ({_CASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        (
            case.request_id,
            case.reference,
            case.sender,
            case.case_number,
            case.kind,
            case.region,
            case.task,
            case.decision,
            to_us(case.at),
        ),
    )


def assistance_cases(conn: sqlite3.Connection) -> list[AssistanceCase]:
    rows = conn.execute(f"SELECT {_CASE_COLUMNS} FROM assistance_cases ORDER BY at_us, request_id").fetchall()  # noqa: S608
    return [
        AssistanceCase(
            request_id=row["request_id"],
            reference=row["reference"],
            sender=row["sender"],
            case_number=row["case_number"],
            kind=row["kind"],
            region=row["region"],
            task=row["task"],
            decision=row["decision"],
            at=from_us(row["at_us"]),
        )
        for row in rows
    ]


def insert_report(conn: sqlite3.Connection, report: FiledReport) -> None:
    conn.execute(
        f"INSERT INTO fraud_reports ({_REPORT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        (
            report.request_id,
            report.reference,
            report.sender,
            report.kind,
            report.summary,
            report.accounts,
            report.phones,
            report.platform_accounts,
            report.amount,
            report.currency,
            to_us(report.observed_at) if report.observed_at is not None else None,
            report.region,
            to_us(report.received_at),
        ),
    )


def fraud_reports(conn: sqlite3.Connection) -> list[FiledReport]:
    rows = conn.execute(
        f"SELECT {_REPORT_COLUMNS} FROM fraud_reports ORDER BY received_at_us, request_id"  # noqa: S608
    ).fetchall()
    return [
        FiledReport(
            request_id=row["request_id"],
            reference=row["reference"],
            sender=row["sender"],
            kind=row["kind"],
            summary=row["summary"],
            accounts=row["accounts"],
            phones=row["phones"],
            platform_accounts=row["platform_accounts"],
            amount=row["amount"],
            currency=row["currency"],
            observed_at=from_us(row["observed_at_us"]) if row["observed_at_us"] is not None else None,
            region=row["region"],
            received_at=from_us(row["received_at_us"]),
        )
        for row in rows
    ]


_APPEAL_COLUMNS = (
    "request_id, reference, sender, case_number, ticket, restriction_request_id, ground, statement,"
    " documents, received_at_us, mark_id"
)


def upgrade(conn: sqlite3.Connection) -> None:
    """Bring a database made by an earlier release up to the schema (``CREATE ... IF NOT EXISTS``
    adds no column to a table that exists): appeals gained ``mark_id`` with appeals against marks."""
    columns = {row["name"] for row in conn.execute("PRAGMA table_info(appeals)")}
    if "mark_id" not in columns:
        conn.execute("ALTER TABLE appeals ADD COLUMN mark_id TEXT NOT NULL DEFAULT ''")


def insert_appeal(conn: sqlite3.Connection, appeal: FiledAppeal) -> None:
    conn.execute(
        f"INSERT INTO appeals ({_APPEAL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        (
            appeal.request_id,
            appeal.reference,
            appeal.sender,
            appeal.case_number,
            appeal.ticket,
            appeal.restriction_request_id,
            appeal.ground,
            appeal.statement,
            appeal.documents,
            to_us(appeal.received_at),
            appeal.mark_id,
        ),
    )


def appeals(conn: sqlite3.Connection) -> list[FiledAppeal]:
    rows = conn.execute(
        f"SELECT {_APPEAL_COLUMNS} FROM appeals ORDER BY received_at_us, request_id"  # noqa: S608
    ).fetchall()
    return [
        FiledAppeal(
            request_id=row["request_id"],
            reference=row["reference"],
            sender=row["sender"],
            case_number=row["case_number"],
            ticket=row["ticket"],
            restriction_request_id=row["restriction_request_id"],
            ground=row["ground"],
            statement=row["statement"],
            documents=row["documents"],
            received_at=from_us(row["received_at_us"]),
            mark_id=row["mark_id"],
        )
        for row in rows
    ]


_FOLLOW_UP_COLUMNS = (
    "request_id, reference, case_number, return_request_id, payout_index, victim_id, returned, currency,"
    " outcome, advice, at_us"
)


def insert_follow_up(conn: sqlite3.Connection, follow_up: VictimFollowUp) -> None:
    conn.execute(
        f"INSERT INTO follow_ups ({_FOLLOW_UP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        (
            follow_up.request_id,
            follow_up.reference,
            follow_up.case_number,
            follow_up.return_request_id,
            follow_up.payout_index,
            follow_up.victim_id,
            follow_up.returned,
            follow_up.currency,
            follow_up.outcome,
            follow_up.advice,
            to_us(follow_up.at),
        ),
    )


def follow_ups(conn: sqlite3.Connection) -> list[VictimFollowUp]:
    rows = conn.execute(f"SELECT {_FOLLOW_UP_COLUMNS} FROM follow_ups ORDER BY at_us, request_id").fetchall()  # noqa: S608
    return [
        VictimFollowUp(
            request_id=row["request_id"],
            reference=row["reference"],
            case_number=row["case_number"],
            return_request_id=row["return_request_id"],
            payout_index=row["payout_index"],
            victim_id=row["victim_id"],
            returned=row["returned"],
            currency=row["currency"],
            outcome=row["outcome"],
            advice=row["advice"],
            at=from_us(row["at_us"]),
        )
        for row in rows
    ]


_DISSUASION_COLUMNS = (
    "request_id, reference, case_number, warning_request_id, warning_outcome, region, target, outcome, at_us"
)


def insert_dissuasion(conn: sqlite3.Connection, visit: InPersonDissuasion) -> None:
    conn.execute(
        f"INSERT INTO dissuasions ({_DISSUASION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        (
            visit.request_id,
            visit.reference,
            visit.case_number,
            visit.warning_request_id,
            visit.warning_outcome,
            visit.region,
            visit.target,
            visit.outcome,
            to_us(visit.at),
        ),
    )


def dissuasions(conn: sqlite3.Connection) -> list[InPersonDissuasion]:
    query = f"SELECT {_DISSUASION_COLUMNS} FROM dissuasions ORDER BY at_us, request_id"  # noqa: S608
    rows = conn.execute(query).fetchall()
    return [
        InPersonDissuasion(
            request_id=row["request_id"],
            reference=row["reference"],
            case_number=row["case_number"],
            warning_request_id=row["warning_request_id"],
            warning_outcome=row["warning_outcome"],
            region=row["region"],
            target=row["target"],
            outcome=row["outcome"],
            at=from_us(row["at_us"]),
        )
        for row in rows
    ]


_LINKAGE_COLUMNS = (
    "request_id, reference, case_number, link_id, kind, digest, cases, cross_region, coordinator, at_us"
)


def insert_linkage(conn: sqlite3.Connection, record: LinkageRecord) -> None:
    conn.execute(
        f"INSERT INTO linkage_notices ({_LINKAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        (
            record.request_id,
            record.reference,
            record.case_number,
            record.link_id,
            record.kind,
            record.digest,
            " ".join(record.cases),
            int(record.cross_region),
            record.coordinator,
            to_us(record.at),
        ),
    )


def linkage_notices(conn: sqlite3.Connection) -> list[LinkageRecord]:
    query = f"SELECT {_LINKAGE_COLUMNS} FROM linkage_notices ORDER BY at_us, request_id"  # noqa: S608
    return [
        LinkageRecord(
            request_id=row["request_id"],
            reference=row["reference"],
            case_number=row["case_number"],
            link_id=row["link_id"],
            kind=row["kind"],
            digest=row["digest"],
            cases=tuple(row["cases"].split()),
            cross_region=bool(row["cross_region"]),
            coordinator=row["coordinator"],
            at=from_us(row["at_us"]),
        )
        for row in conn.execute(query).fetchall()
    ]
