"""``greenchannel submit | watch | status``: requests from the command line, through the Bus API.

Every command speaks for one agency (``--as``), with that agency's signing key from the state
directory, to a broker (``--broker``). A request is checked against the contract's field rules
before it is signed and sent, so a malformed phone number is reported with its field path and
nothing leaves the machine. Exit status: 0 done, 1 the bus or a key said no (the gRPC status is
printed with its details), 2 a usage error (bad option value, contract violation).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import grpc.aio
from cryptography.hazmat.primitives.asymmetric import x25519
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, results_pb2

from broker.client import BusClient, error_details, minor_units, open_result_details
from broker.protocol import (
    DATA_ANSWER_CONTENT_TYPE,
    FINAL_STATES,
    DecryptionKeys,
    InvalidMessageError,
    KeyFileError,
    ProtocolError,
    SealingError,
    SystemClock,
    UnknownAgencyError,
    load_agency_encryption_keys,
    load_agency_signing_key,
    open_sealed,
    request_type_name,
    state_name,
    to_timestamp,
    validate_message,
)

from . import _env
from ._options import CliError, agency_option, non_negative_int, positive_int, read_x25519
from ._output import EXIT_NOT_EXECUTED, complain, json_option, print_json
from ._render import (
    answer_lines,
    error_document,
    error_lines,
    event_document,
    event_line,
    status_document,
    status_lines,
    submitted_lines,
)
from ._render_closing import (
    ORDERED_ALLOCATION,
    allocation_document,
    allocation_lines,
    lifting_document,
    lifting_lines,
    returns_document,
    returns_lines,
)

__all__ = [
    "ACCOUNT_NUMBER",
    "DEFAULT_BROKER",
    "EXIT_NOT_EXECUTED",
    "NOT_EXECUTED",
    "REQUEST_KINDS",
    "RequestKind",
    "add_parser",
    "build_request",
    "client",
    "connection_options",
    "guarded",
    "own_details",
    "parse_amount",
    "positive_seconds",
    "print_json",
    "run",
    "run_status",
    "run_submit",
    "run_watch",
    "say",
    "wait_exit",
    "wait_final",
    "wait_options",
]

DEFAULT_BROKER = _env.DEFAULT_BROKER
"""Where ``up`` listens by default, and so where the request commands look by default."""

ACCOUNT_NUMBER = re.compile(r"[0-9A-Za-z-]{4,34}")
"""What an account number given in an option value may look like (IBAN length at most)."""
# BusClient.watch already retries a few times within about a second; beyond that `watch` keeps
# trying, at most this far apart, until the broker is back or the person stops it.
_RESUMABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
_RESUME_DELAY_MIN = 0.5
_RESUME_DELAY_MAX = 5.0
_I = common_pb2.LegalInstrumentType


# -- option value types (argparse names the option in its error, and exits 2) ---------------------


def parse_amount(text: str) -> int:
    """A decimal amount (``48000.00``, ``48000``) in minor units (two decimals); never via float."""
    try:
        return minor_units(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
    return value


def _instant(text: str) -> datetime:
    """ISO 8601; without an offset it is the local time of this machine."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time such as 2026-11-21T09:30"
        ) from None
    return when.astimezone()


def _choices(prefix: str, names: Sequence[str]) -> list[str]:
    """``["call-records", ...]``: the enum's names (but UNSPECIFIED) as people type them."""
    return [
        name.removeprefix(prefix).lower().replace("_", "-")
        for name in names
        if not name.endswith("_UNSPECIFIED")
    ]


def _constant(prefix: str, choice: str) -> str:
    """``DATA_CATEGORY_CALL_RECORDS`` for ``call-records``."""
    return prefix + choice.upper().replace("-", "_")


_SCOPES = _choices("BLOCK_SCOPE_", requests_pb2.BlockScope.keys())
_LEVELS = _choices("RESTRICTION_LEVEL_", requests_pb2.RestrictionLevel.keys())
_CATEGORIES = _choices("DATA_CATEGORY_", requests_pb2.DataCategory.keys())
_ASSISTANCE = _choices("ASSISTANCE_KIND_", requests_pb2.AssistanceKind.keys())
_CHANNELS = _choices("WARNING_CHANNEL_", requests_pb2.WarningChannel.keys())
_REPORTS = _choices("FRAUD_REPORT_KIND_", requests_pb2.FraudReportKind.keys())
_INSTRUMENTS = _choices("LEGAL_INSTRUMENT_TYPE_", _I.keys())
_PRIORITIES = _choices("PRIORITY_", common_pb2.Priority.keys())


# -- request bodies -------------------------------------------------------------------------------


def _bank_account(args: argparse.Namespace) -> common_pb2.BankAccountRef:
    return common_pb2.BankAccountRef(
        account_number=args.account, holder_name=args.name, bank=getattr(args, "bank", None) or ""
    )


def _money(args: argparse.Namespace) -> common_pb2.Money:
    return common_pb2.Money(currency=args.currency, minor_units=args.amount)


def _phone(args: argparse.Namespace) -> common_pb2.PhoneRef:
    return common_pb2.PhoneRef(
        e164=args.phone,
        iccid=getattr(args, "iccid", None) or "",
        imsi=getattr(args, "imsi", None) or "",
        imei=getattr(args, "imei", None) or "",
    )


