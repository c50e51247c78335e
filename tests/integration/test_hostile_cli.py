"""The ``greenchannel`` command line given hostile input: refused clearly, and nothing reaches the bus.

Every case is one real ``python -m broker.cli`` process against a real broker (broker_world: a
nats-server and a Broker on port 0, with the agencies' keys in its state directory). Each asserts
the exit status (2: a usage error or contract violation caught before anything is signed; 1: the
broker, a key or a file said no), the message that names what is wrong, that no traceback was
printed, and, where the case asks for ``--json``, the shape of the error document on stdout.

Nothing a refused command does may be stored or published: GC_INBOX and GC_WATCH (the request
journal) are compared before and after. The processes run a few at a time while the broker serves
from this event loop (a process start costs most of a case's time).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from greenchannel.v1 import common_pb2

from broker.client import export_ledger
from broker.protocol import INBOX_STREAM, WATCH_STREAM, status_filter
from tests.integration.broker_world import FRAUD_ACCOUNT, POLICE, World, broker_world, stop_payment

pytestmark = pytest.mark.integration

BANK = "bank-icbc"
REGULATOR = "regulator-pboc"
COMMAND_TIMEOUT = 60.0
UNKNOWN_ID = "01890000-0000-7000-8000-000000000000"
UNROUTABLE_ACCOUNT = "999999000011112222"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


DEAD_BROKER = f"127.0.0.1:{_free_port()}"


def stop_payment_args(*extra: str, agency: str = POLICE, amount: str = "48000.00") -> list[str]:
    return [
        "submit",
        "stop-payment",
        "--as",
        agency,
        "--case",
        "HX-CLI-0001",
        "--account",
        FRAUD_ACCOUNT,
        "--name",
        "李某",
        f"--amount={amount}",  # one token: "-5" must reach the amount parser, not argparse's options
        *extra,
    ]


def number_block_args(phone: str, *extra: str) -> list[str]:
    return ["submit", "number-block", "--as", POLICE, "--case", "HX-CLI-0002", "--phone", phone, *extra]


@dataclass(frozen=True)
class CliCase:
    name: str
    argv: tuple[str, ...]
    """After ``--state-dir``; ``{...}`` placeholders are filled from the arena."""
    exit_code: int
    says: tuple[str, ...]
    """Fragments of stderr, all required."""
    json_error: dict[str, Any] | None = None
    """With --json: fields the ``error`` object on stdout must have."""
    state_dir: str | None = None
    """``empty``: a state directory without keys instead of the arena's."""


def case(
    name: str,
    argv: list[str],
    exit_code: int,
    *says: str,
    json_error: dict[str, Any] | None = None,
    state_dir: str | None = None,
) -> CliCase:
    return CliCase(name, tuple(argv), exit_code, says, json_error, state_dir)


