"""The command line as people use it: `greenchannel up` in one process, `submit | watch | status` in others.

One `up` (embedded NATS, broker, every reference agency behind its adapter) serves the whole
module; every other command is a fresh ``python -m broker.cli`` process talking to it over gRPC.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from agencies import _seed as seed
from broker.cli._render import mask_account, table
from broker.cli._requests import parse_amount

pytestmark = pytest.mark.integration

POLICE = "police-310115"
CASE = "SH-PD-2026-1121-0042"
READY_TIMEOUT = 60.0
COMMAND_TIMEOUT = 60.0
# The stop-payment's timeline: the adapter sends no DELIVERED, and ACKNOWLEDGED only when the bank
# takes longer than its grace (acknowledge_after), which a loaded machine may make it do.
AS_THE_ADAPTER_ANSWERS = (
    ["SUBMITTED", "PARTIALLY_EXECUTED"],
    ["SUBMITTED", "ACKNOWLEDGED", "PARTIALLY_EXECUTED"],
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Lines:
    """Lines of a child's stdout, read by a thread so a test can wait for one with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next(self, timeout: float) -> str | None:
        """The next line; None at end of stream. Raises queue.Empty on timeout."""
        return self._queue.get(timeout=timeout)


@dataclass
class Up:
    """The running `greenchannel up`."""

    process: subprocess.Popen[str]
    state_dir: Path
    broker: str
    stderr: Path
    banner: list[str]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "GREENCHANNEL_NATS_URL"}
        env["GREENCHANNEL_BROKER"] = self.broker
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "broker.cli", "--state-dir", str(self.state_dir), *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

    def run_json(self, *args: str) -> dict[str, Any]:
        done = self.run(*args, "--json")
        assert done.returncode == 0, done.stderr
        document: dict[str, Any] = json.loads(done.stdout)
        return document


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    state_dir = tmp_path_factory.mktemp("cli-state")
    stderr = state_dir.parent / f"{state_dir.name}-up.err"
    broker = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "GREENCHANNEL_NATS_URL"}
    with stderr.open("w") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "--state-dir", str(state_dir), "up", "--listen", broker],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=env,
        )
    try:
        assert process.stdout is not None
        lines = _Lines(process.stdout)
        ready = lines.next(READY_TIMEOUT)
        assert ready is not None, stderr.read_text()
        assert f"broker on {broker}" in ready, ready
        assert "agencies online" in ready, ready
        banner = [ready]
        # The hint follows the ready line at once; its last line shows `watch`.
        while not any(" watch " in line for line in banner):
            line = lines.next(5.0)
            assert line is not None, banner
            banner.append(line)
        yield Up(process=process, state_dir=state_dir, broker=broker, stderr=stderr, banner=banner)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _x25519_pem(state_dir: Path, agency: str) -> Path:
    """The agency's X25519 private key file (its other file is the Ed25519 signing key)."""
    for pem in sorted((state_dir / "keys" / agency).glob("*.pem")):
        key = serialization.load_pem_private_key(pem.read_bytes(), password=None)
        if isinstance(key, x25519.X25519PrivateKey):
            return pem
    raise AssertionError(f"no X25519 key for {agency}")


def _signing_pem(state_dir: Path, agency: str) -> Path:
    pems = sorted((state_dir / "keys" / agency).glob("*.pem"))
    return next(p for p in pems if p != _x25519_pem(state_dir, agency))


@pytest.fixture(scope="module")
def stop_payment(up: Up) -> dict[str, Any]:
    """The stop-payment of the story, submitted and waited for by the CLI."""
    return up.run_json(
        "submit",
        "stop-payment",
        "--as",
        POLICE,
        "--account",
        seed.FRAUD_ACCOUNT,
        "--name",
        seed.FRAUD_HOLDER,
        "--amount",
        "48000.00",
        "--case",
        CASE,
        "--wait",
    )


def test_up_announces_the_broker_and_how_to_submit(up: Up) -> None:
    assert any("submit stop-payment" in line for line in up.banner), up.banner


def test_submit_waits_for_the_bank_and_lists_the_onward_transfers(stop_payment: dict[str, Any]) -> None:
    assert stop_payment["state"] == "PARTIALLY_EXECUTED"
    assert stop_payment["type"] == "STOP_PAYMENT"
    assert stop_payment["sender"] == POLICE
    assert stop_payment["recipient"] == "bank-icbc"
    assert stop_payment["reason"] == "INSUFFICIENT_FUNDS"
    result = stop_payment["status"]["result"]
    # 48,000.00 asked, 15,000.00 left on the account: the rest went on to two banks.
    assert result["amount_held"] == {"currency": "CNY", "minor_units": "1500000"}
    onward = result["onward_transfers"]
    assert {t["to_bank"] for t in onward} == {"bank-ccb", "bank-abc"}
    assert sum(int(t["amount"]["minor_units"]) for t in onward) == 3_500_000
    assert stop_payment["timings_ms"]["finish"] is not None
    assert [e["state"] for e in stop_payment["timeline"]][-1] == "PARTIALLY_EXECUTED"
    assert (
        stop_payment["status"]["case_ref"]["legal_instrument_type"]
        == "LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE"
    )