def _platform_account(args: argparse.Namespace) -> common_pb2.PlatformAccountRef:
    return common_pb2.PlatformAccountRef(platform=args.platform, account_id=args.account_id)


def _account_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--account", required=required, help="account or card number")
    parser.add_argument("--name", required=required, help="account holder's name as the bank records it")
    parser.add_argument("--bank", help="bank agency id (default: routed by the account number's prefix)")


def _money_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "--amount",
        type=parse_amount,
        required=required,
        help="decimal amount, e.g. 48000.00 (2 decimals at most)",
    )
    parser.add_argument("--currency", default="CNY", help="ISO 4217 code (default CNY)")


def parse_victim_account(text: str) -> common_pb2.BankAccountRef:
    """``6225880137706512:陈某某[:bank-cmb]``: the victim's account that paid, its holder, its bank."""
    parts = [part.strip() for part in text.split(":")]
    if len(parts) not in (2, 3) or not all(parts):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not ACCOUNT:HOLDER[:BANK], e.g. 6225880137706512:陈某某:bank-cmb"
        )
    if not ACCOUNT_NUMBER.fullmatch(parts[0]):
        raise argparse.ArgumentTypeError(f"{parts[0]!r} is not an account number")
    return common_pb2.BankAccountRef(
        account_number=parts[0], holder_name=parts[1], bank=parts[2] if len(parts) == 3 else ""
    )


def _victim_options(parser: argparse.ArgumentParser) -> None:
    """Who the held money came from: what a later ``return order`` pays back to (RETURN_FUNDS)."""
    parser.add_argument(
        "--victim-account",
        type=parse_victim_account,
        metavar="ACCOUNT:HOLDER[:BANK]",
        help="the victim's account that paid into this one, its holder and (default: routed by"
        " the number) its bank; frozen money is returned to it (`greenchannel return`)",
    )
    parser.add_argument(
        "--deposited-at",
        type=_instant,
        metavar="RFC3339",
        help="when the victim's money reached this account, e.g. 2026-11-21T09:30:00+08:00 (no offset:"
        " this machine's local time); orders competing claims. Without it the deposit is untraced"
        " and its claim is paid pro rata only after the return notice period",
    )


def _name_victim(
    body: requests_pb2.StopPayment | requests_pb2.Freeze, args: argparse.Namespace, *, issued_at: datetime
) -> None:
    """Fill ``victim_account`` / ``deposited_at`` of a hold as the options give them."""
    if args.deposited_at is not None and args.victim_account is None:
        raise CliError("--deposited-at needs --victim-account: it dates that victim's deposit", exit_code=2)
    # A deposit "later" than the order would be paid first under deposit order (latest first).
    if args.deposited_at is not None and args.deposited_at > issued_at:
        raise CliError(
            "--deposited-at is in the future: the money reached the account before the order", exit_code=2
        )
    if args.victim_account is not None:
        body.victim_account.CopyFrom(args.victim_account)
    if args.deposited_at is not None:
        body.deposited_at.CopyFrom(to_timestamp(args.deposited_at))


def _stop_payment_options(parser: argparse.ArgumentParser) -> None:
    _account_options(parser)
    _money_options(parser)
    parser.add_argument("--fraud-transfer-id", help="the victim's payment (bank transfer id), if known")
    _victim_options(parser)


def _stop_payment(request: requests_pb2.Request, args: argparse.Namespace) -> None:
    body = requests_pb2.StopPayment(
        account=_bank_account(args), amount=_money(args), fraud_transfer_id=args.fraud_transfer_id or ""
    )
    _name_victim(body, args, issued_at=request.issued_at.ToDatetime(tzinfo=UTC))
    request.stop_payment.CopyFrom(body)


def _freeze_options(parser: argparse.ArgumentParser) -> None:
    _account_options(parser)
    _money_options(parser)
    parser.add_argument(
        "--converts", metavar="REQUEST_ID", help="the stop-payment whose hold this freeze converts"
    )
    _victim_options(parser)


def _freeze(request: requests_pb2.Request, args: argparse.Namespace) -> None:
    body = requests_pb2.Freeze(
        account=_bank_account(args), amount=_money(args), converts_request_id=args.converts or ""
    )
    _name_victim(body, args, issued_at=request.issued_at.ToDatetime(tzinfo=UTC))
    request.freeze.CopyFrom(body)


def _release_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", required=True, metavar="REQUEST_ID", help="the stop-payment or freeze to lift"
    )
    _account_options(parser)
    parser.add_argument("--reason", default="", help="reason given to the bank (no personal data)")
    parser.add_argument(
        "--amount",
        type=parse_amount,
        help="lift only this much, e.g. 3000.00 (the rest stays held); default: all of it",
    )
    parser.add_argument(
        "--currency", default="CNY", help="ISO 4217 code of --amount, the hold's (default CNY)"
    )
    parser.add_argument(
        "--living-expenses",
        action="store_true",
        help="release --amount for the holder's living expenses (within the policy's caps)",
    )