CASES = [
    # Amounts: decimal strings, two decimals at most, never through float.
    case(
        "amount_three_decimals",
        stop_payment_args(amount="12.345"),
        2,
        "--amount",
        "more than 2 decimal places",
    ),
    case("amount_negative", stop_payment_args(amount="-5"), 2, "--amount", "is negative"),
    case(
        "amount_exponent_overflow", stop_payment_args(amount="1e9999"), 2, "--amount", "not a decimal amount"
    ),
    case("amount_nan", stop_payment_args(amount="NaN"), 2, "--amount", "not a decimal amount"),
    case("amount_infinity", stop_payment_args(amount="Infinity"), 2, "--amount", "not a decimal amount"),
    case("amount_full_width_digits", stop_payment_args(amount="１２"), 2, "--amount", "not a decimal amount"),
    case("amount_zero", stop_payment_args(amount="0.00"), 2, "--amount", "is zero"),
    case("amount_beyond_int64", stop_payment_args(amount="92233720368547758.08"), 2, "--amount", "too large"),
    # Phone numbers: the contract's E.164 rule, checked before anything is signed.
    case(
        "phone_not_e164",
        number_block_args("139-1234-5678"),
        2,
        "nothing was sent",
        "request.number_block.phone.e164",
    ),
    case("phone_too_long", number_block_args("+861391234567890123"), 2, "request.number_block.phone.e164"),
    case(
        "phone_not_e164_json",
        number_block_args("+86 139 1234 5678", "--json"),
        2,
        "request.number_block.phone.e164",
        json_error={"code": "INVALID_ARGUMENT", "reason": "CONTRACT_VIOLATION"},
    ),
    # Types, agencies, options.
    case("unknown_request_type", ["submit", "refund", "--as", POLICE], 2, "invalid choice: 'refund'"),
    case("agency_id_wildcard", stop_payment_args(agency="bank.>"), 2, "--as", "is not an agency id"),
    case("agency_id_upper_case", stop_payment_args(agency="POLICE-310115"), 2, "is not an agency id"),
    case(
        "recipient_wildcard",
        stop_payment_args("--recipient", "bank-*"),
        2,
        "--recipient",
        "is not an agency id",
    ),
    case("unknown_priority", stop_payment_args("--priority", "purple"), 2, "--priority", "invalid choice"),
    case("negative_hop", stop_payment_args("--hop=-1"), 2, "--hop", "must not be negative"),
    case(
        "period_not_a_time",
        [
            "submit",
            "data-request",
            "--as",
            POLICE,
            "--case",
            "HX-CLI-0003",
            "--category",
            "subscriber",
            "--phone",
            "+8613912345678",
            "--from",
            "yesterday",
            "--to",
            "today",
        ],
        2,
        "--from",
        "not an ISO 8601 time",
    ),
    case(
        "location_of_a_bank_account",
        [
            "submit",
            "data-request",
            "--as",
            POLICE,
            "--case",
            "HX-CLI-0017",
            "--category",
            "location",
            "--account",
            "6217000010087654321",
            "--name",
            "王某某",
        ],
        2,
        "nothing was sent",
        "request.data_request: a LOCATION request names a phone line or handset",
    ),
    case("sla_report_agency_wildcard", ["sla", "report", "--as", "bank.>"], 2, "is not an agency id"),
    case("trail_case_with_wildcard", ["trail", "HX.>", "--as", POLICE], 2, "is not a case number"),
    case(
        "ledger_export_agency_wildcard",
        ["ledger", "export", "--as", "bank.>", "--out", "{tmp}/x.jsonl"],
        1,
        "invalid agency id 'bank.>'",
    ),
    # Request ids the broker is asked about.
    case("status_request_id_path", ["status", "../../etc/passwd", "--as", POLICE], 1, "INVALID_ARGUMENT"),
    case("status_unknown_request", ["status", UNKNOWN_ID, "--as", POLICE], 1, "NOT_FOUND"),
    case(
        "watch_request_id_wildcard",
        ["watch", "--request", "01890000.>", "--as", POLICE],
        1,
        "INVALID_ARGUMENT",
    ),
    # Keys.
    case(
        "decryption_key_unreadable",
        ["status", "{submitted}", "--as", POLICE, "--key", "{tmp}/absent.pem"],
        1,
        "cannot read the key file",
    ),
    case(
        "decryption_key_is_a_signing_key",
        ["status", "{submitted}", "--as", POLICE, "--key", "{ed25519_pem}"],
        1,
        "not an X25519 (encryption) key",
    ),
    case("no_signing_key_in_state_dir", stop_payment_args(), 1, "no usable sig key", state_dir="empty"),
    # The broker: absent, or refusing.
    case(
        "broker_not_answering",
        stop_payment_args("--broker", DEAD_BROKER),
        1,
        "UNAVAILABLE",
        "is a broker (greenchannel up) running",
    ),
    case(
        "broker_not_answering_json",
        ["status", UNKNOWN_ID, "--as", POLICE, "--broker", DEAD_BROKER, "--json"],
        1,
        "UNAVAILABLE",
        json_error={"code": "UNAVAILABLE"},
    ),
    case(
        "broker_address_garbage",
        ["status", UNKNOWN_ID, "--as", POLICE, "--broker", "not a host::"],
        1,
        "UNAVAILABLE",
    ),
    case(
        "bank_orders_a_stop_payment_json",
        stop_payment_args("--json", agency=BANK),
        1,
        "PERMISSION_DENIED",
        json_error={"code": "PERMISSION_DENIED", "reason": "TYPE_NOT_ALLOWED"},
    ),
    case(
        "unroutable_account",
        [*stop_payment_args()[:7], UNROUTABLE_ACCOUNT, *stop_payment_args()[8:]],
        1,
        "FAILED_PRECONDITION",
        "NO_ROUTE",
    ),
    # Ledger exports, tampered after the fact: verify names the line and the entry.
    case(
        "ledger_entry_changed",
        ["ledger", "verify", "{tmp}/changed.jsonl"],
        1,
        "NOT VERIFIED",
        "CHANGED: entry",
    ),
    case("ledger_entry_removed", ["ledger", "verify", "{tmp}/removed.jsonl"], 1, "NOT VERIFIED"),
    case(
        "ledger_hash_not_ascii",
        ["ledger", "verify", "{tmp}/unicode.jsonl"],
        1,
        "NOT VERIFIED",
        "CHANGED: entry",
    ),
    case(
        "ledger_not_an_export",
        ["ledger", "verify", "{tmp}/text.jsonl"],
        1,
        "is not a GreenChannel ledger export",
    ),
    case("ledger_binary_garbage", ["ledger", "verify", "{tmp}/garbage.jsonl"], 1, "cannot read", "utf-8"),
    case("ledger_file_missing", ["ledger", "verify", "{tmp}/absent.jsonl"], 1, "cannot read"),
]

