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
import base64
import binascii
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from greenchannel.v1 import envelope_pb2, ledger_pb2, ledger_pb2_grpc

from broker.hub._auth import bearer_metadata
from broker.hub._grpc_status import error_details
from broker.protocol import Clock, KeyStore, ProtocolError, SigningKey, SystemClock
from broker.protocol._directory import load_directory
from broker.protocol._ledger_chain import ChainProblem, ChainRecord, ChainReport, ProblemKind, verify_chain
from broker.protocol._provision import key_overlay_path, load_agency_signing_key

__all__ = [
    "DEFAULT_BROKER",
    "FORMAT",
    "ExportSummary",
    "LedgerFile",
    "add_ledger_parser",
    "export_ledger",
    "ledger_export_command",
    "ledger_verify_command",
    "read_ledger_file",
    "registry_keys",
    "run_ledger",
]

FORMAT = "greenchannel-ledger/1"
"""The ``format`` of an export's header line."""

DEFAULT_BROKER = "127.0.0.1:50051"
_PAGE = 5000  # the largest page LedgerService serves
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
_ATTEMPTS = 4

T = TypeVar("T")


# -- export -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ExportSummary:
    """What an export wrote."""

    path: Path
    """The file."""
    records: int
    """Entries written."""
    withheld: int
    """Entries whose bytes the broker withheld from this agency (links only)."""
    checkpoints: int
    """Signed checkpoints written."""
    head_seq: int
    """Seq of the last entry written."""