def _release(request: requests_pb2.Request, args: argparse.Namespace) -> None:
    body = requests_pb2.Release(
        target_request_id=args.target, account=_bank_account(args), reason=args.reason
    )
    if args.living_expenses:
        if args.amount is None:
            raise CliError("--living-expenses needs --amount: the policy caps what is released", exit_code=2)
        body.purpose = requests_pb2.RELEASE_PURPOSE_LIVING_EXPENSES
    if args.amount is not None:
        body.amount.CopyFrom(_money(args))
    request.release.CopyFrom(body)


def _extend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", required=True, metavar="REQUEST_ID", help="the stop-payment or freeze to extend"
    )
    _account_options(parser)
    parser.add_argument(
        "--hours",
        type=positive_int,
        default=48,
        help="extension asked for (default 48; the SLA policy caps it)",
    )


def _extend(request: requests_pb2.Request, args: argparse.Namespace) -> None:
    extension = Duration()
    extension.FromTimedelta(timedelta(hours=args.hours))
    request.extend.CopyFrom(
        requests_pb2.Extend(target_request_id=args.target, account=_bank_account(args), extension=extension)
    )


def _number_block_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--phone", help="E.164 number, e.g. +8615012340001 (one line)")
    parser.add_argument(
        "--numbers-file",
        type=Path,
        metavar="FILE",
        help="a batch: one E.164 number per line (blank lines and # comments skipped); the broker splits"
        " it by carrier unless --recipient names one",
    )
    parser.add_argument(
        "--issuing-batch",
        metavar="ID",
        help="every line of a SIM issuing batch (name the carrier: --recipient)",
    )
    parser.add_argument(
        "--cell", metavar="ID", help="lines seen on a cell in --from/--to (name the carrier: --recipient)"
    )
    parser.add_argument("--from", dest="window_from", type=_instant, metavar="TIME", help="cell window start")
    parser.add_argument("--to", dest="window_to", type=_instant, metavar="TIME", help="cell window end")
    parser.add_argument("--iccid", help="SIM serial")
    parser.add_argument("--imsi", help="subscriber identity")
    parser.add_argument("--imei", help="handset identity")
    parser.add_argument("--scope", choices=_SCOPES, default="number", help="what to block (default number)")
    parser.add_argument("--unblock", action="store_true", help="lift an earlier block instead")


def _number_block(request: requests_pb2.Request, args: argparse.Namespace) -> None:
    given = [
        name
        for name, value in (
            ("--phone", args.phone),
            ("--numbers-file", args.numbers_file),
            ("--issuing-batch", args.issuing_batch),
            ("--cell", args.cell),
        )
        if value
    ]
    if len(given) != 1:
        raise CliError("name exactly one of --phone, --numbers-file, --issuing-batch or --cell", exit_code=2)
    if (args.window_from is not None or args.window_to is not None) and not args.cell:
        raise CliError("--from and --to go with --cell", exit_code=2)
    order = requests_pb2.NumberBlock(
        scope=requests_pb2.BlockScope.Value(_constant("BLOCK_SCOPE_", args.scope)), unblock=args.unblock
    )
    if args.phone:
        order.phone.CopyFrom(_phone(args))
    elif args.numbers_file:
        order.phones.extend(common_pb2.PhoneRef(e164=number) for number in _numbers(args.numbers_file))
    elif args.issuing_batch:
        order.selector.issuing_batch = args.issuing_batch
    else:
        if args.window_from is None or args.window_to is None:
            raise CliError("--cell needs --from and --to", exit_code=2)
        order.selector.cell.cell_id = args.cell
        order.selector.cell.window.start.FromDatetime(args.window_from)
        order.selector.cell.window.end.FromDatetime(args.window_to)
    request.number_block.CopyFrom(order)


