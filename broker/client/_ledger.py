"""The ledger as a file: export it through LedgerService, read an export back, and the keys to verify it.

An export is JSON Lines::

    {"format": "greenchannel-ledger/1", "exported_at": ..., "exported_by": ..., "broker": ...}
    {"type": "entry", "seq": 1, "hash": "sha-256:...", "prev_hash": "", "entry": "<base64>"}
    ...                                               ("entry": null where the agency may not read it)
    {"type": "checkpoint", "payload": "<base64 Checkpoint>", "signature": "<broker's detached JWS>"}

:func:`broker.protocol.verify_chain` proves a file read with :func:`read_ledger_file` offline,
against :func:`registry_keys`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from greenchannel.v1 import envelope_pb2, ledger_pb2

from broker.protocol import (
    ChainRecord,
    Clock,
    KeyStore,
    ProtocolError,
    SigningKey,
    SystemClock,
    key_overlay_path,
    load_directory,
)

from ._bus import BusClient

__all__ = [
    "FORMAT",
    "ExportSummary",
    "LedgerFile",
    "LedgerFileError",
    "export_ledger",
    "read_ledger_file",
    "registry_keys",
]

FORMAT = "greenchannel-ledger/1"
"""The ``format`` of an export's header line."""


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
    partial = out.with_name(f".{out.name}.partial")
    records = withheld = 0
    last_seq = 0
    ledger = BusClient(
        broker,
        agency_id=agency_id,
        signing_key=signing_key,
        clock=clock,
        credentials=credentials,
        timeout=call_timeout,
    )
    try:
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
                    page = await ledger.ledger_entries(last_seq)
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
                batch = list((await ledger.ledger_checkpoints(after)).checkpoints)
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
        await ledger.aclose()
    return ExportSummary(
        path=out, records=records, withheld=withheld, checkpoints=len(checkpoints), head_seq=last_seq
    )


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


def registry_keys(directory: Path, state_dir: Path) -> KeyStore:
    """The public keys to verify with: the directory plus the key overlay in ``state_dir``, if any."""
    overlay = key_overlay_path(state_dir)
    return load_directory(directory, key_overlays=[overlay] if overlay.exists() else [])
