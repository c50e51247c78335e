"""``greenchannel keys``: an agency's own keys, made on its own host, and the directory changes.

``generate`` writes the private keys under ``--out`` in the state-directory layout every loader
reads (``keys/<agency>/<kid>.pem``, mode 0600, plus ``keys/directory-keys.toml`` recording each
key's window), so the same directory serves as ``--state-dir`` and as the adapter's key source.
Only public keys are printed: as the directory's TOML (``[[agency.key]]`` tables, or overlay
``[[key]]`` tables with ``--overlay``), as a JWK Set (``--jwks``) or as one JSON document
(``--json``). ``rotate`` and ``revoke`` print the tables the operator puts into the directory or
an overlay, and ``--write FILE`` applies them to an overlay file the broker reads
(``greenchannel broker --key-overlay FILE``), which it picks up without a restart.

Usage errors (bad agency id, keys already there, unknown kid, ...) exit 2 with nothing written.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from broker.protocol import (
    AGENCY_ID,
    BROKER_ID,
    KeyFileError,
    KeyUse,
    ProtocolError,
    PublicKey,
    SystemClock,
    agency_keys,
    ensure_agency_keys,
    generate_agency_keys,
    jwk_set,
    key_overlay_path,
    load_agency_signing_key,
    load_directory,
    merge_into_overlay,
    private_key_path,
    read_overlay,
    render_key_tables,
    revoke_key,
    rotate_agency_key,
)

from ._output import EXIT_USAGE, complain, json_option, print_json

__all__ = ["add_parser", "run"]

USAGE_ERROR = EXIT_USAGE
"""Exit status of a refused command (as argparse's own): nothing was written."""


class _UsageError(Exception):
    """A refused ``keys`` command; the message says what to do instead."""


def _agency_id(text: str) -> str:
    if not AGENCY_ID.fullmatch(text) or text == BROKER_ID:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an agency id: one NATS subject token, ^[a-z0-9][a-z0-9-]{{1,62}}$"
        )
    return text


def _overlap(text: str) -> timedelta:
    from broker.hub import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _instant(text: str) -> datetime:
    if text == "now":
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time such as 2026-12-03T14:00:00Z"
        ) from None
    if when.utcoffset() is None:
        # A revocation is one instant for every host; a local time would differ between them.
        raise argparse.ArgumentTypeError(f"{text!r} has no offset: add 'Z' or one such as +08:00")
    return when.astimezone(UTC)


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str = "keys",
    help: str = "",
) -> None:
    """Register ``keys init | generate | rotate | revoke`` on the ``greenchannel`` parser."""
    keys = commands.add_parser(name, help=help)
    sub = keys.add_subparsers(dest="keys_command", required=True)
    init = sub.add_parser(
        "init", help="demo: generate missing keys for every agency and the broker in --state-dir"
    )
    json_option(init, help='print {"overlay": FILE} for machines')

    def output_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--overlay",
            action="store_true",
            help="print overlay [[key]] tables (with agency =) instead of [[agency.key]] tables",
        )
        json_option(parser, help="print one JSON document for machines")

    generate = sub.add_parser("generate", help="create an agency's signing and encryption keys on this host")
    generate.add_argument("--agency", required=True, type=_agency_id, help="the agency id, e.g. bank-icbc")
    generate.add_argument(
        "--out", required=True, type=Path, help="key directory (private files 0600; usable as --state-dir)"
    )
    generate.add_argument(
        "--force",
        action="store_true",
        help="add a new pair even if the agency has keys there (none replaced)",
    )
    generate.add_argument("--jwks", action="store_true", help="print the public keys as a JWK Set")
    output_flags(generate)

    rotate = sub.add_parser("rotate", help="add a new key; the current one stays valid for --overlap")
    rotate.add_argument("--agency", required=True, type=_agency_id, help="the agency id")
    rotate.add_argument("--dir", required=True, type=Path, help="the key directory made by keys generate")
    rotate.add_argument(
        "--use", choices=[use.value for use in KeyUse], default="sig", help="which key (default sig)"
    )
    rotate.add_argument(
        "--overlap", type=_overlap, default=timedelta(hours=24), help="old key stays valid (default 24h)"
    )
    rotate.add_argument("--write", type=Path, metavar="FILE", help="also apply the change to this overlay")
    output_flags(rotate)

    revoke = sub.add_parser("revoke", help="revoke one key of an agency from --at on")
    revoke.add_argument("--agency", required=True, type=_agency_id, help="the agency id")
    revoke.add_argument(
        "--kid", required=True, help="the key's kid; write --kid=KID, a kid may begin with '-'"
    )
    revoke.add_argument(
        "--at", type=_instant, default=None, help="ISO 8601 instant with offset, or 'now' (default now)"
    )
    revoke.add_argument("--dir", type=Path, help="the agency's key directory, to record it there too")
    revoke.add_argument("--write", type=Path, metavar="FILE", help="apply the revocation to this overlay")
    output_flags(revoke)