def _numbers(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read --numbers-file: {type(exc).__name__}", exit_code=2) from exc
    numbers = [line.strip() for line in text.splitlines()]
    numbers = [number for number in numbers if number and not number.startswith("#")]
    if not numbers:
        raise CliError("--numbers-file names no number", exit_code=2)
    return numbers


def _platform_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--platform", required=required, help="platform code, e.g. wechat")
    parser.add_argument("--account-id", required=required, help="the platform's account identifier")


def _account_block_options(parser: argparse.ArgumentParser) -> None:
    _platform_options(parser, required=True)
    parser.add_argument("--level", choices=_LEVELS, default="suspend", help="how far (default suspend)")
    parser.add_argument("--unblock", action="store_true", help="lift an earlier restriction instead")


def _account_block(request: requests_pb2.Request, args: argparse.Namespace) -> None:
    request.account_block.CopyFrom(
        requests_pb2.AccountBlock(
            account=_platform_account(args),
            level=requests_pb2.RestrictionLevel.Value(_constant("RESTRICTION_LEVEL_", args.level)),
            unblock=args.unblock,
        )
    )


def _one_subject(args: argparse.Namespace, *, allow_account: bool) -> str:
    """Which subject the options name: ``account``, ``phone`` or ``platform``; exactly one."""
    given = []
    if allow_account and (args.account or args.name):
        if not (args.account and args.name):
            raise CliError("--account and --name go together", exit_code=2)
        given.append("account")
    if args.phone:
        given.append("phone")
    if args.platform or args.account_id:
        if not (args.platform and args.account_id):
            raise CliError("--platform and --account-id go together", exit_code=2)
        given.append("platform")
    choices = (
        "--account/--name, --phone or --platform/--account-id"
        if allow_account
        else ("--phone or --platform/--account-id")
    )
    if len(given) != 1:
        raise CliError(f"name exactly one subject: {choices}", exit_code=2)
    return given[0]


def _data_request_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--category", required=True, choices=_CATEGORIES, help="what data")
    _account_options(parser, required=False)
    parser.add_argument("--phone", help="E.164 number (subscriber, call records, location)")
    _platform_options(parser, required=False)
    parser.add_argument(
        "--from", dest="period_from", type=_instant, help="period start, ISO 8601 (local time)"
    )
    parser.add_argument("--to", dest="period_to", type=_instant, help="period end (exclusive), ISO 8601")


def _data_request(request: requests_pb2.Request, args: argparse.Namespace) -> None:
    body = requests_pb2.DataRequest(
        category=requests_pb2.DataCategory.Value(_constant("DATA_CATEGORY_", args.category))
    )
    subject = _one_subject(args, allow_account=True)
    if subject == "account":
        body.account.CopyFrom(_bank_account(args))
    elif subject == "phone":
        body.phone.CopyFrom(common_pb2.PhoneRef(e164=args.phone))
    else:
        body.platform_account.CopyFrom(_platform_account(args))
    if (args.period_from is None) != (args.period_to is None):
        raise CliError("--from and --to go together", exit_code=2)
    if args.period_from is not None:
        body.period.CopyFrom(
            common_pb2.TimeRange(start=to_timestamp(args.period_from), end=to_timestamp(args.period_to))
        )
    request.data_request.CopyFrom(body)


def _assistance_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--region", required=True, help="GB/T 2260 region code where help is needed, e.g. 440305"
    )
    parser.add_argument("--kind", required=True, choices=_ASSISTANCE, help="what is asked")
    parser.add_argument("--task", required=True, help="the task in words")


def _assistance(request: requests_pb2.Request, args: argparse.Namespace) -> None:
    request.assistance.CopyFrom(
        requests_pb2.Assistance(
            region=args.region,
            kind=requests_pb2.AssistanceKind.Value(_constant("ASSISTANCE_KIND_", args.kind)),
            task=args.task,
        )
    )