def test_status_shows_the_request_and_its_timeline(up: Up, stop_payment: dict[str, Any]) -> None:
    request_id = stop_payment["id"]
    document = up.run_json("status", request_id, "--as", POLICE)
    assert document["id"] == request_id
    assert document["state"] == "PARTIALLY_EXECUTED"
    # No DELIVERED from the adapter; ACKNOWLEDGED only if the bank took longer than the grace.
    assert [e["state"] for e in document["timeline"]] in AS_THE_ADAPTER_ANSWERS
    assert [e["seq"] for e in document["timeline"]] == list(range(1, len(document["timeline"]) + 1))

    human = up.run("status", request_id, "--as", POLICE)
    assert human.returncode == 0, human.stderr
    text = human.stdout
    assert "police-310115 -> bank-icbc" in text
    assert "timeline" in text
    assert "PARTIALLY_EXECUTED" in text
    assert "15,000.00 CNY" in text
    assert "deadlines" in text
    # Onward accounts are masked for people.
    assert "6217****4321" in text
    assert seed.MULE_CCB_ACCOUNT not in text


def test_watch_prints_every_event_of_a_request_as_json(up: Up, stop_payment: dict[str, Any]) -> None:
    request_id = stop_payment["id"]
    process = subprocess.Popen(
        up.argv("watch", "--as", POLICE, "--broker", up.broker, "--request", request_id, "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=up.env(),
    )
    try:
        assert process.stdout is not None
        lines = _Lines(process.stdout)
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while not events or events[-1]["state"] != "PARTIALLY_EXECUTED":
            line = lines.next(max(0.1, deadline - time.monotonic()))
            assert line is not None, process.stderr.read() if process.stderr else ""
            events.append(json.loads(line))
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=COMMAND_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert [e["state"] for e in events] in AS_THE_ADAPTER_ANSWERS
    assert {e["request_id"] for e in events} == {request_id}
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["cursor"] > 0 for e in events)
    assert events[-1]["actor"] == "bank-icbc"
    assert events[-1]["reason"] == "INSUFFICIENT_FUNDS"
    assert process.returncode == 0
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def data_request(up: Up) -> dict[str, Any]:
    return up.run_json(
        "submit",
        "data-request",
        "--as",
        POLICE,
        "--category",
        "account-holder",
        "--account",
        seed.FRAUD_ACCOUNT,
        "--name",
        seed.FRAUD_HOLDER,
        "--case",
        CASE,
        "--wait",
    )


def test_status_decrypts_a_data_answer_with_the_requesters_key(up: Up, data_request: dict[str, Any]) -> None:
    assert data_request["state"] == "EXECUTED"
    key = _x25519_pem(up.state_dir, POLICE)
    document = up.run_json("status", data_request["id"], "--as", POLICE, "--decrypt", "--key", str(key))
    assert document["answer"]["holder"]["name"] == seed.FRAUD_HOLDER

    human = up.run("status", data_request["id"], "--as", POLICE, "--decrypt", "--key", str(key))
    assert human.returncode == 0, human.stderr
    assert "answer (decrypted)" in human.stdout
    assert seed.FRAUD_HOLDER in human.stdout


def test_police_locate_a_line_and_decrypt_where_it_was_last_seen(up: Up) -> None:
    located = up.run_json(
        "submit",
        "data-request",
        "--as",
        POLICE,
        "--category",
        "location",
        "--phone",
        seed.FRAUDSTER_PHONE,
        "--case",
        CASE,
        "--wait",
    )
    assert located["state"] == "EXECUTED"
    key = _x25519_pem(up.state_dir, POLICE)
    document = up.run_json("status", located["id"], "--as", POLICE, "--decrypt", "--key", str(key))
    [record] = document["answer"]["records"]
    assert record["cell_id"] == seed.FRAUDSTER_CELL
    assert record["source"] == "last_seen"
    human = up.run("status", located["id"], "--as", POLICE, "--decrypt", "--key", str(key))
    assert human.returncode == 0, human.stderr
    assert "1 records" in human.stdout
    assert seed.FRAUDSTER_CELL in human.stdout


