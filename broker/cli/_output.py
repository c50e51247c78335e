"""How every command speaks: lines for people, or with ``--json`` JSON for programs.

One mechanism for every command (what a document holds is the business of ``_render*.py``):

* :func:`json_option` adds ``--json``; :func:`wants_json` reads it;
* :func:`print_json`: one JSON value on one line of stdout (UTF-8 kept as is);
* :func:`emit`: the document with ``--json``, else the lines;
* :func:`announce`: a status line of a long-running command (``broker``, ``up``, ``agencies``,
  ``adapter``): the text for people, or with ``--json`` one JSON object ``{"event": ..., ...}``
  per line, so a supervisor reads them as JSON Lines;
* :func:`complain`: a failure on stderr, and with ``--json`` also ``{"error": ...}`` on stdout.

Exit statuses, the same for every command (README.md, "Exit status"):
:data:`EXIT_OK` the asked-for outcome happened; :data:`EXIT_REFUSED` the bus, a key or a file said
no, or nothing final came in time; :data:`EXIT_USAGE` a usage error (argparse's own status);
:data:`EXIT_NOT_EXECUTED` a request ended rejected, failed or cancelled.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TextIO

__all__ = [
    "EXIT_NOT_EXECUTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "announce",
    "complain",
    "emit",
    "json_option",
    "print_json",
    "wants_json",
]

EXIT_OK = 0
"""The asked-for outcome happened."""
EXIT_REFUSED = 1
"""The broker (or a key, a file, the network) refused, or nothing final came in time."""
EXIT_USAGE = 2
"""A usage error: a bad option value or combination; nothing was sent or written."""
EXIT_NOT_EXECUTED = 3
"""A request ended REJECTED, FAILED or CANCELLED: scripts must not take it for success."""


def json_option(parser: argparse.ArgumentParser, help: str = "machine-readable JSON on stdout") -> None:
    """``--json`` on ``parser``."""
    parser.add_argument("--json", action="store_true", help=help)


def wants_json(args: argparse.Namespace) -> bool:
    """Whether the parsed command asked for JSON (``--json``)."""
    return bool(getattr(args, "json", False))


def print_json(document: object, *, file: TextIO | None = None) -> None:
    """``document`` as one line of JSON on stdout (or ``file``)."""
    print(json.dumps(document, ensure_ascii=False), file=file or sys.stdout, flush=True)


def emit(
    args: argparse.Namespace, document: object, lines: Sequence[str], *, file: TextIO | None = None
) -> None:
    """The document with ``--json``, else the lines for people."""
    if wants_json(args):
        print_json(document, file=file)
    else:
        out = file or sys.stdout
        for line in lines:
            print(line, file=out, flush=True)


def announce(args: argparse.Namespace, event: str, text: Sequence[str] | str, **fields: object) -> None:
    """A long-running command's status: ``text`` (a line or lines), or ``{"event": event, **fields}``."""
    if wants_json(args):
        print_json({"event": event, **fields})
        return
    for line in [text] if isinstance(text, str) else text:
        print(line, flush=True)


def complain(
    command: str,
    args: argparse.Namespace,
    lines: Sequence[str],
    *,
    document: dict[str, object] | None = None,
    code: str = "FAILED",
) -> None:
    """A failure: ``greenchannel COMMAND: first line`` and the rest on stderr; with ``--json`` also
    ``document`` (default ``{"error": {"code": code, "reason": None, "message": first line}}``)."""
    if not lines:
        return
    if wants_json(args):
        print_json(document or {"error": {"code": code, "reason": None, "message": lines[0]}})
    print(f"greenchannel {command}: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(line, file=sys.stderr)