def _warning_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--phone", help="E.164 number of the person to reach (a carrier's subscriber)")
    _platform_options(parser, required=False)
    parser.add_argument("--channel", required=True, choices=_CHANNELS, help="how to reach them")
    parser.add_argument("--template", required=True, help="approved message template id")
    parser.add_argument(
        "--region",
        default="",
        help="GB/T 2260 region code where the person lives: if the warning does not dissuade them,"
        " that region's police go in person (default: the case owner's region)",
    )


def _warning(request: requests_pb2.Request, args: argparse.Namespace) -> None:
    body = requests_pb2.Warning(
        channel=requests_pb2.WarningChannel.Value(_constant("WARNING_CHANNEL_", args.channel)),
        template_id=args.template,
        region=args.region,
    )
    if _one_subject(args, allow_account=False) == "phone":
        body.phone.CopyFrom(common_pb2.PhoneRef(e164=args.phone))
    else:
        body.platform_account.CopyFrom(_platform_account(args))
    request.warning.CopyFrom(body)


def _fraud_report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", required=True, choices=_REPORTS, help="what is reported")
    parser.add_argument("--summary", required=True, help="what was seen, in words")
    parser.add_argument("--region", default="", help="region code the report concerns (routes to its police)")
    parser.add_argument("--account", action="append", default=[], help="an account involved (repeatable)")
    parser.add_argument(
        "--name",
        action="append",
        default=[],
        help="holder of the --account at the same position (repeatable)",
    )
    parser.add_argument("--phone", action="append", default=[], help="a line involved (repeatable)")
    _money_options(parser, required=False)


def _fraud_report(request: requests_pb2.Request, args: argparse.Namespace) -> None:
    if len(args.account) != len(args.name):
        raise CliError("give one --name for each --account, in the same order", exit_code=2)
    body = requests_pb2.FraudReport(
        kind=requests_pb2.FraudReportKind.Value(_constant("FRAUD_REPORT_KIND_", args.kind)),
        summary=args.summary,
        region=args.region,
        accounts=[
            common_pb2.BankAccountRef(account_number=a, holder_name=n)
            for a, n in zip(args.account, args.name, strict=True)
        ],
        phones=[common_pb2.PhoneRef(e164=p) for p in args.phone],
    )
    if args.amount is not None:
        body.amount.CopyFrom(_money(args))
    request.fraud_report.CopyFrom(body)


@dataclass(frozen=True, kw_only=True)
class RequestKind:
    """One ``submit`` type: its options, its body, and the legal instrument it rests on."""

    name: str
    """The command-line name (dashes)."""
    help: str
    """One line for ``--help``."""
    instrument: common_pb2.LegalInstrumentType.ValueType
    """Legal instrument type implied by the request type."""
    add_options: Callable[[argparse.ArgumentParser], None]
    """Adds the type's own options."""
    fill: Callable[[requests_pb2.Request, argparse.Namespace], None]
    """Sets the request body from the parsed options."""


REQUEST_KINDS: dict[str, RequestKind] = {
    kind.name: kind
    for kind in (
        RequestKind(
            name="stop-payment",
            help="紧急止付: hold the funds on an account now",
            instrument=_I.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
            add_options=_stop_payment_options,
            fill=_stop_payment,
        ),
        RequestKind(
            name="freeze",
            help="快速冻结: freeze funds on an account",
            instrument=_I.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE,
            add_options=_freeze_options,
            fill=_freeze,
        ),
        RequestKind(
            name="release",
            help="lift a hold or freeze, or part of it (--amount; --living-expenses)",
            instrument=_I.LEGAL_INSTRUMENT_TYPE_RELEASE_NOTICE,
            add_options=_release_options,
            fill=_release,
        ),
        RequestKind(
            name="extend",
            help="extend a hold or renew a freeze",
            # Extending the 48 h hold of a stop-payment is the common case; --instrument-type
            # freeze-notice says it renews a freeze.
            instrument=_I.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
            add_options=_extend_options,
            fill=_extend,
        ),
        RequestKind(
            name="number-block",
            help="block a phone number, SIM or handset",
            instrument=_I.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER,
            add_options=_number_block_options,
            fill=_number_block,
        ),
        RequestKind(
            name="account-block",
            help="restrict an internet platform account",
            instrument=_I.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER,
            add_options=_account_block_options,
            fill=_account_block,
        ),
        RequestKind(
            name="data-request",
            help="ask for data (answered sealed to the requester)",
            instrument=_I.LEGAL_INSTRUMENT_TYPE_EVIDENCE_NOTICE,
            add_options=_data_request_options,
            fill=_data_request,
        ),
        RequestKind(
            name="assistance",
            help="ask police of another region for assistance",
            instrument=_I.LEGAL_INSTRUMENT_TYPE_ASSISTANCE_LETTER,
            add_options=_assistance_options,
            fill=_assistance,
        ),
        RequestKind(
            name="warning",
            help="预警劝阻: have a carrier or platform reach a potential victim",
            instrument=_I.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER,
            add_options=_warning_options,
            fill=_warning,
        ),
        RequestKind(
            name="fraud-report",
            help="report fraud intelligence to the police",
            instrument=_I.LEGAL_INSTRUMENT_TYPE_NONE,
            add_options=_fraud_report_options,
            fill=_fraud_report,
        ),
    )
}
"""Every ``submit`` type by its command-line name."""


def build_request(args: argparse.Namespace, *, now: datetime) -> requests_pb2.Request:
    """The unsigned request the options describe, checked against the contract's field rules.

    Raises :class:`~broker.protocol.InvalidMessageError` (paths like
    ``request.number_block.phone.e164``) before anything is signed or sent.
    """
    kind = REQUEST_KINDS[args.request_type]
    instrument = (
        _I.Value(_constant("LEGAL_INSTRUMENT_TYPE_", args.instrument_type))
        if args.instrument_type
        else kind.instrument
    )
    request = requests_pb2.Request(
        case_ref=common_pb2.CaseRef(
            case_number=args.case,
            # Nobody acts under another agency's case: the sender owns the case reference.
            issuing_agency=args.agency,
            legal_instrument_id=args.instrument_id or args.case,
            legal_instrument_type=instrument,
        ),
        priority=common_pb2.Priority.Value(_constant("PRIORITY_", args.priority)),
        recipient=args.recipient or "",
        parent_id=args.parent or "",
        hop=args.hop,
        idempotency_key=args.idempotency_key or "",
        issued_at=to_timestamp(now),
    )
    kind.fill(request, args)
    validate_message(request, prefix="request.")
    return request


# -- argparse -------------------------------------------------------------------------------------


def connection_options(parser: argparse.ArgumentParser, default_broker: str) -> None:
    parser.add_argument(
        "--as",
        dest="agency",
        required=True,
        type=agency_option,
        metavar="AGENCY",
        help="agency to act as (its key signs)",
    )
    parser.add_argument(
        "--broker",
        default=default_broker,
        metavar="HOST:PORT",
        help=f"broker address (default: $GREENCHANNEL_BROKER or {DEFAULT_BROKER}; now {default_broker})",
    )
    json_option(parser)


NOT_EXECUTED: frozenset[common_pb2.RequestState.ValueType] = frozenset(
    {common_pb2.REQUEST_STATE_REJECTED, common_pb2.REQUEST_STATE_FAILED, common_pb2.REQUEST_STATE_CANCELLED}
)
"""Final states in which the agency did not act: scripts must not take them for success."""


def wait_options(
    parser: argparse.ArgumentParser,
    *,
    until: str = "it reaches a final state",
    done: str = "it was executed (in full or in part)",
) -> None:
    """``--wait`` and ``--timeout``, for commands that submit a request (see :func:`wait_final`);
    ``until`` / ``done`` say what is waited for and what exits 0, for the help."""
    parser.add_argument(
        "--wait",
        action="store_true",
        help=f"follow the request until {until}; exit status 0 when {done},"
        f" {EXIT_NOT_EXECUTED} when it ended rejected, failed or cancelled,"
        " 1 when it got no further within --timeout",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long --wait waits (default 60)",
    )


def _submit_common(default_broker: str) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    connection_options(common, default_broker)
    common.add_argument("--case", required=True, metavar="CASE_NUMBER", help="case number (owned by --as)")
    common.add_argument(
        "--instrument-id", metavar="ID", help="legal instrument number (default: the case number)"
    )
    common.add_argument(
        "--instrument-type",
        metavar="TYPE",
        choices=_INSTRUMENTS,
        help="override the instrument type the request type implies",
    )
    common.add_argument("--priority", choices=_PRIORITIES, default="green", help="SLA lane (default green)")
    common.add_argument(
        "--recipient", type=agency_option, metavar="AGENCY", help="recipient (default: routed by the body)"
    )
    common.add_argument("--parent", metavar="REQUEST_ID", help="the request this one follows from")
    common.add_argument("--hop", type=non_negative_int, default=0, help="hops from the chain's first request")
    common.add_argument(
        "--idempotency-key", metavar="K", help="resubmitting with the same key returns the first request"
    )
    wait_options(common)
    return common


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
) -> None:
    """Register ``submit <type>``, ``watch`` or ``status`` (``name``) on the ``greenchannel`` parser."""
    default_broker = _env.default_broker()
    if name == "submit":
        common = _submit_common(default_broker)
        submit = commands.add_parser("submit", help=help)
        types = submit.add_subparsers(dest="request_type", required=True, metavar="TYPE")
        for kind in REQUEST_KINDS.values():
            parser = types.add_parser(kind.name, parents=[common], help=kind.help, description=kind.help)
            kind.add_options(parser)
    elif name == "watch":
        watch = commands.add_parser("watch", help=help)
        connection_options(watch, default_broker)
        scope = watch.add_mutually_exclusive_group()
        scope.add_argument("--request", metavar="ID", help="one request")
        scope.add_argument(
            "--case", metavar="CASE", help="every request of a case (its owner and regulators)"
        )
        watch.add_argument(
            "--after",
            type=non_negative_int,
            default=0,
            metavar="CURSOR",
            help="resume after this cursor (default: replay)",
        )
    elif name == "status":
        status = commands.add_parser("status", help=help)
        status.add_argument("id", metavar="ID", help="request id")
        connection_options(status, default_broker)
        status.add_argument(
            "--decrypt",
            action="store_true",
            help="open the sealed data answer (onward transfers open with the --as agency's key anyway)",
        )
        status.add_argument(
            "--key",
            type=Path,
            metavar="FILE",
            help="X25519 private key, PKCS#8 PEM (default: --as agency's key in --state-dir); "
            "implies --decrypt",
        )
    else:
        raise ValueError(f"not a request command: {name}")


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``submit``, ``watch`` or ``status``."""
    if args.command == "submit":
        return run_submit(args)
    if args.command == "watch":
        return run_watch(args)
    if args.command == "status":
        return run_status(args)
    return 2


# -- running --------------------------------------------------------------------------------------


def say(lines: Sequence[str]) -> None:
    for line in lines:
        print(line, flush=True)


def _complain(command: str, lines: Sequence[str]) -> None:
    """On stderr only: stdout already holds the command's one document."""
    complain(command, argparse.Namespace(), lines)