# Known bug, outside this suite's files: hmac.compare_digest in _ledger_chain._examine raises
# TypeError for a stated hash with non-ASCII characters (compare the hashes as bytes to fix it).
KNOWN_BUGS: dict[str, str] = {}


# -- the arena ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    inbox: tuple[int, int]
    watch: tuple[int, int]
    requests: tuple[int, int]


@dataclass
class Arena:
    world: World
    address: str
    tmp: Path
    submitted: str
    before: Snapshot
    after: Snapshot | None = None
    results: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    ledger_lines: dict[str, list[int]] = field(default_factory=dict)


async def snapshot(world: World) -> Snapshot:
    js = world.js
    inbox = (await js.stream_info(INBOX_STREAM)).state
    watch = (await js.stream_info(WATCH_STREAM)).state
    # The request journal is GC_WATCH; its per-request subjects count the requests stored.
    requests = (await js.stream_info(WATCH_STREAM, subjects_filter=status_filter())).state
    return Snapshot(
        inbox=(inbox.messages, inbox.last_seq),
        watch=(watch.messages, watch.last_seq),
        requests=(len(requests.subjects or {}), requests.last_seq),
    )


def _tamper_exports(export: Path, tmp: Path) -> dict[str, list[int]]:
    """Write the tampered copies of a genuine export; returns the lines each one changed."""
    lines = export.read_text(encoding="utf-8").splitlines()
    entries = [i for i, line in enumerate(lines) if json.loads(line).get("type") == "entry"]
    assert len(entries) >= 3, "the arena's ledger has a few entries"
    target = entries[1]

    changed = list(lines)
    record = json.loads(changed[target])
    data = bytearray(base64.b64decode(record["entry"]))
    data[-1] ^= 0x01
    record["entry"] = base64.b64encode(bytes(data)).decode()
    changed[target] = json.dumps(record)

    removed = [line for i, line in enumerate(lines) if i != target]

    unicode = list(lines)
    record = json.loads(unicode[target])
    record["hash"] = "sha-256:" + "é" * 43
    unicode[target] = json.dumps(record, ensure_ascii=False)

    for name, content in (("changed", changed), ("removed", removed), ("unicode", unicode)):
        (tmp / f"{name}.jsonl").write_text("\n".join(content) + "\n", encoding="utf-8")
    (tmp / "garbage.jsonl").write_bytes(b"\x00\xffnot json\n" * 4)
    (tmp / "text.jsonl").write_text('{"format": "someone-elses-ledger/1"}\n', encoding="utf-8")
    # Line numbers are 1-based; the seq of the changed entry is its own.
    return {"target_line": [target + 1], "target_seq": [json.loads(lines[target])["seq"]]}


async def _export_with_entries(world: World, address: str, export: Path, *, at_least: int) -> None:
    """Export until the ledger holds ``at_least`` entries: the ledger writer appends asynchronously."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15.0
    while True:
        summary = await export_ledger(
            broker=address, agency_id=REGULATOR, signing_key=world.key(REGULATOR), out=export
        )
        if summary.records >= at_least:
            return
        assert loop.time() < deadline, f"the ledger has {summary.records} entries"
        await asyncio.sleep(0.1)


# One interpreter imports the command line once and forks a child per case: the child runs
# ``main(argv)`` exactly as ``python -m broker.cli`` does (its own process, stdout, stderr and exit
# status; an uncaught exception prints its traceback), without paying the imports every time.
_RUNNER = """
import json, os, sys, tempfile, traceback
from broker.cli import main