# -- rendering -------------------------------------------------------------------------------------


def _instant_text(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _key_json(key: PublicKey, private_file: Path | None = None) -> dict[str, object]:
    document: dict[str, object] = {
        "kid": key.kid,
        "use": key.use.value,
        "not_before": _instant_text(key.not_before),
        "not_after": _instant_text(key.not_after),
        "revoked_at": _instant_text(key.revoked_at),
    }
    if private_file is not None:
        document["private_key_file"] = str(private_file)
    return document


_EPOCH = datetime.min.replace(tzinfo=UTC)


def _adapter_keys(directory: Path, agency: str) -> dict[str, object]:
    """The ``[agency]`` key fields of ``adapter.toml`` for the keys now in ``directory``: the
    signing key in force and every encryption key on disk, newest first (old ones still open
    what was sealed to them)."""
    root = directory.resolve()
    signing = load_agency_signing_key(root, agency)
    encryption = sorted(
        (key for key in agency_keys(root, agency) if key.use is KeyUse.ENC),
        key=lambda key: key.not_before or _EPOCH,
        reverse=True,
    )
    return {
        "signing_key": str(private_key_path(root, agency, signing.kid)),
        "encryption_keys": [
            str(path) for key in encryption if (path := private_key_path(root, agency, key.kid)).exists()
        ],
    }


def _adapter_comment(fields: dict[str, object]) -> str:
    return "\n".join(
        [
            "For adapter.toml ([agency] of greenchannel adapter --config):",
            f"  signing_key = {json.dumps(fields['signing_key'])}",
            f"  encryption_keys = {json.dumps(fields['encryption_keys'])}",
        ]
    )


def _emit(
    args: argparse.Namespace,
    keys: Sequence[PublicKey],
    *,
    comment: str,
    private_dir: Path | None = None,
    extra: dict[str, object] | None = None,
) -> None:
    toml = render_key_tables(args.agency, keys, overlay=args.overlay)
    adapter = _adapter_keys(private_dir, args.agency) if private_dir is not None else None
    if adapter is not None:
        comment += "\n" + _adapter_comment(adapter)
    if args.json:
        files = (
            {k.kid: private_key_path(private_dir.resolve(), args.agency, k.kid) for k in keys}
            if private_dir
            else {}
        )
        document = {
            "agency": args.agency,
            "keys": [_key_json(key, files.get(key.kid)) for key in keys],
            "toml": toml,
            "jwks": jwk_set(keys),
            **({"adapter": adapter} if adapter is not None else {}),
            **(extra or {}),
        }
        print_json(document)
    elif getattr(args, "jwks", False):
        print(json.dumps(jwk_set(keys), indent=2))
    else:
        print("".join(f"# {line}\n" for line in comment.splitlines()) + "\n" + toml, end="")


# -- commands --------------------------------------------------------------------------------------


def _generate(args: argparse.Namespace) -> None:
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise _UsageError(f"--out {out}: exists and is not a directory")
    try:
        pair = generate_agency_keys(out, args.agency, clock=SystemClock(), force=args.force)
    except KeyFileError as exc:
        raise _UsageError(
            f"{exc}; nothing written: use 'keys rotate', or --force to add a second pair"
        ) from None
    files = "\n".join(f"  {private_key_path(out.resolve(), args.agency, key.kid)}" for key in pair)
    where = (
        "[[key]] tables for an overlay file" if args.overlay else f"[[agency.key]] tables for {args.agency}"
    )
    _emit(
        args,
        pair,
        comment=(
            f"Public keys of {args.agency}: {where} in the directory.\n"
            f"Private keys (mode 0600, never share them; --state-dir {out} loads them):\n{files}"
        ),
        private_dir=out,
        extra={"state_dir": str(out.resolve())},
    )


def _changed(before: Iterable[PublicKey], after: Iterable[PublicKey]) -> list[PublicKey]:
    old = {key.kid: key for key in before}
    return [key for key in after if old.get(key.kid) != key]


def _check_overlay(path: Path | None) -> None:
    """Refuse a --write target that is not a readable overlay before anything is generated."""
    if path is not None and path.exists():
        if not path.is_file():
            raise _UsageError(f"--write {path}: not a file")
        read_overlay(path)


def _rotate(args: argparse.Namespace) -> None:
    directory: Path = args.dir
    if not key_overlay_path(directory).is_file():
        raise _UsageError(f"--dir {directory}: no keys here (expected {key_overlay_path(directory)})")
    _check_overlay(args.write)
    before = agency_keys(directory, args.agency)
    try:
        kid = rotate_agency_key(
            directory, args.agency, clock=SystemClock(), overlap=args.overlap, use=KeyUse(args.use)
        )
    except KeyFileError as exc:
        raise _UsageError(str(exc)) from None
    changed = _changed(before, agency_keys(directory, args.agency))
    if args.write is not None:
        merge_into_overlay(args.write, args.agency, changed)
    applied = f"\nApplied to {args.write}." if args.write is not None else ""
    _emit(
        args,
        changed,
        comment=(
            f"Rotation of {args.agency}'s {args.use} key: new key {kid}; the old one ends at its not_after.\n"
            f"Replace the tables with the same kid, add the new one.{applied}"
        ),
        private_dir=directory,
        extra={"new_kid": kid},
    )


_WHERE = {"dir": "the key directory", "overlay": "the overlay", "directory": "the directory file"}


def _find_key(args: argparse.Namespace) -> tuple[PublicKey, str]:
    """The key to revoke and where it was found: the key dir, the overlay, or the directory."""
    if args.dir is not None:
        if not key_overlay_path(args.dir).is_file():
            raise _UsageError(f"--dir {args.dir}: no keys here (expected {key_overlay_path(args.dir)})")
        for key in agency_keys(args.dir, args.agency):
            if key.kid == args.kid:
                return key, "dir"
    if args.write is not None and args.write.is_file():
        for entry in read_overlay(args.write):
            if entry.key.kid == args.kid:
                if entry.agency != args.agency:
                    raise _UsageError(
                        f"{args.write} {entry.field}: key {args.kid!r} is not {args.agency!r}'s"
                    )
                return entry.key, "overlay"
    if args.directory is not None and args.directory.is_file():
        registry = load_directory(args.directory)
        listed = registry.get(args.agency).key(args.kid) if args.agency in registry else None
        if listed is not None:
            return listed, "directory"
    raise _UsageError(
        f"agency {args.agency!r} has no key {args.kid!r} in "
        + ", ".join(str(p) for p in (args.dir, args.write, args.directory) if p is not None)
    )


def _revoke(args: argparse.Namespace) -> None:
    at: datetime = args.at or datetime.now(UTC).replace(microsecond=0)
    _check_overlay(args.write)
    key, found = _find_key(args)
    if found == "directory" and args.write is not None:
        # One kid has one entry: an overlay cannot amend a key the directory file itself lists.
        raise _UsageError(
            f"key {args.kid!r} is listed in {args.directory} itself: set revoked_at there "
            "(run without --write to print the table)"
        )
    if key.revoked_at is not None and key.revoked_at <= at:
        at = key.revoked_at  # an earlier revocation stands: moving it later would re-validate signatures
    revoked = replace(key, revoked_at=at)
    if args.dir is not None and found == "dir":
        revoke_key(args.dir, args.agency, args.kid, at=at)
    if args.write is not None:
        merge_into_overlay(args.write, args.agency, [revoked])
    applied = f"\nApplied to {args.write}." if args.write is not None else ""
    _emit(
        args,
        [revoked],
        comment=(
            f"Revocation of {args.agency}'s key {args.kid} from {_instant_text(at)} on.\n"
            f"Replace the table with the same kid (found in {_WHERE[found]}).{applied}"
        ),
    )


def _init(args: argparse.Namespace) -> None:
    overlay = ensure_agency_keys(args.directory, args.state_dir, clock=SystemClock())
    if args.json:
        print_json({"state_dir": str(args.state_dir), "overlay": str(overlay)})
    else:
        print(f"keys ready; public keys in {overlay}")


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``keys`` command."""
    command = {"init": _init, "generate": _generate, "rotate": _rotate, "revoke": _revoke}[args.keys_command]
    try:
        command(args)
    except _UsageError as exc:
        complain(f"keys {args.keys_command}", args, [str(exc)], code="USAGE")
        return USAGE_ERROR
    except (ProtocolError, ValueError) as exc:
        if args.keys_command == "init":
            raise
        complain(f"keys {args.keys_command}", args, [str(exc)], code="USAGE")
        return USAGE_ERROR
    return 0