def client(args: argparse.Namespace) -> BusClient:
    key = load_agency_signing_key(args.state_dir, args.agency)
    return BusClient(args.broker, agency_id=args.agency, signing_key=key)


def _fail(
    command: str, args: argparse.Namespace, lines: Sequence[str], document: dict[str, object] | None = None
) -> None:
    """Report a failure on stderr; with ``--json`` also as ``{"error": ...}`` on stdout."""
    complain(command, args, lines, document=document)


def guarded(
    command: str, args: argparse.Namespace, work: Callable[[], Awaitable[int]], *, stopped_exit: int = 130
) -> int:
    """Run ``work``; every expected failure becomes a message on stderr and an exit status.

    ``stopped_exit`` is the status after Ctrl-C / SIGTERM: 130 where it interrupts the command,
    0 for ``watch``, which has no other way to end.
    """
    try:
        return asyncio.run(_until_signalled(work(), stopped_exit=stopped_exit))
    except grpc.aio.AioRpcError as exc:
        details = error_details(exc)
        lines = error_lines(details)
        if details.code is grpc.StatusCode.UNAVAILABLE:
            lines.append(f"  is a broker (greenchannel up) running at {args.broker}?")
        _fail(command, args, lines, error_document(details))
        return 1
    except InvalidMessageError as exc:
        violations = [(v.field, v.description) for v in exc.violations]
        document: dict[str, object] = {
            "error": {
                "code": "INVALID_ARGUMENT",
                "reason": "CONTRACT_VIOLATION",
                "message": "the request breaks the contract; nothing was sent",
                "field_violations": [{"field": f, "description": d} for f, d in violations],
            }
        }
        lines = [
            "the request breaks the contract; nothing was sent:",
            *(f"  {f}: {d}" for f, d in violations),
        ]
        _fail(command, args, lines, document)
        return 2
    except CliError as exc:
        _fail(command, args, [str(exc)])
        return exc.exit_code
    except KeyFileError as exc:
        hint = f"  keys come from --state-dir {args.state_dir}; give the one `greenchannel up` runs with"
        _fail(command, args, [str(exc), hint])
        return 1
    except ProtocolError as exc:
        _fail(command, args, [str(exc)])
        return 1
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly. Python flushes stdout once more at exit;
        # pointing it at /dev/null keeps that flush from failing too (the recipe of the docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