class _Ledger:
    """LedgerService as one agency: a fresh single-use token per call, transient failures retried."""

    def __init__(
        self, channel: grpc.aio.Channel, *, agency_id: str, key: SigningKey, clock: Clock, timeout: float
    ) -> None:
        self._stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        self._agency_id = agency_id
        self._key = key
        self._clock = clock
        self._timeout = timeout

    async def _call(self, invoke: Callable[[tuple[tuple[str, str], ...]], Awaitable[T]]) -> T:
        for attempt in range(1, _ATTEMPTS + 1):
            metadata = bearer_metadata(self._key, agency_id=self._agency_id, clock=self._clock)
            try:
                return await invoke(metadata)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _TRANSIENT or attempt == _ATTEMPTS:
                    raise
                await asyncio.sleep(0.2 * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    async def entries(self, after_seq: int) -> ledger_pb2.ListEntriesResponse:
        request = ledger_pb2.ListEntriesRequest(after_seq=after_seq, limit=_PAGE)
        return await self._call(
            lambda md: self._stub.ListEntries(request, metadata=md, timeout=self._timeout)
        )

    async def checkpoints(self, after_seq: int) -> ledger_pb2.ListCheckpointsResponse:
        request = ledger_pb2.ListCheckpointsRequest(after_seq=after_seq, limit=_PAGE)
        return await self._call(
            lambda md: self._stub.ListCheckpoints(request, metadata=md, timeout=self._timeout)
        )


def _record_line(record: ledger_pb2.LedgerRecord) -> str:
    document = {
        "type": "entry",
        "seq": record.seq,
        "hash": record.hash,
        "prev_hash": record.prev_hash,
        "entry": base64.b64encode(record.entry).decode("ascii") if record.entry else None,
    }
    return json.dumps(document, separators=(",", ":"))


def _checkpoint_line(signed: envelope_pb2.SignedMessage) -> str:
    document = {
        "type": "checkpoint",
        "payload": base64.b64encode(signed.payload).decode("ascii"),
        "signature": signed.signature,
    }
    return json.dumps(document, separators=(",", ":"))


def _claimed_seq(signed: envelope_pb2.SignedMessage) -> int:
    try:
        return int(ledger_pb2.Checkpoint.FromString(signed.payload).seq)
    except DecodeError:
        return 0


async def export_ledger(
    *,
    broker: str,
    agency_id: str,
    signing_key: SigningKey,
    out: Path,
    clock: Clock | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    call_timeout: float = 30.0,
) -> ExportSummary:
    """Write the whole ledger, as ``agency_id`` may see it, to ``out`` (replaced atomically).

    Entries appended while the export runs are included up to the last checkpoint read, so
    every checkpoint in the file covers entries that are in it.
    """
    clock = clock or SystemClock()
    channel = (
        grpc.aio.secure_channel(broker, credentials) if credentials else grpc.aio.insecure_channel(broker)
    )
    partial = out.with_name(f".{out.name}.partial")
    records = withheld = 0
    last_seq = 0
    try:
        ledger = _Ledger(channel, agency_id=agency_id, key=signing_key, clock=clock, timeout=call_timeout)
        with partial.open("w", encoding="utf-8") as file:
            header = {
                "format": FORMAT,
                "exported_at": clock.now().isoformat(),
                "exported_by": agency_id,
                "broker": broker,
            }
            file.write(json.dumps(header) + "\n")

            async def entries_up_to(target: int | None) -> None:
                nonlocal records, withheld, last_seq
                while True:
                    page = await ledger.entries(last_seq)
                    for record in page.records:
                        file.write(_record_line(record) + "\n")
                        records += 1
                        withheld += 0 if record.entry else 1
                        last_seq = record.seq
                    done = page.next_after_seq >= (page.head_seq if target is None else target)
                    if done or not page.records:
                        return

            await entries_up_to(None)
            checkpoints: list[envelope_pb2.SignedMessage] = []
            after = 0
            while True:
                batch = list((await ledger.checkpoints(after)).checkpoints)
                if not batch or max(_claimed_seq(c) for c in batch) <= after:
                    break
                checkpoints.extend(batch)
                after = max(_claimed_seq(c) for c in batch)
            if checkpoints and max(_claimed_seq(c) for c in checkpoints) > last_seq:
                await entries_up_to(max(_claimed_seq(c) for c in checkpoints))
            for signed in checkpoints:
                file.write(_checkpoint_line(signed) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
        await channel.close()
    return ExportSummary(
        path=out, records=records, withheld=withheld, checkpoints=len(checkpoints), head_seq=last_seq
    )


# -- verify -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LedgerFile:
    """An export as read: records and checkpoints with the line each came from."""

    header: dict[str, Any]
    """The header line."""
    records: list[ChainRecord]
    """Entry lines, in file order."""
    record_lines: list[int]
    """Line number (from 1) of each record."""
    checkpoints: list[envelope_pb2.SignedMessage]
    """Checkpoint lines, in file order."""
    checkpoint_lines: list[int]
    """Line number of each checkpoint."""
    unreadable: list[tuple[int, str]]
    """Lines that are neither: (line number, why). Any of them fails verification."""


class LedgerFileError(ProtocolError):
    """The file is not a GreenChannel ledger export at all."""


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"{what} is not base64") from exc


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    return value


def read_ledger_file(path: Path) -> LedgerFile:
    """Parse an export; raises :class:`LedgerFileError` if it is not one (missing or foreign header)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerFileError(f"cannot read {path}: {exc}") from exc
    try:
        header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise LedgerFileError(f"{path} is not a GreenChannel ledger export (no {FORMAT!r} header line)")
    result = LedgerFile(
        header=header, records=[], record_lines=[], checkpoints=[], checkpoint_lines=[], unreadable=[]
    )
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
            kind = document.get("type")
            if kind == "entry":
                entry = document.get("entry")
                result.records.append(
                    ChainRecord(
                        seq=_int(document.get("seq"), "seq"),
                        hash=_text(document.get("hash"), "hash"),
                        prev_hash=_text(document.get("prev_hash"), "prev_hash"),
                        entry=None if entry is None else _b64(entry, "entry"),
                    )
                )
                result.record_lines.append(number)
            elif kind == "checkpoint":
                result.checkpoints.append(
                    envelope_pb2.SignedMessage(
                        payload=_b64(document.get("payload"), "payload"),
                        signature=_text(document.get("signature"), "signature"),
                    )
                )
                result.checkpoint_lines.append(number)
            else:
                raise ValueError(f"unknown line type {kind!r}")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            result.unreadable.append((number, str(exc)))
    return result


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


def registry_keys(directory: Path, state_dir: Path) -> KeyStore:
    """The public keys to verify with: the directory plus the key overlay in ``state_dir``, if any."""
    overlay = key_overlay_path(state_dir)
    return load_directory(directory, key_overlays=[overlay] if overlay.exists() else [])


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
        print(f"greenchannel ledger verify: {exc}", file=err)
        return 1
    report = verify_chain(ledger.records, ledger.checkpoints, keys=keys)
    if as_json:
        print(json.dumps(_verdict_document(path, ledger, report)), file=out)
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
) -> int:
    """Export as ``agency_id`` (its key from ``state_dir``); 0 on success, 1 on failure."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        key = load_agency_signing_key(state_dir, agency_id)
    except ProtocolError as exc:
        print(f"greenchannel ledger export: {exc}", file=err)
        return 1
    try:
        summary = await export_ledger(
            broker=broker, agency_id=agency_id, signing_key=key, out=out_path, clock=clock
        )
    except grpc.aio.AioRpcError as exc:
        details = error_details(exc)
        reason = f" ({details.reason})" if details.reason else ""
        print(
            f"greenchannel ledger export: the broker answered {details.code.name}{reason}: {details.message}",
            file=err,
        )
        return 1
    except OSError as exc:
        print(f"greenchannel ledger export: cannot write {out_path}: {exc}", file=err)
        return 1
    withheld = f" ({summary.withheld} withheld from {agency_id})" if summary.withheld else ""
    print(
        f"exported entries 1..{summary.head_seq}{withheld} and {summary.checkpoints} checkpoint(s) "
        f"to {summary.path}",
        file=out,
    )
    return 0


# -- command line -------------------------------------------------------------------------------


def add_ledger_parser(subparsers: Any, *, default_broker: str = DEFAULT_BROKER) -> None:
    """Register ``ledger export`` and ``ledger verify`` on the top-level subparsers.

    The parsed namespace has ``command == "ledger"`` and ``ledger_command`` in
    ``{"export", "verify"}``; both read the top-level ``--state-dir`` (and ``verify`` also
    ``--directory``).
    """
    ledger = subparsers.add_parser("ledger", help="export and verify the tamper-evident ledger")
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
    verify = commands.add_parser(
        "verify",
        help="prove an export offline: every link and checkpoint signature "
        "(public keys from --directory and --state-dir)",
    )
    verify.add_argument("file", type=Path, metavar="FILE", help="an export written by `ledger export`")
    verify.add_argument("--json", action="store_true", help="print the verdict as one JSON object")


def run_ledger(args: argparse.Namespace) -> int:
    """Run the parsed ``ledger`` command."""
    if args.ledger_command == "export":
        return asyncio.run(
            ledger_export_command(
                broker=args.broker, agency_id=args.agency_id, state_dir=args.state_dir, out_path=args.out
            )
        )
    if args.ledger_command == "verify":
        try:
            keys = registry_keys(args.directory, args.state_dir)
        except ProtocolError as exc:
            print(f"greenchannel ledger verify: cannot load the registry's keys: {exc}", file=sys.stderr)
            return 1
        return ledger_verify_command(path=args.file, keys=keys, as_json=args.json)
    return 2
