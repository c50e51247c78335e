"""``greenchannel risk``: the risk registry and the pre-payment check, through RiskService.

``risk check`` grades identifiers (a bank before a payment); ``risk mark`` marks one (police: active
at once; a bank or platform where policy allows: proposed); ``risk decide`` confirms or refuses a
proposal; ``risk unmark`` lifts a mark; ``risk marks`` lists a case's marks; ``risk counts`` shows
checks counted per agency. ``--json`` prints the answer as JSON (proto field names). Exit status: 0
done, 1 the bus or a key said no, 2 a usage error.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from datetime import timedelta

from google.protobuf.json_format import MessageToDict
from greenchannel.v1 import common_pb2, requests_pb2, risk_pb2

from . import _env
from ._options import positive_int
from ._requests import client, connection_options, guarded, print_json, say

__all__ = ["add_parser", "mark_id_option", "parse_holder_identifier", "parse_identifier", "run"]

_R = risk_pb2
_GRADES = {n.removeprefix("RISK_GRADE_").lower(): v for n, v in _R.RiskGrade.items() if v}
_REASONS = {
    n.removeprefix("RISK_REASON_").lower().replace("_", "-"): v for n, v in _R.RiskReason.items() if v
}
_PURPOSES = {n.removeprefix("CHECK_PURPOSE_").lower(): v for n, v in _R.CheckPurpose.items() if v}
_KINDS = ("account", "phone", "imei", "platform")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def parse_identifier(text: str) -> risk_pb2.RiskIdentifier:
    """``account:6222...``, ``phone:+86...``, ``imei:35...``, ``platform:CODE:ACCOUNT_ID``."""
    kind, _, value = text.partition(":")
    if kind not in _KINDS or not value:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not KIND:VALUE with KIND one of {', '.join(_KINDS)}"
            " (e.g. account:6222020200001234567, phone:+8613800000000, platform:wechat:wxid_abc)"
        )
    if kind == "account":
        return _R.RiskIdentifier(bank_account=value)
    if kind == "phone":
        return _R.RiskIdentifier(phone=value)
    if kind == "imei":
        return _R.RiskIdentifier(imei=value)
    platform, _, account_id = value.partition(":")
    if not platform or not account_id:
        raise argparse.ArgumentTypeError(f"{text!r}: write platform:CODE:ACCOUNT_ID")
    return _R.RiskIdentifier(
        platform_account=common_pb2.PlatformAccountRef(platform=platform, account_id=account_id)
    )


def parse_holder_identifier(text: str) -> requests_pb2.HolderIdentifier:
    """A marked holder's identifier, for an appeal: as :func:`parse_identifier`, but no handset
    (no agency serves an IMEI: its holder asks the police)."""
    identifier = parse_identifier(text)
    if identifier.WhichOneof("id") == "imei":
        raise argparse.ArgumentTypeError(
            f"{text!r}: a handset mark is not appealed through an agency; the holder asks the police"
        )
    # The contract gives HolderIdentifier RiskIdentifier's fields and numbers.
    return requests_pb2.HolderIdentifier.FromString(identifier.SerializeToString())


def mark_id_option(text: str) -> str:
    """A mark id (argparse type)."""
    if not _UUID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a mark id (a UUID)")
    return text


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str) -> None:
    default_broker = _env.default_broker()
    command = commands.add_parser(name, help=help, description=help)
    actions = command.add_subparsers(dest="action", required=True, metavar="ACTION")

    check = actions.add_parser("check", help="grade identifiers before a payment or a porting")
    connection_options(check, default_broker)
    check.add_argument("identifiers", nargs="+", type=parse_identifier, metavar="KIND:VALUE")
    check.add_argument("--purpose", choices=list(_PURPOSES), default="payment")

    mark = actions.add_parser("mark", help="mark an identifier (police: active; bank/platform: proposed)")
    connection_options(mark, default_broker)
    mark.add_argument("identifier", type=parse_identifier, metavar="KIND:VALUE")
    mark.add_argument("--grade", required=True, choices=list(_GRADES))
    mark.add_argument("--reason", required=True, choices=list(_REASONS))
    mark.add_argument(
        "--case", required=True, metavar="CASE_NUMBER", help="the police case the mark rests on"
    )
    mark.add_argument(
        "--owner", metavar="POLICE_AGENCY", help="the police owning --case (default: --as, for police)"
    )
    mark.add_argument(
        "--valid-days", type=positive_int, metavar="DAYS", help="how long the mark lasts (default: policy)"
    )
    mark.add_argument(
        "--mark-id", type=mark_id_option, metavar="UUID", help="choose the id (default: a new one)"
    )

    decide = actions.add_parser("decide", help="confirm or refuse a proposed mark of a case you own")
    connection_options(decide, default_broker)
    decide.add_argument("mark_id", type=mark_id_option, metavar="MARK_ID")
    verdict = decide.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--confirm", action="store_true")
    verdict.add_argument("--refuse", action="store_true")
    decide.add_argument("--reason", default="", help="why (never personal data)")

    unmark = actions.add_parser("unmark", help="lift a mark of a case you own")
    connection_options(unmark, default_broker)
    unmark.add_argument("mark_id", type=mark_id_option, metavar="MARK_ID")
    unmark.add_argument("--reason", required=True, help="why (never personal data)")

    marks = actions.add_parser("marks", help="every mark of a case (its police, regulators)")
    connection_options(marks, default_broker)
    marks.add_argument("case", metavar="CASE_NUMBER")

    counts = actions.add_parser("counts", help="checks counted per agency (yours; regulators: all)")
    connection_options(counts, default_broker)
    counts.add_argument("--agency", default="", metavar="AGENCY", help="one agency (regulators)")


def run(args: argparse.Namespace) -> int:
    work = {
        "check": _check,
        "mark": _mark,
        "decide": _decide,
        "unmark": _unmark,
        "marks": _marks,
        "counts": _counts,
    }[args.action]
    return guarded(f"risk {args.action}", args, lambda: work(args))


def _doc(message: object) -> dict[str, object]:
    return MessageToDict(message, preserving_proto_field_name=True)  # type: ignore[arg-type]


def _name(enum: object, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix)  # type: ignore[attr-defined]


def _mark_lines(statuses: Sequence[risk_pb2.MarkStatus]) -> list[str]:
    if not statuses:
        return ["no marks"]
    lines = []
    for m in statuses:
        until = m.expires_at.ToJsonString() if m.HasField("expires_at") else "-"
        lines.append(
            f"{m.mark_id}  {_name(_R.MarkState, m.state, 'MARK_STATE_'):<9} "
            f"{_name(_R.RiskGrade, m.grade, 'RISK_GRADE_'):<6} "
            f"{_name(_R.RiskReason, m.reason, 'RISK_REASON_')}"
            f"  case {m.case_number} ({m.case_owner})  by {m.marked_by}  until {until}"
            + (f"  lifted on appeal {m.lifted_by_appeal}" if m.lifted_by_appeal else "")
        )
    return lines


async def _check(args: argparse.Namespace) -> int:
    async with client(args) as bus:
        answer = await bus.risk.check(args.identifiers, purpose=_PURPOSES[args.purpose])
    if args.json:
        print_json(_doc(answer))
        return 0
    lines = []
    for given, verdict in zip(args.identifiers, answer.verdicts, strict=True):
        shown = given.WhichOneof("id")
        if verdict.grade == _R.RISK_GRADE_UNSPECIFIED:
            lines.append(f"{verdict.index}  {shown}: not marked")
        else:
            lines.append(
                f"{verdict.index}  {shown}: {_name(_R.RiskGrade, verdict.grade, 'RISK_GRADE_')}"
                f" {_name(_R.RiskReason, verdict.reason, 'RISK_REASON_')}"
                f" until {verdict.marked_until.ToJsonString()}"
            )
    say(lines)
    return 0


async def _mark(args: argparse.Namespace) -> int:
    owner = args.owner or args.agency
    case = common_pb2.CaseRef(
        case_number=args.case,
        issuing_agency=owner,
        legal_instrument_id=f"risk-mark-{args.case}",
        legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_NONE,
    )
    async with client(args) as bus:
        reply = await bus.risk.mark(
            args.identifier,
            grade=_GRADES[args.grade],
            reason=_REASONS[args.reason],
            case=case,
            valid_for=timedelta(days=args.valid_days) if args.valid_days else None,
            mark_id=args.mark_id,
        )
    if args.json:
        print_json(_doc(reply))
    else:
        say(
            [
                *_mark_lines([reply.status]),
                *(["(already marked: this is that mark)"] if reply.duplicate else []),
            ]
        )
    return 0


async def _decide(args: argparse.Namespace) -> int:
    async with client(args) as bus:
        status = await bus.risk.decide_mark(args.mark_id, confirm=args.confirm, reason=args.reason)
    print_json({"status": _doc(status)}) if args.json else say(_mark_lines([status]))
    return 0


async def _unmark(args: argparse.Namespace) -> int:
    async with client(args) as bus:
        status = await bus.risk.unmark(args.mark_id, reason=args.reason)
    print_json({"status": _doc(status)}) if args.json else say(_mark_lines([status]))
    return 0


async def _marks(args: argparse.Namespace) -> int:
    async with client(args) as bus:
        found = await bus.risk.list_marks(args.case)
    if args.json:
        print_json({"case_number": args.case, "marks": [_doc(m) for m in found]})
    else:
        say(_mark_lines(found))
    return 0


async def _counts(args: argparse.Namespace) -> int:
    async with client(args) as bus:
        counts = await bus.risk.check_counts(args.agency)
    if args.json:
        print_json({"counts": [_doc(c) for c in counts]})
        return 0
    say(
        [
            f"{c.agency:<20} checked {c.checked:>8}  marked {c.marked:>6}  throttled {c.throttled:>6}"
            f"  since {c.since.ToJsonString()}"
            for c in counts
        ]
        or ["no checks counted"]
    )
    return 0