async def _until_signalled(work: Awaitable[int], *, stopped_exit: int) -> int:
    """Run ``work``; SIGINT or SIGTERM cancels it (its cleanup runs) and gives ``stopped_exit``."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    try:
        return await task
    except asyncio.CancelledError:
        if stopped:
            return stopped_exit
        raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def run_submit(args: argparse.Namespace) -> int:
    """``greenchannel submit <type> ...``."""
    return guarded("submit", args, lambda: _submit(args))


async def _submit(args: argparse.Namespace) -> int:
    clock = SystemClock()
    request = build_request(args, now=clock.now())
    async with client(args) as bus:
        accepted = await bus.submit(request)
        if not args.wait:
            if args.json:
                print_json(status_document(accepted.status, duplicate=accepted.duplicate))
            else:
                say(submitted_lines(accepted, agency=args.agency))
            return 0
        status, waited_out = await wait_final(bus, accepted.status.id, args)
    details = own_details(status, args)
    if args.json:
        print_json(status_document(status, duplicate=accepted.duplicate, details=details))
    else:
        say(status_lines(status, details=details))
    return wait_exit("submit", status, args, waited_out=waited_out)


async def wait_final(
    bus: BusClient,
    request_id: str,
    args: argparse.Namespace,
    *,
    states: frozenset[common_pb2.RequestState.ValueType] = FINAL_STATES,
    until: str = "a final state",
) -> tuple[lifecycle_pb2.RequestStatus, bool]:
    """Follow a submitted request for ``--timeout`` seconds until it reaches one of ``states``
    (``until`` says which, for people): its status, and whether time ran out."""
    # On stderr, so stdout stays one document; tells the id even if the wait is interrupted.
    print(
        f"submitted {request_id}; waiting up to {args.timeout:g} s for {until} "
        "(Ctrl-C stops the waiting, not the request)",
        file=sys.stderr,
        flush=True,
    )
    try:
        return await bus.wait_for(request_id, states, within=timedelta(seconds=args.timeout)), False
    except TimeoutError:
        return await bus.get(request_id), True


def wait_exit(
    command: str, status: lifecycle_pb2.RequestStatus, args: argparse.Namespace, *, waited_out: bool
) -> int:
    """The exit status of ``--wait`` once the status is printed: 0 executed, 1 no final state in
    time, :data:`EXIT_NOT_EXECUTED` rejected, failed or cancelled."""
    if waited_out:
        # Not a CliError: stdout already has its one document (the status as it stands).
        _complain(
            command,
            [
                f"{status.id} did not reach a final state within {args.timeout:g} s "
                f"(now {state_name(status.state)}); it goes on: "
                f"greenchannel watch --as {args.agency} --request {status.id}"
            ],
        )
        return 1
    if status.state in NOT_EXECUTED:
        # Not a _CliError either: the status (with the agency's reason) is on stdout already.
        _complain(command, [f"{status.id} ended {state_name(status.state)}: not executed"])
        return EXIT_NOT_EXECUTED
    return 0


def run_watch(args: argparse.Namespace) -> int:
    """``greenchannel watch ...``: one line (or JSON object) per event until Ctrl-C."""
    return guarded("watch", args, lambda: _watch(args), stopped_exit=0)


async def _watch(args: argparse.Namespace) -> int:
    types: dict[str, str] = {}
    cursor: int = args.after
    seen = False
    delay = 0.0
    async with client(args) as bus:

        async def type_of(request_id: str) -> str:
            # Events do not carry the request type; one Get per request tells it.
            if request_id not in types:
                try:
                    types[request_id] = request_type_name((await bus.get(request_id)).type)
                except grpc.aio.AioRpcError:
                    return "?"
            return types[request_id]

        while True:
            try:
                async for update in bus.watch(
                    request_id=args.request, case_number=args.case, after_cursor=cursor
                ):
                    cursor, seen, delay = update.cursor, True, 0.0
                    request_type = await type_of(update.request_id)
                    if args.json:
                        print_json(event_document(update, request_type=request_type))
                    else:
                        print(event_line(update, request_type=request_type), flush=True)
                why = "the broker ended the stream"
            except grpc.aio.AioRpcError as exc:
                # Before the first event a failure is more likely a wrong address or scope than an
                # outage: report it. After, the broker is restarting: wait for it, however long.
                if not seen or exc.code() not in _RESUMABLE:
                    raise
                why = f"connection lost ({exc.code().name})"
            if not seen:
                raise CliError("the broker ended the watch before any event")
            delay = min(_RESUME_DELAY_MAX, max(_RESUME_DELAY_MIN, delay * 2))
            print(
                f"greenchannel watch: {why}; resuming after cursor {cursor} in {delay:g} s",
                file=sys.stderr,
                flush=True,
            )
            await asyncio.sleep(delay)


def run_status(args: argparse.Namespace) -> int:
    """``greenchannel status ID ...``."""
    if args.key is not None:
        args.decrypt = True
    return guarded("status", args, lambda: _status(args))


def _own_keys(args: argparse.Namespace) -> tuple[x25519.X25519PrivateKey, ...] | None:
    """The --as agency's X25519 keys in the state directory, if it has any (old ones included)."""
    try:
        return load_agency_encryption_keys(args.state_dir, args.agency)
    except (KeyFileError, UnknownAgencyError):
        return None


