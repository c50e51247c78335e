"""``greenchannel trail CASE``: a case's money trail as a tree, through the Bus API.

The broker keeps accounts only as digests and sealed to the police owning the case; the owner's
key (from the state directory, or ``--key``) opens them here, on the police's machine. Anyone
else allowed to read the trail (regulators) sees digests, amounts, banks and states.

    greenchannel trail SH-PD-2026-1121-0001 --as police-310115
    greenchannel trail SH-PD-2026-1121-0001 --as police-310115 --chasing off
    greenchannel trail SH-PD-2026-1121-0001 --as regulator-mps --owner police-310115 --json

Exit status: 0 done, 1 the bus or a key said no, 2 a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import grpc
import grpc.aio
from google.protobuf.json_format import MessageToDict
from greenchannel.v1 import common_pb2, results_pb2, trail_pb2

from broker.client import error_details, fetch_trail, open_accounts, switch_chasing
from broker.protocol import (
    Clock,
    ProtocolError,
    load_agency_encryption_key,
    load_agency_signing_key,
    state_name,
)

from . import _env
from ._options import CliError, agency_option, non_negative_int, read_x25519
from ._output import json_option, print_json
from ._render import error_document, error_lines
from ._requests import parse_amount

__all__ = ["add_parser", "render_trail", "run", "trail_command", "trail_document"]

_CASE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{3,63}")
_T = trail_pb2
_REASONS = {
    _T.LEAD_REASON_OUTSIDE_DIRECTORY: "outside the directory",
    _T.LEAD_REASON_BELOW_MINIMUM: "below the minimum",
    _T.LEAD_REASON_DEPTH: "beyond the depth",
    _T.LEAD_REASON_ACCOUNT_LIMIT: "account budget spent",
    _T.LEAD_REASON_REQUEST_LIMIT: "request budget spent",
    _T.LEAD_REASON_CYCLE: "back to an account on its path",
    _T.LEAD_REASON_CHASING_OFF: "chasing off",
    _T.LEAD_REASON_INCOMPLETE: "account not given",
    _T.LEAD_REASON_NOT_SENT: "refused by the bus",
}


# -- rendering ----------------------------------------------------------------------------------


def _amount(money: common_pb2.Money) -> str:
    return f"{Decimal(money.minor_units).scaleb(-2):,.2f} {money.currency}".strip()


def _state(value: common_pb2.RequestState.ValueType) -> str:
    if value == common_pb2.REQUEST_STATE_UNSPECIFIED:
        return "SENDING"
    return state_name(value)


def _account(node_id: str, bank: str, accounts: Mapping[str, common_pb2.BankAccountRef]) -> str:
    account = accounts.get(node_id)
    if account is None:
        return f"{bank} #{node_id[:12]}" if node_id else bank
    return f"{bank} {account.account_number} {account.holder_name}".strip()


def _bounds_line(bounds: trail_pb2.ChaseBounds) -> str:
    minimums = ", ".join(f">= {_amount(m)}" for m in bounds.min_amounts) or "no minimum"
    return (
        f"bounds: depth <= {bounds.max_depth} hops, {minimums}, <= {bounds.max_accounts} accounts, "
        f"<= {bounds.max_requests} stop-payments"
    )


def render_trail(trail: trail_pb2.Trail, accounts: Mapping[str, common_pb2.BankAccountRef]) -> list[str]:
    """The trail for people: a tree of requests (merged accounts under each path), leads where
    the money escaped, then every account with what is held on it, and the totals."""
    case = trail.case_ref
    state = "settled" if trail.settled else "in progress"
    lines = [
        f"Money trail of {case.case_number} ({case.issuing_agency}): "
        f"chasing {'on' if trail.chasing else 'off'}, {state}",
        _bounds_line(trail.bounds),
        "",
    ]
    node_of = {r.request_id: n for n in trail.nodes for r in n.requests if r.request_id}
    entries = [(n, r) for n in trail.nodes for r in n.requests]
    known = set(node_of)
    children: dict[str, list[tuple[trail_pb2.TrailNode, trail_pb2.TrailRequest]]] = {}
    roots: list[tuple[trail_pb2.TrailNode, trail_pb2.TrailRequest]] = []
    for node, request in entries:
        if request.parent_id and request.parent_id in known:
            children.setdefault(request.parent_id, []).append((node, request))
        else:
            roots.append((node, request))
    leads_of: dict[str, list[trail_pb2.TrailLead]] = {}
    for lead in trail.leads:
        leads_of.setdefault(lead.from_request_id, []).append(lead)

    def request_line(node: trail_pb2.TrailNode, request: trail_pb2.TrailRequest) -> str:
        kind = "freeze" if request.type == common_pb2.REQUEST_TYPE_FREEZE else "stop"
        if request.role == _T.TRAIL_ROLE_CONVERSION:
            kind = "freeze (conversion)"
        reason = ""
        if request.reason:
            reason = f" ({results_pb2.ReasonCode.Name(request.reason).removeprefix('REASON_CODE_')})"
        return (
            f"{_account(node.node_id, node.bank, accounts)}  hop {request.hop}  {kind} "
            f"asked {_amount(request.asked)}  held {_amount(request.held)}  {_state(request.state)}{reason}"
        )

    def lead_line(lead: trail_pb2.TrailLead) -> str:
        where = lead.to_bank or (f"bank code {lead.to_bank_code}" if lead.to_bank_code else "unknown bank")
        account = accounts.get(lead.node_id)
        who = " " + f"{account.account_number} {account.holder_name}".strip() if account is not None else ""
        verb = "came back" if lead.reason == _T.LEAD_REASON_CYCLE else "not chased"
        return (
            f"lead, {_REASONS.get(lead.reason, 'not chased')}: {where}{who}  hop {lead.hop}  "
            f"{_amount(lead.amount)} {verb} (transfer of {_amount(lead.transfer_amount)})"
        )

    def walk(request_id: str, prefix: str) -> None:
        items: list[tuple[str, tuple[trail_pb2.TrailNode, trail_pb2.TrailRequest] | trail_pb2.TrailLead]] = [
            (request_line(*pair), pair) for pair in children.get(request_id, [])
        ]
        items += [(lead_line(lead), lead) for lead in leads_of.get(request_id, [])]
        for i, (text, item) in enumerate(items):
            last = i == len(items) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{text}")
            if isinstance(item, tuple) and item[1].request_id:
                walk(item[1].request_id, prefix + ("    " if last else "│   "))

    for node, request in roots:
        lines.append(request_line(node, request))
        if request.request_id:
            walk(request.request_id, "")
    lines.append("")
    lines += _accounts_table(trail, accounts)
    lines.append("")
    lines += _totals(trail)
    return lines


def _accounts_table(trail: trail_pb2.Trail, accounts: Mapping[str, common_pb2.BankAccountRef]) -> list[str]:
    header = ("account", "depth", "paths", "traced", "held now")
    rows = [
        (
            _account(n.node_id, n.bank, accounts),
            str(n.depth),
            str(len(n.requests)),
            _amount(n.traced),
            _amount(n.held),
        )
        for n in trail.nodes
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True))]
    out.append("  ".join("-" * width for width in widths))
    out += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    return out


def _sums(amounts: Sequence[common_pb2.Money]) -> str:
    totals: dict[str, int] = {}
    for money in amounts:
        totals[money.currency] = totals.get(money.currency, 0) + money.minor_units
    return (
        ", ".join(_amount(common_pb2.Money(currency=c, minor_units=u)) for c, u in sorted(totals.items()))
        or "0.00"
    )


def _totals(trail: trail_pb2.Trail) -> list[str]:
    escaped = [lead for lead in trail.leads if lead.reason != _T.LEAD_REASON_CYCLE]
    by_reason: dict[trail_pb2.LeadReason.ValueType, list[common_pb2.Money]] = {}
    for lead in escaped:
        by_reason.setdefault(lead.reason, []).append(lead.amount)
    lines = [
        f"held now on {sum(1 for n in trail.nodes if n.held.minor_units)} of {len(trail.nodes)} accounts: "
        f"{_sums([n.held for n in trail.nodes])}",
        f"not chased: {_sums([lead.amount for lead in escaped])} in {len(escaped)} "
        + ("lead" if len(escaped) == 1 else "leads"),
    ]
    lines += [
        f"  {_REASONS.get(reason, str(reason))}: {_sums(amounts)} ({len(amounts)})"
        for reason, amounts in sorted(by_reason.items())
    ]
    if trail.unlisted_leads:
        lines.append(
            f"  and {trail.unlisted_leads} more leads the trail does not list: "
            f"{_sums(list(trail.unlisted_lead_amounts))}"
        )
    cycles = len(trail.leads) - len(escaped)
    if cycles:
        lines.append(f"  {cycles} transfers came back to accounts already on their path (held there)")
    return lines


def trail_document(
    trail: trail_pb2.Trail, accounts: Mapping[str, common_pb2.BankAccountRef]
) -> dict[str, Any]:
    """The trail as JSON: the Bus API's fields, sealed accounts replaced by the opened ones."""
    document = MessageToDict(
        trail, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    for item in (*document.get("nodes", []), *document.get("leads", [])):
        sealed = item.pop("account", None)
        account = accounts.get(item.get("node_id", ""))
        item["sealed"] = sealed is not None
        if account is not None:
            item["account"] = {
                "account_number": account.account_number,
                "holder_name": account.holder_name,
                "bank": account.bank,
            }
    document["held_minor_units"] = sum(n.held.minor_units for n in trail.nodes)
    document["not_chased_minor_units"] = sum(
        lead.amount.minor_units for lead in trail.leads if lead.reason != _T.LEAD_REASON_CYCLE
    ) + sum(m.minor_units for m in trail.unlisted_lead_amounts)
    return document


# -- the command --------------------------------------------------------------------------------


async def trail_command(
    *,
    broker: str,
    agency_id: str,
    state_dir: Path,
    case_number: str,
    owner: str = "",
    as_json: bool = False,
    key_file: Path | None = None,
    chasing: bool | None = None,
    bounds: trail_pb2.ChaseBounds | None = None,
    clock: Clock | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print a case's trail as ``agency_id`` (switching its chasing first if asked); 0 or 1."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        signing_key = load_agency_signing_key(state_dir, agency_id)
        key = read_x25519(key_file) if key_file is not None else None
    except (ProtocolError, CliError) as exc:
        print(f"greenchannel trail: {exc}", file=err)
        return 1
    try:
        if chasing is not None:
            trail = await switch_chasing(
                broker,
                agency_id=agency_id,
                signing_key=signing_key,
                case_number=case_number,
                enabled=chasing,
                bounds=bounds,
                clock=clock,
            )
        else:
            trail = await fetch_trail(
                broker,
                agency_id=agency_id,
                signing_key=signing_key,
                case_number=case_number,
                issuing_agency=owner,
                clock=clock,
            )
    except grpc.aio.AioRpcError as exc:
        details = error_details(exc)
        if as_json:
            print_json(error_document(details), file=out)
        for line in error_lines(details):
            print(f"greenchannel trail: {line}", file=err)
        return 1
    if key is None and trail.case_ref.issuing_agency == agency_id:
        try:
            key = load_agency_encryption_key(state_dir, agency_id)
        except ProtocolError:
            print("greenchannel trail: no encryption key here; accounts are shown as digests", file=err)
    accounts = open_accounts(trail, key) if key is not None else {}
    if as_json:
        print_json(trail_document(trail, accounts), file=out)
    else:
        print("\n".join(render_trail(trail, accounts)), file=out)
    return 0


def _case(text: str) -> str:
    if not _CASE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a case number (letters, digits, dashes; 4-64)")
    return text


def add_parser(subparsers: Any, name: str = "trail", help: str = "") -> None:
    """Register ``trail CASE --as AGENCY [--owner A] [--broker] [--json] [--key FILE] [--chasing on|off]
    [--max-depth N] [--max-accounts N] [--max-requests N] [--min-amount X --currency C]``.

    ``subparsers`` is what ``ArgumentParser.add_subparsers`` returned. The parsed namespace has
    ``command == "trail"``.
    """
    default_broker = _env.default_broker()
    trail = subparsers.add_parser(name, help=help)
    trail.add_argument("case", type=_case, metavar="CASE", help="case number")
    trail.add_argument(
        "--as", dest="agency", required=True, type=agency_option, metavar="AGENCY", help="agency to read as"
    )
    trail.add_argument(
        "--owner", type=agency_option, metavar="AGENCY", help="police owning the case (regulators name it)"
    )
    trail.add_argument(
        "--broker",
        default=default_broker,
        metavar="HOST:PORT",
        help=f"broker address (default {default_broker})",
    )
    json_option(trail, help="print the trail as one JSON object")
    trail.add_argument(
        "--key", type=Path, metavar="FILE", help="X25519 private key, PKCS#8 PEM (default: the owner's key)"
    )
    trail.add_argument(
        "--chasing", choices=["on", "off"], help="switch the broker's chasing of the case (case owner)"
    )
    trail.add_argument(
        "--max-depth", type=non_negative_int, metavar="N", help="with --chasing: narrower depth"
    )
    trail.add_argument(
        "--max-accounts", type=non_negative_int, metavar="N", help="with --chasing: fewer accounts"
    )
    trail.add_argument(
        "--max-requests", type=non_negative_int, metavar="N", help="with --chasing: fewer stop-payments"
    )
    trail.add_argument("--min-amount", type=parse_amount, metavar="X", help="with --chasing: larger minimum")
    trail.add_argument("--currency", default="CNY", help="currency of --min-amount (default CNY)")


def _bounds(args: argparse.Namespace) -> trail_pb2.ChaseBounds | None:
    bounds = trail_pb2.ChaseBounds()
    given = False
    for name in ("max_depth", "max_accounts", "max_requests"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(bounds, name, value)
            given = True
    if getattr(args, "min_amount", None) is not None:
        bounds.min_amounts.add(currency=args.currency, minor_units=args.min_amount)
        given = True
    return bounds if given else None


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``trail`` command; needs the top-level ``--state-dir`` (the agency's keys)."""
    bounds = _bounds(args)
    if bounds is not None and args.chasing is None:
        print("greenchannel trail: bounds are set together with --chasing on|off", file=sys.stderr)
        return 2
    return asyncio.run(
        trail_command(
            broker=args.broker,
            agency_id=args.agency,
            state_dir=args.state_dir,
            case_number=args.case,
            owner=args.owner or "",
            as_json=args.json,
            key_file=args.key,
            chasing=None if args.chasing is None else args.chasing == "on",
            bounds=bounds,
        )
    )