@pytest.mark.parametrize(
    ("key_of", "message"),
    [
        (lambda state: _x25519_pem(state, "bank-icbc"), "cannot decrypt the answer"),
        (lambda state: _signing_pem(state, POLICE), "not an X25519"),
    ],
    ids=["another-agencys-key", "a-signing-key"],
)
def test_status_decrypt_with_a_wrong_key_fails_cleanly(
    up: Up, data_request: dict[str, Any], key_of: Any, message: str
) -> None:
    done = up.run(
        "status", data_request["id"], "--as", POLICE, "--decrypt", "--key", str(key_of(up.state_dir))
    )
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert seed.FRAUD_HOLDER not in done.stdout


@pytest.mark.parametrize("amount", ["1.234", "-5", "abc"])
def test_submit_refuses_a_bad_amount_naming_the_option(up: Up, amount: str) -> None:
    done = up.run(
        "submit",
        "stop-payment",
        "--as",
        POLICE,
        "--account",
        seed.FRAUD_ACCOUNT,
        "--name",
        seed.FRAUD_HOLDER,
        "--case",
        CASE,
        "--amount",
        amount,
    )
    assert done.returncode == 2
    assert "--amount" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("text", "minor_units"),
    [("48000.00", 4_800_000), ("48000", 4_800_000), ("0.01", 1), ("48000.5", 4_800_050), ("1.230", 123)],
)
def test_amounts_are_exact_minor_units(text: str, minor_units: int) -> None:
    assert parse_amount(text) == minor_units


def test_people_see_masked_accounts_in_aligned_tables() -> None:
    assert mask_account(seed.FRAUD_ACCOUNT) == "6222****4567"
    lines = table(("name", "amount"), [(seed.FRAUD_HOLDER, "1.00"), ("ab", "10.00")])
    # Chinese characters take two columns: the second column starts at the same column everywhere.
    assert lines[2] == "李某  1.00"
    assert lines[3] == "ab    10.00"


def test_submit_checks_the_contract_before_sending(up: Up) -> None:
    done = up.run("submit", "number-block", "--as", POLICE, "--phone", "12345", "--case", CASE)
    assert done.returncode != 0
    assert "request.number_block.phone.e164" in done.stderr
    assert "nothing was sent" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bank_cannot_order_a_freeze(up: Up) -> None:
    done = up.run(
        "submit",
        "freeze",
        "--as",
        "bank-icbc",
        "--account",
        seed.MULE_CCB_ACCOUNT,
        "--name",
        seed.MULE_CCB_HOLDER,
        "--amount",
        "100",
        "--case",
        "ICBC-2026-0001",
    )
    assert done.returncode == 1
    assert "PERMISSION_DENIED" in done.stderr
    assert "TYPE_NOT_ALLOWED" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_broker_is_reported_not_raised(up: Up, stop_payment: dict[str, Any]) -> None:
    done = up.run("status", stop_payment["id"], "--as", POLICE, "--broker", f"127.0.0.1:{_free_port()}")
    assert done.returncode == 1
    assert "UNAVAILABLE" in done.stderr
    assert "Traceback" not in done.stderr


def test_submit_wait_exits_3_when_the_request_is_not_executed(up: Up) -> None:
    # The bank checks the holder's name against its books and answers MISMATCH.
    done = up.run(
        "submit",
        "stop-payment",
        "--as",
        POLICE,
        "--account",
        seed.FRAUD_ACCOUNT,
        "--name",
        "Not The Holder",
        "--amount",
        "100.00",
        "--case",
        CASE,
        "--wait",
        "--json",
    )
    assert done.returncode == 3, done.stderr
    assert json.loads(done.stdout)["state"] == "REJECTED"
    assert "not executed" in done.stderr
    assert "Traceback" not in done.stderr


def test_submit_help_names_the_exit_status_of_wait(up: Up) -> None:
    done = up.run("submit", "stop-payment", "--help")
    assert done.returncode == 0
    assert "3 when it ended rejected, failed or cancelled" in " ".join(done.stdout.split())


def test_an_agency_without_keys_is_told_the_command_that_makes_them(up: Up) -> None:
    done = up.run("status", "01890000-0000-7000-8000-000000000000", "--as", "police-999999")
    assert done.returncode == 1
    assert "greenchannel keys generate --agency police-999999 --out" in done.stderr
    assert "ensure_agency_keys" not in done.stderr
    assert "Traceback" not in done.stderr


def test_up_stops_cleanly_on_sigterm(up: Up) -> None:
    """Last in the module: it stops the shared `up`."""
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(timeout=COMMAND_TIMEOUT) == 0, up.stderr.read_text()
    assert "Traceback" not in up.stderr.read_text()
    leftovers = subprocess.run(
        ["pgrep", "-f", f"nats-server.*{up.state_dir}"], capture_output=True, check=False
    )
    assert leftovers.stdout == b""
    # This run's data stays for the next `up`.
    assert (up.state_dir / "run" / "nats").is_dir()