for line in sys.stdin:
    job = json.loads(line)
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        os.environ.clear()
        os.environ.update(job["env"])
        try:
            code = main(job["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    out.seek(0)
    err.seek(0)
    result = {
        "code": os.waitstatus_to_exitcode(status),
        "stdout": out.read().decode("utf-8", "replace"),
        "stderr": err.read().decode("utf-8", "replace"),
    }
    print(json.dumps(result), flush=True)
"""


def _argv(arena: Arena, spec: CliCase) -> list[str]:
    values = {
        "tmp": str(arena.tmp),
        "submitted": arena.submitted,
        "ed25519_pem": str(arena.tmp / "ed25519.pem"),
    }
    state_dir = arena.tmp / "empty-state" if spec.state_dir == "empty" else arena.world.state_dir
    return ["--state-dir", str(state_dir), *(part.format(**values) for part in spec.argv)]


def _environment(arena: Arena) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GREENCHANNEL_NATS_URL"}
    env["GREENCHANNEL_BROKER"] = arena.address
    return env


def _run_all(arena: Arena, specs: list[CliCase]) -> list[subprocess.CompletedProcess[str]]:
    env = _environment(arena)
    jobs = "".join(json.dumps({"argv": _argv(arena, spec), "env": env}) + "\n" for spec in specs)
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=jobs,
        capture_output=True,
        text=True,
        env=env,
        timeout=COMMAND_TIMEOUT * 2,
        check=True,
    )
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == len(specs), done.stderr
    return [
        subprocess.CompletedProcess(_argv(arena, spec), r["code"], r["stdout"], r["stderr"])
        for spec, r in zip(specs, results, strict=True)
    ]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def arena(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Arena]:
    root = tmp_path_factory.mktemp("hostile-cli")
    tmp = root / "files"
    tmp.mkdir()
    (tmp / "empty-state").mkdir()
    (tmp / "ed25519.pem").write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    async with broker_world(root) as world:
        broker = await world.start_broker()
        async with world.client(broker) as police:
            # STANDARD: no deadline reminder or breach fires (and changes the snapshot) meanwhile.
            ids = [
                (
                    await police.submit(
                        stop_payment(case_number=f"HX-CLI-{n:04d}", priority=common_pb2.PRIORITY_STANDARD)
                    )
                ).status.id
                for n in range(3)
            ]
        export = tmp / "genuine.jsonl"
        await _export_with_entries(world, broker.address, export, at_least=3)
        arena = Arena(
            world=world,
            address=broker.address,
            tmp=tmp,
            submitted=ids[0],
            before=await snapshot(world),
        )
        arena.ledger_lines = _tamper_exports(export, tmp)
        done = await asyncio.to_thread(_run_all, arena, CASES)
        arena.results = {spec.name: result for spec, result in zip(CASES, done, strict=True)}
        arena.after = await snapshot(world)
        yield arena


# -- the table ----------------------------------------------------------------------------------


def _param(spec: CliCase) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[spec.name])] if spec.name in KNOWN_BUGS else []
    return pytest.param(spec, id=spec.name, marks=marks)


@pytest.mark.parametrize("spec", [_param(spec) for spec in CASES])
async def test_hostile_command_is_refused_clearly_and_stores_nothing(arena: Arena, spec: CliCase) -> None:
    done = arena.results[spec.name]
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == spec.exit_code, (done.returncode, done.stderr)
    # `ledger verify` reports its verdict on stdout; every other refusal goes to stderr.
    said = done.stderr if spec.argv[:2] != ("ledger", "verify") else done.stdout + done.stderr
    for fragment in spec.says:
        assert fragment in said, said
    assert said.strip(), "a refusal always says why"
    if spec.json_error is not None:
        document = json.loads(done.stdout)
        error = document["error"]
        assert {key: error[key] for key in spec.json_error} == spec.json_error, error
        assert error["message"]
    assert arena.after == arena.before


def test_the_genuine_export_verifies(arena: Arena) -> None:
    """The tampered copies fail because of the tampering: the original passes."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "--state-dir",
            str(arena.world.state_dir),
            "ledger",
            "verify",
            str(arena.tmp / "genuine.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_changed_ledger_entry_is_named_by_line_and_seq(arena: Arena) -> None:
    line = arena.ledger_lines["target_line"][0]
    seq = arena.ledger_lines["target_seq"][0]
    assert f"line {line}: CHANGED: entry {seq}:" in arena.results["ledger_entry_changed"].stdout


def test_a_removed_ledger_entry_breaks_the_chain_where_it_was(arena: Arena) -> None:
    # Without a checkpoint past it, a gap reads as the next entry tied to nothing.
    line = arena.ledger_lines["target_line"][0]
    seq = arena.ledger_lines["target_seq"][0]
    assert f"line {line}: INSERTED: entry {seq + 1}:" in arena.results["ledger_entry_removed"].stdout
