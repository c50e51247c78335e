"""What several commands share: their error, option value types, reading an X25519 key file."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import x25519

from broker.protocol import KeyFileError, read_encryption_key

__all__ = ["CliError", "agency_option", "non_negative_int", "positive_int", "read_x25519"]

_AGENCY_ID = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")


class CliError(Exception):
    """A failure the command reports in one message, with its exit status."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def agency_option(text: str) -> str:
    """An agency id option value (argparse names the option in its error, and exits 2)."""
    if not _AGENCY_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an agency id (lowercase letters, digits, dashes)")
    return text


def read_x25519(path: Path) -> x25519.X25519PrivateKey:
    """An unencrypted PEM X25519 private key; :class:`CliError` naming the file otherwise."""
    try:
        return read_encryption_key(path)
    except KeyFileError as exc:
        raise CliError(str(exc)) from exc


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """A count option value greater than zero."""
    value = _whole_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
    return value


def non_negative_int(text: str) -> int:
    """A count option value, zero allowed."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value
