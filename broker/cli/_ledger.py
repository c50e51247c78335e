"""``greenchannel ledger export`` and ``greenchannel ledger verify``: the ledger, proved offline.

``export --as AGENCY --broker HOST:PORT --out FILE`` pages through LedgerService as that agency
and writes JSON Lines::

    {"format": "greenchannel-ledger/1", "exported_at": ..., "exported_by": ..., "broker": ...}
    {"type": "entry", "seq": 1, "hash": "sha-256:...", "prev_hash": "", "entry": "<base64>"}
    ...                                               ("entry": null where the agency may not read it)
    {"type": "checkpoint", "payload": "<base64 Checkpoint>", "signature": "<broker's detached JWS>"}

``verify FILE`` needs nothing but the file and the registry's public keys (the directory and the
key overlay of ``--state-dir``): it proves every link of the chain and every checkpoint
signature, and for an entry changed, removed, inserted or moved it says which one, and on which
line. Exit status 0: the ledger verifies; 1: it does not, or the file or keys cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any, TextIO

import grpc
import grpc.aio

from broker.client import (
    LedgerFile,
    LedgerFileError,
    error_details,
    export_ledger,
    read_ledger_file,
    registry_keys,
)
from broker.protocol import (
    ChainProblem,
    ChainReport,
    Clock,
    KeyStore,
    ProblemKind,
    ProtocolError,
    load_agency_signing_key,
    verify_chain,
)

from . import _env
from ._output import complain, json_option, print_json

__all__ = ["add_parser", "ledger_export_command", "ledger_verify_command", "run"]


# -- verify -------------------------------------------------------------------------------------


def _line_of(problem: ChainProblem, ledger: LedgerFile) -> int | None:
    if problem.record_index is not None:
        return ledger.record_lines[problem.record_index]
    if problem.checkpoint_index is not None:
        return ledger.checkpoint_lines[problem.checkpoint_index]
    return None


def _problem_text(problem: ChainProblem, ledger: LedgerFile) -> str:
    line = _line_of(problem, ledger)
    if line is not None:
        return f"line {line}: {problem}"
    before = next(
        (n for r, n in zip(ledger.records, ledger.record_lines, strict=True) if r.seq == problem.seq - 1),
        None,
    )
    return f"{problem} (after line {before})" if before is not None else str(problem)


def _verdict_lines(path: Path, ledger: LedgerFile, report: ChainReport) -> list[str]:
    failures = len(report.problems) + len(ledger.unreadable)
    if failures:
        lines = [f"ledger {path}: NOT VERIFIED ({failures} problem{'s' if failures > 1 else ''})"]
        lines += [f"  line {number}: UNREADABLE: {why}" for number, why in ledger.unreadable]
        lines += [f"  {_problem_text(problem, ledger)}" for problem in report.problems]
        return lines
    lines = [f"ledger {path}: VERIFIED"]
    if report.records:
        withheld = f", {report.withheld} withheld (checked by their links)" if report.withheld else ""
        lines.append(f"  entries 1..{report.head_seq}: every link holds{withheld}")
    else:
        lines.append("  the ledger is empty")
    lines.append(
        f"  {report.checkpoints} broker checkpoint(s) verified; signed head: entry {report.covered_seq}"
    )
    if report.uncovered:
        lines.append(
            f"  note: the last {report.uncovered} entr{'ies are' if report.uncovered > 1 else 'y is'} "
            "linked but not yet covered by a checkpoint"
        )
    return lines


def _verdict_document(path: Path, ledger: LedgerFile, report: ChainReport) -> dict[str, Any]:
    problems: list[dict[str, Any]] = [
        {"kind": "UNREADABLE", "seq": None, "line": number, "detail": why}
        for number, why in ledger.unreadable
    ]
    problems += [
        {
            "kind": p.kind.value,
            "seq": p.seq,
            "last_seq": p.last_seq if p.kind is ProblemKind.MISSING else None,
            "line": _line_of(p, ledger),
            "detail": p.detail,
        }
        for p in report.problems
    ]
    return {
        "file": str(path),
        "ok": not problems,
        "records": report.records,
        "withheld": report.withheld,
        "head_seq": report.head_seq,
        "head_hash": report.head_hash,
        "checkpoints": report.checkpoints,
        "covered_seq": report.covered_seq,
        "problems": problems,
    }


def ledger_verify_command(
    *,
    path: Path,
    keys: KeyStore,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Verify an export offline and print the verdict; 0 if it verifies, 1 otherwise."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        ledger = read_ledger_file(path)
    except LedgerFileError as exc:
        if as_json:
            print_json({"error": {"code": "UNREADABLE", "reason": None, "message": str(exc)}}, file=out)
        print(f"greenchannel ledger verify: {exc}", file=err)
        return 1
    report = verify_chain(ledger.records, ledger.checkpoints, keys=keys)
    if as_json:
        print_json(_verdict_document(path, ledger, report), file=out)
    else:
        print("\n".join(_verdict_lines(path, ledger, report)), file=out)
    return 0 if report.ok and not ledger.unreadable else 1


async def ledger_export_command(
    *,
    broker: str,
    agency_id: str,
    state_dir: Path,
    out_path: Path,
    clock: Clock | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    as_json: bool = False,
) -> int:
    """Export as ``agency_id`` (its key from ``state_dir``); 0 on success, 1 on failure.

    ``as_json``: the summary (or ``{"error": ...}``) as one JSON object on ``out``."""
    out = out or sys.stdout
    err = err or sys.stderr

    def refused(message: str, code: str = "FAILED", reason: str | None = None) -> int:
        if as_json:
            print_json({"error": {"code": code, "reason": reason, "message": message}}, file=out)
        print(f"greenchannel ledger export: {message}", file=err)
        return 1

    try:
        key = load_agency_signing_key(state_dir, agency_id)
    except ProtocolError as exc:
        return refused(str(exc))
    try:
        summary = await export_ledger(
            broker=broker, agency_id=agency_id, signing_key=key, out=out_path, clock=clock
        )
    except grpc.aio.AioRpcError as exc:
        details = error_details(exc)
        reason = f" ({details.reason})" if details.reason else ""
        return refused(
            f"the broker answered {details.code.name}{reason}: {details.message}",
            code=details.code.name,
            reason=details.reason or None,
        )
    except OSError as exc:
        return refused(f"cannot write {out_path}: {exc}")
    if as_json:
        print_json(
            {
                "file": str(summary.path),
                "exported_by": agency_id,
                "records": summary.records,
                "withheld": summary.withheld,
                "head_seq": summary.head_seq,
                "checkpoints": summary.checkpoints,
            },
            file=out,
        )
        return 0
    withheld = f" ({summary.withheld} withheld from {agency_id})" if summary.withheld else ""
    print(
        f"exported entries 1..{summary.head_seq}{withheld} and {summary.checkpoints} checkpoint(s) "
        f"to {summary.path}",
        file=out,
    )
    return 0


# -- command line -------------------------------------------------------------------------------


def add_parser(subparsers: Any, name: str = "ledger", help: str = "") -> None:
    """Register ``ledger export`` and ``ledger verify`` on the top-level subparsers.

    The parsed namespace has ``command == "ledger"`` and ``ledger_command`` in
    ``{"export", "verify"}``; both read the top-level ``--state-dir`` (and ``verify`` also
    ``--directory``).
    """
    default_broker = _env.default_broker()
    ledger = subparsers.add_parser(name, help=help)
    commands = ledger.add_subparsers(dest="ledger_command", required=True)
    export = commands.add_parser(
        "export", help="write the ledger, as an agency may see it, to a JSON Lines file"
    )
    export.add_argument(
        "--as",
        dest="agency_id",
        required=True,
        metavar="AGENCY",
        help="agency to read as (a regulator sees every entry; others see the links of all)",
    )
    export.add_argument(
        "--broker",
        default=default_broker,
        metavar="HOST:PORT",
        help=f"broker address (default {default_broker})",
    )
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write the export")
    json_option(export, help="print what was exported as one JSON object")
    verify = commands.add_parser(
        "verify",
        help="prove an export offline: every link and checkpoint signature "
        "(public keys from --directory and --state-dir)",
    )
    verify.add_argument("file", type=Path, metavar="FILE", help="an export written by `ledger export`")
    json_option(verify, help="print the verdict as one JSON object")


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``ledger`` command."""
    if args.ledger_command == "export":
        return asyncio.run(
            ledger_export_command(
                broker=args.broker,
                agency_id=args.agency_id,
                state_dir=args.state_dir,
                out_path=args.out,
                as_json=args.json,
            )
        )
    if args.ledger_command == "verify":
        try:
            keys = registry_keys(args.directory, args.state_dir)
        except ProtocolError as exc:
            complain("ledger verify", args, [f"cannot load the registry's keys: {exc}"])
            return 1
        return ledger_verify_command(path=args.file, keys=keys, as_json=args.json)
    return 2