def own_details(
    status: lifecycle_pb2.RequestStatus, args: argparse.Namespace
) -> results_pb2.ResultDetails | None:
    """The onward transfers in full when the caller's own key opens them; None otherwise.

    Quiet on purpose: without the key (another agency asking, or no key here) the redacted view
    is the right one, not an error.
    """
    if not status.result.HasField("sealed_details"):
        return None
    keys = _own_keys(args)
    if keys is None:
        return None
    try:
        return open_result_details(
            status.result, keys, request_id=status.id, sender=status.sender, recipient=status.recipient
        )
    except SealingError:
        return None


def _open_details(
    status: lifecycle_pb2.RequestStatus, keys: DecryptionKeys, *, key_name: str
) -> results_pb2.ResultDetails | None:
    if not status.result.HasField("sealed_details"):
        return None
    try:
        return open_result_details(
            status.result, keys, request_id=status.id, sender=status.sender, recipient=status.recipient
        )
    except SealingError as exc:
        raise CliError(
            f"cannot decrypt the onward transfers with {key_name}: {exc}; "
            f"they are sealed to {status.sender}'s X25519 key"
        ) from exc


def _open_answer(
    status: lifecycle_pb2.RequestStatus, key: DecryptionKeys, *, key_name: str
) -> results_pb2.DataAnswer | None:
    if not status.result.HasField("encrypted_payload"):
        if status.result.HasField("sealed_details"):
            return None  # nothing but the onward transfers to open
        state = state_name(status.state)
        raise CliError(f"request {status.id} ({state}) carries no sealed answer to decrypt")
    sealed = status.result.encrypted_payload
    if sealed.content_type and sealed.content_type != DATA_ANSWER_CONTENT_TYPE:
        raise CliError(f"the sealed answer is a {sealed.content_type}, not a {DATA_ANSWER_CONTENT_TYPE}")
    try:
        # Sealed by the recipient (who answered) to the sender (who asked).
        clear = open_sealed(
            sealed, key, request_id=status.id, sender=status.recipient, recipient=status.sender
        )
    except SealingError as exc:
        raise CliError(
            f"cannot decrypt the answer with {key_name}: {exc}; it is sealed to {status.sender}'s X25519 key"
        ) from exc
    try:
        return results_pb2.DataAnswer.FromString(clear)
    except DecodeError as exc:
        raise CliError("the decrypted answer is not a DataAnswer") from exc


async def _status(args: argparse.Namespace) -> int:
    key: DecryptionKeys | None = None
    key_name = ""
    if args.decrypt:
        # Before any call: a key that cannot be read is reported without touching the bus.
        if args.key is not None:
            key, key_name = read_x25519(args.key), str(args.key)
        else:
            key = load_agency_encryption_keys(args.state_dir, args.agency)
            key_name = f"{args.agency}'s key in {args.state_dir}"
    lifting: list[lifecycle_pb2.RequestStatus] | None = None
    async with client(args) as bus:
        status = await bus.get(args.id)
        if status.type == common_pb2.REQUEST_TYPE_APPEAL:
            lifting = await _lifting_orders(bus, status)
    answer: results_pb2.DataAnswer | None = None
    if key is not None:
        answer = _open_answer(status, key, key_name=key_name)
        details = _open_details(status, key, key_name=key_name)
    else:
        details = own_details(status, args)
    now = SystemClock().now()
    if args.json:
        document = status_document(status, answer=answer, details=details)
        if status.HasField("allocation"):
            document["allocation"] = allocation_document(status.allocation, now=now)
        if status.type == common_pb2.REQUEST_TYPE_RETURN_FUNDS and status.HasField("result"):
            document["returned"] = returns_document(status.result)
        if status.type == common_pb2.REQUEST_TYPE_APPEAL:
            document["appeal"] = lifting_document(status, lifting)
        print_json(document)
    else:
        lines = status_lines(status, details=details)
        if status.HasField("allocation"):
            lines += ["", *allocation_lines(status.allocation, now=now, note=ORDERED_ALLOCATION)]
        if status.type == common_pb2.REQUEST_TYPE_RETURN_FUNDS and status.HasField("result"):
            lines += ["", *returns_lines(status.result, details)]
        if status.type == common_pb2.REQUEST_TYPE_APPEAL:
            lines += ["", *lifting_lines(status, lifting)]
        if answer is not None:
            lines += ["", *answer_lines(answer)]
        say(lines)
    return 0


async def _lifting_orders(
    bus: BusClient, appeal: lifecycle_pb2.RequestStatus
) -> list[lifecycle_pb2.RequestStatus] | None:
    """The orders the broker sent for an appeal decided LIFTED: the case's requests whose parent is
    the appeal. None when the caller may not list the case (it sees only its own requests)."""
    try:
        listed = await bus.list_all(case_number=appeal.case_ref.case_number)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND):
            return None
        raise
    return sorted((s for s in listed if s.parent_id == appeal.id), key=lambda s: s.id)
